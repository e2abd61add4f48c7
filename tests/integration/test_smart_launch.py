"""SMART App Launch 2.x end to end: our app and the sandbox EHR, both over real HTTP.

The sandbox (tests/support/sandbox.py) runs its real authorization server, which fetches
our JWKS over HTTP to verify our private_key_jwt assertions. Our app runs in uvicorn on
a free port, on SQLite and on PostgreSQL. Cookies are handled by hand so that every
attribute the browser would see is asserted.
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from playwright.sync_api import sync_playwright
from pydantic import SecretStr
from sqlalchemy import func, select, update

from sandbox.auth import Grant
from sandbox.config import SandboxConfig, SmartClient
from sandbox.keys import SigningKey as SandboxKey
from sandbox.runner import Sandbox
from service import casework
from service.app import create_app
from service.db.base import LOCK_TIMEOUT_SECONDS, Database, utcnow
from service.db.models import AppSession, AuditRecord, LaunchState, OutboxEntry, Tenant
from service.fhir.client import ReauthorisationRequired
from service.keys import Sealer
from service.outbox import DeliveryState, NewEntry, enqueue
from service.settings import load_settings
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import (
    DEFAULT_SCOPES,
    ClientAuth,
    EhrRegistration,
    TenantConfiguration,
)
from smart_app import launch as launch_module
from smart_app import oauth
from smart_app.oauth import (
    AUTHORIZATION_PARAMETERS,
    EHR_FETCH_MAX_BYTES,
    EHR_FETCH_SECONDS,
    FAILED_DISCOVERY_SECONDS,
    AuthServers,
)
from smart_app.session import (
    LAUNCH_PARAM,
    MAX_LAUNCHES_PER_BROWSER,
    SESSION_COOKIE,
    LaunchContext,
    LaunchDep,
    SessionTokens,
    require_role,
    verify_csrf,
)
from tests.support.processes import free_port
from tests.support.sandbox import consent, running_sandbox
from tests.support.served import Counted, ServedJson, Trickled
from tests.support.validator import validate

EHR_ORIGIN = "https://ehr.az-example.be"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    # The EHR on "localhost", our app on 127.0.0.1: another site, as in a hospital.
    with running_sandbox(public_host="localhost") as sb:
        yield sb


@dataclass
class Browser:
    """Cookies kept by hand, as a browser would: name → value, plus the raw Set-Cookie lines."""

    cookies: dict[str, str] = field(default_factory=dict)
    set_cookie_lines: list[str] = field(default_factory=list)

    def get(self, url: str) -> httpx.Response:
        response = httpx.get(url, headers=self._header(), follow_redirects=False)
        self._remember(response)
        return response

    def post(
        self, url: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        sent = self._header() | (headers or {})
        response = httpx.post(url, headers=sent, follow_redirects=False, **kwargs)
        self._remember(response)
        return response

    def attributes(self, name: str) -> dict[str, str]:
        """The attributes of the last Set-Cookie for ``name`` (lower-case keys)."""
        line = next(x for x in reversed(self.set_cookie_lines) if x.startswith(f"{name}="))
        parts = [p.strip() for p in line.split(";")[1:]]
        return {p.split("=", 1)[0].lower(): ([*p.split("=", 1), ""])[1] for p in parts}

    def _header(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def _remember(self, response: httpx.Response) -> None:
        for line in response.headers.get_list("set-cookie"):
            self.set_cookie_lines.append(line)
            name, value = line.split(";", 1)[0].split("=", 1)
            if "max-age=0" in line.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value.strip('"')


@dataclass
class Kindreflex:
    url: str
    app: FastAPI
    database: Database
    sandbox: Sandbox
    client_id: str

    @property
    def tokens(self) -> SessionTokens:
        tokens: SessionTokens = self.app.state.session_tokens
        return tokens

    def launch(self, browser: Browser, **options: Any) -> httpx.Response:
        """The whole EHR launch as the browser lives it (``options``: those of
        ``consented``); returns our callback's answer."""
        return browser.get(self.consented(browser, **options))

    def consented(
        self,
        browser: Browser,
        *,
        prefix: str = "",
        user: str = "nurse",
        decision: str = "allow",
        with_patient: bool = True,
        with_encounter: bool = True,
        patient: str | None = None,
    ) -> str:
        """The launch up to the user's answer at the EHR: the callback address the browser
        is sent back to, not yet followed. Without an encounter it is a launch from the
        patient's chart, not a triage visit. The patient is ``patient``, by default the
        sandbox's first."""
        lid = self.sandbox.auth.create_launch(
            patient=(patient or first_patient(self.sandbox)) if with_patient else None,
            encounter="enc-1" if with_patient and with_encounter else None,
            user=user,
            app_context='{"hook":"encounter-start"}',
        )
        started = browser.get(
            f"{self.url}{prefix}/launch?"
            + httpx.QueryParams({"iss": self.sandbox.fhir_base_url, "launch": lid}).__str__()
        )
        assert started.status_code == 302, started.text
        page = browser.get(started.headers["location"])
        assert page.status_code == 200, page.text
        back = consent(self.sandbox, page, decision, user)
        assert back.startswith(f"{self.url}/callback")
        return back

    def count(self, model: type[AppSession | LaunchState | OutboxEntry]) -> int:
        with self.database.session() as session:
            return session.scalar(select(func.count()).select_from(model)) or 0


def first_patient(sandbox: Sandbox) -> str:
    return next(iter(sandbox.seeded.patients.values())).id


def _opened_page(kindreflex: Kindreflex, answer: httpx.Response) -> str:
    """Where the callback's answer sends the browser: the page, without the launch a page
    of the launch names (``?s=``: checked by the test of several launches)."""
    page, _, query = str(answer.headers["location"]).removeprefix(kindreflex.url).partition("?")
    assert parse_qs(query).keys() == {LAUNCH_PARAM}
    return page


@contextmanager
def _serve(app: FastAPI, port: int) -> Iterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:  # readiness probe, not synchronisation by sleeping
        assert thread.is_alive(), "our app did not start"
        assert time.monotonic() < deadline, "our app did not start in time"
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _test_routes(app: FastAPI) -> None:
    """Protected routes standing in for the nurse's screens."""

    def whoami(ctx: LaunchDep) -> dict[str, Any]:
        return {
            "session_id": ctx.session_id,
            "tenant": ctx.tenant.slug,
            "patient": ctx.patient_id,
            "encounter": ctx.encounter_id,
            "fhir_user": ctx.user.fhir_user,
            "name": ctx.user.name,
            "roles": sorted(ctx.user.roles),
            "app_context": ctx.app_context,
            "need_patient_banner": ctx.need_patient_banner,
            "csrf": ctx.csrf,
            "updates_facilities": casework.updates_facilities(ctx),
        }

    def social(
        ctx: Annotated[LaunchContext, Depends(require_role("social-worker"))],
    ) -> dict[str, str]:
        return {"ok": ctx.user.fhir_user}

    def save(_ctx: LaunchDep) -> dict[str, bool]:
        return {"saved": True}

    for prefix in ("", "/t/{tenant}"):
        app.add_api_route(f"{prefix}/test/whoami", whoami)
        app.add_api_route(f"{prefix}/test/social", social)
        app.add_api_route(
            f"{prefix}/test/save", save, methods=["POST"], dependencies=[Depends(verify_csrf)]
        )


def _registration(sandbox: Sandbox, client_id: str, client_auth: ClientAuth) -> EhrRegistration:
    return EhrRegistration(
        id="sandbox-ehr",
        name="Sandbox EHR",
        fhir_base_url=sandbox.fhir_base_url,
        client_id=client_id,
        client_auth=client_auth,
        scopes="launch openid fhirUser offline_access patient/*.rs",
        frame_origins=[EHR_ORIGIN, sandbox.ehr_url],
    )


@pytest.fixture(params=["private_key_jwt", "none"])
def kindreflex(
    request: pytest.FixtureRequest, database: Database, sandbox: Sandbox
) -> Iterator[Kindreflex]:
    """Our app, registered with the sandbox as a confidential (our JWKS) or public client."""
    with _running_kindreflex(database, sandbox, request.param) as kr:
        yield kr


@contextmanager
def _running_kindreflex(
    database: Database, sandbox: Sandbox, client_auth: ClientAuth
) -> Iterator[Kindreflex]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = load_settings(
        database_url=database.engine.url.render_as_string(hide_password=False),
        environment="test",
        public_url=url,
        secret_key=SecretStr("test secret: seals tokens and keys"),
    )
    app = create_app(settings, database)
    _test_routes(app)
    client_id = f"kindreflex-{uuid.uuid4().hex[:8]}"
    sandbox.register_client(
        SmartClient(
            client_id,
            (f"{url}/callback",),
            jwks_uri=f"{url}/.well-known/jwks.json" if client_auth == "private_key_jwt" else None,
        )
    )
    registration = _registration(sandbox, client_id, client_auth)
    for slug in ("default", "az-gent"):
        app.state.tenants.save(
            slug, TenantConfiguration(name=slug, registrations=[registration]), "test"
        )
    with _serve(app, port):
        yield Kindreflex(url, app, database, sandbox, client_id)


def test_ehr_launch_sets_a_partitioned_session_cookie_and_the_launch_context(
    kindreflex: Kindreflex,
) -> None:
    browser = Browser()
    answer = kindreflex.launch(browser)

    assert answer.status_code == 303, answer.text
    assert _opened_page(kindreflex, answer) == "/app/triage"
    attributes = browser.attributes(SESSION_COOKIE)
    assert {"secure", "httponly", "partitioned"} <= set(attributes)
    assert attributes["samesite"].lower() == "none"
    assert attributes["path"] == "/"
    me = browser.get(f"{kindreflex.url}/test/whoami")
    assert me.status_code == 200, me.text
    who = me.json()
    sb = kindreflex.sandbox
    assert who["patient"] == first_patient(sb)
    assert who["encounter"] == "enc-1"
    assert who["fhir_user"] == sb.fhir_user("nurse")
    assert who["roles"] == ["nurse"]
    assert who["app_context"] == '{"hook":"encounter-start"}'
    assert who["need_patient_banner"] is False  # the sandbox EHR shows its own banner
    assert who["tenant"] == "default"

    # The tokens stay on the server: sealed in the database, live at the EHR.
    access_token = kindreflex.tokens.access_token(who["session_id"])
    grant = sb.auth.check_access_token(access_token)
    assert grant is not None
    assert grant.patient == who["patient"]
    assert access_token not in browser.cookies.values()
    with kindreflex.database.session() as session:
        row = session.get(AppSession, who["session_id"])
        assert row is not None
        assert row.sealed
        assert access_token not in row.access_token
        assert browser.cookies[SESSION_COOKIE] not in row.cookie_hash
    # The launch state is used up and its binding cookie cleared.
    assert kindreflex.count(LaunchState) == 0
    assert not any(name.startswith(launch_module.BINDING_COOKIE_PREFIX) for name in browser.cookies)


def test_a_launch_under_a_tenant_prefix_stays_in_that_tenant(kindreflex: Kindreflex) -> None:
    browser = Browser()
    answer = kindreflex.launch(browser, prefix="/t/az-gent")

    assert _opened_page(kindreflex, answer) == "/t/az-gent/app/triage"
    assert browser.get(f"{kindreflex.url}/t/az-gent/test/whoami").json()["tenant"] == "az-gent"
    other_hospital = browser.get(f"{kindreflex.url}/test/whoami")
    assert other_hospital.status_code == 401
    assert "Sessie verlopen" in other_hospital.text


@pytest.mark.parametrize(
    "spelling",
    [
        lambda base: base,
        lambda base: base + "/",
        lambda base: base.replace("http://", "HTTP://"),  # RFC 3986 6.2.2.1: no other URL
        lambda base: base.replace("/fhir", "/%66hir"),  # 6.2.2.2: an unreserved letter
    ],
    ids=["as-registered", "trailing-slash", "scheme-in-capitals", "letter-percent-encoded"],
)
def test_the_authorization_request_carries_pkce_state_nonce_and_the_iss_as_aud(
    kindreflex: Kindreflex, spelling: Callable[[str], str]
) -> None:
    """The registered base however the EHR writes it; the last two were "not registered"."""
    iss = spelling(kindreflex.sandbox.fhir_base_url)
    query = httpx.QueryParams({"iss": iss, "launch": "launch-1"})
    started = Browser().get(f"{kindreflex.url}/launch?{query}")
    assert started.status_code == 302, started.text
    sent = {k: v[0] for k, v in parse_qs(urlsplit(started.headers["location"]).query).items()}
    assert set(sent) == AUTHORIZATION_PARAMETERS  # those an endpoint's own query may not have
    assert sent["aud"] == iss  # SMART: in an EHR launch, aud is the launch's iss
    assert sent["response_type"] == "code"
    assert sent["client_id"] == kindreflex.client_id
    assert sent["redirect_uri"] == f"{kindreflex.url}/callback"
    assert sent["launch"] == "launch-1"
    assert "launch" in sent["scope"].split()
    assert sent["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", sent["code_challenge"])
    assert len(sent["state"]) >= 22  # SMART: at least 122 bits of entropy
    assert len(sent["nonce"]) >= 22


def test_unknown_iss_gets_a_dutch_page_and_nothing_is_written(kindreflex: Kindreflex) -> None:
    answer = Browser().get(f"{kindreflex.url}/launch?iss=https://elsewhere.example/fhir&launch=abc")
    assert answer.status_code == 400
    assert "Dit EPD is niet geregistreerd" in answer.text
    assert "<code>https://elsewhere.example/fhir</code>" in answer.text  # for the administrator
    # anyone can link here: a sentence in iss is no message of the app's, and it is cut
    bait = "uw sessie is verlopen, bel 0900 12 34 56 " * 20
    baited = httpx.get(f"{kindreflex.url}/launch", params={"iss": bait, "launch": "abc"})
    assert "kent dit EPD niet" in baited.text
    assert bait[:120] not in baited.text
    assert f"<code>{bait[:119]}…</code>" in baited.text
    policy = answer.headers["content-security-policy"]
    assert f"frame-ancestors {EHR_ORIGIN} {kindreflex.sandbox.ehr_url}" in policy
    assert kindreflex.count(LaunchState) == 0
    assert kindreflex.count(AppSession) == 0
    missing = Browser().get(f"{kindreflex.url}/launch")
    assert missing.status_code == 400
    assert "onvolledig" in missing.text


def test_an_error_page_looks_like_the_app_under_any_address(kindreflex: Kindreflex) -> None:
    """A refusal is the app's page (its banner, its stylesheet), wherever it answers: it was
    unstyled black text, unlike any screen the nurse had seen of the app."""
    for prefix in ("", "/t/nowhere"):
        answer = Browser().get(f"{kindreflex.url}{prefix}/launch?iss=https://x.example&launch=a")
        assert answer.status_code in (400, 404)
        assert '<header class="banner"><p class="product">Kindreflex</p></header>' in answer.text
        stylesheet = re.search(r'<link rel="stylesheet" href="([^"]+)">', answer.text)
        assert stylesheet is not None
        served = httpx.get(kindreflex.url + html.unescape(stylesheet[1]))
        assert served.status_code == 200
        assert served.headers["content-type"].startswith("text/css")
        assert "style-src 'self'" in answer.headers["content-security-policy"]


def test_a_launch_through_an_ehr_whose_secret_cannot_be_read_is_refused_before_its_sign_in(
    kindreflex: Kindreflex,
) -> None:
    """KINDREFLEX_SECRET_KEY changed after the hospital stored its EHR's client secret: the
    secret is read as none. The nurse went through the EHR's sign-in and got a page saying
    the EHR gave no valid access, to try again (which could never work). The launch now
    says what is wrong, before the EHR is asked, and nothing is kept."""
    sealed_before = TenantDirectory(kindreflex.database, SecretBox(SecretStr("the key before")))
    registration = _registration(kindreflex.sandbox, kindreflex.client_id, "client_secret_basic")
    with_secret = registration.model_copy(update={"client_secret": SecretStr("s3cr3t")})
    config = TenantConfiguration(name="AZ Brugge", registrations=[with_secret])
    sealed_before.save("az-brugge", config, "test")

    iss = kindreflex.sandbox.fhir_base_url
    answer = Browser().get(f"{kindreflex.url}/t/az-brugge/launch?iss={iss}&launch=abc")

    assert answer.status_code == 503
    assert "Kindreflex kan zich niet aanmelden bij dit EPD" in answer.text
    assert "s3cr3t" not in answer.text
    assert kindreflex.count(LaunchState) == 0


def test_a_page_refused_before_any_registration_is_known_follows_the_browser_language(
    kindreflex: Kindreflex,
) -> None:
    # No registration (and so no configured language) is known for an unknown EHR: the
    # browser's language is the best guess; Dutch stays the default (test above).
    answer = httpx.get(
        f"{kindreflex.url}/launch?iss=https://elsewhere.example/fhir&launch=abc",
        headers={"Accept-Language": "fr-BE,fr;q=0.9,nl;q=0.8"},
    )
    assert answer.status_code == 400
    assert '<html lang="fr">' in answer.text
    assert "Ce DPI n&#x27;est pas enregistré" in answer.text
    assert "Dit EPD is niet geregistreerd" not in answer.text


def _launch_from(kindreflex: Kindreflex, fhir_base_url: str) -> httpx.Response:
    """A launch from an EHR registered at ``fhir_base_url`` (the only registration)."""
    registration = _registration(kindreflex.sandbox, "x", "none").model_copy(
        update={"id": "elsewhere", "fhir_base_url": fhir_base_url}
    )
    kindreflex.app.state.tenants.save(
        "default", TenantConfiguration(name="default", registrations=[registration]), "test"
    )
    launch = f"{kindreflex.url}/launch?iss={fhir_base_url}&launch=abc"
    return httpx.get(launch, timeout=EHR_FETCH_SECONDS + 5)  # our page may take that long


def test_an_unreachable_ehr_gets_a_clear_page(kindreflex: Kindreflex, database: Database) -> None:
    answer = _launch_from(kindreflex, f"http://127.0.0.1:{free_port()}/fhir")
    assert answer.status_code == 502
    assert "Het EPD antwoordt niet" in answer.text
    assert kindreflex.count(LaunchState) == 0


def test_an_ehr_answering_too_slowly_or_too_much_gets_a_clear_page_in_time(
    database: Database, sandbox: Sandbox
) -> None:
    """Its SMART configuration trickled (each byte within the per-read timeout, the whole in
    a minute), then one past the size limit: the launch ends within the deadline."""
    configuration = json.dumps(sandbox.auth.smart_configuration()).encode()
    padded = configuration[:-1] + b" " * EHR_FETCH_MAX_BYTES + b"}"
    with (
        _running_kindreflex(database, sandbox, "none") as kindreflex,
        Trickled(configuration, pause=60 / len(configuration), path="/fhir") as slow,
        ServedJson(padded, path="/fhir") as flood,
    ):
        started = time.monotonic()
        answer = _launch_from(kindreflex, slow.url)
        assert time.monotonic() - started < EHR_FETCH_SECONDS + 2
        assert answer.status_code == 502
        assert "Het EPD antwoordt niet" in answer.text
        assert "TimeoutError" in answer.text

        answer = _launch_from(kindreflex, flood.url)
        assert answer.status_code == 502
        assert "Het EPD ondersteunt Kindreflex niet" in answer.text
        assert f"larger than {EHR_FETCH_MAX_BYTES} bytes" in answer.text
        assert kindreflex.count(LaunchState) == 0


def test_denied_consent_shows_access_denied_and_writes_no_session(kindreflex: Kindreflex) -> None:
    answer = kindreflex.launch(Browser(), decision="deny")
    assert answer.status_code == 403
    assert "Toegang geweigerd" in answer.text
    assert kindreflex.count(AppSession) == 0
    assert kindreflex.count(LaunchState) == 0


def test_bad_replayed_or_foreign_browser_state_is_refused(kindreflex: Kindreflex) -> None:
    for query in ("", "?state=forged&code=x"):
        page = Browser().get(f"{kindreflex.url}/callback{query}")
        assert page.status_code == 400
        assert "ongeldig, verlopen of al gebruikt" in page.text

    browser = Browser()
    first = kindreflex.launch(browser)
    assert first.status_code == 303
    callback_url = browser_last_callback(browser, first)
    replay = browser.get(callback_url)
    assert replay.status_code == 400
    assert "al gebruikt" in replay.text

    # A callback arriving in another browser than the one that started the launch.
    victim, attacker = Browser(), Browser()
    lid = kindreflex.sandbox.create_launch(patient="p", user="nurse")
    started = attacker.get(
        f"{kindreflex.url}/launch?iss={kindreflex.sandbox.fhir_base_url}&launch={lid}"
    )
    state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
    foreign = victim.get(f"{kindreflex.url}/callback?state={state}&code=stolen")
    assert foreign.status_code == 400
    assert kindreflex.count(AppSession) == 1  # only the first, legitimate launch

    # Another browser that learnt a state does not use it up: the nurse's own callback,
    # which follows, still signs her in (found by review: it was refused as "already used").
    nurse, someone = Browser(), Browser()
    callback = kindreflex.consented(nurse)
    state = parse_qs(urlsplit(callback).query)["state"][0]
    assert someone.get(f"{kindreflex.url}/callback?state={state}&code=junk").status_code == 400
    assert nurse.get(callback).status_code == 303
    assert kindreflex.count(AppSession) == 2


def browser_last_callback(browser: Browser, answer: httpx.Response) -> str:
    request_url = str(answer.request.url)
    assert "/callback?" in request_url
    return request_url


def _smart_configuration(base: str, authorize: str) -> bytes:
    """The ``.well-known/smart-configuration`` of an EHR at ``base`` (a Counted server)."""
    return json.dumps(
        {"issuer": base, "authorization_endpoint": authorize, "token_endpoint": f"{base}/token",
         "code_challenge_methods_supported": ["S256"]}
    ).encode()  # fmt: skip


def test_an_authorization_endpoint_with_a_query_keeps_it(kindreflex: Kindreflex) -> None:
    """RFC 6749 3.1: an endpoint's query "MUST be retained when adding additional query
    parameters" (``…/authorize?p=b2c_1_signin``, a sign-in behind some SMART proxies). A
    second ``?`` put the whole request inside ``p`` (found by review); the query is kept as
    written, opaque values and all. One that names a parameter of ours is refused: "MUST NOT
    be included more than once"."""

    def launched(slug: str, query: str) -> httpx.Response:
        with Counted(b"{}") as ehr:
            base = ehr.url.rstrip("/")
            ehr.body = _smart_configuration(base, authorize=f"{base}/authorize?{query}")
            registration = _registration(kindreflex.sandbox, "kindreflex", "none")
            registration = registration.model_copy(update={"fhir_base_url": f"{base}/fhir"})
            config = TenantConfiguration(name=slug, registrations=[registration])
            kindreflex.app.state.tenants.save(slug, config, "test")
            return Browser().get(f"{kindreflex.url}/t/{slug}/launch?iss={base}/fhir&launch=x")

    started = launched("az-proxy", "p=b2c_1_signin&t=%FF%2F&signin")
    assert started.status_code == 302, started.text
    location = urlsplit(started.headers["location"])
    assert location.path == "/authorize"
    assert location.query.startswith("p=b2c_1_signin&t=%FF%2F&signin&")
    sent = parse_qs(location.query)
    assert (sent["p"], sent["response_type"], sent["client_id"]) == (
        ["b2c_1_signin"], ["code"], ["kindreflex"]
    )  # fmt: skip

    refused = launched("az-twice", "client_id=other")
    assert refused.status_code == 502, refused.text
    assert "<code>authorization_endpoint&#x27;s query has client_id</code>" in refused.text
    assert kindreflex.count(LaunchState) == 1  # the first launch's: nothing of the refused one


def test_an_ehr_that_sends_the_browser_on_to_another_never_gets_the_others_code(
    kindreflex: Kindreflex,
) -> None:
    """Found by review (an authorization server mix-up): another hospital's registered EHR,
    the attacker's, starts a launch and sends the browser on to the sandbox EHR with our
    client id, this launch's state and PKCE challenge. The sandbox's answer came to our one
    ``/callback``, which sent its code and our PKCE verifier to the attacker's token
    endpoint: a public client's code was then redeemable. The answer names its issuer
    (RFC 9207), which is not the launch's: refused before any token request."""
    with Counted(b"{}") as attacker:
        base = attacker.url.rstrip("/")
        attacker.body = _smart_configuration(base, authorize=f"{base}/authorize")
        theirs = _registration(kindreflex.sandbox, "their-client", "none")
        theirs = theirs.model_copy(update={"id": "theirs", "fhir_base_url": f"{base}/fhir"})
        config = TenantConfiguration(name="AZ Elders", registrations=[theirs])
        kindreflex.app.state.tenants.save("az-elders", config, "test")
        nurse = Browser()
        started = nurse.get(f"{kindreflex.url}/t/az-elders/launch?iss={base}/fhir&launch=x")
        assert started.status_code == 302, started.text
        ours = dict(parse_qs(urlsplit(started.headers["location"]).query))
        sandbox = kindreflex.sandbox
        launch = sandbox.auth.create_launch(patient=first_patient(sandbox), user="nurse")
        sent_on = {k: v[0] for k, v in ours.items()} | {
            "client_id": kindreflex.client_id, "aud": sandbox.fhir_base_url, "launch": launch
        }  # fmt: skip
        page = nurse.get(f"{sandbox.auth.authorize_url}?{httpx.QueryParams(sent_on)}")
        callback = consent(sandbox, page, "allow", "nurse")

        refused = nurse.get(callback)

        assert refused.status_code == 400
        assert attacker.requests == 1  # its discovery, never a token request
    assert kindreflex.count(AppSession) == 0
    # the sandbox says it names itself: an answer without its name is no answer of it
    callback = kindreflex.consented(nurse)
    unnamed = re.sub(r"&?iss=[^&]*", "", callback)
    assert nurse.get(unnamed).status_code == 400
    assert kindreflex.count(AppSession) == 0


def test_a_registration_with_its_own_redirect_uri_is_answered_there_only(
    kindreflex: Kindreflex,
) -> None:
    """Found by review (RFC 9700 4.4.1): an EHR that does not name itself in its answers
    (RFC 9207; most do not) answered at the one ``/callback`` of every EHR of every
    hospital, which took the state's word for who answered. The attacker's registered
    EHR, sent a nurse's launch, sent her browser on to this EHR with our client id and her
    state: its code came back to us and went, with our PKCE verifier, to the attacker's
    token endpoint, whatever our client authentication (the attacker exchanges it in a
    launch of its own, whose challenge and nonce it chose). A registration with its own
    redirect URI is answered there only: a state of another registration arriving there,
    or its own arriving at ``/callback``, is refused before any token request."""
    sandbox = kindreflex.sandbox
    tenants: TenantDirectory = kindreflex.app.state.tenants
    (shared,) = tenants.get("default").config.registrations
    own_uri = f"{kindreflex.url}/callback/default/{shared.id}"
    client_id = f"kindreflex-own-{uuid.uuid4().hex[:8]}"
    jwks = f"{kindreflex.url}/.well-known/jwks.json"
    confidential = shared.client_auth == "private_key_jwt"
    sandbox.register_client(SmartClient(client_id, (own_uri,), jwks if confidential else None))
    own = shared.model_copy(update={"client_id": client_id, "own_redirect_uri": True})
    tenants.save("default", TenantConfiguration(name="default", registrations=[own]), "test")
    sandbox.auth.config.names_itself = False  # as most EHRs: the iss check cannot tell
    try:
        with Counted(b"{}") as attacker:
            base = attacker.url.rstrip("/")
            attacker.body = _smart_configuration(base, authorize=f"{base}/authorize")
            theirs = _registration(sandbox, "their-client", "none")
            theirs = theirs.model_copy(update={"id": "theirs", "fhir_base_url": f"{base}/fhir"})
            config = TenantConfiguration(name="AZ Elders", registrations=[theirs])
            tenants.save("az-elders", config, "test")
            nurse = Browser()
            started = nurse.get(f"{kindreflex.url}/t/az-elders/launch?iss={base}/fhir&launch=x")
            assert started.status_code == 302, started.text
            ours = {
                k: v[0] for k, v in parse_qs(urlsplit(started.headers["location"]).query).items()
            }
            assert ours["redirect_uri"] == f"{kindreflex.url}/callback"
            launch = sandbox.auth.create_launch(patient=first_patient(sandbox), user="nurse")
            sent_on = ours | {
                "client_id": client_id, "redirect_uri": own_uri, "aud": sandbox.fhir_base_url,
                "launch": launch,
            }  # fmt: skip
            page = nurse.get(f"{sandbox.auth.authorize_url}?{httpx.QueryParams(sent_on)}")
            callback = consent(sandbox, page, "allow", "nurse")
            assert callback.startswith(f"{own_uri}?")
            assert "iss=" not in callback

            refused = nurse.get(callback)

            assert refused.status_code == 400
            assert "another redirect URI" in html.unescape(refused.text)
            assert attacker.requests == 1  # its discovery, never a token request
        assert kindreflex.count(AppSession) == 0

        # its own launches are answered at its own URI, and only there
        at_shared = kindreflex.consented(nurse).replace(
            f"{own_uri}?", f"{kindreflex.url}/callback?"
        )
        assert nurse.get(at_shared).status_code == 400
        assert kindreflex.count(AppSession) == 0
        assert kindreflex.launch(nurse).status_code == 303
        assert kindreflex.count(AppSession) == 1
    finally:
        sandbox.auth.config.names_itself = True


def test_roles_come_from_the_id_token_claim_of_the_registration(kindreflex: Kindreflex) -> None:
    nurse, social_worker = Browser(), Browser()
    kindreflex.launch(nurse, user="nurse")
    kindreflex.launch(social_worker, user="social-worker")

    assert social_worker.get(f"{kindreflex.url}/test/whoami").json()["roles"] == [
        "nurse",
        "social-worker",
    ]
    assert social_worker.get(f"{kindreflex.url}/test/social").status_code == 200
    refused = nurse.get(f"{kindreflex.url}/test/social")
    assert refused.status_code == 403
    assert "de sociale dienst" in refused.text


def test_the_app_opens_where_the_launch_context_says(kindreflex: Kindreflex) -> None:
    """A triage visit opens the nurse's screen; a social worker's launch opens the worklist
    without a patient and the patient's case from the patient's chart (there the triage
    screen could only say that it needs a visit), during a visit too: that page sends her
    on to the triage when the patient has no open case (test_social_screen)."""

    def opened(user: str, with_patient: bool = True, with_encounter: bool = True) -> str:
        answer = kindreflex.launch(
            Browser(), user=user, with_patient=with_patient, with_encounter=with_encounter
        )
        assert answer.status_code == 303, answer.text
        return _opened_page(kindreflex, answer)

    assert opened("nurse") == "/app/triage"
    assert opened("social-worker") == "/social/patient"
    assert opened("social-worker", with_encounter=False) == "/social/patient"
    assert opened("social-worker", with_patient=False) == "/social"
    assert opened("nurse", with_encounter=False) == "/app/triage"


def test_each_tab_keeps_the_patient_it_was_launched_for(kindreflex: Kindreflex) -> None:
    """Two patients' charts open in two tabs of the EHR, one browser: the second launch
    replaced the session cookie, and the first tab's next page or save acted for the
    second patient (found by review: a child recorded in the wrong patient's record).
    The cookie now holds the browser's launches, and each page names its own."""
    sandbox = kindreflex.sandbox
    first, second = list(sandbox.seeded.patients.values())[:2]
    browser = Browser()
    tab_1 = kindreflex.launch(browser, patient=first.id).headers["location"]
    tab_2 = kindreflex.launch(browser, patient=second.id).headers["location"]

    def whoami(page: str, launch: str | None = None) -> httpx.Response:
        named = parse_qs(urlsplit(page).query)[LAUNCH_PARAM][0] if launch is None else launch
        return browser.get(f"{kindreflex.url}/test/whoami?{LAUNCH_PARAM}={named}")

    assert whoami(tab_1).json()["patient"] == first.id
    assert whoami(tab_2).json()["patient"] == second.id
    newest = browser.get(f"{kindreflex.url}/test/whoami").json()  # a page naming none
    assert newest["patient"] == second.id
    # a launch this browser does not hold, or holds no more, is no session at all
    other = Browser()
    kindreflex.launch(other, patient=first.id)
    elsewhere = other.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
    assert whoami(tab_1, launch=elsewhere).status_code == 401
    for _ in range(MAX_LAUNCHES_PER_BROWSER - 1):
        kindreflex.launch(browser, patient=second.id)
    assert whoami(tab_1).status_code == 401  # the oldest of six: open it again from the EHR
    assert whoami(tab_2).json()["patient"] == second.id


def test_a_launch_whose_token_grants_fewer_writes_than_asked_is_refused(
    kindreflex: Kindreflex,
) -> None:
    """SMART lets the EHR grant less than asked. Before, a token without the rights to
    write was taken: the nurse's save waited for a sign-in that never brought them while
    the page said "delivery follows" (found by review). The EHR here is set up as a real
    one may be: the app may read and create, not update."""
    asked = "launch openid fhirUser patient/*.rs patient/*.c patient/Flag.u user/Organization.crs"
    current = kindreflex.app.state.tenants.get("default")
    registration = current.config.registrations[0].model_copy(update={"scopes": asked})
    kindreflex.app.state.tenants.save(
        "default", current.config.model_copy(update={"registrations": [registration]}), "test"
    )
    allowed = "launch openid fhirUser patient/*.read patient/*.c user/*.rs"
    kindreflex.sandbox.register_client(
        replace(kindreflex.sandbox.auth.clients[kindreflex.client_id], allowed_scope=allowed)
    )

    refused = kindreflex.launch(Browser())

    assert refused.status_code == 403
    assert "Het EPD gaf niet alle rechten" in refused.text
    assert "patient/Flag.u user/Organization.c" in refused.text  # for the EHR's administrator
    assert kindreflex.count(AppSession) == 0

    kindreflex.sandbox.register_client(
        replace(kindreflex.sandbox.auth.clients[kindreflex.client_id], allowed_scope=asked)
    )
    assert kindreflex.launch(Browser()).status_code == 303  # every write granted


def test_a_launch_by_another_user_leaves_the_previous_users_launches_behind(
    kindreflex: Kindreflex,
) -> None:
    """A shared workstation: the social worker launches after the nurse, in the same
    browser. The nurse's tab must not act as her any more (found by review)."""
    browser = Browser()
    nurse_tab = kindreflex.launch(browser).headers["location"]
    kindreflex.launch(browser, user="social-worker")
    launch = parse_qs(urlsplit(nurse_tab).query)[LAUNCH_PARAM][0]
    assert browser.get(f"{kindreflex.url}/test/whoami?{LAUNCH_PARAM}={launch}").status_code == 401
    newest = browser.get(f"{kindreflex.url}/test/whoami").json()
    assert newest["fhir_user"] == kindreflex.sandbox.fhir_user("social-worker")


@pytest.mark.parametrize("held", ["not,ours", "kort", "a" * 43 + ".x y"])
def test_a_session_cookie_that_is_not_ours_does_not_stop_a_launch(
    kindreflex: Kindreflex, held: str
) -> None:
    """A value another page of the site set, or a broken one: the launch made its session,
    then failed writing the cookie (500, found by review). What is no secret of ours is
    left out of the new cookie."""
    browser = Browser(cookies={SESSION_COOKIE: held})
    assert kindreflex.launch(browser).status_code == 303
    assert browser.get(f"{kindreflex.url}/test/whoami").status_code == 200


def test_a_sign_in_started_before_the_registration_was_recorded_in_it_ends_well(
    kindreflex: Kindreflex,
) -> None:
    """A launch state written by the release before, which did not record the
    registration, is let through (for the ten minutes such a state lives)."""
    browser = Browser()
    back = kindreflex.consented(browser)
    with kindreflex.database.session() as session:
        (state,) = session.scalars(select(LaunchState)).all()
        state.server = {k: v for k, v in state.server.items() if k != "launched_for"}
    assert browser.get(back).status_code == 303


def test_forms_need_the_session_csrf_token(kindreflex: Kindreflex) -> None:
    first, second = Browser(), Browser()
    kindreflex.launch(first)
    kindreflex.launch(second)
    token = first.get(f"{kindreflex.url}/test/whoami").json()["csrf"]
    other = second.get(f"{kindreflex.url}/test/whoami").json()["csrf"]
    save = f"{kindreflex.url}/test/save"

    assert first.post(save, data={"csrf_token": token}).json() == {"saved": True}
    with httpx.Client() as plain:
        by_header = plain.post(
            save, headers={**first._header(), "X-CSRF-Token": token}, json={"a": 1}
        )
    assert by_header.status_code == 200
    for bad in ({}, {"csrf_token": other}, {"csrf_token": token + "x"}):
        refused = first.post(save, data=bad)
        assert refused.status_code == 403
        assert "Formulier niet aanvaard" in refused.text


def test_refresh_happens_once_under_concurrent_requests_then_needs_reauthorisation(
    kindreflex: Kindreflex,
) -> None:
    browser = Browser()
    kindreflex.launch(browser)
    session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
    before = kindreflex.tokens.access_token(session_id)
    _expire_soon(kindreflex.database, session_id)

    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = set(pool.map(lambda _: kindreflex.tokens.access_token(session_id), range(8)))

    # One refresh: the sandbox rotates refresh tokens, so a second refresh would have failed.
    assert len(tokens) == 1
    assert before not in tokens
    assert kindreflex.sandbox.auth.check_access_token(tokens.pop()) is not None

    kindreflex.sandbox.auth.revoke_all()
    _expire_soon(kindreflex.database, session_id, by=timedelta(seconds=-1))
    with pytest.raises(ReauthorisationRequired):
        kindreflex.tokens.access_token(session_id)


def test_a_refresh_holds_the_session_row_within_the_fetch_bound_whatever_the_fhir_timeout(
    kindreflex: Kindreflex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh holds its session's row (``SELECT … FOR UPDATE``) while it asks the EHR,
    and another instance's request for the session waits for that row at most
    ``LOCK_TIMEOUT_SECONDS`` before it is refused. ``fhir_timeout_seconds`` may be up to
    300 s: the EHR's token endpoint trickling its answer (each byte within any per-read
    timeout) holds the row for ``EHR_FETCH_SECONDS``, the whole-fetch bound, not for that
    timeout, and the token still valid serves meanwhile."""
    monkeypatch.setattr(oauth, "EHR_FETCH_SECONDS", 1.0)  # 10 s: the same bound, sooner
    browser = Browser()
    kindreflex.launch(browser)
    session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
    before = kindreflex.tokens.access_token(session_id)
    _expire_soon(kindreflex.database, session_id)
    app = kindreflex.app
    tokens = SessionTokens(
        kindreflex.database,
        app.state.settings.model_copy(update={"fhir_timeout_seconds": 300.0}),
        keys=app.state.keys,
        tenants=app.state.tenants,
        auth_servers=app.state.auth_servers,
    )
    answer = json.dumps({"access_token": "late", "token_type": "Bearer", "expires_in": 3600})
    with Trickled(answer.encode(), pause=30 / len(answer), path="/token") as slow:
        with kindreflex.database.session() as session:
            row = session.get(AppSession, session_id)
            assert row is not None
            row.token_endpoint = slow.url
        started = time.monotonic()
        assert tokens.access_token(session_id) == before
        held = time.monotonic() - started
        assert len(slow.accepted) == 1  # the refresh asked the EHR's token endpoint…
        assert 0.9 <= held < 1.0 + 2  # …and waited for it until the bound, not past it
        assert LOCK_TIMEOUT_SECONDS > 2 * EHR_FETCH_SECONDS + 2  # a configuration, a token


def test_a_refresh_that_grants_fewer_writes_is_not_taken_and_then_needs_a_sign_in(
    kindreflex: Kindreflex, caplog: pytest.LogCaptureFixture
) -> None:
    """The EHR's administrator narrowed the app's rights after the launch: the refresh
    grants no update of a Flag. That token was taken, and the saves waited for a sign-in
    while the nurse read "delivery follows" (found by review). The token the launch
    granted serves while it lasts; then a new sign-in, as the launch refuses it."""
    current = kindreflex.app.state.tenants.get("default")
    writing = current.config.registrations[0].model_copy(update={"scopes": DEFAULT_SCOPES})
    kindreflex.app.state.tenants.save(
        "default", current.config.model_copy(update={"registrations": [writing]}), "test"
    )
    browser = Browser()
    kindreflex.launch(browser)
    session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
    before = kindreflex.tokens.access_token(session_id)
    client = kindreflex.sandbox.auth.clients[kindreflex.client_id]
    narrowed = "launch openid fhirUser patient/*.rs patient/*.c user/*.rs"
    kindreflex.sandbox.register_client(replace(client, allowed_scope=narrowed))

    _expire_soon(kindreflex.database, session_id)
    with caplog.at_level("WARNING", logger="smart_app.session"):
        assert kindreflex.tokens.access_token(session_id) == before  # still valid: kept
    (refused,) = [r.fields["reason"] for r in caplog.records if hasattr(r, "fields")]
    assert re.fullmatch(r"the refresh no longer grants .*patient/Flag\.u.*", refused)
    _expire_soon(kindreflex.database, session_id, by=timedelta(seconds=-1))
    with pytest.raises(ReauthorisationRequired, match="cannot be refreshed"):
        kindreflex.tokens.access_token(session_id)
    with kindreflex.database.session() as session:
        row = session.get(AppSession, session_id)
        assert row is not None
        assert "patient/*.c" in row.scope.split()
        assert row.scope != narrowed


def test_an_ehr_granting_no_organization_update_scope_launches_and_refreshes(
    kindreflex: Kindreflex,
) -> None:
    """Organizations are master data many EHRs let no app update. The update a referral
    makes of its facility (the partner directory's entry laid over it) is asked for by
    default, and was then needed: such an EHR's every launch was refused (review). Now the
    launch is taken and its referrals create the facility once; a launch granted the update
    lays the directory over it, until a refresh no longer grants it: that token is taken
    too, and the session's later referrals create the facility instead."""
    current = kindreflex.app.state.tenants.get("default")
    writing = current.config.registrations[0].model_copy(update={"scopes": DEFAULT_SCOPES})
    kindreflex.app.state.tenants.save(
        "default", current.config.model_copy(update={"registrations": [writing]}), "test"
    )
    client = kindreflex.sandbox.auth.clients[kindreflex.client_id]
    no_update = DEFAULT_SCOPES.replace("user/Organization.crus", "user/Organization.crs")

    def launched(allowed: str) -> tuple[Browser, dict[str, Any]]:
        kindreflex.sandbox.register_client(replace(client, allowed_scope=allowed))
        browser = Browser()
        assert kindreflex.launch(browser).status_code == 303
        return browser, browser.get(f"{kindreflex.url}/test/whoami").json()

    _, master_data = launched(no_update)
    assert master_data["updates_facilities"] is False
    browser, granted = launched(DEFAULT_SCOPES)
    assert granted["updates_facilities"] is True

    kindreflex.sandbox.register_client(replace(client, allowed_scope=no_update))
    session_id = granted["session_id"]
    before = kindreflex.tokens.access_token(session_id)
    _expire_soon(kindreflex.database, session_id, by=timedelta(seconds=-1))
    refreshed = kindreflex.tokens.access_token(session_id)  # not a new sign-in
    assert refreshed != before
    assert kindreflex.sandbox.auth.check_access_token(refreshed) is not None
    assert browser.get(f"{kindreflex.url}/test/whoami").json()["updates_facilities"] is False


def test_a_session_stored_before_the_secret_key_has_its_tokens_sealed_at_the_refresh(
    kindreflex: Kindreflex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial ran without KINDREFLEX_SECRET_KEY, then got one. A refresh that brought no new
    refresh token sealed the access token and marked the row sealed, the refresh token
    left in the clear: readable in the database, and the next refresh failed to open it,
    so the nurse had to launch again (review of the data's lifecycle)."""
    browser = Browser()
    kindreflex.launch(browser)
    session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
    sealer = Sealer(kindreflex.app.state.settings.secret_key, "session-tokens")
    with kindreflex.database.session() as session:  # as stored before the key was set
        row = session.get(AppSession, session_id)
        assert row is not None
        assert row.sealed
        assert row.refresh_token is not None
        plain = sealer.open(row.refresh_token, True)
        row.access_token = sealer.open(row.access_token, True)
        row.refresh_token, row.sealed = plain, False
    _ehr_answers(monkeypatch, kindreflex.sandbox, {"refresh_token": ""}, {})  # none rotated
    _expire_soon(kindreflex.database, session_id)

    kindreflex.tokens.access_token(session_id)

    with kindreflex.database.session() as session:
        row = session.get(AppSession, session_id)
        assert row is not None
        assert row.sealed
        assert row.refresh_token is not None
        assert row.refresh_token != plain
        assert sealer.open(row.refresh_token, True) == plain


def test_a_refresh_after_the_registration_moved_to_another_ehr_needs_a_new_sign_in(
    kindreflex: Kindreflex,
) -> None:
    """The registration now names another server than the session was launched with (an
    EHR migration, or an admin re-pointing it): its credentials, a client secret perhaps
    typed for the new EHR, must not go to the token endpoint of the old one (found by
    review). Here the session row keeps the old server, as a session launched before."""
    browser = Browser()
    kindreflex.launch(browser)
    session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
    _expire_soon(kindreflex.database, session_id, by=timedelta(seconds=-1))
    with kindreflex.database.session() as session:
        session.execute(
            update(AppSession)
            .where(AppSession.id == session_id)
            .values(fhir_base_url="https://old-ehr.example/fhir")
        )
    with pytest.raises(ReauthorisationRequired, match="names another server"):
        kindreflex.tokens.access_token(session_id)


@pytest.mark.parametrize("change", ["moved", "removed"])
def test_a_registration_changed_during_the_sign_in_ends_the_launch_at_the_callback(
    kindreflex: Kindreflex, change: str
) -> None:
    """The callback took the token endpoint found at the launch and the registration as
    configured now (found by review): an EHR re-pointed while the user signed in had its
    new client credentials sent to the old EHR, and the old EHR's user and patient became
    a session on the new one, with an audit row naming the old patient on the new server.
    Now the sign-in is refused, and nothing is created."""
    browser = Browser()
    back = kindreflex.consented(browser)
    _change_registration(kindreflex, change)

    answer = browser.get(back)

    assert answer.status_code == 400
    why = {"moved": "the EHR registration changed during the sign-in", "removed": "unregistered"}
    assert why[change] in answer.text
    with kindreflex.database.session() as session:
        assert session.scalar(select(func.count()).select_from(AppSession)) == 0
        assert session.scalar(select(func.count()).select_from(AuditRecord)) == 0


@pytest.mark.parametrize("change", ["moved", "removed"])
def test_a_session_ends_when_its_ehr_is_removed_or_pointed_elsewhere(
    kindreflex: Kindreflex, change: str
) -> None:
    """An administrator removing an EHR (retired, or compromised) left its users in for
    the rest of their 8 hours, worklist and admin screens included (found by review)."""
    browser = Browser()
    assert kindreflex.launch(browser).status_code == 303
    assert browser.get(f"{kindreflex.url}/test/whoami").status_code == 200

    _change_registration(kindreflex, change)

    assert browser.get(f"{kindreflex.url}/test/whoami").status_code == 401


def test_a_session_continues_after_a_change_of_its_registration_that_binds_nothing(
    kindreflex: Kindreflex,
) -> None:
    """Its name, frame origins, scopes, language and redirect URI are not what the session
    holds: the session and its roles go on (``session.registration_fingerprint``)."""
    nurse, social_worker = Browser(), Browser()
    kindreflex.launch(nurse)
    kindreflex.launch(social_worker, user="social-worker")
    registration = _edit_registration(
        kindreflex,
        name="Sandbox EHR (renamed)",
        frame_origins=[EHR_ORIGIN],
        scopes=DEFAULT_SCOPES,
        default_language="fr",
        own_redirect_uri=True,
    )
    assert registration.client_id == kindreflex.client_id

    assert nurse.get(f"{kindreflex.url}/test/whoami").json()["roles"] == ["nurse"]
    assert social_worker.get(f"{kindreflex.url}/test/social").status_code == 200


@pytest.mark.parametrize("change", ["client_id", "client_auth"])
def test_a_session_ends_when_its_registration_names_another_client(
    kindreflex: Kindreflex, change: str
) -> None:
    """An administrator gave the EHR registration another client (one compromised, one
    re-registered at the EHR): the sessions launched through the old one kept their powers
    for the rest of their 8 hours. They end, with the page that asks to launch again."""
    browser = Browser()
    kindreflex.launch(browser)
    session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
    registration = _registration_now(kindreflex)
    other_auth = "none" if registration.client_auth == "private_key_jwt" else "private_key_jwt"
    _edit_registration(
        kindreflex,
        **({"client_id": "kindreflex-new-client"} if change == "client_id" else {}),
        **({"client_auth": other_auth} if change == "client_auth" else {}),
    )

    assert browser.get(f"{kindreflex.url}/test/whoami").status_code == 401
    page = browser.get(f"{kindreflex.url}/app/triage?{LAUNCH_PARAM}={session_id}")
    assert page.status_code == 401
    assert "Start de Kindreflex opnieuw vanuit het dossier" in html.unescape(page.text)


def test_a_session_launched_before_sessions_were_bound_to_their_registration_ends(
    kindreflex: Kindreflex,
) -> None:
    """One stored before migration 0030 has no fingerprint: what it was launched under is
    not known, so it ends at the upgrade, as a changed one does."""
    browser = Browser()
    kindreflex.launch(browser)
    session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
    with kindreflex.database.session() as session:
        session.execute(
            update(AppSession)
            .where(AppSession.id == session_id)
            .values(registration_fingerprint=None)
        )

    assert browser.get(f"{kindreflex.url}/test/whoami").status_code == 401


@pytest.mark.parametrize("change", ["value removed", "claim renamed"])
def test_a_session_ends_when_the_role_mapping_it_was_launched_under_changes(
    kindreflex: Kindreflex, change: str
) -> None:
    """A group's social-worker role removed from the mapping (or the mapping reading
    another claim): the social worker kept the worklist and the cases for hours. Her
    session ends; so does the nurse's of that registration, whose roles were read with
    the same mapping (a relaunch reads them again: the decision in docs/architecture.md)."""
    nurse, social_worker = Browser(), Browser()
    kindreflex.launch(nurse)
    kindreflex.launch(social_worker, user="social-worker")
    assert social_worker.get(f"{kindreflex.url}/test/social").status_code == 200
    mapping = _registration_now(kindreflex).roles
    changed = (
        mapping.model_copy(update={"social_worker": ["maatschappelijk-werker"]})
        if change == "value removed"
        else mapping.model_copy(update={"claim": "groups"})
    )
    _edit_registration(kindreflex, roles=changed)

    assert social_worker.get(f"{kindreflex.url}/test/social").status_code == 401
    assert social_worker.get(f"{kindreflex.url}/test/whoami").status_code == 401
    assert nurse.get(f"{kindreflex.url}/test/whoami").status_code == 401


def test_a_form_sent_after_the_registration_changed_shows_its_text_back_and_saves_nothing(
    kindreflex: Kindreflex,
) -> None:
    """As after the session's expiry: the nurse's typed text comes back on the page that
    asks her to launch again (``errors.FREE_TEXT``), in read-only fields to copy."""
    browser = Browser()
    kindreflex.launch(browser)
    who = browser.get(f"{kindreflex.url}/test/whoami").json()
    _edit_registration(kindreflex, client_id="kindreflex-new-client")
    form = {
        "csrf_token": who["csrf"],
        "child-0-name": "Lina",
        "child-0-birth_date": "03/07/2019",
        "assessment": "niet-pluis",
        "reasons": "Blauwe plekken op beide armen.",
    }
    waiting = kindreflex.count(OutboxEntry)  # the sign-in's AuditEvent

    refused = browser.post(
        f"{kindreflex.url}/app/triage?{LAUNCH_PARAM}={who['session_id']}",
        data=form,
        headers={"Sec-Fetch-Site": "same-origin"},
    )

    assert refused.status_code == 401
    shown = html.unescape(refused.text)
    assert "Wat u typte is niet bewaard" in shown
    assert "readonly>Blauwe plekken op beide armen.</textarea>" in shown
    assert "readonly>Lina</textarea>" in shown
    assert kindreflex.count(OutboxEntry) == waiting


def _registration_now(kindreflex: Kindreflex) -> EhrRegistration:
    tenants: TenantDirectory = kindreflex.app.state.tenants
    (registration,) = tenants.get("default").config.registrations
    return registration


def _edit_registration(kindreflex: Kindreflex, **update: Any) -> EhrRegistration:
    """The default hospital's EHR registration with ``update``, saved as an admin would."""
    tenants: TenantDirectory = kindreflex.app.state.tenants
    config = tenants.get("default").config
    (registration,) = config.registrations
    edited = EhrRegistration.model_validate({**registration.model_dump(), **update})
    tenants.save("default", config.model_copy(update={"registrations": [edited]}), "test")
    return edited


def _change_registration(kindreflex: Kindreflex, change: str) -> None:
    """The default hospital's EHR registration pointed at another server, or removed."""
    tenants: TenantDirectory = kindreflex.app.state.tenants
    config = tenants.get("default").config
    (registration,) = config.registrations
    moved = registration.model_copy(update={"fhir_base_url": "https://new-ehr.example/fhir"})
    kept = [moved] if change == "moved" else []
    tenants.save("default", config.model_copy(update={"registrations": kept}), "test")


def test_an_ehr_verifying_only_es384_gets_es384_assertions_at_launch_and_refresh(
    database: Database, sandbox: Sandbox
) -> None:
    """SMART 2.x: a client SHALL support RS384 and ES384, a server need verify only one."""
    sandbox.auth.config.client_assertion_algs = ("ES384",)
    try:
        with _running_kindreflex(database, sandbox, "private_key_jwt") as kindreflex:
            browser = Browser()
            assert kindreflex.launch(browser).status_code == 303
            session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
            before = kindreflex.tokens.access_token(session_id)
            _expire_soon(kindreflex.database, session_id)
            refreshed = kindreflex.tokens.access_token(session_id)
    finally:
        sandbox.auth.config.client_assertion_algs = SandboxConfig.client_assertion_algs
    assert refreshed != before
    assert kindreflex.sandbox.auth.check_access_token(refreshed) is not None


def test_a_launch_and_two_refreshes_read_the_ehrs_smart_configuration_once(
    database: Database, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private_key_jwt refresh read the EHR's SMART configuration again each time, for
    its assertion's algorithm, without the launch's checks or its kept outcome. It now
    asks the app's AuthServers, which the launch filled: each refresh is a new token (the
    sandbox's authorization server verified its assertion), the configuration read once."""
    with _running_kindreflex(database, sandbox, "private_key_jwt") as kindreflex:
        asked = _smart_configuration_reads(kindreflex, monkeypatch)
        browser = Browser()
        assert kindreflex.launch(browser).status_code == 303
        session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
        tokens = [kindreflex.tokens.access_token(session_id)]
        for _ in range(2):
            _expire_soon(kindreflex.database, session_id)
            tokens.append(kindreflex.tokens.access_token(session_id))

    assert len(set(tokens)) == 3  # the launch's, then two refreshed
    assert all(kindreflex.sandbox.auth.check_access_token(token) for token in tokens[1:])
    assert len(asked) == 1


class Seconds:
    """A clock that moves when the test moves it (``AuthServers``'), instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_refresh_refuses_a_configuration_the_launch_would_and_keeps_the_failure_a_while(
    database: Database, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh reads the configuration as a launch does: one a launch refuses (here
    without PKCE S256) is not used for a refresh either (before, only its algorithms were
    read, unchecked), so the token is kept while it lasts, then a new launch is needed; and
    the failure is kept FAILED_DISCOVERY_SECONDS, so refreshes meanwhile do not ask again.
    Time moves through the clock the refreshes' AuthServers takes."""
    with _running_kindreflex(database, sandbox, "private_key_jwt") as kindreflex:
        browser = Browser()
        assert kindreflex.launch(browser).status_code == 303
        session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
        seconds = Seconds()
        state = kindreflex.app.state
        refreshing = SessionTokens(
            kindreflex.database,
            state.settings,
            keys=state.keys,
            tenants=state.tenants,
            auth_servers=AuthServers(seconds),
        )
        asked = _smart_configuration_reads(
            kindreflex, monkeypatch, code_challenge_methods_supported=["plain"]
        )
        current = refreshing.access_token(session_id)
        _expire_soon(kindreflex.database, session_id)  # within the margin: a refresh is tried

        kept = [refreshing.access_token(session_id) for _ in range(2)]
        asked_at_first = len(asked)
        seconds.now += FAILED_DISCOVERY_SECONDS
        kept.append(refreshing.access_token(session_id))
        _expire_soon(kindreflex.database, session_id, by=timedelta(seconds=-1))
        with pytest.raises(ReauthorisationRequired) as refused:
            refreshing.access_token(session_id)

    assert kept == [current] * 3
    assert (asked_at_first, len(asked)) == (1, 2)
    assert "PKCE S256" in str(refused.value)


def _expire_soon(
    database: Database, session_id: str, by: timedelta = timedelta(seconds=10)
) -> None:
    """Move our own record of the token's expiry (the EHR's tokens live an hour)."""
    with database.session() as session:
        session.execute(
            update(AppSession)
            .where(AppSession.id == session_id)
            .values(access_expires_at=utcnow() + by)
        )


def test_an_id_token_signed_with_a_key_the_ehr_does_not_publish_is_refused(
    kindreflex: Kindreflex,
) -> None:
    auth = kindreflex.sandbox.auth
    genuine = auth.id_token_key
    # The fault: the EHR signs with a key missing from its JWKS (a forged or rogue token).
    auth.id_token_key = SandboxKey.generate(genuine.kid, "RS256")
    try:
        answer = kindreflex.launch(Browser())
    finally:
        auth.id_token_key = genuine
    assert answer.status_code == 400
    assert "Gebruiker niet bevestigd" in answer.text
    assert kindreflex.count(AppSession) == 0


def test_the_session_cookie_works_in_chromium_inside_the_ehr_iframe_on_http_localhost(
    database: Database, sandbox: Sandbox, tmp_path: Path
) -> None:
    """Secure + SameSite=None + Partitioned, over plain http on loopback, in a cross-site frame."""
    with (
        _running_kindreflex(database, sandbox, "private_key_jwt") as kr,
        sync_playwright() as playwright,
    ):
        sandbox.set_app_launch_url(f"{kr.url}/launch")
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium"),
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )  # fmt: skip
        try:
            page = context.new_page()
            page.goto(sandbox.ehr_url)
            page.get_by_role("button", name=re.compile("^Start Kindreflex-app")).first.click()
            frame = page.frame_locator("iframe#app-frame")
            frame.get_by_role("button", name="Toestaan").click()
            app_frame = next(f for f in page.frames if f.name == "app-frame")
            app_frame.wait_for_url(re.compile(re.escape(f"{kr.url}/app/triage")))
            app_frame.goto(f"{kr.url}/test/whoami")  # the frame's own request: cookie or 401
            who = app_frame.locator("body").inner_text()
        finally:
            context.close()
        sandbox.set_app_launch_url(None)
    assert sandbox.fhir_user("nurse") in who


def test_a_changed_secret_key_asks_for_a_new_launch_instead_of_failing(
    kindreflex: Kindreflex,
) -> None:
    browser = Browser()
    kindreflex.launch(browser)
    session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
    settings = kindreflex.app.state.settings.model_copy(
        update={"secret_key": SecretStr("another key after a bad deployment")}
    )
    with pytest.raises(ReauthorisationRequired, match="changed"):
        SessionTokens(kindreflex.database, settings).access_token(session_id)


def test_only_the_social_service_and_admins_may_launch_without_a_patient(
    kindreflex: Kindreflex,
) -> None:
    nurse = kindreflex.launch(Browser(), with_patient=False)
    assert nurse.status_code == 400
    assert "Geen patiënt gekozen" in nurse.text

    social_worker = Browser()
    answer = kindreflex.launch(social_worker, user="social-worker", with_patient=False)
    assert answer.status_code == 303
    who = social_worker.get(f"{kindreflex.url}/test/whoami").json()
    assert who["patient"] is None
    assert who["roles"] == ["nurse", "social-worker"]
    assert kindreflex.count(AppSession) == 1


def test_every_sign_in_is_audited_and_a_patients_also_on_the_ehrs_server(
    kindreflex: Kindreflex,
) -> None:
    nurse, social_worker = Browser(), Browser()
    assert kindreflex.launch(nurse).status_code == 303
    assert (
        kindreflex.launch(social_worker, user="social-worker", with_patient=False).status_code
        == 303
    )
    sb = kindreflex.sandbox
    with kindreflex.database.session() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
        # without a patient, the server says which EHR the user signed in from
        assert [(r.actor, r.action, r.fhir_base_url, r.patient_ref) for r in rows] == [
            (sb.fhir_user("nurse"), "login", sb.fhir_base_url, f"Patient/{first_patient(sb)}"),
            (sb.fhir_user("social-worker"), "login", sb.fhir_base_url, None),
        ]
        assert {r.outcome for r in rows} == {"success"}
        queued = session.get(OutboxEntry, rows[0].outbox_id)
        assert queued is not None
        assert queued.kind == "audit"
        assert rows[1].outbox_id is None  # no patient compartment to write it in
        (entry,) = queued.bundle["entry"]
    event = entry["resource"]
    assert event["type"]["code"] == "110114"  # DICOM User Authentication
    assert event["subtype"][0]["code"] == "110122"  # Login
    assert event["agent"][0]["who"]["reference"] == sb.fhir_user("nurse")
    assert validate(event) == []


def test_a_relative_fhir_user_is_named_by_its_ehr_in_the_audit_trail(
    kindreflex: Kindreflex,
) -> None:
    """SMART lets the EHR send ``fhirUser`` relative to its FHIR base. The sign-in names
    the user by the absolute URL, as every row of the trail does: another EHR of the
    hospital may have a Practitioner of the same id."""
    sb = kindreflex.sandbox
    sb.set_relative_fhir_user(True)
    try:
        browser = Browser()
        assert kindreflex.launch(browser).status_code == 303
    finally:
        sb.set_relative_fhir_user(False)
    who = browser.get(f"{kindreflex.url}/test/whoami").json()

    assert who["fhir_user"] == f"Practitioner/{sb.practitioner_id('nurse')}"  # as sent
    with kindreflex.database.session() as session:
        (row,) = session.scalars(select(AuditRecord)).all()
    assert (row.actor, row.action) == (sb.fhir_user("nurse"), "login")


@pytest.mark.parametrize(
    ("user", "with_encounter"),
    [("nurse", True), ("social-worker", False)],
    ids=["a-triage-visit", "a-social-worker-from-the-chart"],
)
def test_a_new_launch_for_the_patient_takes_over_writes_waiting_for_authorisation(
    kindreflex: Kindreflex, user: str, with_encounter: bool
) -> None:
    patient_ref = f"Patient/{first_patient(kindreflex.sandbox)}"
    with kindreflex.database.session() as session:
        tenant_id = kindreflex.app.state.tenants.get("default").id
        waiting = enqueue(
            session,
            tenant_id,
            NewEntry(
                kind="triage",
                registration_id="sandbox-ehr",
                fhir_base_url=kindreflex.sandbox.fhir_base_url,
                session_id="an-expired-session",
                author=kindreflex.sandbox.fhir_user("nurse"),
                patient_ref=patient_ref,
                bundle={"resourceType": "Bundle", "type": "transaction", "entry": []},
            ),
        )
        waiting.state = DeliveryState.WAITING_AUTHORISATION
        entry_id = waiting.id

    browser = Browser()
    kindreflex.launch(browser, user=user, with_encounter=with_encounter)

    session_id = browser.get(f"{kindreflex.url}/test/whoami").json()["session_id"]
    with kindreflex.database.session() as session:
        entry = session.get(OutboxEntry, entry_id)
        assert entry is not None
        assert entry.session_id == session_id
        assert entry.state != DeliveryState.WAITING_AUTHORISATION


def test_a_save_of_a_session_idle_past_the_limit_is_delivered_with_its_token_refreshed(
    kindreflex: Kindreflex,
) -> None:
    """The idle limit ends a session for its user only: her pages are refused, while the
    outbox still delivers the save she made before she left, refreshing the session's
    token as it needs to (until the session's 8 hours are up, as before)."""
    browser = Browser()
    kindreflex.launch(browser)
    who = browser.get(f"{kindreflex.url}/test/whoami").json()
    session_id, patient = who["session_id"], who["patient"]
    # a read the launch's patient/*.rs grants: what counts is the token it goes with
    read = {"request": {"method": "GET", "url": f"Patient/{patient}"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [read]}
    with kindreflex.database.session() as session:
        tenant_id = kindreflex.app.state.tenants.get("default").id
        entry = enqueue(
            session,
            tenant_id,
            NewEntry(
                kind="triage",
                registration_id="sandbox-ehr",
                fhir_base_url=kindreflex.sandbox.fhir_base_url,
                session_id=session_id,
                author=who["fhir_user"],
                patient_ref=f"Patient/{patient}",
                bundle=bundle,
            ),
        )
        entry.next_attempt_at = utcnow() + timedelta(days=1)  # the worker leaves it to us
        entry_id = entry.id
        # an hour and a minute without a request, and the token due for its refresh
        session.execute(
            update(AppSession)
            .where(AppSession.id == session_id)
            .values(
                last_active_at=utcnow() - timedelta(minutes=61),
                access_expires_at=utcnow() - timedelta(seconds=1),
            )
        )

    assert browser.get(f"{kindreflex.url}/test/whoami").status_code == 401
    assert kindreflex.app.state.outbox.deliver(entry_id) == DeliveryState.DELIVERED
    with kindreflex.database.session() as session:
        row = session.get(AppSession, session_id)
        assert row is not None
        assert row.access_expires_at > utcnow()  # refreshed for the delivery
    assert browser.get(f"{kindreflex.url}/test/whoami").status_code == 401  # still ended


def test_an_expired_launch_state_and_an_unknown_hospital_get_clear_pages(
    kindreflex: Kindreflex,
) -> None:
    browser = Browser()
    lid = kindreflex.sandbox.create_launch(patient=first_patient(kindreflex.sandbox))
    started = browser.get(
        f"{kindreflex.url}/launch?iss={kindreflex.sandbox.fhir_base_url}&launch={lid}"
    )
    state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
    with kindreflex.database.session() as session:  # ten minutes later, in our own table
        session.execute(update(LaunchState).values(expires_at=utcnow() - timedelta(seconds=1)))
    late = browser.get(f"{kindreflex.url}/callback?state={state}&code=whatever")
    assert late.status_code == 400
    assert "verlopen" in late.text
    assert kindreflex.count(AppSession) == 0

    unknown = Browser().get(f"{kindreflex.url}/t/nowhere/launch?iss=x&launch=y")
    assert unknown.status_code == 404
    assert "Onbekend ziekenhuis" in unknown.text
    # A hospital created but not yet configured gets the same page: it tells nobody which
    # slugs exist (the log says which case it was).
    with kindreflex.database.session() as session:
        session.add(Tenant(slug="unconfigured", name="Ziekenhuis zonder configuratie"))
    for path in ("/t/unconfigured/launch?iss=x&launch=y", "/t/unconfigured/app/triage"):
        not_set_up = Browser().get(f"{kindreflex.url}{path}")
        assert (not_set_up.status_code, not_set_up.text) == (404, unknown.text)


@pytest.fixture
def public_app(database: Database, sandbox: Sandbox) -> Iterator[Kindreflex]:
    """Our app as a public client only: for what the EHR answers, not how we sign in."""
    with _running_kindreflex(database, sandbox, "none") as kr:
        yield kr


def _ehr_answers(
    monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox, token: dict[str, Any], claims: dict[str, Any]
) -> None:
    """From now on the sandbox EHR's token responses carry ``token`` and its id_tokens
    ``claims`` (signed with its real key), over or beside its own values."""
    auth = sandbox.auth
    genuine_answer, genuine_id_token = auth._token_response, auth.id_token

    def id_token(client_id: str, grant: Grant) -> str:
        genuine = jwt.decode(
            genuine_id_token(client_id, grant), options={"verify_signature": False}
        )
        return auth.id_token_key.sign({**genuine, **claims})

    def answer(client: SmartClient, grant: Grant) -> dict[str, Any]:
        return {**genuine_answer(client, grant), **token}

    monkeypatch.setattr(auth, "id_token", id_token)
    monkeypatch.setattr(auth, "_token_response", answer)


NOT_CONFIRMED, SIGN_IN_FAILED = (400, "Gebruiker niet bevestigd"), (502, "Aanmelding mislukt")


@pytest.mark.parametrize(
    ("token", "claims", "page", "detail"),
    [
        ({}, {"roles": [{"code": "social-worker"}]}, NOT_CONFIRMED, "&#x27;roles&#x27; is not"),
        ({}, {"roles": 7}, NOT_CONFIRMED, "&#x27;roles&#x27; is not a list of strings"),
        ({}, {"fhirUser": "https://ehr.example/" + "a" * 500}, NOT_CONFIRMED, "fhirUser longer"),
        ({"expires_in": -60}, {}, SIGN_IN_FAILED, "expires_in in the token response"),
        ({"expires_in": 10**12}, {}, SIGN_IN_FAILED, "expires_in in the token response"),
        ({"expires_in": 1e300}, {}, SIGN_IN_FAILED, "expires_in in the token response"),
        ({"expires_in": "soon"}, {}, SIGN_IN_FAILED, "expires_in in the token response"),
        ({"expires_in": True}, {}, SIGN_IN_FAILED, "expires_in in the token response"),
        ({"access_token": {"jwt": "x"}}, {}, SIGN_IN_FAILED, "no bearer access_token"),
        ({"scope": ["launch"]}, {}, SIGN_IN_FAILED, "scope in the token response is not"),
        ({"patient": 12}, {}, SIGN_IN_FAILED, "patient in the token response is not a FHIR id"),
        ({"patient": "p" * 65}, {}, SIGN_IN_FAILED, "patient in the token response is not"),
        ({"encounter": {"id": "enc-1"}}, {}, SIGN_IN_FAILED, "encounter in the token response"),
        ({"encounter": None, "fhirContext": 5}, {}, SIGN_IN_FAILED, "fhirContext in the token"),
    ],
    ids=[
        "roles-objects",
        "roles-number",
        "fhirUser-too-long",
        "expires_in-negative",
        "expires_in-1e12",
        "expires_in-1e300",
        "expires_in-word",
        "expires_in-true",
        "access_token-object",
        "scope-list",
        "patient-number",
        "patient-too-long",
        "encounter-object",
        "fhirContext-number",
    ],
)
def test_a_value_of_the_ehr_in_another_shape_gets_a_clear_page_and_nothing_is_written(
    public_app: Kindreflex,
    monkeypatch: pytest.MonkeyPatch,
    token: dict[str, Any],
    claims: dict[str, Any],
    page: tuple[int, str],
    detail: str,
) -> None:
    _ehr_answers(monkeypatch, public_app.sandbox, token, claims)
    answer = public_app.launch(Browser(), user="social-worker")
    assert (answer.status_code, page[1] in answer.text) == (page[0], True), answer.text
    assert '<html lang="nl">' in answer.text
    assert detail in answer.text
    assert public_app.count(AppSession) == 0
    with public_app.database.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditRecord)) == 0


@pytest.mark.parametrize(
    "fhir_user", ["https://ehr.example/fhir/Patient/p1", "RelatedPerson/rp-7/_history/2"]
)
def test_a_patient_or_a_relative_signed_in_is_not_let_in(
    public_app: Kindreflex,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fhir_user: str,
) -> None:
    """SMART's fhirUser may be a Patient or a RelatedPerson: a patient portal or a proxy
    launched with this client. Before, any fhirUser was a nurse: such a user got the
    triage screens and recorded findings as their author. Now the page says the app is
    for the hospital's staff, and no session is made."""
    caplog.set_level(logging.INFO, "smart_app.errors")
    _ehr_answers(monkeypatch, public_app.sandbox, {}, {"fhirUser": fhir_user})
    answer = public_app.launch(Browser(), user="nurse")
    assert answer.status_code == 403, answer.text
    assert "Alleen voor medewerkers" in answer.text
    assert public_app.count(AppSession) == 0
    (refused,) = [r for r in caplog.records if r.getMessage() == "app request refused"]
    logged = refused.fields  # type: ignore[attr-defined] # the line's fields (extra)
    assert logged["fhir_user_type"] == fhir_user.split("/_history")[0].split("/")[-2]
    assert fhir_user not in caplog.text  # the type, never the user


@pytest.mark.parametrize("roles", [[], ["social-worker"], ["admin"]])
def test_a_user_the_ehr_names_as_a_person_cannot_record_and_is_not_let_in(
    public_app: Kindreflex,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    roles: list[str],
) -> None:
    """SMART's fhirUser may be a Person; FHIR R4 admits no Person as the performer of an
    Observation, the author of a Flag, the requester of a ServiceRequest or the agent of a
    Provenance. Before, such a user was let in, and every save named them there: refused
    by a server that checks reference types, invalid on one that does not. Now the page
    says why and no session is made, whatever the user's roles (every launched user may
    record a triage); only the type is logged."""
    caplog.set_level(logging.INFO, "smart_app.errors")
    fhir_user = "https://ehr.example/fhir/Person/staff-7"
    _ehr_answers(monkeypatch, public_app.sandbox, {}, {"fhirUser": fhir_user, "roles": roles})
    answer = public_app.launch(Browser(), user="nurse")
    assert answer.status_code == 403, answer.text
    assert "Geen zorgverlener in het EPD" in answer.text
    assert public_app.count(AppSession) == 0
    (refused,) = [r for r in caplog.records if r.getMessage() == "app request refused"]
    assert refused.fields["fhir_user_type"] == "Person"  # type: ignore[attr-defined]
    assert fhir_user not in caplog.text


def test_a_social_worker_whose_role_the_mapping_does_not_know_is_logged_with_the_claim(
    public_app: Kindreflex, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The EHR sends SOCIAL_WORKER where the registration expects social-worker: the
    worklist launch was refused as a nurse's with no patient, and the log said no more, so
    the EHR's administrator could not tell why (review of the admin's journey)."""
    caplog.set_level(logging.INFO, "smart_app.errors")
    _ehr_answers(monkeypatch, public_app.sandbox, {}, {"roles": ["SOCIAL_WORKER"]})

    answer = public_app.launch(Browser(), user="social-worker", with_patient=False)

    assert answer.status_code == 400
    assert "Geen patiënt gekozen" in answer.text
    (refused,) = [r for r in caplog.records if r.getMessage() == "app request refused"]
    logged = refused.fields  # type: ignore[attr-defined] # the line's fields (extra)
    assert (logged["roles_claim"], logged["roles_held"]) == ("roles", "['SOCIAL_WORKER']")


def test_roles_as_one_string_and_expires_in_in_digits_still_launch(
    public_app: Kindreflex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shapes real servers send beside the usual ones (a list of roles, a number)."""
    _ehr_answers(
        monkeypatch, public_app.sandbox, {"expires_in": "3600"}, {"roles": "md social-worker"}
    )
    browser = Browser()
    assert public_app.launch(browser, user="nurse").status_code == 303
    assert browser.get(f"{public_app.url}/test/whoami").json()["roles"] == [
        "nurse",
        "social-worker",
    ]
    with public_app.database.session() as session:
        expires = session.scalar(select(AppSession.access_expires_at))
    assert expires is not None
    assert timedelta(minutes=59) < expires - utcnow() <= timedelta(hours=1)


def test_a_refresh_answered_with_an_absurd_expires_in_keeps_the_token_while_it_lasts(
    public_app: Kindreflex, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = Browser()
    public_app.launch(browser)
    session_id = browser.get(f"{public_app.url}/test/whoami").json()["session_id"]
    current = public_app.tokens.access_token(session_id)
    _expire_soon(public_app.database, session_id)  # within the margin: a refresh is tried
    _ehr_answers(monkeypatch, public_app.sandbox, {"expires_in": 10**12}, {})
    assert public_app.tokens.access_token(session_id) == current


LAUNCH_SECONDS = int(launch_module.LAUNCH_LIFETIME.total_seconds())


def _start(kindreflex: Kindreflex, prefix: str = "") -> httpx.Response:
    """A launch started and abandoned: the EHR's browser never comes back to /callback."""
    query = httpx.QueryParams({"iss": kindreflex.sandbox.fhir_base_url, "launch": "abandoned"})
    return Browser().get(f"{kindreflex.url}{prefix}/launch?{query}")


def test_a_hospital_with_too_many_launches_in_flight_gets_a_busy_page_and_nothing_is_written(
    public_app: Kindreflex, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The real bound is 20 000 launch states per hospital; 2 here, through the same code."""
    caplog.set_level(logging.INFO, "smart_app.errors")
    monkeypatch.setattr(launch_module, "MAX_LAUNCHES_IN_FLIGHT", 2)
    monkeypatch.setattr(oauth, "DISCOVERY_SECONDS", 0.0)  # every launch would ask the EHR
    asked = _smart_configuration_reads(public_app, monkeypatch)
    assert public_app.launch(Browser()).status_code == 303  # below the bound: a nurse's launch
    assert [_start(public_app).status_code for _ in range(2)] == [302, 302]
    assert public_app.count(LaunchState) == 2
    asked.clear()

    busy = _start(public_app)

    assert busy.status_code == 503
    assert "Kindreflex is even te druk" in busy.text  # the registration's language: Dutch
    # How busy, and which hospital, is for the operator's log: anyone may call /launch.
    assert 'class="detail"' not in busy.text
    assert "default" not in busy.text
    assert _refusals(caplog) == [{"problem": "launch_busy", "tenant": "default", "in_flight": 2}]
    assert 0 < int(busy.headers["retry-after"]) <= LAUNCH_SECONDS
    assert f"frame-ancestors {EHR_ORIGIN}" in busy.headers["content-security-policy"]
    assert public_app.count(LaunchState) == 2
    assert public_app.count(AppSession) == 1
    assert asked == []  # the EHR was not asked for its SMART configuration either
    refused = 'kindreflex_http_requests_total{method="GET",route="/launch",status="503"}'
    assert f"{refused} 1.0" in httpx.get(f"{public_app.url}/metrics").text

    # The bound is each hospital's own.
    assert _start(public_app, "/t/az-gent").status_code == 302
    # An expired state no longer counts: the next nurse of the hospital gets in.
    with public_app.database.session() as session:
        one = session.scalars(
            select(LaunchState.state_hash).where(LaunchState.tenant_id == _tenant_id(public_app))
        ).first()
        session.execute(
            update(LaunchState)
            .where(LaunchState.state_hash == one)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert public_app.launch(Browser()).status_code == 303
    assert public_app.count(AppSession) == 2


def test_launches_read_the_ehrs_smart_configuration_once_in_a_while(
    public_app: Kindreflex, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _smart_configuration_reads(public_app, monkeypatch)
    assert [public_app.launch(Browser()).status_code for _ in range(2)] == [303, 303]
    assert [_start(public_app).status_code for _ in range(3)] == [302, 302, 302]
    assert len(asked) == 1

    monkeypatch.setattr(oauth, "DISCOVERY_SECONDS", 0.0)  # as if the five minutes had passed
    assert public_app.launch(Browser()).status_code == 303
    assert len(asked) == 2


def _refusals(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The refused requests the app logged: problem, hospital and launches in flight."""
    wanted = ("problem", "tenant", "in_flight")
    return [
        {name: value for name, value in getattr(r, "fields", {}).items() if name in wanted}
        for r in caplog.records
        if r.getMessage() == "app request refused"
    ]


def _smart_configuration_reads(
    kindreflex: Kindreflex, monkeypatch: pytest.MonkeyPatch, **changes: Any
) -> list[int]:
    """From now on, one item for each time the sandbox EHR serves its SMART configuration
    (its own answer, with ``changes``)."""
    auth = kindreflex.sandbox.auth
    asked: list[int] = []
    genuine = auth.smart_configuration

    def smart_configuration() -> dict[str, Any]:  # the sandbox's own answer, counted
        asked.append(1)
        return {**genuine(), **changes}

    monkeypatch.setattr(auth, "smart_configuration", smart_configuration)
    return asked


def _tenant_id(kindreflex: Kindreflex, slug: str = "default") -> int:
    tenant_id: int = kindreflex.app.state.tenants.get(slug).id
    return tenant_id
