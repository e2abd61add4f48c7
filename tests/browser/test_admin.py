"""The EHR administrator's journey in Chromium (issue 6 §7).

bootstrap → register the sandbox EHR → "test connection" shows its capabilities →
switch off patient-view → discovery no longer lists it → change the adult age → a
17-year-old gets no card, an 18-year-old does.

Everything is real: our app served by uvicorn, the sandbox EHR (sekmet FHIR server,
SMART authorization server, EHR page that calls our hooks with signed JWTs), the
`kindreflex admin bootstrap` command as a process, Debian's Chromium.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from sandbox.config import SandboxConfig
from sandbox.runner import Sandbox
from service.app import create_app
from service.db import migrate
from service.db.base import Database
from service.demo import serving
from service.settings import Settings, load_settings
from tests.browser import axe
from tests.support.processes import free_port

pytestmark = [pytest.mark.browser, pytest.mark.fhirserver]


@dataclass(frozen=True)
class Stack:
    settings: Settings
    sandbox: Sandbox
    env: dict[str, str]

    @property
    def app_url(self) -> str:
        return self.settings.public_url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Our app with an empty database (nothing registered) and the sandbox EHR calling it."""
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    database_url = f"sqlite:///{tmp_path_factory.mktemp('admin') / 'kindreflex.db'}"
    settings = load_settings(
        environment="test", database_url=database_url, public_url=app_url, port=port
    )
    migrate.upgrade(database_url)
    database = Database(database_url)
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": database_url, "KINDREFLEX_PUBLIC_URL": app_url}
    config = SandboxConfig(cds_base_url=app_url, public_host="localhost")
    try:
        with Sandbox.start(config) as sandbox, serving(create_app(settings, database), port):
            yield Stack(settings, sandbox, env)
    finally:
        database.dispose()


def add_patient(stack: Stack, family: str, years: int, months: int) -> str:
    """A patient of exactly ``years`` and ``months`` today (well away from a birthday)."""
    today = date.today()
    month = today.month - months
    year = today.year - years - (1 if month < 1 else 0)
    birth = date(year, (month - 1) % 12 + 1, min(today.day, 28))
    patient = {
        "resourceType": "Patient",
        "name": [{"family": family, "given": ["Test"]}],
        "gender": "female",
        "birthDate": birth.isoformat(),
    }
    response = httpx.post(f"{stack.sandbox.upstream_fhir_base_url}/Patient", json=patient)
    response.raise_for_status()
    return str(response.json()["id"])


def discovered_hooks(stack: Stack) -> set[str]:
    """Discovery as the sandbox EHR asks for it (with its signed CDS Hooks JWT)."""
    url = f"{stack.app_url}/cds-services"
    ehr = stack.sandbox.ehr
    assert ehr is not None  # started by the fixture
    token = ehr.cds.sign(url)
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    return {service["hook"] for service in response.json()["services"]}


def cards_at_triage(page: Page, stack: Stack, patient_id: str) -> int:
    """As the EHR's nurse: a new ED visit for the patient; how many cards the EHR shows."""
    page.goto(f"{stack.sandbox.ehr_url}/")
    page.get_by_text("Nieuwe spoedopname met een andere aanmeldingsreden").click()
    new_visit = f'form[action="/patients/{patient_id}/triage"]:has(select[name="reason"])'
    page.locator(new_visit).get_by_role("button").click()
    expect(page.locator("section.banner")).to_contain_text("encounter-start")
    return page.locator("article.card").count()


def save_hooks(admin: Page, adult_age: int) -> None:
    admin.fill("#adult_age", str(adult_age))
    admin.click("#save-hooks")
    expect(admin.locator("#saved")).to_be_visible()


def _bootstrap_token(stack: Stack) -> str:
    """A one-time admin token from `kindreflex admin bootstrap` (which creates the hospital
    when it does not exist yet)."""
    bootstrap = subprocess.run(
        [sys.executable, "-m", "service.cli", "admin", "bootstrap"],
        env=stack.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return bootstrap.stdout.strip()


def test_bootstrap_register_test_connection_and_tune_the_hooks(
    browser: BrowserContext, stack: Stack
) -> None:
    # 1. The very first set-up: a one-time token from the command line.
    token = _bootstrap_token(stack)
    admin = browser.new_page()
    admin.goto(f"{stack.app_url}/admin/login")
    assert axe.violations(admin) == []
    admin.fill("#token", token)
    admin.fill("#name", "Els Peeters (EPD-beheer)")
    admin.click("#sign-in")
    expect(admin.locator("header")).to_contain_text("Aangemeld als Els Peeters (EPD-beheer)")
    # the link to the monitoring figures, in the blue banner: once as blue as the banner
    assert axe.contrast(admin, "header nav a") >= 4.5

    # 2. Register the sandbox EHR as an administrator would type it.
    sandbox = stack.sandbox
    new = admin.locator("#registration-new")
    new.locator("#new-id").fill("sandbox")
    new.locator("#new-name").fill("Sandbox-EPD")
    new.locator("#new-fhir_base_url").fill(sandbox.fhir_base_url)
    new.locator("#new-client_id").fill("kindreflex")
    new.locator("#new-cds_issuers").fill(f"{sandbox.issuer} {sandbox.jwks_url}")
    new.locator("#new-frame_origins").fill(sandbox.ehr_url)
    new.locator("#save-registration-new").click()
    expect(admin.locator("#saved")).to_be_focused()  # so that a screen reader says it
    assert axe.violations(admin) == []  # the saved message and the registration's form

    # 3. Test connection: the sandbox's capabilities, in Dutch.
    admin.locator("#registration-sandbox summary").click()
    admin.click("#test-sandbox")
    report = admin.locator("#connection-report")
    expect(report).to_contain_text("Klaar: alles wat Kindreflex nodig heeft is er.")
    for check in ("launch_ehr", "pkce_s256", "private_key_jwt", "context_ehr_encounter"):
        expect(report.locator(f'li[data-check="{check}"]')).to_have_attribute("data-ok", "yes")
    expect(report).to_contain_text("Starten vanuit het EPD (launch-ehr) wordt ondersteund.")

    # 4. Switch off patient-view: discovery stops offering it at once.
    assert discovered_hooks(stack) == {"encounter-start", "patient-view"}
    admin.uncheck("#hook-patient-view")
    save_hooks(admin, adult_age=17)
    assert discovered_hooks(stack) == {"encounter-start"}

    # 5. The adult age decides who gets a card (17 first, then back to 18).
    nurse = browser.new_page()
    seventeen = add_patient(stack, "Zeventien", years=17, months=6)
    eighteen = add_patient(stack, "Achttien", years=18, months=1)
    assert cards_at_triage(nurse, stack, seventeen) == 1

    save_hooks(admin, adult_age=18)
    assert cards_at_triage(nurse, stack, seventeen) == 0
    assert cards_at_triage(nurse, stack, eighteen) == 1

    # 6. Every change is in the audit, with who did it.
    admin.reload()
    audit = admin.locator("#audit")
    expect(audit).to_contain_text("hooks.adult_age")
    expect(audit).to_contain_text("Els Peeters (EPD-beheer) (bootstrap token #1)")
    # its long values wrap: the screen fits an EHR's frame 1024 px wide (it was 1450 px,
    # found by review)
    admin.set_viewport_size({"width": 1024, "height": 900})
    width = admin.locator("html").evaluate("html => html.scrollWidth - html.clientWidth")
    assert width <= 0, f"the page is {width}px wider than the frame"


def test_the_admin_screen_is_not_for_anonymous_visitors(
    browser: BrowserContext, stack: Stack
) -> None:
    # The hospital exists (bootstrap creates it), whether or not the test above ran first.
    _bootstrap_token(stack)
    page = browser.new_page()
    page.goto(f"{stack.app_url}/admin")
    expect(page).to_have_url(f"{stack.app_url}/admin/login")
    page.fill("#token", "a-guessed-token")
    page.click("#sign-in")
    expect(page.locator("#login-refused")).to_have_text(
        "Dit token is onbekend, al gebruikt of verlopen."
    )
    # shown as an error (the app's error red), not as ordinary text
    expect(page.locator("#login-refused")).to_have_css("color", "rgb(176, 0, 32)")
    assert axe.violations(page) == []  # the refusal, as a screen reader announces it


def test_a_refused_configuration_is_said_at_its_field_and_the_summary_takes_the_focus(
    browser: BrowserContext, stack: Stack
) -> None:
    token = _bootstrap_token(stack)  # before the page: the hospital exists, run alone too
    admin = browser.new_page()
    admin.goto(f"{stack.app_url}/admin/login")
    admin.fill("#token", token)
    admin.click("#sign-in")
    admin.fill("#yaml", "name: [AZ")
    admin.click("#import-config")
    # the summary is announced and focused, and links to the text it concerns
    expect(admin.locator("#problems")).to_be_focused()
    expect(admin.locator("#problems a[href='#yaml']")).to_contain_text("geen geldige YAML")
    field = admin.locator("#yaml")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_have_attribute("aria-describedby", "yaml-error")
    expect(field).to_have_value("name: [AZ")
    expect(admin.locator("#yaml-error")).to_contain_text("Regel 1")
    assert axe.violations(admin) == []


def test_another_sites_page_cannot_sign_the_browser_into_the_attackers_session(
    browser: BrowserContext, stack: Stack
) -> None:
    """Login CSRF: a page of another site posts the attacker's bootstrap token to our
    sign-in, in the victim's browser (her sign-in page open in another tab). Before, the
    browser was then signed in as the attacker, and what she typed on the screen was the
    attacker's to read. Now the post is refused, she is not signed in, and the token is
    still good."""
    token = _bootstrap_token(stack)  # the attacker's
    own = browser.new_page()
    own.goto(f"{stack.app_url}/admin/login")  # her sign-in page: its cookie in the browser
    attacker_site = "http://attacker.localhost/"  # another site than 127.0.0.1
    form = (
        f'<form id="f" method="post" action="{stack.app_url}/admin/login">'
        f'<input name="token" value="{token}"><input name="name" value="Mallory"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    page = browser.new_page()
    page.route(attacker_site, lambda route: route.fulfill(content_type="text/html", body=form))
    page.goto(attacker_site)
    expect(page.locator("#login-csrf")).to_contain_text("Deze aanmelding is geweigerd")
    # she opens the screen herself: not signed in, as anyone
    own.goto(f"{stack.app_url}/admin")
    expect(own).to_have_url(f"{stack.app_url}/admin/login")
    # the attacker's token was not spent
    own.fill("#token", token)
    own.click("#sign-in")
    expect(own.locator("header")).to_contain_text("Aangemeld als")
