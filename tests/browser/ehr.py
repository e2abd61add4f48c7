"""The sandbox EHR as its user drives it in the browser tests: open a visit, launch the
app from a card."""

from __future__ import annotations

import re

from playwright.sync_api import FrameLocator, Locator, Page, expect

from service.demo import DemoStack


def open_visit(page: Page, stack: DemoStack, patient_key: str) -> Locator:
    """As the EHR user: start the triage of a seeded patient; the visit's first card."""
    page.goto(f"{stack.sandbox.ehr_url}/")
    row = page.locator(f'tr[data-patient-key="{patient_key}"]')
    row.get_by_role("button", name=re.compile("^Start triage")).click()
    card = page.locator("article.card").first
    expect(card).to_be_visible()
    return card


def launch_from_card(page: Page, card: Locator) -> FrameLocator:
    """Click the card's SMART link: our app, inside the EHR's frame."""
    card.locator("button.smart-link").click()
    app = page.frame_locator("#app-frame")
    expect(app.locator("h1")).to_have_text("Kindreflex bij triage")
    return app


def launch_from_chart(page: Page, stack: DemoStack, patient_key: str) -> FrameLocator:
    """As the social worker: open the app from a seeded patient's chart (no triage visit)."""
    page.goto(f"{stack.sandbox.ehr_url}/")
    page.get_by_label("Ingelogd als").select_option("social-worker")
    page.get_by_role("button", name="Wissel gebruiker").click()
    row = page.locator(f'tr[data-patient-key="{patient_key}"]')
    row.get_by_role("button", name=re.compile("^Start Kindreflex-app")).click()
    return page.frame_locator("#app-frame")
