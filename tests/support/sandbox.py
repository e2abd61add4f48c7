"""Pytest-friendly helpers around the sandbox EHR (``sandbox`` package).

* ``running_sandbox(**config)`` — a context manager: sekmet + seed + EHR on free ports;
* ``JwksServer`` — serves a JWKS on a free loopback port (a SMART client's ``jwks_uri``);
* ``client_assertion`` / ``pkce_pair`` — the client side of ``private_key_jwt`` and PKCE;
* ``SmartDance`` — a tiny SMART client that walks authorize → consent → code → token.

Use in a conftest::

    @pytest.fixture(scope="module")
    def sandbox() -> Iterator[Sandbox]:
        with running_sandbox(cds_base_url=...) as sb:
            yield sb
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from sandbox.config import SandboxConfig, SmartClient
from sandbox.keys import Alg, SigningKey
from sandbox.runner import Sandbox
from tests.support.served import ServedJson

__all__ = [
    "ASSERTION_TYPE",
    "JwksServer",
    "SmartDance",
    "TokenResult",
    "client_assertion",
    "consent",
    "pkce_pair",
    "running_sandbox",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@contextmanager
def running_sandbox(config: SandboxConfig | None = None, **overrides: Any) -> Iterator[Sandbox]:
    """The whole sandbox on free localhost ports; stopped (no process left) on exit."""
    with Sandbox.start(config, **overrides) as sb:
        yield sb


class JwksServer(ServedJson):
    """Serve ``{"keys": [...]}`` at ``http://127.0.0.1:<port>/jwks.json`` from a thread."""

    def __init__(self, *keys: SigningKey) -> None:
        super().__init__(path="/jwks.json")
        self.keys = list(keys)

    def current(self) -> bytes:
        return json.dumps({"keys": [k.public_jwk() for k in self.keys]}).encode()


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def client_assertion(
    key: SigningKey,
    client_id: str,
    token_url: str,
    *,
    lifetime: int = 240,
    now: float | None = None,
    jti: str | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """A ``private_key_jwt`` client assertion (SMART asymmetric client authentication)."""
    t = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": t,
        "exp": t + lifetime,
        "jti": jti or str(uuid.uuid4()),
    }
    return key.sign(claims, headers=headers)


@dataclass
class TokenResult:
    status: int
    body: dict[str, Any]


@dataclass
class SmartDance:
    """A minimal SMART App Launch client, driving the sandbox over HTTP like an app would."""

    sandbox: Sandbox
    client_id: str
    redirect_uri: str
    key: SigningKey | None = None  # None: public client

    def configuration(self) -> dict[str, Any]:
        r = httpx.get(self.sandbox.smart_configuration_url)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def authorize(
        self,
        *,
        launch: str | None,
        scope: str,
        challenge: str | None,
        state: str = "st-1",
        aud: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> httpx.Response:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": scope,
            "state": state,
            "aud": aud or self.sandbox.fhir_base_url,
        }
        if launch:
            params["launch"] = launch
        if challenge:
            params.update(code_challenge=challenge, code_challenge_method="S256")
        params.update(extra or {})
        url = self.configuration()["authorization_endpoint"]
        return httpx.get(f"{url}?{urlencode(params)}", follow_redirects=False)

    def consent(
        self, page: httpx.Response, decision: str = "allow", user: str | None = None
    ) -> dict[str, list[str]]:
        """Click Allow/Deny on the consent page; the redirect's query parameters."""
        back = consent(self.sandbox, page, decision, user)
        return parse_qs(urlsplit(back).query)

    def token(self, form: dict[str, str], *, assertion: str | None = None) -> TokenResult:
        data = dict(form)
        if self.key is not None:
            data["client_assertion_type"] = ASSERTION_TYPE
            data["client_assertion"] = assertion or client_assertion(
                self.key, self.client_id, self.configuration()["token_endpoint"]
            )
        else:
            data["client_id"] = self.client_id
        r = httpx.post(self.configuration()["token_endpoint"], data=data)
        return TokenResult(r.status_code, r.json())

    def exchange(self, code: str, verifier: str, **kw: Any) -> TokenResult:
        return self.token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri,
                "code_verifier": verifier,
            },
            **kw,
        )

    def launch_and_token(
        self,
        *,
        patient: str,
        encounter: str | None = None,
        user: str = "nurse",
        app_context: str | None = None,
        scope: str = "launch openid fhirUser patient/*.rs offline_access",
    ) -> TokenResult:
        """The whole EHR launch: launch context → authorize → Allow → code → token."""
        launch = self.sandbox.create_launch(
            patient=patient, encounter=encounter, user=user, app_context=app_context
        )
        verifier, challenge = pkce_pair()
        page = self.authorize(launch=launch, scope=scope, challenge=challenge)
        assert page.status_code == 200, page.text
        back = self.consent(page)
        return self.exchange(back["code"][0], verifier)


def consent(
    sandbox: Sandbox, page: httpx.Response, decision: str = "allow", user: str | None = None
) -> str:
    """Click Allow/Deny on the sandbox's consent page (``user``: who signs in, else the
    launch's); where the sandbox sends the browser back: the app's redirect URI with the
    code (or the error) and the state."""
    m = re.search(r'name="request_id" value="([^"]+)"', page.text)
    assert m, f"no consent form in: {page.text[:500]}"
    form = {"request_id": m.group(1), "decision": decision}
    if user:
        form["user"] = user
    r = httpx.post(f"{sandbox.ehr_url}/authorize/decision", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    return str(r.headers["location"])


def redirect_params(r: httpx.Response) -> dict[str, list[str]]:
    return parse_qs(urlsplit(r.headers["location"]).query)


def new_key(kid: str, alg: Alg = "ES384") -> SigningKey:
    return SigningKey.generate(kid, alg)


def smart_client(client_id: str, redirect_uri: str, jwks_uri: str | None) -> SmartClient:
    return SmartClient(client_id, (redirect_uri,), jwks_uri=jwks_uri)


@contextmanager
def serve_asgi(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an ASGI app (e.g. a test double) with uvicorn in a thread; yields its base URL."""
    import uvicorn

    from sandbox.fhir_server import free_port

    port = free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # readiness probe with a deadline
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
