"""FastAPI's native OpenTelemetry is consulted per request only when the hospital asks for it."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    TraceFlags,
    Tracer,
    TracerProvider,
)

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


def test_a_traced_request_carries_no_credential_of_the_smart_launch(
    database_url: str, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a span carries the request's query (``url.query``): the EHR's
    launch token and the authorization code went to the hospital's collector, which the
    access log never shows. Those two requests are not traced; the others are.

    A recording provider stands in for the hospital's OpenTelemetry SDK: the service ships
    only the API (constraints.txt), as the design wants (a hospital brings its own SDK
    and exporter), so no SDK is installed to record spans with."""
    spans: list[dict[str, object]] = []

    class Recorded(NonRecordingSpan):
        def __init__(self, name: str, attributes: Any) -> None:
            super().__init__(SpanContext(1, 2, False, TraceFlags(1)))
            spans.append({"name": name, **(attributes or {})})

        def is_recording(self) -> bool:
            return True

    class Recording(Tracer):
        def start_span(self, name: str, *args: Any, attributes: Any = None, **kw: Any) -> Span:
            return Recorded(name, attributes)

        def start_as_current_span(self, *args: Any, **kw: Any) -> Any:
            return nullcontext(self.start_span(*args, **kw))

    class Provider(TracerProvider):
        def get_tracer(self, *args: Any, **kw: Any) -> Tracer:
            return Recording()

    monkeypatch.setattr(trace, "get_tracer_provider", Provider)
    settings = Settings(environment="test", database_url=database_url, opentelemetry=True)
    with TestClient(create_app(settings, database)) as client:
        client.get("/callback?code=THE-CODE&state=THE-STATE")
        client.get("/callback/az-gent/epd?code=THE-OWN-CODE&state=THE-OWN-STATE")
        client.get("/launch?iss=https://ehr.example/fhir&launch=THE-LAUNCH")
        client.get("/launch/?launch=THE-SECOND", follow_redirects=False)  # redirected: 307
        client.get("/healthz?probe=1")

    assert "THE-" not in repr(spans)
    assert any(span.get("url.query") == "probe=1" for span in spans)  # still traced
