"""Where the service connects is the platform operator's decision (``service.outbound``),
not a hospital administrator's: a URL at the cloud metadata address or outside
``KINDREFLEX_OUTBOUND_ALLOW`` is refused when an admin saves it (API, screen, `config
import`), and any connection is checked again after DNS resolution, so one stored before
the check, or a name resolving to such an address, is never reached.

The real app on SQLite and PostgreSQL, real signed JWTs, servers on loopback. The one
stand-in: a resolver answering a name with 169.254.169.254 (GuardedAsyncBackend's ``resolve``)
— the test cannot make the system's resolver say that without editing /etc/hosts, which
other processes of this machine share.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpcore
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service import outbound, tls
from service.admin.commands import import_config
from service.admin.config import export_yaml
from service.admin.connection import check_connection
from service.app import create_app
from service.bounded_fetch import BlockingClient, Bounds
from service.db.base import Database
from service.fhir.client import FhirClient, FhirUnavailable
from service.settings import Settings, load_settings
from service.tenancy import SecretBox, TenantDirectory, UnknownTenantError
from service.tenant_config import DEFAULT_SCOPES, EhrRegistration, TenantConfiguration
from tests.support.admin import (
    DEPLOYMENT_KEY,
    Hospital,
    assert_tied,
    client,
    gent,
    screen_sign_in,
    stored_gent,
)
from tests.support.cds import (
    AUD,
    EHR_JWKS,
    EHR_KEY,
    PUBLIC_URL,
    Ehr,
    admin_headers,
    call_encounter_start,
    tenant_config,
)
from tests.support.outbound import get_with
from tests.support.served import Counted, ServedJson
from tests.support.tls import private_ca

__all__ = ["client", "gent"]  # the admin screen's fixtures

METADATA_JWKS = "https://169.254.169.254/latest/meta-data/jwks.json"
BUNDLE = b'{"resourceType": "Bundle", "type": "searchset"}'


@pytest.fixture(autouse=True)
def open_policy_after() -> Iterator[None]:
    """The policy is the process's: back to the default for the tests after these."""
    yield
    outbound.configure([])


def app_with(database_url: str, database: Database, *allow: str) -> FastAPI:
    settings = Settings(
        environment="test",
        public_url=PUBLIC_URL,
        database_url=database_url,
        outbound_allow=list(allow),
    )
    return create_app(settings, database)


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service.outbound"]


def test_a_jku_at_the_metadata_address_is_refused_when_saved_and_never_fetched_by_a_hook(
    database_url: str, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_with(database_url, database)  # the default: no allow-list
    ehr = Ehr(EHR_KEY, METADATA_JWKS, "https://ehr.az-gent.example/cds")
    with TestClient(app, base_url=PUBLIC_URL) as client:
        allowed = Ehr(EHR_KEY, "https://127.0.0.1:9/jwks.json", ehr.issuer)
        app.state.tenants.save("default", tenant_config(allowed), actor="test")
        headers = admin_headers(app, database)
        registration = client.get("/admin/api/registrations", headers=headers).json()[0]
        changed = {**registration, "cds_issuers": [{"iss": ehr.issuer, "jku": [METADATA_JWKS]}]}
        refused = client.put("/admin/api/registrations/ehr", headers=headers, json=changed)
        assert refused.status_code == 422, refused.text
        (issue,) = refused.json()["issue"]
        assert issue["expression"] == ["registrations[0].cds_issuers[0].jku[0]"]
        assert "may not connect to 169.254.169.254" in issue["diagnostics"]

        # stored without the admin's checks (as before them): the hook call never reaches it
        app.state.tenants.save("default", tenant_config(ehr), actor="test")
        caplog.set_level(logging.WARNING, logger="service.outbound")
        started = time.monotonic()
        answer = call_encounter_start(client, ehr.token(AUD))
        assert time.monotonic() - started < 2
    assert answer.status_code == 401, answer.text
    assert answer.json()["reason"] == (
        f"the issuer's JWK Set at {METADATA_JWKS} could not be read (OutboundRefusedError)"
    )
    (logged,) = refusals(caplog)
    assert logged.getMessage() == (
        "outbound connection to 169.254.169.254 refused: 169.254.169.254 is a link-local, "
        "unspecified, multicast or broadcast address"
    )
    assert "meta-data" not in logged.getMessage()  # a host, never a path or a token


def test_the_screen_says_the_refusal_in_the_admins_language_next_to_the_field(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    hidden = screen_sign_in(client, database, gent)
    before = stored_gent(database)
    registration = {
        **hidden, "id": "nieuw", "name": "Nieuw EPD", "fhir_base_url": "https://n.example/fhir",
        "client_id": "kindreflex", "client_auth": "private_key_jwt", "scopes": DEFAULT_SCOPES,
        "frame_origins": "", "cds_issuers": f"https://n.example/cds {METADATA_JWKS}",
        "default_language": "nl",
    }  # fmt: skip
    refused = client.post("/admin/registrations", data=registration)
    assert refused.status_code == 422
    message = assert_tied(refused.text, "textarea", "new-cds_issuers")
    assert message == (
        "Fout: CDS Hooks-uitgevers (iss jku, één per lijn), regel 1: De dienst mag geen "
        "verbinding maken met 169.254.169.254: link-local-, niet-gespecificeerde, multicast- en "
        "broadcastadressen (zoals de metadatadienst van een cloud op 169.254.169.254) zijn "
        "nooit een EPD."
    )
    after = stored_gent(database)
    assert (after.version, after.config) == (before.version, before.config)


def test_a_fhir_base_outside_the_allow_list_is_refused_when_saved(
    database_url: str, database: Database
) -> None:
    app = app_with(database_url, database, "*.az-gent.example", "127.0.0.1")
    ehr = Ehr(EHR_KEY, "http://127.0.0.1:9/jwks.json", "https://ehr.az-gent.example/cds")
    with TestClient(app, base_url=PUBLIC_URL) as client:
        app.state.tenants.save("default", tenant_config(ehr), actor="test")
        headers = admin_headers(app, database)
        registration = client.get("/admin/api/registrations", headers=headers).json()[0]
        for outside in ("https://ehr.elders.example/fhir", "https://10.1.2.3/fhir"):
            changed = {**registration, "fhir_base_url": outside}
            refused = client.put("/admin/api/registrations/ehr", headers=headers, json=changed)
            assert refused.status_code == 422, refused.text
            (issue,) = refused.json()["issue"]
            assert issue["expression"] == ["registrations[0].fhir_base_url"]
            assert "not in the platform's allow-list" in issue["diagnostics"]
        inside = {**registration, "fhir_base_url": "https://fhir.az-gent.example/r4"}
        assert client.put("/admin/api/registrations/ehr", headers=headers, json=inside).is_success


def test_config_import_refuses_a_url_outside_the_allow_list(
    database_url: str, database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(
        database_url=database_url, environment="test", outbound_allow="*.az-gent.example"
    )
    registration = EhrRegistration(
        id="ehr", name="EPD", fhir_base_url="http://localhost:8080/fhir", client_id="kr"
    )
    path = tmp_path / "config.yaml"
    path.write_text(export_yaml(TenantConfiguration(name="AZ", registrations=[registration])))
    assert import_config(settings, None, path, "test") == 1
    assert "registrations[0].fhir_base_url: the service may not connect to localhost" in (
        capsys.readouterr().err
    )
    with pytest.raises(UnknownTenantError):  # nothing was stored
        TenantDirectory(database, SecretBox(SecretStr(DEPLOYMENT_KEY))).get(settings.default_tenant)


def test_with_an_allow_list_of_loopback_the_local_flows_still_work(
    database_url: str, database: Database
) -> None:
    app = app_with(database_url, database, "127.0.0.1", "localhost")
    with ServedJson(EHR_JWKS, path="/jwks.json") as jwks, ServedJson(BUNDLE) as fhir:
        ehr = Ehr(EHR_KEY, jwks.url, "https://ehr.az-gent.example/cds")
        config = tenant_config(ehr, fhir_base_url=fhir.url.rstrip("/"))
        with TestClient(app, base_url=PUBLIC_URL) as client:
            app.state.tenants.save("default", TenantConfiguration(name="AZ"), actor="test")
            headers = admin_headers(app, database)  # the EHR saved through the admin's checks
            document = config.model_dump(mode="json")
            put = client.put("/admin/api/config", headers=headers, json=document)
            assert put.is_success, put.text
            # the JWK Set is fetched
            assert call_encounter_start(client, ehr.token(AUD)).status_code == 200
        with FhirClient(fhir.url.rstrip("/"), lambda: "token", 5.0) as client_of_fhir:
            assert client_of_fhir.search("Patient", {})["type"] == "searchset"
        by_name = fhir.url.replace("127.0.0.1", "localhost").rstrip("/")
        with FhirClient(by_name, lambda: "token", 5.0) as client_of_fhir:
            assert client_of_fhir.search("Patient", {})["type"] == "searchset"


def test_loopback_outside_the_allow_list_is_refused_when_connecting(
    database_url: str, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Loopback works by default and is refused once the operator lists only the EHRs'."""
    with Counted(BUNDLE) as fhir:
        with FhirClient(fhir.url.rstrip("/"), lambda: "token", 5.0) as client_of_fhir:
            assert client_of_fhir.search("Patient", {})["type"] == "searchset"
        assert fhir.requests == 1
        app_with(database_url, database, "*.az-gent.example")
        caplog.set_level(logging.WARNING, logger="service.outbound")
        with (
            FhirClient(fhir.url.rstrip("/"), lambda: "token", 5.0) as client_of_fhir,
            pytest.raises(FhirUnavailable, match="OutboundRefusedError"),
        ):
            client_of_fhir.search("Patient", {})
        # the admin's connection test says the EHR cannot be reached, as for one that is down
        report = check_connection(
            EhrRegistration(id="ehr", name="EPD", fhir_base_url=fhir.url, client_id="kr"),
            "en",
            timeout_seconds=2,
        )
        assert not report.ready
        assert "server unreachable" in report.checks[0].message
        assert fhir.requests == 1  # neither reached it
    assert len(refusals(caplog)) == 3  # the FHIR read, the two fetches of the test


def test_a_name_resolving_outside_the_allow_list_is_refused_when_connecting() -> None:
    """The system's resolver: ``localhost`` is not listed, its address not in the ranges."""
    outbound.configure(["10.0.0.0/8"])
    with Counted(BUNDLE) as served, BlockingClient(Bounds(5, 1000), 5.0) as http:
        with pytest.raises(outbound.OutboundRefusedError, match="not in the platform's"):
            http.request("GET", served.url.replace("127.0.0.1", "localhost"))
        outbound.configure(["127.0.0.0/8"])  # its addresses in a listed range: reached
        answer = http.request("GET", served.url.replace("127.0.0.1", "localhost"))
        assert answer.status_code == 200
    assert served.requests == 1


def test_a_name_resolving_to_a_denied_address_is_refused_and_a_checked_address_is_used() -> None:
    """A stand-in resolver (see the module's description); the connection is real."""
    with Counted(BUNDLE) as served:
        port = int(served.url.rsplit(":", 1)[1].strip("/"))

        async def resolve(host: str, _port: int) -> list[outbound.Address]:
            answers = {
                "metadata.az-gent.example": "169.254.169.254",
                "ehr.az-gent.example": "127.0.0.1",
            }
            return [outbound.ip_literal(answers[host])]  # type: ignore[list-item]

        backend = outbound.GuardedAsyncBackend(resolve=resolve)
        with pytest.raises(outbound.OutboundRefusedError, match=r"169\.254\.169\.254 is a link"):
            get_with(backend, f"http://metadata.az-gent.example:{port}/")
        # the name that resolves to an allowed address is reached at that address
        assert get_with(backend, f"http://ehr.az-gent.example:{port}/").status_code == 200
    assert served.requests == 1


@pytest.mark.parametrize("address", ["100.100.100.200", "fd00:ec2::254"])
def test_a_name_resolving_to_a_cloud_metadata_address_outside_link_local_is_refused(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Alibaba Cloud's and AWS's IPv6 metadata services, whatever the allow-list names:
    refused after the lookup, before any connection (the stand-in resolver's answer)."""
    outbound.configure(["*.az-gent.example", "100.64.0.0/10", "fd00::/8"])
    connected: list[str] = []

    class Recorded(httpcore.AsyncNetworkBackend):
        async def connect_tcp(
            self, host: str, *_: object, **__: object
        ) -> httpcore.AsyncNetworkStream:
            connected.append(host)
            raise httpcore.ConnectError("not reached in this test")

    async def resolve(host: str, _port: int) -> list[outbound.Address]:
        return [ipaddress.ip_address(address)]

    backend = outbound.GuardedAsyncBackend(resolve=resolve, inner=Recorded())
    caplog.set_level(logging.WARNING, logger="service.outbound")
    with pytest.raises(outbound.OutboundRefusedError, match="metadata service address"):
        get_with(backend, "http://metadata.az-gent.example/latest/meta-data/")
    assert connected == []
    (logged,) = refusals(caplog)
    assert logged.getMessage() == (
        f"outbound connection to metadata.az-gent.example refused: {address} is a cloud's "
        "metadata service address"
    )


def test_a_name_the_resolver_cannot_encode_is_a_server_not_reached_not_an_error() -> None:
    """Python's resolver raises UnicodeError, not OSError, for an empty or over-long label,
    before asking DNS: as any name that does not resolve, it is a ConnectError for the
    callers (the FHIR client's FhirUnavailable; the async clients' resolver already says so)."""
    for base in ("https://a..b.example/fhir", f"https://{'a' * 64}.example/fhir"):
        with (
            FhirClient(base, lambda: "token", 5.0) as client_of_fhir,
            pytest.raises(FhirUnavailable, match="ConnectError"),
        ):
            client_of_fhir.search("Patient", {})
        with BlockingClient(Bounds(5, 1000), 5.0) as blocking, pytest.raises(httpx.ConnectError):
            blocking.request("GET", base)


def test_the_async_connect_timeout_bounds_the_lookup_and_every_address_together() -> None:
    """httpcore's own backend bounds the whole connect (lookup, every address) by the
    connect timeout; the CDS prefetch counts on it (1.5 s). A slow lookup and two addresses
    that never answer (IPv6 blackholed, then IPv4) take that timeout, not three of it, and
    each address is tried."""
    tried: list[tuple[str, float | None]] = []

    async def slow_lookup(host: str, _port: int) -> list[outbound.Address]:
        await anyio.sleep(0.3)
        return [ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("192.0.2.1")]

    class Blackholed(httpcore.AsyncNetworkBackend):
        async def connect_tcp(
            self, host: str, port: int, timeout: float | None = None, *_: object
        ) -> httpcore.AsyncNetworkStream:
            tried.append((host, timeout))
            await anyio.sleep(timeout if timeout is not None else 60)
            raise httpcore.ConnectTimeout(f"{host} did not answer")

    async def get() -> float:
        backend = outbound.GuardedAsyncBackend(resolve=slow_lookup, inner=Blackholed())
        transport = outbound.async_transport(backend)
        async with httpx.AsyncClient(transport=transport, timeout=1.0) as http:
            started = time.monotonic()
            with pytest.raises(httpx.ConnectTimeout):
                await http.get("https://ehr.az-gent.example/fhir/metadata")
            return time.monotonic() - started

    took = anyio.run(get)
    assert [host for host, _ in tried] == ["2001:db8::1", "192.0.2.1"]
    # the addresses share what the lookup left of the one timeout (each had all of it:
    # three timeouts); said by the timeouts given, not by the clock of a loaded machine
    budgets = [timeout for _, timeout in tried]
    assert all(t is not None for t in budgets)
    assert sum(t for t in budgets if t is not None) <= 1.0 - 0.3 + 0.05, budgets
    assert took < 10, took  # and nothing waits without a bound


def test_tls_still_verifies_the_name_though_the_socket_is_opened_to_an_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backend connects to the checked address; SNI and the certificate's check must
    still be of the URL's name. The hospital CA's certificate names 127.0.0.1 only: reached
    as 127.0.0.1, refused as localhost (same socket address), whichever client."""
    ca = private_ca(tmp_path)
    monkeypatch.setattr(tls, "context", ca.client_context)
    with ServedJson(BUNDLE, tls=ca.server_context()) as served:
        by_name = served.url.replace("127.0.0.1", "localhost")
        with FhirClient(served.url.rstrip("/"), lambda: "token", 5.0) as client_of_fhir:
            assert client_of_fhir.search("Patient", {})["type"] == "searchset"
        with (
            FhirClient(by_name.rstrip("/"), lambda: "token", 5.0) as client_of_fhir,
            pytest.raises(FhirUnavailable, match="ConnectError"),
        ):
            client_of_fhir.search("Patient", {})
        with BlockingClient(Bounds(5, 1000), 5.0) as blocking:
            assert blocking.request("GET", served.url).status_code == 200
            with pytest.raises(httpx.ConnectError, match="Hostname mismatch"):
                blocking.request("GET", by_name)
