"""What the service's log configuration lets through."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from service.observability import configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes process-wide loggers: put them back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


class _Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _lines_of_a_fhir_read() -> list[str]:
    """What reaches the root handlers while a FHIR resource is read. (A mock transport: httpx
    writes its line whatever the server, no FHIR server is needed to cause it.)"""
    collected = _Collected()
    logging.getLogger().addHandler(collected)
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, json={}))
    with httpx.Client(transport=transport) as client:
        client.get("https://fhir.example.org/fhir/Patient/p-123")
    return collected.lines


@pytest.mark.usefixtures("restored_logging")
def test_at_info_no_line_names_the_fhir_url_of_a_patient() -> None:
    """httpx logs each request's URL at INFO, and a patient's id is in it."""
    configure_logging("INFO")
    assert not [line for line in _lines_of_a_fhir_read() if "p-123" in line]


@pytest.mark.usefixtures("restored_logging")
def test_at_debug_the_request_lines_are_kept_for_the_operator() -> None:
    configure_logging("DEBUG")
    assert any("Patient/p-123" in line for line in _lines_of_a_fhir_read())
