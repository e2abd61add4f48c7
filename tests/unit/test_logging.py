"""What the service's log configuration lets through."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.observability import LINE_KEYS, JsonFormatter, configure_logging
from smart_app.errors import PageError


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


def _line_of(level: int, fields: dict[object, object], *, failing: bool = False) -> dict[str, Any]:
    """The JSON line a record with ``fields`` becomes (raised in an except block when
    ``failing``, so that the line has its own ``exc``)."""
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("kindreflex.test.line-keys")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        raise RuntimeError("the real trace")
    except RuntimeError:
        logger.log(level, "what happened", exc_info=failing, extra={"fields": fields})
    finally:
        logger.removeHandler(handler)
    line: dict[str, Any] = json.loads(written.getvalue())
    return line


def test_a_field_cannot_take_a_log_lines_own_keys_and_is_kept_renamed() -> None:
    """A record's fields named like the line's keys (a forged level, message, exception):
    before, they replaced the line's, and an error read as an info line saying something
    else. Now the line keeps its own; the fields are kept as fields.<key>, also past a
    field already named so."""
    forged: dict[object, object] = {key: f"forged {key}" for key in sorted(LINE_KEYS)}
    forged |= {"fields.msg": "a field of that name", "outbox_id": 7}

    line = _line_of(logging.ERROR, forged, failing=True)

    assert line["level"] == "ERROR"
    assert line["logger"] == "kindreflex.test.line-keys"
    assert line["msg"] == "what happened"
    assert "RuntimeError: the real trace" in line["exc"]
    assert line["ts"] != "forged ts"
    assert {key: line[f"fields.{key}"] for key in LINE_KEYS if key != "msg"} == {
        key: f"forged {key}" for key in LINE_KEYS if key != "msg"
    }
    assert {line["fields.msg"], line["fields.fields.msg"]} == {
        "forged msg",
        "a field of that name",
    }
    assert line["outbox_id"] == 7


def test_without_an_exception_a_field_named_exc_does_not_forge_one() -> None:
    line = _line_of(logging.INFO, {"exc": "Traceback: made up", 1: "a key that is no text"})

    assert "exc" not in line
    assert line["fields.exc"] == "Traceback: made up"
    assert line["1"] == "a key that is no text"


@pytest.mark.parametrize("key", sorted(LINE_KEYS | {"status", "problem", "detail"}))
def test_a_page_error_refuses_to_log_a_field_named_like_its_lines_keys(key: str) -> None:
    """Its refusal's line says status, problem and detail itself (handle_page_error)."""
    with pytest.raises(ValueError, match=f"PageError: logged may not name {key}$"):
        PageError(503, "busy", logged={"tenant": "gent", key: "forged"})


def test_a_page_error_logs_other_fields() -> None:
    error = PageError(503, "busy", logged={"tenant": "gent", "in_flight": 3})

    assert error.logged == {"tenant": "gent", "in_flight": 3}
