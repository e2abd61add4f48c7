"""An EHR that calls the CDS service and the app it calls, for the CDS Hooks tests: real
signed JWTs, the EHR's keys served over HTTP on loopback, the real app at PUBLIC_URL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from sandbox.keys import SigningKey
from service.app import create_app
from service.db.base import Database
from service.db.models import CdsCard, CdsFeedback, CdsSeenToken
from service.settings import Settings
from service.tenant_config import (
    CdsIssuer,
    EhrRegistration,
    HookSettings,
    Language,
    TenantConfiguration,
)
from tests.support.admin import bearer
from tests.support.prefetch import ENCOUNTER_ID, prefetch
from tests.support.sandbox import JwksServer

#: Where the app answers in these tests: the base of the URL an EHR's token names (aud).
PUBLIC_URL = "http://testserver"
#: The encounter-start service's id, and the aud of a call to it.
ENCOUNTER_START = "kindreflex-encounter-start"
AUD = f"{PUBLIC_URL}/cds-services/{ENCOUNTER_START}"
#: The key of the EHRs the tests build themselves, and its JWK Set as an EHR serves it.
EHR_KEY = SigningKey.generate("ehr-key-1", "ES384")
EHR_JWKS = json.dumps({"keys": [EHR_KEY.public_jwk()]}).encode()


@dataclass
class Ehr:
    """An EHR that signs its CDS calls: its key, its JWKS URL, its issuer."""

    key: SigningKey
    jwks_url: str
    issuer: str

    def token(
        self, aud: str | list[str], headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        """A call's JWT for ``aud``, signed with the EHR's key, naming its JWKS URL (jku)."""
        now = int(time.time())
        payload: dict[str, Any] = {"iss": self.issuer, "sub": "ehr-client", "aud": aud, "iat": now}
        payload |= {"exp": now + 120, "jti": str(uuid.uuid4())} | claims
        return self.key.sign(payload, headers={"jku": self.jwks_url} | (headers or {}))


def running_ehr() -> Iterator[Ehr]:
    """An EHR with a fresh ES384 key, its JWKS served over HTTP on loopback."""
    key = SigningKey.generate("ehr-key-1", "ES384")
    with JwksServer(key) as jwks:
        yield Ehr(key, jwks.url, "https://ehr.az-gent.example/cds")


@pytest.fixture(scope="module")
def ehr() -> Iterator[Ehr]:
    """A running EHR, one for the test module."""
    yield from running_ehr()


def tenant_config(
    ehr: Ehr,
    hooks: HookSettings | None = None,
    fhir_base_url: str = "https://ehr.az-gent.example/fhir",
    language: Language = "nl",
    jwks: dict[str, object] | None = None,
) -> TenantConfiguration:
    """AZ Gent with one EHR whose CDS calls are signed by ``ehr`` (keys fetched, or ``jwks``)."""
    issuer = CdsIssuer(iss=ehr.issuer, jku=[] if jwks else [ehr.jwks_url], jwks=jwks)
    registration = EhrRegistration(
        id="ehr",
        name="AZ Gent EHR",
        fhir_base_url=fhir_base_url,
        client_id="kindreflex",
        cds_issuers=[issuer],
        default_language=language,
    )
    return TenantConfiguration(
        name="AZ Gent", registrations=[registration], hooks=hooks or HookSettings()
    )


@dataclass
class Cds:
    """Our app, configured for one hospital, and an HTTP client on it."""

    app: FastAPI
    client: TestClient
    ehr: Ehr
    database: Database
    tokens: list[str] = field(default_factory=list)

    def configure(self, config: TenantConfiguration, slug: str = "default") -> None:
        """Store ``config`` for the hospital ``slug``, without the admin's checks."""
        store_unchecked(self.app, config, slug)

    def call(
        self,
        service: str = ENCOUNTER_START,
        body: dict[str, Any] | bytes | None = None,
        prefix: str = "",
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST a hook call (hook_body by default) with a token for the URL called."""
        path = f"{prefix}/cds-services/{service}"
        token = token or self.ehr.token(PUBLIC_URL + path)
        sent = {"Authorization": f"Bearer {token}"} | (headers or {})
        if isinstance(body, bytes):
            return self.client.post(path, content=body, headers=sent)
        return self.client.post(path, json=hook_body() if body is None else body, headers=sent)

    def discover(self, prefix: str = "") -> Any:
        """GET the discovery document with a token for it."""
        path = f"{prefix}/cds-services"
        token = self.ehr.token(PUBLIC_URL + path)
        return self.client.get(path, headers={"Authorization": f"Bearer {token}"})

    def count(self, model: type[CdsFeedback] | type[CdsSeenToken] | type[CdsCard]) -> int:
        """The rows of ``model`` stored so far."""
        with self.database.session() as session:
            return session.scalar(select(func.count()).select_from(model)) or 0

    def fhir_requests(self) -> float:
        """The FHIR requests the CDS service made so far (its metric)."""
        return float(self.app.state.cds.fhir_requests._value.get())


def make_cds_app(database_url: str, database: Database) -> FastAPI:
    """The real app answering at PUBLIC_URL, the URL the EHR's tokens are for (unlike
    ``sessions.make_app``, whose public URL is the settings' default)."""
    settings = Settings(environment="test", public_url=PUBLIC_URL, database_url=database_url)
    return create_app(settings, database)


@pytest.fixture
def cds(database_url: str, database: Database, ehr: Ehr) -> Iterator[Cds]:
    """The app on each backend, configured for ``ehr``, with a client on it."""
    app = make_cds_app(database_url, database)
    with TestClient(app, base_url=PUBLIC_URL) as client:
        harness = Cds(app, client, ehr, database)
        harness.configure(tenant_config(ehr))
        yield harness


def hook_body(
    hook: str = "encounter-start",
    data: dict[str, Any] | None = None,
    encounter_id: str | None = ENCOUNTER_ID,
    **extra: Any,
) -> dict[str, Any]:
    """A hook call's body (prefetch by default), ``extra`` added or replacing its fields."""
    context: dict[str, Any] = {"userId": "Practitioner/nurse-1", "patientId": "p1"}
    if encounter_id is not None:
        context["encounterId"] = encounter_id
    body = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": prefetch() if data is None else data,
    }
    return body | extra


def only_card(response: Any) -> dict[str, Any]:
    """The one card of a successful answer."""
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert isinstance(card, dict)
    return card


def store_unchecked(app: FastAPI, config: TenantConfiguration, slug: str = "default") -> None:
    """Store the configuration directly, as an older version (no admin checks) did."""
    app.state.tenants.save(slug, config, actor="test")


def call_encounter_start(client: TestClient, token: str) -> Any:
    """POST a default encounter-start call with ``token``."""
    headers = {"Authorization": f"Bearer {token}"}
    return client.post(f"/cds-services/{ENCOUNTER_START}", json=hook_body(), headers=headers)


def admin_headers(app: FastAPI, database: Database) -> dict[str, str]:
    """The API header of an admin of the app's default hospital."""
    return bearer(database, app.state.tenants.get("default").id)
