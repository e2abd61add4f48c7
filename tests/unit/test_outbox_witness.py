"""The outbox's witness: what a retry asks before sending a transaction again; and the
conditional create's ``ifNoneExist``, which keeps a transaction sent again from creating twice.

A stub stands in for the FHIR server here: the behaviour tested — a server ignoring a
search parameter it does not support (FHIR's lenient handling) — is one the test server
(sekmet) does not have. The witnesses against a real server are tested in
tests/integration/test_outbox.py and test_social_casework.py."""

from __future__ import annotations

from typing import Any, cast

import pytest

from service.fhir.client import FhirClient, FhirConflict, SearchPages, identifier_search
from service.outbox import (
    DeliveryState,
    TransactionBuilder,
    _Claimed,
    _landed_or_refused,
    _Sent,
    _witness_exists,
    _WitnessUnanswered,
)

FLAG_CLOSED = "Provenance?target=Flag/7&recorded=2026-12-03T10:13:49.016845+00:00"


class _Server:
    """Answers every search with the given resources, whatever its parameters; ``more``: with
    a next page too, beyond the pages the witness reads (``WITNESS_MAX_PAGES``)."""

    base_url = "https://ehr.example/fhir"

    def __init__(self, *resources: dict[str, Any], more: bool = False) -> None:
        self._resources = resources
        self._more = more

    def search_pages(
        self, resource_type: str, params: dict[str, str], *, max_pages: int
    ) -> SearchPages:
        entries = [{"resource": r} for r in self._resources]
        bundle = {"resourceType": "Bundle", "total": len(entries), "entry": entries}
        return SearchPages(bundle, complete=not self._more)


def _provenance(target: str, recorded: str) -> dict[str, Any]:
    return {"resourceType": "Provenance", "target": [{"reference": target}], "recorded": recorded}


def _asks(server: _Server, witness: str) -> bool:
    return _witness_exists(cast(FhirClient, server), witness)


def test_a_server_ignoring_recorded_does_not_make_an_unsent_closing_count_as_applied() -> None:
    # the triage's Provenance of the same Flag: what a lenient server finds for target alone
    triage = _provenance("Flag/7", "2026-12-01T08:00:00+00:00")
    assert not _asks(_Server(triage), FLAG_CLOSED)
    assert not _asks(_Server(_provenance("Flag/8", "2026-12-03T10:13:49.016845Z")), FLAG_CLOSED)


def test_the_closings_own_provenance_is_its_witness() -> None:
    ours = _provenance("Flag/7", "2026-12-03T10:13:49.016845Z")  # the server's own spelling
    assert _asks(_Server(_provenance("Flag/7", "2026-12-01T08:00:00Z"), ours), FLAG_CLOSED)
    absolute = _provenance("https://ehr.example/fhir/Flag/7", "2026-12-03T10:13:49.016845Z")
    assert _asks(_Server(absolute), FLAG_CLOSED)


def test_an_absolute_reference_counts_only_on_the_entrys_own_server() -> None:
    """Any URL ending in ``/Flag/7`` was taken for this server's Flag/7: another server's
    (a reference the EHR copied from elsewhere), or a longer path."""
    for elsewhere in (
        "https://other.example/fhir/Flag/7",
        "https://ehr.example/fhir/x/Flag/7",
        "https://ehr.example/Flag/7",
    ):
        ours_then = _provenance(elsewhere, "2026-12-03T10:13:49.016845Z")
        assert not _asks(_Server(ours_then), FLAG_CLOSED)


def test_an_identifier_witness_needs_that_identifier() -> None:
    witness = "Observation?identifier=urn:kr:finding|abc"
    other = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:kr:finding", "value": "x"}],
    }
    ours = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:kr:finding", "value": "abc"}],
    }
    assert not _asks(_Server(other), witness)
    assert _asks(_Server(other, ours), witness)
    assert not _asks(_Server(), witness)


def test_a_witness_reads_its_identifier_percent_decoded() -> None:
    """The identifier of a witness is percent-encoded, as in ``ifNoneExist``; read as it is
    written, it searched for the system ``urn:kr:finding%7Ca…`` and never found the save."""
    witness = "Observation?identifier=urn:kr:finding%7Ca%26b%2Bc%20d"
    ours = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:kr:finding", "value": "a&b+c d"}],
    }
    assert _asks(_Server(ours), witness)


def test_a_conditional_creates_identifier_is_percent_encoded() -> None:
    """Its ``|`` is not legal raw in a URI query, and a value's ``&``, ``#``, ``+``, ``%``
    or space ended or changed the value as the server read it: the create sent again
    found nothing and created a second resource (tests/integration/test_outbox.py)."""
    tx = TransactionBuilder()
    identifier = {"system": "https://ehr.example/id", "value": "a&b=c#d+e%f g"}
    tx.create({"resourceType": "RelatedPerson"}, identifier, patient_ref="Patient/p1")
    (entry,) = tx.bundle()["entry"]
    encoded = "identifier=https://ehr.example/id%7Ca%26b%3Dc%23d%2Be%25f%20g&patient=Patient/p1"
    assert entry["request"]["ifNoneExist"] == encoded
    assert tx.stable_references() == [f"RelatedPerson?{encoded}"]


def _observation(value: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "identifier": [{"system": "urn:kr:x", "value": value}]}


def test_an_identifier_holding_what_a_search_reads_is_escaped_and_read_back() -> None:
    r"""FHIR search reads ``|`` as a token's system's end, ``,`` between two values, ``$``
    in a composite, ``\`` as an escape: a hospital's identifier holding them is escaped
    with a ``\`` (R4 search, "Escaping Search Parameters"), then percent-encoded. The
    server read ``7|a,b`` as two identifiers, neither ours (a create sent again created a
    second resource), and the witness read the system ``urn:kr:x|7``: the save's own
    resource did not count."""
    tx = TransactionBuilder()
    identifier = {"system": "https://ehr.example/id", "value": "7|a,b\\c$d"}
    tx.create({"resourceType": "RelatedPerson"}, identifier)
    (entry,) = tx.bundle()["entry"]
    escaped = "7%5C%7Ca%5C%2Cb%5C%5Cc%5C%24d"  # 7\|a\,b\\c\$d
    assert entry["request"]["ifNoneExist"] == f"identifier=https://ehr.example/id%7C{escaped}"
    witness = identifier_search("Observation", "urn:kr:x", "7|a,b\\c$d")
    assert witness == f"Observation?identifier=urn:kr:x%7C{escaped}"
    assert _asks(_Server(_observation("7|a,b\\c$d")), witness)
    assert not _asks(_Server(_observation("7|a,b\\\\c$d"), _observation("a,b\\c$d")), witness)


def test_an_identifier_queued_before_the_escaping_is_read_as_written() -> None:
    r"""A witness or ``ifNoneExist`` in the outbox since before (no escapes) is read as its
    writer meant it: split at the first ``|``, a ``\`` before anything but ``\|,$`` kept."""
    assert _asks(_Server(_observation("7|a")), "Observation?identifier=urn:kr:x%7C7%7Ca")
    assert _asks(
        _Server(_observation("C:\\dossier")), "Observation?identifier=urn:kr:x%7CC:%5Cdossier"
    )


def test_a_search_longer_than_the_pages_read_says_nothing_without_the_resource() -> None:
    """A lenient server's answer past the pages read may hold ours: not known, never "not
    applied" (which would send the closing again)."""
    triage = _provenance("Flag/7", "2026-12-01T08:00:00+00:00")
    with pytest.raises(_WitnessUnanswered):
        _asks(_Server(triage, more=True), FLAG_CLOSED)
    ours = _provenance("Flag/7", "2026-12-03T10:13:49.016845Z")
    assert _asks(_Server(triage, ours, more=True), FLAG_CLOSED)


#: The closing's own Provenance, as the server spells it back.
CLOSED = _provenance("Flag/7", "2026-12-03T10:13:49.016845Z")
#: The Flag's If-Match refused: sekmet's 412 for an If-Match on another version.
STALE = FhirConflict(
    412, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "conflict"}]}
)


def _judged(server: _Server, attempt: int) -> tuple[DeliveryState, str]:
    """The closing's 412 at its ``attempt``, as :func:`_landed_or_refused` judges it (no
    If-Match of the bundle sent is read again here: what the witness says decides)."""
    entry = _Claimed(1, "lease", 1, "social", server.base_url, "s", {}, FLAG_CLOSED, attempt)
    sent = _Sent({"resourceType": "Bundle", "type": "transaction", "entry": []}, (), ())
    delivery = _landed_or_refused(cast(FhirClient, server), entry, sent, STALE)
    return delivery.state, delivery.detail


def test_a_412_to_a_resend_whose_earlier_copy_landed_is_delivered() -> None:
    """A copy in doubt applied just before the resend: the resend's If-Match refused, the
    witness found. It was a ``conflict`` for a closing the record holds."""
    assert _judged(_Server(CLOSED), attempt=2) == (
        DeliveryState.DELIVERED,
        "applied earlier, its resend refused",
    )


def test_a_412_to_a_first_attempt_or_without_the_witness_is_judged_as_a_refusal() -> None:
    # a first attempt: nothing of ours was sent before, the witness is not asked
    state, detail = _judged(_Server(CLOSED), attempt=1)
    assert (state, detail.split(":")[0]) == (DeliveryState.PENDING, "refused 1, no version changed")
    # a resend, nothing found: no copy of ours moved a version
    state, detail = _judged(_Server(), attempt=2)
    assert (state, detail.split(":")[0]) == (DeliveryState.PENDING, "refused 1, no version changed")


def test_a_412_to_a_resend_whose_witness_cannot_say_keeps_it_pending_unsent() -> None:
    state, detail = _judged(_Server(more=True), attempt=2)
    assert state is DeliveryState.PENDING
    assert detail.startswith("witness unanswered, not sent again")
