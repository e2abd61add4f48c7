"""A throttling answer is "not now", not a refusal: :func:`service.fhir.client._body_or_error`
raises :class:`FhirThrottled` (a :class:`FhirUnavailable`, which the outbox keeps pending)
for 429, 408 and 425, with the wait its ``Retry-After`` asks for. The outbox's handling
against the real FHIR server behind a throttling relay is tested in
tests/integration/test_outbox.py."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from service.fhir.client import (
    FhirRejected,
    FhirThrottled,
    FhirUnavailable,
    _body_or_error,
    retry_after,
)

NOW = datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [429, 408, 425])
def test_a_throttling_status_may_be_retried(status: int) -> None:
    answer = httpx.Response(status, headers={"Retry-After": "7"}, json={"resourceType": "x"})
    with pytest.raises(FhirThrottled) as raised:
        _body_or_error("transaction at https://fhir.example", answer)
    assert isinstance(raised.value, FhirUnavailable)
    assert raised.value.retry_after == 7.0
    assert str(raised.value).endswith(f"throttled {status}, retry after 7 s")


@pytest.mark.parametrize("status", [400, 404, 410, 422])
def test_any_other_4xx_is_still_a_refusal(status: int) -> None:
    with pytest.raises(FhirRejected):
        _body_or_error("x", httpx.Response(status))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Fri, 04 Dec 2026 10:01:30 GMT", 90.0),  # an HTTP-date
        ("Friday, 04-Dec-26 10:01:30 GMT", 90.0),  # its obsolete RFC 850 form
        ("Fri, 04 Dec 2026 09:00:00 GMT", 0.0),  # a date past: at once
        (None, None),  # no header: the outbox's own backoff
        ("soon", None),
        ("-5", None),
        ("1.5", None),  # RFC 9110: a non-negative integer
        ("²", None),  # a digit to str.isdigit, not to HTTP
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after(header, NOW) == seconds
