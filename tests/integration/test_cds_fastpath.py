"""The CDS endpoints are dispatched before the app's router (``service.cds.fastpath``).

What the EHR and the operators rely on must not change with that shortcut: a hospital's
``/t/{slug}`` prefix, an unknown hospital answered in the CDS error shape, other methods
left to the router (405), the request metrics under the routes' templates, and the
OpenAPI document still listing the endpoints.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cds import (
    ENCOUNTER_START,
    PUBLIC_URL,
    Cds,
    admin_headers,
    cds,
    ehr,
    only_card,
    tenant_config,
)

__all__ = ["cds", "ehr"]  # the CDS tests' fixtures (tests/support/cds)


def test_a_hospitals_prefix_reaches_its_own_configuration(cds: Cds) -> None:
    cds.configure(tenant_config(cds.ehr), slug="az-gent")
    card = only_card(cds.call(prefix="/t/az-gent"))
    assert card["links"][0]["url"] == f"{PUBLIC_URL}/t/az-gent/launch"


def test_an_unknown_hospital_gets_a_404_in_the_cds_error_shape(cds: Cds) -> None:
    for response in (cds.call(prefix="/t/nowhere"), cds.discover(prefix="/t/nowhere")):
        assert response.status_code == 404
        assert response.json()["error"] == "unknown_tenant"
        assert "nowhere" in response.json()["reason"]


@pytest.mark.parametrize("slug", ["%00", "AZ%20Gent", "a" * 200, "x%0Ay"])
def test_what_cannot_name_a_hospital_is_an_unknown_one_on_every_route(cds: Cds, slug: str) -> None:
    """On PostgreSQL a NUL in the slug reached the query: a 500 on every hospital-prefixed
    route, asked by anyone (found by fuzzing). The slug is not repeated."""
    for response in (cds.call(prefix=f"/t/{slug}"), cds.discover(prefix=f"/t/{slug}")):
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "unknown_tenant"
    for path in ("/api/cases", "/launch?iss=x&launch=y", "/social", "/admin/api/config"):
        assert cds.client.get(f"/t/{slug}{path}").status_code == 404, path


def test_other_methods_are_left_to_the_router(cds: Cds) -> None:
    assert cds.client.get(f"/cds-services/{ENCOUNTER_START}").status_code == 405
    assert cds.client.delete("/cds-services").status_code == 405
    assert cds.client.post(f"/cds-services/{ENCOUNTER_START}/feedback/x").status_code == 404


def test_metrics_name_the_route_templates_not_the_paths(cds: Cds) -> None:
    cds.configure(tenant_config(cds.ehr), slug="h2")
    only_card(cds.call(prefix="/t/h2"))
    metrics = cds.client.get("/metrics").text
    assert 'route="/t/{tenant}/cds-services/{service_id}"' in metrics
    assert "/t/h2/" not in metrics


def test_the_openapi_document_still_lists_the_cds_endpoints(cds: Cds) -> None:
    paths = cds.client.get("/openapi.json").json()["paths"]
    assert "/cds-services" in paths
    assert "/cds-services/{service_id}/feedback" in paths
    assert "/t/{tenant}/cds-services/{service_id}" in paths


EHR_ORIGIN = "https://epd.az-gent.example"


def test_a_browser_cds_client_on_the_ehrs_origin_may_call_the_service(cds: Cds) -> None:
    config = tenant_config(cds.ehr)
    registration = config.registrations[0].model_copy(update={"frame_origins": [EHR_ORIGIN]})
    cds.configure(config.model_copy(update={"registrations": [registration]}))
    preflight = cds.client.options(
        f"/cds-services/{ENCOUNTER_START}",
        headers={"Origin": EHR_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == EHR_ORIGIN
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in preflight.headers  # the JWT authenticates
    answer = cds.call(headers={"Origin": EHR_ORIGIN})
    only_card(answer)
    assert answer.headers["access-control-allow-origin"] == EHR_ORIGIN
    assert answer.headers["vary"] == "Origin"
    # the card says why the patient's children may be at risk: not kept by the browser
    # (found by review), nor a refusal
    refused = cds.call(headers={"Origin": EHR_ORIGIN, "Authorization": "Bearer nope"})
    assert refused.status_code == 401
    assert answer.headers["cache-control"] == refused.headers["cache-control"] == "no-store"
    sniffing = answer.headers["x-content-type-options"], refused.headers["x-content-type-options"]
    assert sniffing == ("nosniff", "nosniff")


def test_another_origin_gets_no_cors_permission(cds: Cds) -> None:
    preflight = cds.client.options("/cds-services", headers={"Origin": "https://evil.example"})
    assert preflight.status_code == 403
    assert preflight.json()["error"] == "origin_not_allowed"
    answer = cds.call(headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in answer.headers


def _sent_then_gone(app: Any, method: str, path: str, headers: dict[str, str]) -> list[int]:
    """Call ``app`` as a client that sends 40 bytes of a 5000-byte body, then disconnects
    (its Wi-Fi dropped, or the EHR gave up); the statuses the app answered with."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "https", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 443),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"host", b"testserver"), (b"content-length", b"5000")],
    }  # fmt: skip
    messages: Iterator[dict[str, Any]] = iter([
        {"type": "http.request", "body": b'{"hook": "encounter-start", "hookInstance": "',
         "more_body": True},
        {"type": "http.disconnect"},
    ])  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    asyncio.run(app(scope, receive, send))
    return statuses


def test_a_client_gone_mid_body_is_no_server_error(
    cds: Cds, caplog: pytest.LogCaptureFixture
) -> None:
    """It was a 500 with an ERROR traceback, counted for 5xx alerting (found by fuzzing):
    on the CDS path, and on the app's routes that read a body (the admin API here)."""
    hook = f"/cds-services/{ENCOUNTER_START}"
    calls = [
        ("POST", hook, {"Authorization": f"Bearer {cds.ehr.token(PUBLIC_URL + hook)}"}),
        ("PUT", "/admin/api/plan", admin_headers(cds.app, cds.database)),
    ]
    for method, path, headers in calls:
        assert _sent_then_gone(cds.app, method, path, headers) == [499], path
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    metrics = cds.client.get("/metrics").text
    assert 'status="499"' in metrics
    assert 'status="500"' not in metrics
