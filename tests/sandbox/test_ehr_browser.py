"""The sandbox EHR page in Chromium: card → SMART link → app in the iframe → consent → token.

The other side (a CDS service and a SMART app) is a small test double served on 127.0.0.1;
the EHR is served as ``localhost`` so the iframe is cross-site, as in a hospital.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from playwright.sync_api import Playwright, expect, sync_playwright

from sandbox.config import SmartClient
from sandbox.runner import Sandbox
from tests.support.sandbox import pkce_pair, running_sandbox, serve_asgi

pytestmark = [pytest.mark.fhirserver, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class AppDouble:
    """CDS service + SMART app (public client) test double."""

    def __init__(self) -> None:
        self.base = ""
        self.ehr_origin = ""
        self.pending: dict[str, tuple[str, str]] = {}  # state -> (verifier, iss)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/cds-services")
        async def discovery() -> dict[str, Any]:
            return {
                "services": [
                    {
                        "id": "kr",
                        "hook": "encounter-start",
                        "description": "double",
                        "prefetch": {"patient": "Patient/{{context.patientId}}"},
                    }
                ]
            }

        @app.post("/cds-services/kr")
        async def hook() -> dict[str, Any]:
            return {
                "cards": [
                    {
                        "uuid": "c1",
                        "summary": "Doe de Kindreflex",
                        "indicator": "warning",
                        "source": {"label": "double"},
                        "links": [
                            {
                                "label": "Open",
                                "type": "smart",
                                "url": f"{self.base}/launch",
                                "appContext": "ctx-1",
                            }
                        ],
                    }
                ]
            }

        @app.get("/launch")
        async def launch(iss: str, launch: str) -> Response:
            conf = httpx.get(f"{iss}/.well-known/smart-configuration").json()
            verifier, challenge = pkce_pair()
            state = secrets.token_urlsafe(8)
            self.pending[state] = (verifier, iss)
            query = urlencode(
                {
                    "response_type": "code",
                    "client_id": "browser-app",
                    "redirect_uri": f"{self.base}/callback",
                    "scope": "launch openid fhirUser patient/*.rs",
                    "state": state,
                    "aud": iss,
                    "launch": launch,
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                }
            )
            return RedirectResponse(f"{conf['authorization_endpoint']}?{query}", status_code=302)

        @app.get("/callback")
        async def callback(request: Request) -> Response:
            q = request.query_params
            verifier, iss = self.pending.pop(q["state"])
            conf = httpx.get(f"{iss}/.well-known/smart-configuration").json()
            token = httpx.post(
                conf["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": q["code"],
                    "code_verifier": verifier,
                    "redirect_uri": f"{self.base}/callback",
                    "client_id": "browser-app",
                },
            ).json()
            patient = httpx.get(
                f"{iss}/Patient/{token['patient']}",
                headers={"Authorization": f"Bearer {token['access_token']}"},
            ).json()
            name = patient["name"][0]["text"]
            return HTMLResponse(
                f"<h1>Launched</h1><p id='patient'>{name}</p><p id='ctx'>{token['appContext']}</p>",
                headers={"Content-Security-Policy": f"frame-ancestors {self.ehr_origin}"},
            )

        return app


@pytest.fixture(scope="module")
def double() -> Iterator[AppDouble]:
    d = AppDouble()
    with serve_asgi(d.app()) as base:
        d.base = base
        yield d


@pytest.fixture(scope="module")
def sandbox(double: AppDouble) -> Iterator[Sandbox]:
    client = SmartClient("browser-app", (f"{double.base}/callback",))
    with running_sandbox(
        cds_base_url=double.base, clients=(client,), public_host="localhost"
    ) as sb:
        double.ehr_origin = sb.ehr_url
        yield sb


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


def test_card_link_launches_the_app_in_the_iframe(
    sandbox: Sandbox, double: AppDouble, playwright: Playwright, tmp_path: Path
) -> None:
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS
    )
    context.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)  # expect() does not take the context's
    try:
        page = context.new_page()
        page.goto(f"{sandbox.ehr_url}/")
        page.get_by_label("Ingelogd als").select_option("nurse")
        page.get_by_role("button", name="Wissel gebruiker").click()
        row = page.locator('tr[data-patient-key="jan-janssens"]')
        row.get_by_role("button", name="Start triage Jan Janssens").click()
        card = page.locator("article.card").first
        expect(card.locator(".summary")).to_have_text("Doe de Kindreflex")
        card.locator("button.smart-link").click()
        frame = page.frame_locator("#app-frame")
        frame.get_by_role("button", name="Toestaan").click()  # the consent page, in the iframe
        expect(frame.locator("h1")).to_have_text("Launched")
        expect(frame.locator("#patient")).to_have_text("Jan Janssens")
        expect(frame.locator("#ctx")).to_have_text("ctx-1")
    finally:
        context.close()
