"""Logging and Prometheus metrics.

Log lines are JSON, one per event. Nothing that identifies a patient or carries a secret
is logged: callers log resource ids and outcome codes, never names or tokens.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from types import TracebackType
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy.exc import StatementError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: A log line's own keys: when it was written, how grave it is, by what, what happened and
#: the exception's trace. A record's fields never take them (:class:`JsonFormatter`).
LINE_KEYS = frozenset({"ts", "level", "logger", "msg", "exc"})


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: the line's own keys (:data:`LINE_KEYS`), then the
    record's ``fields`` (``extra={"fields": {...}}``).

    A field named like one of the line's own keys is kept, renamed ``fields.<key>`` (again
    while that name is taken): the line's ``level``, ``msg`` or ``exc`` always are the
    record's, so a field cannot make an error look like an info line or forge what
    happened, and nothing a caller logged is lost. Before, a field overwrote the line's key
    (and ``exc`` overwrote a field)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                line[_free_key(line, str(key))] = value
        return json.dumps(line, default=str)

    def formatException(  # noqa: N802 - logging.Formatter names it so
        self,
        ei: tuple[type[BaseException], BaseException, TracebackType | None]
        | tuple[None, None, None],
    ) -> str:
        """The trace, each database error's message in it replaced by its type: the driver
        names the values a statement failed on (PostgreSQL's ``DETAIL: Key
        (patient_ref)=(Patient/…)``), and a failed save's values are a patient's. The
        engine leaves the statement's parameters out already (``make_engine``)."""
        text = super().formatException(ei)
        error, seen = ei[1], set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, _DATABASE_ERRORS) and str(error):
                text = text.replace(str(error), _without_values(error))
            error = error.__cause__ or error.__context__
        return text


#: Errors whose message may quote what a statement wrote or matched.
_DATABASE_ERRORS = (StatementError, psycopg.Error, sqlite3.Error)


def _without_values(error: BaseException) -> str:
    """What an operator needs of a database error without its values: its type, and the
    constraint it broke when PostgreSQL names it."""
    diagnostic = getattr(error, "diag", None)
    constraint = getattr(diagnostic, "constraint_name", None)
    about = f"constraint {constraint}" if constraint else "message not logged"
    return f"<{type(error).__name__}: {about}>"


def _free_key(line: dict[str, Any], key: str) -> str:
    """``key``, or ``fields.<key>`` while that is a line key or in ``line`` already."""
    while key in LINE_KEYS or key in line:
        key = f"fields.{key}"
    return key


class WithoutQueryString(logging.Filter):
    """uvicorn's access lines without the query string: the SMART redirect carries the
    authorization code (``/callback?code=…&state=…``) and the EHR's launch its launch token,
    which no log line may hold."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            path = args[2]
            if isinstance(path, str) and "?" in path:
                record.args = (*args[:2], path.partition("?")[0], *args[3:])
        return True


#: Libraries that log every request they make at INFO: httpx a line per FHIR request, with
#: its URL — a patient's id, the search on their records. Our own lines say what happened
#: to a save or a launch; these add volume and patient references. At DEBUG they are kept,
#: for an operator who asked for everything.
_REQUEST_LOGGERS = ("httpx", "httpcore")


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(WithoutQueryString())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    for name in _REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The service's metrics, in a registry of their own (one per app instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kindreflex_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kindreflex_http_request_seconds",
            "HTTP request latency by route template.",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and its latency. The labelled series are looked up once each:
        prometheus_client's ``labels()`` takes a lock and builds a key on every call."""
        if method not in _METHODS:  # any word can be sent: one series each would leak memory
            method = "OTHER"
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
        series[0].inc()
        series[1].observe(seconds)


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the CDS hot path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await measured(self.metrics, self.app, scope, receive, send)


#: nginx's code for a request the client closed before the answer: counted apart from 5xx
CLIENT_CLOSED = 499


async def measured(
    metrics: Metrics, app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Call ``app`` for an HTTP request; count it by route template, method and status."""
    started = time.perf_counter()
    status = 500

    async def send_with_status(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, send_with_status)
    finally:
        template = getattr(scope.get("route"), "path", "unmatched")
        metrics.observe(template, scope["method"], status, time.perf_counter() - started)
