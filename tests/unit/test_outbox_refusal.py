"""Which refusals no version explains last (failed at the first) and which may pass
(retried within RACES_RETRIED): :func:`service.outbox.refusal_lasts`, read from the
server's OperationOutcome issue codes (FHIR R4 IssueType). The outbox's handling of both
against the real FHIR server is tested in tests/integration/test_triage_save.py."""

from __future__ import annotations

from typing import Any

import pytest

from service.outbox import LASTING_ISSUE_CODES, refusal_lasts


def _outcome(*issues: tuple[str, str]) -> dict[str, Any]:
    """An OperationOutcome of ``(severity, code)`` issues."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": severity, "code": code, "diagnostics": f"{code} refused"}
            for severity, code in issues
        ],
    }


LASTING = [
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "code-invalid",
    "extension",
    "too-long",
    "not-supported",
    "multiple-matches",
    "business-rule",
]
PASSING = [
    "processing",
    "conflict",
    "duplicate",
    "not-found",
    "deleted",
    "too-costly",
    "transient",
    "lock-error",
    "exception",
    "timeout",
    "throttled",
    "security",
    "login",
    "forbidden",
    "unknown",
    "informational",
]


def test_the_lasting_codes_are_those_decided() -> None:
    assert sorted(LASTING_ISSUE_CODES) == sorted(LASTING)


@pytest.mark.parametrize("code", LASTING)
def test_an_error_with_a_lasting_code_lasts(code: str) -> None:
    assert refusal_lasts(_outcome(("error", code)))
    assert refusal_lasts(_outcome(("fatal", code)))


@pytest.mark.parametrize("code", PASSING)
def test_an_error_with_any_other_code_may_pass(code: str) -> None:
    assert not refusal_lasts(_outcome(("error", code)))


@pytest.mark.parametrize("outcome", [None, {}, {"resourceType": "OperationOutcome"}])
def test_a_refusal_without_an_operation_outcome_or_issues_may_pass(
    outcome: dict[str, Any] | None,
) -> None:
    assert not refusal_lasts(outcome)


def test_mixed_issues_last_when_one_refusing_issue_does() -> None:
    # HAPI-like: a lock beside a validation error; the error lasts, whatever its order
    assert refusal_lasts(_outcome(("error", "processing"), ("error", "multiple-matches")))
    assert refusal_lasts(_outcome(("error", "invalid"), ("error", "transient")))


def test_a_warning_with_a_lasting_code_beside_a_passing_error_may_pass() -> None:
    """A warning (or information) refuses nothing: the error beside it is the reason."""
    assert not refusal_lasts(_outcome(("warning", "invalid"), ("error", "processing")))
    assert not refusal_lasts(_outcome(("information", "business-rule"), ("error", "conflict")))


def test_an_issue_without_a_severity_counts_as_refusing() -> None:
    """Severity is required in R4; a server leaving it out still gave this as the reason."""
    assert refusal_lasts({"resourceType": "OperationOutcome", "issue": [{"code": "invalid"}]})


def test_malformed_issues_are_not_read_as_lasting() -> None:
    assert not refusal_lasts({"resourceType": "OperationOutcome", "issue": ["invalid", 7]})
    assert not refusal_lasts({"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]})
