"""Every connection to another party trusts what the system's trust store trusts: a
hospital's own CA, installed there, serves for its FHIR server, its SMART authorization
server and its CDS client's JWK Set alike (``service.tls``). The tests stand a CA of their
own in for the trust store; a public bundle (httpx's default) does not know it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import tls
from service.db.base import Database
from service.fhir.client import FhirClient
from smart_app.oauth import ehr_client
from tests.support.cds import (
    AUD,
    EHR_JWKS,
    EHR_KEY,
    PUBLIC_URL,
    Ehr,
    call_encounter_start,
    make_cds_app,
    store_unchecked,
    tenant_config,
)
from tests.support.served import ServedJson
from tests.support.tls import PrivateCa, private_ca

BUNDLE = b'{"resourceType": "Bundle", "type": "searchset"}'


@pytest.fixture
def hospital_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PrivateCa:
    ca = private_ca(tmp_path)
    monkeypatch.setattr(tls, "context", ca.client_context)
    return ca


def test_the_ehrs_fhir_and_authorization_servers_behind_the_hospital_ca_are_reached(
    hospital_ca: PrivateCa,
) -> None:
    with ServedJson(BUNDLE, tls=hospital_ca.server_context()) as served:
        with FhirClient(served.url.rstrip("/"), lambda: "token", 5.0) as fhir:
            assert fhir.search("Patient", {})["type"] == "searchset"
        with ehr_client(5.0) as smart:  # discovery, tokens, the id_token's keys
            assert smart.request("GET", served.url).json()["type"] == "searchset"


def test_a_cds_clients_jwk_set_behind_the_hospital_ca_verifies_its_calls(
    hospital_ca: PrivateCa, database_url: str, database: Database
) -> None:
    with ServedJson(EHR_JWKS, tls=hospital_ca.server_context()) as jwks:
        app = make_cds_app(database_url, database)
        ehr = Ehr(EHR_KEY, jwks.url, "https://ehr.az-gent.example/cds")
        store_unchecked(app, tenant_config(ehr))
        with TestClient(app, base_url=PUBLIC_URL) as client:
            answer = call_encounter_start(client, ehr.token(AUD))
    assert answer.status_code == 200, answer.text
