"""FastAPI's native OpenTelemetry is consulted per request only when the hospital asks for it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from service.app import create_app
from service.db.base import Database
from service.settings import Settings


@pytest.mark.parametrize("switched_on", [False, True])
def test_requests_look_for_an_opentelemetry_provider_only_when_switched_on(
    switched_on: bool, database_url: str, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off (the default), a request — a CDS hook call among them — does not look up the
    global tracer provider; on, every request does (and is traced once the hospital's
    OpenTelemetry SDK has set one)."""
    lookups: list[TracerProvider] = []
    global_provider = trace.get_tracer_provider

    def counted() -> TracerProvider:
        lookups.append(global_provider())
        return lookups[-1]

    monkeypatch.setattr(trace, "get_tracer_provider", counted)
    settings = Settings(environment="test", database_url=database_url, opentelemetry=switched_on)
    with TestClient(create_app(settings, database)) as client:
        lookups.clear()  # what start-up did does not count
        assert client.get("/healthz").status_code == 200
        assert client.post("/cds-services/kindreflex-encounter-start", content=b"{").status_code
    assert bool(lookups) is switched_on
