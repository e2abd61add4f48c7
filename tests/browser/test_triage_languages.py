"""The nurse's triage screen in each language a hospital may set (nl, fr, en), keyboard only,
with acute danger: the journey the Dutch tests walk with the mouse, in Chromium.

A hospital sets its EHR registration's language; the launch takes it from there (the
sandbox's id_token names no ``locale``). Each test launches a patient of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext, Frame, Page, expect

from service.demo import DEMO_REGISTRATION_ID, DemoStack
from service.i18n import Language, translate
from tests.browser import axe
from tests.browser.ehr import open_visit

pytestmark = pytest.mark.browser


@contextlib.contextmanager
def launched_in(stack: DemoStack, language: Language) -> Iterator[None]:
    """The demo hospital's EHR registration in ``language`` for a launch; put back after."""
    tenants = stack.app.state.tenants
    slug = stack.settings.default_tenant
    before = tenants.get(slug, fresh=True).config
    registrations = [
        r.model_copy(update={"default_language": language}) if r.id == DEMO_REGISTRATION_ID else r
        for r in before.registrations
    ]
    tenants.save(slug, before.model_copy(update={"registrations": registrations}), actor="test")
    try:
        yield
    finally:
        tenants.save(slug, before, actor="test")


class Keyboard:
    """The nurse's keys in the app's frame, and where the focus is."""

    def __init__(self, page: Page, frame: Frame) -> None:
        self.page, self.frame = page, frame
        page.locator("#app-frame").focus()  # she tabs or clicks into the frame once

    def focused(self) -> str:
        focus: str = self.frame.evaluate(
            "() => document.activeElement.id || document.activeElement.getAttribute('href') || ''"
        )
        return focus

    def tab_to(self, target: str, limit: int = 40) -> None:
        for _ in range(limit):
            self.page.keyboard.press("Tab")
            if self.focused() == target:
                return
        raise AssertionError(f"Tab never reached {target}")

    def press(self, key: str) -> None:
        self.page.keyboard.press(key)

    def type(self, text: str) -> None:
        self.page.keyboard.type(text)


@pytest.mark.parametrize(
    ("language", "patient"), [("nl", "jan-janssens"), ("fr", "lotte-claes"), ("en", "tom-wouters")]
)
def test_keyboard_only_two_children_acute_danger_in_each_language(
    browser: BrowserContext, stack: DemoStack, language: Language, patient: str
) -> None:
    """Steps 1-2 for two children by keyboard alone, a mistyped birth date refused with
    acute danger ticked: the focus on the error summary, whose first link is whom to call
    and whose next moves the focus to the date; saved, the step 6 call and then who follows
    it up (the page said "step 4" after step 6: found by review)."""

    def say(message: str) -> str:
        return translate(language, f"app.{message}")

    page = browser.new_page()
    with launched_in(stack, language):
        open_visit(page, stack, patient).locator("button.smart-link").click()
        app = page.frame_locator("#app-frame")
        expect(app.locator("h1")).to_have_text(say("triage.title"))
    frame = axe.in_frame(page)
    expect(app.locator("html")).to_have_attribute("lang", language)
    assert axe.violations(frame) == []  # every field labelled, in this language too
    keys = Keyboard(page, frame)

    keys.tab_to("child-0-name")
    keys.type("Lina")
    keys.press("Tab")
    keys.type("03/07/2019")
    keys.tab_to("add-child")
    keys.press("Enter")
    assert keys.focused() == "child-1-name"  # the new row's first field
    keys.type("Mats")
    keys.press("Tab")
    keys.type("31/02/2020")  # no such date
    keys.tab_to("assessment-no-concern")
    keys.press("ArrowDown")  # niet-pluis
    keys.tab_to("reasons")
    keys.type("Dreigt de kinderen iets aan te doen")
    keys.tab_to("acute_danger")
    keys.press("Space")
    keys.tab_to("save")
    keys.press("Enter")

    summary = app.locator("[data-error-summary]")
    expect(summary).to_be_focused()  # a screen reader reads it first
    links = summary.locator("a")
    expect(links.first).to_have_text(say("saved.acute-title"))
    expect(links.first).to_have_attribute("href", "#acute-title")
    expect(links.nth(1)).to_have_attribute("href", "#child-1-birth_date")
    assert axe.violations(frame) == []
    keys.press("Tab")
    keys.press("Enter")
    assert keys.focused() == "acute-title"  # whom to call, above the form
    keys.tab_to("#child-1-birth_date")
    keys.press("Enter")
    assert keys.focused() == "child-1-birth_date"  # the link leads to the field to mend
    keys.press("Control+a")
    keys.type("03/02/2020")
    keys.tab_to("save")
    keys.press("Enter")

    status = app.locator("#save-status")
    expect(status).to_be_focused()
    acute = app.locator("[data-acute-danger]")
    expect(acute.locator("h2")).to_contain_text(say("saved.acute-title"))
    # the call, the numbers, then who follows it up: no step after it that comes before it
    expect(acute.locator("p, ul").last).to_have_text(say("saved.acute-handed-off"))
    expect(app.locator("[data-handed-off]")).to_have_count(1)
    expect(app.locator("h2")).to_have_count(1)  # step 6 only: no "step 4" section below
    assert axe.violations(frame) == []
