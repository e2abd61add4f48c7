"""Outgoing connections through the HTTP proxy the operator names
(``KINDREFLEX_OUTBOUND_PROXY``, ``service.outbound``): what reaches its target through
it, what the policy refuses before the proxy is asked anything, that without the setting
no proxy is used whatever ``HTTPS_PROXY`` says, and that the proxy's credentials are never
logged or shown.

Real parts: a forward proxy on loopback (``tests.support.forward_proxy``) that records
what it was asked and resolves the targets' names itself, the servers behind it, the
hospital CA's certificates, the real app on SQLite and PostgreSQL. The targets have names
only the proxy knows (``*.az-gent.example``): the service never resolves them.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service import outbound, tls
from service.admin.connection import check_connection
from service.app import create_app
from service.bounded_fetch import BlockingClient, Bounds
from service.db.base import Database
from service.fhir.client import FhirClient, FhirUnavailable
from service.settings import Settings, load_settings
from service.tenant_config import EhrRegistration
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
from tests.support.forward_proxy import ForwardProxy
from tests.support.outbound import get_with
from tests.support.served import ServedJson
from tests.support.tls import private_ca

BUNDLE = b'{"resourceType": "Bundle", "type": "searchset"}'
USER, PASSWORD = "kr-proxy", "s3cr3t:Pw/@!"  # characters a URL must percent-encode
IN_URL = "kr-proxy:s3cr3t%3APw%2F%40%21"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture(autouse=True)
def direct_after() -> Iterator[None]:
    """The policy and proxy are the process's: back to the defaults after these tests."""
    yield
    outbound.configure([])


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def with_credentials(proxy: ForwardProxy) -> str:
    return proxy.url.replace("http://", f"http://{IN_URL}@")


def test_a_fhir_read_and_a_cds_jwk_set_reach_their_targets_through_the_proxy(
    database_url: str, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FHIR over http is sent to the proxy as an absolute URI; the JWK Set over https
    through a CONNECT tunnel, its certificate checked for the URL's name (the hospital CA's
    certificate for jwks.az-gent.example). The proxy is at 127.0.0.1, which the allow-list
    does not name: the connection to the proxy is not the policy's."""
    ca = private_ca(tmp_path, names=("jwks.az-gent.example",))
    monkeypatch.setattr(tls, "context", ca.client_context)
    with (
        ServedJson(BUNDLE) as fhir,
        ServedJson(EHR_JWKS, path="/jwks.json", tls=ca.server_context()) as jwks,
    ):
        names = {"fhir.az-gent.example": "127.0.0.1", "jwks.az-gent.example": "127.0.0.1"}
        with ForwardProxy(names) as proxy:
            settings = Settings(
                environment="test",
                public_url=PUBLIC_URL,
                database_url=database_url,
                outbound_allow=["*.az-gent.example"],
                outbound_proxy=proxy.url,
            )
            app = create_app(settings, database)
            base = f"http://fhir.az-gent.example:{port_of(fhir.url)}/fhir"
            with FhirClient(base, lambda: "token", 5.0) as client_of_fhir:
                assert client_of_fhir.search("Patient", {})["type"] == "searchset"

            jku = f"https://jwks.az-gent.example:{port_of(jwks.url)}/jwks.json"
            ehr = Ehr(EHR_KEY, jku, "https://ehr.az-gent.example/cds")
            with TestClient(app, base_url=PUBLIC_URL) as client:
                app.state.tenants.save("default", tenant_config(Ehr(EHR_KEY, "", "")), "test")
                headers = admin_headers(app, database)  # saved through the admin's checks
                document = tenant_config(ehr).model_dump(mode="json")
                put = client.put("/admin/api/config", headers=headers, json=document)
                assert put.is_success, put.text
                answer = call_encounter_start(client, ehr.token(AUD))
            assert answer.status_code == 200, answer.text
    asked = [(a.method, a.target) for a in proxy.asked]
    assert ("GET", f"{base}/Patient") in asked
    assert ("CONNECT", f"jwks.az-gent.example:{port_of(jwks.url)}") in asked


def test_tls_through_the_tunnel_is_checked_for_the_urls_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tunnel is the proxy's, the TLS session the service's with the target: the same
    server, asked for by a name its certificate does not carry, is refused."""
    ca = private_ca(tmp_path, names=("jwks.az-gent.example",))
    monkeypatch.setattr(tls, "context", ca.client_context)
    with ServedJson(EHR_JWKS, tls=ca.server_context()) as served:
        port = port_of(served.url)
        names = {"jwks.az-gent.example": "127.0.0.1", "other.az-gent.example": "127.0.0.1"}
        with ForwardProxy(names) as proxy:
            outbound.configure([], proxy.url)
            with BlockingClient(Bounds(5, 10_000), 5.0) as blocking:
                good = blocking.request("GET", f"https://jwks.az-gent.example:{port}/")
                assert good.status_code == 200
                with pytest.raises(httpx.ConnectError, match="Hostname mismatch"):
                    blocking.request("GET", f"https://other.az-gent.example:{port}/")
    assert [a.target for a in proxy.asked] == [
        f"jwks.az-gent.example:{port}",
        f"other.az-gent.example:{port}",
    ]


def test_an_https_proxy_is_reached_over_tls_with_the_services_trust_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``https://`` proxy: TLS to the proxy (the hospital CA's certificate for 127.0.0.1),
    and inside it, to an https target, the service's own TLS with the target."""
    ca = private_ca(tmp_path, names=("127.0.0.1", "jwks.az-gent.example"))
    monkeypatch.setattr(tls, "context", ca.client_context)
    names = {"fhir.az-gent.example": "127.0.0.1", "jwks.az-gent.example": "127.0.0.1"}
    with (
        ServedJson(BUNDLE) as fhir,
        ServedJson(EHR_JWKS, tls=ca.server_context()) as jwks,
        ForwardProxy(names, tls=ca.server_context()) as proxy,
    ):
        assert proxy.url.startswith("https://")
        outbound.configure(["*.az-gent.example"], proxy.url)
        base = f"http://fhir.az-gent.example:{port_of(fhir.url)}/fhir"
        with FhirClient(base, lambda: "token", 5.0) as client_of_fhir:
            assert client_of_fhir.search("Patient", {})["type"] == "searchset"
        with BlockingClient(Bounds(5, 10_000), 5.0) as blocking:
            jku = f"https://jwks.az-gent.example:{port_of(jwks.url)}/"
            assert blocking.request("GET", jku).status_code == 200
    assert [a.method for a in proxy.asked] == ["GET", "CONNECT"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://ehr.elders.example/fhir", "not in the platform's allow-list"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local"),
        ("http://[::ffff:a9fe:a9fe]/latest/meta-data/", "169.254.169.254 is a link-local"),
        ("http://100.100.100.200/latest/meta-data/", "100.100.100.200 is a cloud's metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "fd00:ec2::254 is a cloud's metadata"),
        ("https://10.20.3.4/fhir", "not in the platform's allow-list"),
    ],
)
def test_a_target_the_policy_refuses_is_refused_before_anything_is_sent_to_the_proxy(
    url: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The FHIR client, the blocking and the async clients (JWK Sets, SMART, the
    connection test): the proxy is not even connected to."""
    with ForwardProxy() as proxy:
        outbound.configure(["*.az-gent.example", "10.30.0.0/16"], proxy.url)
        caplog.set_level(logging.WARNING, logger="service.outbound")
        with (
            FhirClient(url, lambda: "token", 5.0) as client_of_fhir,
            pytest.raises(FhirUnavailable, match="OutboundRefusedError"),
        ):
            client_of_fhir.search("Patient", {})
        with (
            BlockingClient(Bounds(5, 1000), 5.0) as blocking,
            pytest.raises(outbound.OutboundRefusedError, match=reason),
        ):
            blocking.request("GET", url)

        async def fetch() -> None:
            async with httpx.AsyncClient(transport=outbound.async_transport()) as http:
                with pytest.raises(outbound.OutboundRefusedError, match=reason):
                    await http.get(url)

        anyio.run(fetch)
        assert outbound.url_refusal(url) is not None  # and when an admin saves it
    assert (proxy.connections, proxy.asked) == (0, [])
    logged = [r for r in caplog.records if r.name == "service.outbound"]
    assert len(logged) == 3
    assert all(r.fields["via"] == "proxy" for r in logged)  # type: ignore[attr-defined]


def test_through_the_proxy_a_name_is_judged_as_written_the_proxy_resolves_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The trade-off the README states: the service does not resolve a name it sends to
    the proxy. A name the allow-list does not name is refused even if it would resolve into
    a listed range (when saved too); with no allow-list a name is the proxy's to resolve,
    wherever it leads; an address written in the URL is judged by the ranges."""
    # the proxy's own routing: the name, and the written address, to the served server
    names = {"fhir.az-gent.example": "127.0.0.1", "10.20.3.4": "127.0.0.1"}
    with ServedJson(BUNDLE) as served, ForwardProxy(names) as proxy:
        port = port_of(served.url)
        outbound.configure(["10.20.0.0/16"], proxy.url)
        in_range: list[outbound.Address] = [outbound.ip_literal("10.20.3.4")]  # type: ignore[list-item]
        refusal = outbound.url_refusal("https://fhir.az-gent.example/fhir", lambda _: in_range)
        assert refusal is not None
        assert refusal.kind == "not-allowed"
        with BlockingClient(Bounds(5, 1000), 5.0) as http:
            with pytest.raises(outbound.OutboundRefusedError, match="allow-list"):
                http.request("GET", f"http://fhir.az-gent.example:{port}/")
            assert proxy.asked == []
            # a written address in a listed range is asked of the proxy
            assert http.request("GET", f"http://10.20.3.4:{port}/").status_code == 200
        outbound.configure([], proxy.url)
        with BlockingClient(Bounds(5, 1000), 5.0) as http:
            answer = http.request("GET", f"http://fhir.az-gent.example:{port}/")
            assert answer.status_code == 200
    assert [a.target for a in proxy.asked] == [
        f"http://10.20.3.4:{port}/",
        f"http://fhir.az-gent.example:{port}/",
    ]


def test_no_proxy_hosts_and_loopback_are_connected_to_directly_and_checked_after_dns() -> None:
    """``KINDREFLEX_OUTBOUND_NO_PROXY`` (matched as written) and loopback skip the proxy;
    the guarded backend then resolves and checks them as without a proxy. A stand-in
    resolver gives the internal names their addresses; the connections are real."""
    with ServedJson(BUNDLE) as served, ForwardProxy() as proxy:
        port = port_of(served.url)

        async def resolve(host: str, _port: int) -> list[outbound.Address]:
            answers = {"fhir.intern.az-gent.example": "127.0.0.1", "localhost": "127.0.0.1"}
            answers["meta.intern.az-gent.example"] = "169.254.169.254"
            return [outbound.ip_literal(answers.get(host, host))]  # type: ignore[list-item]

        outbound.configure([], proxy.url, ["*.intern.az-gent.example"])
        backend = outbound.GuardedAsyncBackend(resolve=resolve)
        for host in ("fhir.intern.az-gent.example", "localhost", "127.0.0.1"):
            assert get_with(backend, f"http://{host}:{port}/").status_code == 200, host
        with pytest.raises(httpx.ConnectError):  # direct: the server is on IPv4 only
            get_with(backend, f"http://[::1]:{port}/")
        with pytest.raises(outbound.OutboundRefusedError, match=r"169\.254\.169\.254"):
            get_with(backend, f"http://meta.intern.az-gent.example:{port}/")
    assert (proxy.connections, proxy.asked) == (0, [])


def test_without_the_setting_no_proxy_is_used_whatever_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPS_PROXY, HTTP_PROXY and ALL_PROXY name a working proxy that httpx itself would
    use (the control); the service's clients connect directly."""
    with ServedJson(BUNDLE) as served, ForwardProxy() as proxy:
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert load_settings().outbound_proxy is None
        outbound.configure([])
        with FhirClient(served.url.rstrip("/"), lambda: "token", 5.0) as client_of_fhir:
            assert client_of_fhir.search("Patient", {})["type"] == "searchset"
        with BlockingClient(Bounds(5, 1000), 5.0) as blocking:
            assert blocking.request("GET", served.url).status_code == 200

        async def fetch() -> int:
            async with httpx.AsyncClient(transport=outbound.async_transport()) as http:
                return (await http.get(served.url)).status_code

        assert anyio.run(fetch) == 200
        assert report_ready(served.url)
        assert (proxy.connections, proxy.asked) == (0, [])
        with httpx.Client() as ambient:  # the control: httpx on its own reads the variables
            assert ambient.get(served.url).status_code == 200
        assert [a.target for a in proxy.asked] == [served.url]


def report_ready(fhir_base_url: str) -> bool:
    """Whether the admin's connection test reached the FHIR server (its first check)."""
    registration = EhrRegistration(
        id="ehr", name="EPD", fhir_base_url=fhir_base_url, client_id="kr"
    )
    report = check_connection(registration, "en", timeout_seconds=2)
    return "server unreachable" not in report.checks[0].message


def test_the_proxys_credentials_are_used_and_never_logged_or_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sent to the proxy (Basic) when asked through it; absent from every log line (httpx
    and httpcore at DEBUG included), from the errors of a proxy that refuses them or is
    down, from the admin's connection test, and from the settings' repr, summary and
    refusal of a bad proxy URL."""
    secrets = (PASSWORD, IN_URL, "s3cr3t", BASIC)
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    names = {"fhir.az-gent.example": "127.0.0.1"}
    with ServedJson(BUNDLE) as served, ForwardProxy(names, (USER, PASSWORD)) as proxy:
        url = f"http://fhir.az-gent.example:{port_of(served.url)}/"
        settings = load_settings(outbound_proxy=with_credentials(proxy))
        outbound.configure([], settings.outbound_proxy)
        with BlockingClient(Bounds(5, 1000), 5.0) as http:
            assert http.request("GET", url).status_code == 200
        assert proxy.asked[-1].proxy_authorization == f"Basic {BASIC}"
        shown += [repr(settings), str(settings), str(settings.safe_summary())]
        shown += [repr(outbound.configured_proxy())]
        assert settings.safe_summary()["outbound_proxy"] == proxy.url

        wrong = proxy.url.replace("http://", "http://kr-proxy:s3cr3t-not@")
        outbound.configure([], wrong)
        with BlockingClient(Bounds(5, 1000), 5.0) as http:
            with pytest.raises(httpx.ProxyError) as refused:
                http.request("GET", url.replace("http://", "https://"))
            shown.append(str(refused.value))
            assert http.request("GET", url).status_code == 407
        registration = EhrRegistration(id="ehr", name="EPD", fhir_base_url=url, client_id="kr")
        report = check_connection(registration, "en", timeout_seconds=2)
        shown += [check.message for check in report.checks]
    outbound.configure([], with_credentials(proxy))  # the proxy is down now
    with BlockingClient(Bounds(5, 1000), 5.0) as http:
        with pytest.raises(httpx.ConnectError) as down:
            http.request("GET", url)
        shown.append(str(down.value))
    with pytest.raises(ValidationError) as bad:
        load_settings(outbound_proxy=f"ftp://{IN_URL}@proxy.az-gent.example:3128")
    shown.append(str(bad.value))
    assert "outbound_proxy" in str(bad.value)
    everything = "\n".join([*shown, caplog.text, *(str(r.__dict__) for r in caplog.records)])
    assert "fhir.az-gent.example" in caplog.text  # the logs were captured
    for secret in secrets:
        assert secret not in everything
