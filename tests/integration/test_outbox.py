"""The outbox against a real FHIR server process, on SQLite and PostgreSQL.

The entries here carry AuditEvents (``audit.record_read``) or small hand-built
transactions: the outbox does not care what it delivers. The triage save, with the
guide's resources, is tested in ``test_triage_save.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from sandbox.fhir_server import FhirServer, free_port
from service import audit
from service.app import create_app
from service.audit import AuditAction, AuditFact, Channel
from service.db import migrate
from service.db.base import Database, utcnow
from service.db.models import AuditRecord, OutboxEntry
from service.fhir import mapping
from service.fhir.client import SCREEN_BUDGET_TIMEOUTS, FhirClient, Resource
from service.outbox import (
    HELD_FOR_SAVER,
    READY_MAX_ATTEMPTS,
    RETRY_CAP_SECONDS,
    Delivery,
    DeliveryState,
    NewEntry,
    Outbox,
    OutboxWorker,
    TransactionBuilder,
    enqueue,
)
from service.protocol import Child, ChildRelationship, LivesWith
from service.settings import Settings
from service.tenancy import TenantContext
from smart_app.session import AppUser, NewSession, SessionTokens
from tests.support.postgres import refusing_connections
from tests.support.relay import SlowRelay
from tests.support.served import ServedJson
from tests.support.sessions import launched_under
from tests.support.triage import outbox_entry
from tests.support.validator import validate
from tests.support.write_path import (
    Clock,
    LoopbackTokens,
    count,
    fhir_server,
    make_outbox,
    make_tenant,
    search,
)

__all__ = ["fhir_server"]  # the fixture, shared with pytest

pytestmark = pytest.mark.fhirserver

SYSTEM = "urn:test:outbox"  # identifiers of the hand-built resources of these tests


def _read_fact(patient: str) -> AuditFact:
    return AuditFact(
        actor="Practitioner/nurse-1",
        action=AuditAction.SEARCH,
        patient_ref=patient,
        entities=("RelatedPerson/7",),
        outcome="success",
        at=utcnow(),
    )


def _queue_read(
    database: Database,
    tenant: TenantContext,
    base_url: str,
    session: str,
    patient: str | None = None,
) -> int:
    """An audited read, of a patient of its own unless named (events are counted by patient)."""
    channel = Channel(tenant.id, "ehr", base_url, session)
    with database.session() as db:
        row = audit.record_read(db, channel, _read_fact(patient or f"Patient/{uuid.uuid4()}"))
        db.flush()
        assert row.outbox_id is not None
        return row.outbox_id


def _events(database: Database, base_url: str, entry_id: int) -> list[dict[str, Any]]:
    """The AuditEvents on the FHIR server about the patient of an entry."""
    patient = outbox_entry(database, entry_id).patient_ref
    assert patient is not None
    return search(base_url, "AuditEvent", patient=patient)


def test_a_read_is_audited_locally_and_its_audit_event_delivered_once(
    database: Database, fhir_server: FhirServer
) -> None:
    tenant = make_tenant(database, "a", fhir_server.base_url)
    # A patient of this run only: the module's FHIR server is shared by both backends.
    patient = f"Patient/{uuid.uuid4()}"
    entry_id = _queue_read(database, tenant, fhir_server.base_url, "s1", patient)
    clock = Clock()  # entries are due from when they were queued
    outbox = make_outbox(database, clock)

    with database.session() as db:
        record = db.scalars(select(AuditRecord)).one()
    assert (record.tenant_id, record.actor, record.action, record.patient_ref) == (
        tenant.id,
        "Practitioner/nurse-1",
        "search-type",
        patient,
    )
    assert record.entities == ["RelatedPerson/7"]
    assert (record.fhir_base_url, record.outbox_id) == (fhir_server.base_url, entry_id)

    deliveries = outbox.run_once()
    assert [(d.entry_id, d.state) for d in deliveries] == [(entry_id, DeliveryState.DELIVERED)]
    (stored,) = _events(database, fhir_server.base_url, entry_id)
    assert validate(stored) == []
    assert stored["agent"][0]["who"]["reference"] == "Practitioner/nurse-1"

    clock.advance(3600)
    assert outbox.run_once() == []  # delivered exactly once, never again
    assert outbox_entry(database, entry_id).delivered_at is not None
    assert len(_events(database, fhir_server.base_url, entry_id)) == 1


def test_fault_fhir_server_down_then_back_after_our_restart_delivers_exactly_once(
    database_url: str, database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fault test: the FHIR server stops, we save, we restart, it restarts, delivery."""
    data_dir, port = tmp_path / "fhir-data", free_port()
    server = FhirServer(port=port, data_dir=data_dir).start()
    base_url = server.base_url
    tenant = make_tenant(database, "a", base_url)
    server.stop()

    entry_id = _queue_read(database, tenant, base_url, "s1")
    clock = Clock()
    state = make_outbox(database, clock).deliver(entry_id, timeout=1.0)
    assert state is DeliveryState.PENDING  # the nurse sees "saved, delivery pending"
    entry = outbox_entry(database, entry_id)
    assert entry.attempts == 1
    assert "ConnectError" in (entry.last_error or "")
    assert entry.next_attempt_at > clock.now  # backoff: not retried at once

    # Our service restarts: a new Database and Outbox on the same database.
    database.dispose()
    restarted = Database(database_url)
    try:
        with FhirServer(port=port, data_dir=data_dir) as server_again:
            outbox = make_outbox(restarted, clock)
            assert outbox.run_once() == []  # not due yet
            clock.advance(60)
            assert [d.state for d in outbox.run_once()] == [DeliveryState.DELIVERED]
            clock.advance(3600)
            assert outbox.run_once() == []
            assert len(_events(restarted, server_again.base_url, entry_id)) == 1
        assert outbox_entry(restarted, entry_id).state == DeliveryState.DELIVERED
    finally:
        restarted.dispose()
    assert "Patient/" not in caplog.text  # log lines carry no patient data


def test_two_workers_racing_deliver_each_entry_once(
    database_url: str, database: Database, fhir_server: FhirServer
) -> None:
    tenant = make_tenant(database, "a", fhir_server.base_url)
    ids = [_queue_read(database, tenant, fhir_server.base_url, "s1") for _ in range(12)]
    clock = Clock()
    databases = [Database(database_url), Database(database_url)]
    outboxes = [make_outbox(db, clock) for db in databases]
    start = threading.Barrier(2)
    delivered: list[list[int]] = [[], []]

    def work(index: int) -> None:
        start.wait()
        while batch := outboxes[index].run_once(limit=3):
            delivered[index] += [d.entry_id for d in batch if d.state is DeliveryState.DELIVERED]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for db in databases:
        db.dispose()

    assert sorted(delivered[0] + delivered[1]) == sorted(ids)  # each once, none twice
    assert not set(delivered[0]) & set(delivered[1])
    for entry_id in ids:
        assert outbox_entry(database, entry_id).attempts == 1
        assert len(_events(database, fhir_server.base_url, entry_id)) == 1


def test_a_stopping_instance_gives_the_rest_of_its_batch_to_another_at_once(
    database_url: str, database: Database, fhir_server: FhirServer
) -> None:
    """A pod stopped (a rollout) while it delivered a batch: the entries it had not begun
    stayed leased by it, and no other instance sent them for minutes, 4 with the defaults
    and hours with a long FHIR timeout, the patients' later saves waiting behind them
    (found by review). They are released as the instance stops, not counted as attempts."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    ids = [_queue_read(database, tenant, fhir_server.base_url, "s1") for _ in range(3)]
    clock = Clock()  # never moves: another instance may take an entry only if released

    def delivered() -> list[int]:
        return [i for i in ids if outbox_entry(database, i).state == DeliveryState.DELIVERED]

    stopping = make_outbox(database, clock)
    first = stopping.run_once(stopping=lambda: len(delivered()) > 0)  # told to stop after one

    assert [d.state for d in first] == [DeliveryState.DELIVERED]
    left = [i for i in ids if i != first[0].entry_id]
    for entry_id in left:
        entry = outbox_entry(database, entry_id)
        assert (entry.state, entry.lease_owner, entry.attempts) == ("pending", None, 0)
    other_instance = Database(database_url)
    try:
        taken_over = make_outbox(other_instance, clock).run_once()
    finally:
        other_instance.dispose()
    assert sorted(d.entry_id for d in taken_over) == sorted(left)
    assert delivered() == ids
    for entry_id in ids:
        assert len(_events(database, fhir_server.base_url, entry_id)) == 1
        assert outbox_entry(database, entry_id).attempts == 1


@contextmanager
def _silent_fhir_server() -> Iterator[tuple[str, threading.Event]]:
    """A FHIR base URL whose server accepts connections and never answers (a real socket,
    the one way to make a delivery hang on demand), and the event set at its first
    connection. At the end, its connections close: a delivery waiting on it fails then,
    and the worker thread that sent it is waited for."""
    listener = socket.create_server(("127.0.0.1", 0))
    reached = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                held.append(listener.accept()[0])
                reached.set()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir", reached
    finally:
        listener.close()
        for connection in held:
            connection.close()
        for thread in threading.enumerate():
            if thread.name == "outbox-worker":
                thread.join(timeout=30)


def _stopped_in_flight(
    database: Database,
    base_url: str,
    reached: threading.Event,
    stopping: AbstractContextManager[object] | None = None,
) -> list[int]:
    """Three entries queued for ``base_url``; a worker that sends the first and is stopped
    (within ``stopping``) while that delivery waits: it waits for the stop only 0.1 s. The
    entries' ids."""
    tenant = make_tenant(database, "a", base_url)
    ids = [_queue_read(database, tenant, base_url, "s1") for _ in range(3)]
    worker = OutboxWorker(make_outbox(database, Clock()), interval=60, stop_timeout=0.1)
    worker.start()
    assert reached.wait(timeout=30), "the worker never sent the first entry"
    with stopping or contextlib.nullcontext():
        worker.stop()  # returns while the first delivery still waits for its answer
    return ids


def test_a_stop_that_cannot_wait_for_the_delivery_in_flight_releases_the_rest_itself(
    database: Database,
) -> None:
    """The delivery in flight outlasts the stop's wait (a FHIR server that does not answer,
    a long timeout): the process ends with the worker thread still in it, and the batch's
    other entries stayed leased by a stopped instance for hours (found by review)."""
    with _silent_fhir_server() as (base_url, reached):
        ids = _stopped_in_flight(database, base_url, reached)
        states = {i: outbox_entry(database, i) for i in ids}
    in_flight = [i for i, entry in states.items() if entry.lease_owner is not None]
    assert len(in_flight) == 1
    for entry_id in set(ids) - set(in_flight):
        entry = states[entry_id]
        assert (entry.state, entry.lease_owner, entry.attempts) == ("pending", None, 0)


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_stop_whose_release_the_database_does_not_take_still_stops(
    database: Database, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The release at stop is best effort: with the database down too, the stop raised out
    of the app's shutdown ("Application shutdown failed", found by review). It stops, says
    so, and the entries keep their lease until the worker's next turn or its end."""
    with _silent_fhir_server() as (base_url, reached):
        ids = _stopped_in_flight(database, base_url, reached, refusing_connections(database_url))
    assert "outbox: entries not begun kept their lease" in caplog.text
    # nothing lost: each waits for its delivery (released by the worker at its next turn)
    assert [outbox_entry(database, i).state for i in ids] == ["pending"] * 3


def test_a_fhir_server_that_does_not_answer_holds_up_no_other_hospitals_deliveries(
    database: Database, fhir_server: FhirServer
) -> None:
    """One worker delivers for every hospital and FHIR server of the instance. Hospital A's
    FHIR server hangs: it takes each connection and never answers (a real socket: sekmet
    cannot be made to hang on demand). A's entries are due first (retries, saves whose
    own attempt failed); hospital B's is due behind them, its FHIR server (sekmet) up.
    Each of A's entries waited out the whole timeout, one after the other: B's save
    waited batch × timeout (20 × 5 s with the defaults), and a batch of A's alone was a
    cycle without a delivery, B's left to the next one. Now the first of A's left
    unanswered is enough: A's others wait for their next attempt unsent, and B's save is
    delivered in the same cycle, after that one timeout."""
    with _silent_fhir_server() as (hung_url, _):
        hung = make_tenant(database, "a", hung_url)
        up = make_tenant(database, "b", fhir_server.base_url)
        stuck = [_queue_read(database, hung, hung_url, "s1") for _ in range(3)]
        waiting = _queue_read(database, up, fhir_server.base_url, "s2")
        clock = Clock()
        outbox = make_outbox(database, clock, timeout=1.0)

        deliveries = outbox.run_once(limit=3)  # A's fill the batch (20 in the worker)

        states = {i: outbox_entry(database, i) for i in stuck}
    assert [(d.entry_id, d.state) for d in deliveries] == [
        (stuck[0], DeliveryState.PENDING),  # the one timeout B's save waited for
        (waiting, DeliveryState.DELIVERED),
    ]
    assert len(_events(database, fhir_server.base_url, waiting)) == 1
    assert (states[stuck[0]].last_error or "").startswith("in doubt: ")
    assert states[stuck[0]].attempts == 1
    for entry_id in stuck[1:]:  # not sent, so no attempt; tried again after their backoff
        entry = states[entry_id]
        assert (entry.state, entry.lease_owner, entry.attempts) == ("pending", None, 0)
        assert entry.next_attempt_at > clock.now
    assert outbox.run_once() == []  # nothing of A's is sent again at once


def _enqueue(
    database: Database, tenant: TenantContext, base_url: str, bundle: Any, **kw: Any
) -> int:
    with database.session() as db:
        return _enqueue_in(db, tenant, base_url, bundle, **kw)


def _enqueue_in(db: Any, tenant: TenantContext, base_url: str, bundle: Any, **kw: Any) -> int:
    """:func:`_enqueue` inside the caller's transaction."""
    entry = enqueue(
        db,
        tenant.id,
        NewEntry(
            kind="test",
            registration_id="ehr",
            fhir_base_url=base_url,
            session_id=kw.get("session", "s1"),
            author="Practitioner/nurse-1",
            patient_ref=kw.get("patient", "Patient/p1"),
            bundle=bundle,
            witness=kw.get("witness"),
            delivered_at_once=kw.get("delivered_at_once", False),
        ),
    )
    return entry.id


def test_an_entry_its_saving_request_delivers_is_left_to_it_by_the_worker(
    database: Database, fhir_server: FhirServer
) -> None:
    """The worker claiming an entry between the save's commit and the save's own attempt
    made the nurse see "delivery pending" for a save being delivered (a flaky browser
    test showed it). Until ``HELD_FOR_SAVER`` has passed, the worker leaves it alone."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    clock = Clock()
    worker, saver = make_outbox(database, clock), make_outbox(database, clock)
    saved, abandoned = (
        _enqueue(database, tenant, fhir_server.base_url, bundle, delivered_at_once=True)
        for bundle in (_single_create(_person(str(uuid.uuid4()))) for _ in range(2))
    )

    assert worker.run_once() == []  # both saves are their requests' to deliver
    assert saver.deliver(saved) is DeliveryState.DELIVERED
    # the request of the other save died before its attempt: the worker takes over
    clock.advance(HELD_FOR_SAVER.total_seconds() + 1)
    assert [(d.entry_id, d.state) for d in worker.run_once()] == [
        (abandoned, DeliveryState.DELIVERED)
    ]


def _bundle_the_server_rejects() -> Resource:
    """A transaction no FHIR server takes (an unknown resource type): a 4xx, ``failed``."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "NoSuchType"},
                "request": {"method": "POST", "url": "NoSuchType"},
            }
        ],
    }


def test_a_rejected_entry_is_failed_logged_and_not_retried(
    database: Database, fhir_server: FhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = make_tenant(database, "a", fhir_server.base_url)
    bad = _bundle_the_server_rejects()
    entry_id = _enqueue(database, tenant, fhir_server.base_url, bad)
    saved = replace(_read_fact("Patient/p1"), action=AuditAction.CREATE)
    with database.session() as db:
        audit.record_local(db, tenant.id, saved, fhir_server.base_url, entry_id)
    clock = Clock()
    outbox = make_outbox(database, clock)

    with caplog.at_level(logging.ERROR, logger="service.outbox"):
        assert outbox.deliver(entry_id) is DeliveryState.FAILED
    entry = outbox_entry(database, entry_id)
    assert entry.attempts == 1
    assert "answered 4" in (entry.last_error or "")  # the server's 4xx, with its reason
    assert entry.outcome is not None
    assert entry.outcome["resourceType"] == "OperationOutcome"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "Patient" not in errors[0].getMessage()
    with database.session() as db:
        audited = db.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
        # the failure of the save is of the same patient, on the same server
        assert [(r.outcome, r.fhir_base_url) for r in audited] == [
            ("success", fhir_server.base_url),
            ("failure", fhir_server.base_url),
        ]

    clock.advance(24 * 3600)
    assert outbox.run_once() == []  # a rejection is never retried
    assert outbox_entry(database, entry_id).attempts == 1
    check = outbox.readiness_check()()
    assert "1 failed" in check.detail


@pytest.mark.parametrize(
    ("entries", "state", "said"),
    [
        ([{"response": {"status": "400 Bad Request"}}], DeliveryState.FAILED, "answered 400"),
        ([], DeliveryState.PENDING, "does not answer each"),
    ],
)
def test_a_save_a_server_answers_200_without_applying_it_is_not_delivered(
    database: Database, entries: list[dict[str, Any]], state: DeliveryState, said: str
) -> None:
    """A server processing a transaction as a batch (or a facade in front of one) answered
    200 with its entry refused, or with no entry: the save was "delivered", on no server,
    never retried (found by review). Refused, it is failed (the user's input kept for
    her); unsaid, pending, for the witness to ask. The server is a real HTTP server
    giving that answer, which the real FHIR server does not give."""
    answer = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
    with ServedJson(json.dumps(answer).encode(), path="/fhir") as server:
        tenant = make_tenant(database, "a", server.url)
        entry_id = _enqueue(database, tenant, server.url, _single_create(_person("x")))
        assert make_outbox(database, Clock()).deliver(entry_id) is state
    assert said in (outbox_entry(database, entry_id).last_error or "")


def _due_in(database: Database, entry_id: int, clock: Clock) -> float:
    """Seconds from the outbox's now until the entry's next attempt."""
    return (outbox_entry(database, entry_id).next_attempt_at - clock.now).total_seconds()


def test_a_throttled_save_is_retried_when_the_server_asks_and_delivered_once(
    database: Database, fhir_server: FhirServer
) -> None:
    """A throttling server (or its gateway) answers 429 with ``Retry-After``: not now. It
    was a 4xx like any other, ``failed`` for good at the first answer, and for a social
    worker's save the refusal hook undid her change. Now the entry stays pending until
    the server asked to be asked again, when the backoff is shorter; a second 429, to the
    witness asked before the retry, likewise; then it is delivered once, and nothing was
    refused (no refusal hook, no failure audit). The throttling is a real relay in front
    of the real server answering in its place (tests/support/relay)."""
    marker = str(uuid.uuid4())
    with SlowRelay(fhir_server.base_url) as gateway:
        tenant = make_tenant(database, "a", gateway.url)
        witness = f"RelatedPerson?identifier={SYSTEM}|{marker}"
        bundle = _single_create(_person(marker))
        entry_id = _enqueue(database, tenant, gateway.url, bundle, witness=witness)
        clock = Clock()
        outbox = make_outbox(database, clock)
        undone: list[int] = []
        outbox.when_refused("test", lambda _session, refused: undone.append(refused))

        gateway.throttled = [(429, "200"), (429, "120")]  # the transaction, then the witness
        assert outbox.deliver(entry_id) is DeliveryState.PENDING  # "saved, delivery pending"
        said = outbox_entry(database, entry_id).last_error or ""
        assert "throttled 429, retry after 200 s" in said
        assert 198 <= _due_in(database, entry_id, clock) <= 200  # the backoff would be ≤ 30 s
        clock.advance(190)
        assert outbox.run_once() == []  # not before the server said

        clock.advance(11)
        assert [d.state for d in outbox.run_once()] == [DeliveryState.PENDING]
        assert 118 <= _due_in(database, entry_id, clock) <= 120
        assert gateway.asked == 0  # neither the transaction nor the witness reached the server
        clock.advance(121)
        assert [d.state for d in outbox.run_once()] == [DeliveryState.DELIVERED]

    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{marker}") == 1
    assert undone == []
    with database.session() as db:
        assert db.scalars(select(AuditRecord).where(AuditRecord.outcome == "failure")).all() == []


@pytest.mark.parametrize(
    ("status", "retry_after", "due_within"),
    [
        (408, None, (15, 30)),  # no Retry-After: the backoff (retry base 30 s, first attempt)
        (425, "http-date in 100 s", (97, 101)),  # an HTTP-date
        (429, "86400", (299, 300)),  # a day: bounded by RETRY_CAP_SECONDS
    ],
)
def test_a_throttled_read_at_delivery_keeps_the_save_pending(
    database: Database,
    fhir_server: FhirServer,
    status: int,
    retry_after: str | None,
    due_within: tuple[float, float],
) -> None:
    """The reads a delivery makes before its transaction (a create-or-merge's search) are
    throttled like the transaction: 408 and 425 too, ``Retry-After`` an HTTP-date or none,
    a wait of a day bounded by the outbox's longest backoff."""
    marker = str(uuid.uuid4())
    with SlowRelay(fhir_server.base_url) as gateway:
        tenant = make_tenant(database, "a", gateway.url)
        tx = TransactionBuilder()
        tx.create_or_merge(_person(marker), {"system": SYSTEM, "value": marker})
        entry_id = _enqueue(database, tenant, gateway.url, tx.bundle())
        clock = Clock()
        outbox = make_outbox(database, clock)
        if retry_after == "http-date in 100 s":
            retry_after = format_datetime(utcnow() + timedelta(seconds=100), usegmt=True)
        gateway.throttled = [(status, retry_after)]

        assert outbox.deliver(entry_id) is DeliveryState.PENDING
        assert f"throttled {status}" in (outbox_entry(database, entry_id).last_error or "")
        earliest, latest = due_within
        assert earliest <= _due_in(database, entry_id, clock) <= latest
        clock.advance(latest + 1)
        assert [d.state for d in outbox.run_once()] == [DeliveryState.DELIVERED]

    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{marker}") == 1


def _without_versions(body: bytes) -> bytes:
    """A server's answer whose resources have no ``meta.versionId`` (optional in R4)."""
    return body.replace(b'"versionId"', b'"versionTag"')


def test_a_delivery_that_raises_is_recorded_and_the_batch_goes_on(
    database: Database, fhir_server: FhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A create-or-merge finding the child on a server that gives no ``meta.versionId``
    raised a KeyError out of the attempt: the entry stayed leased with its attempts
    climbing and was never failed, the worker's batch was aborted every cycle (another
    patient's save in it never delivered) and the saving request answered a 500. Now the
    error is the entry's: pending, then failed at its third attempt, logged by type and
    place without the child's name; the batch's other entry is delivered, and the saving
    request gets a state to show. The versionless server is a real relay rewriting the real
    server's answers (tests/support/relay)."""
    marker, other = str(uuid.uuid4()), str(uuid.uuid4())
    with FhirClient(fhir_server.base_url, lambda: "t", 5.0) as client:
        client.transaction(_single_create({**_person(marker), "name": [{"text": "Noor Aerts"}]}))
    with SlowRelay(fhir_server.base_url) as versionless:
        versionless.rewrite = _without_versions
        tenant = make_tenant(database, "a", versionless.url)
        tx = TransactionBuilder()
        renamed = {**_person(marker), "name": [{"text": "Lucas Aerts"}]}
        tx.create_or_merge(renamed, {"system": SYSTEM, "value": marker})
        raising = _enqueue(database, tenant, versionless.url, tx.bundle(), patient="Patient/p1")
        fine = _enqueue(
            database, tenant, versionless.url, _single_create(_person(other)), patient="Patient/p2"
        )
        clock = Clock()
        outbox = make_outbox(database, clock)

        with caplog.at_level(logging.INFO, logger="service.outbox"):
            first = outbox.run_once()
            assert [(d.entry_id, d.state) for d in first] == [
                (raising, DeliveryState.PENDING),
                (fine, DeliveryState.DELIVERED),
            ]
            entry = outbox_entry(database, raising)
            assert (entry.attempts, entry.lease_owner) == (1, None)
            assert (entry.last_error or "").startswith("unexpected KeyError at outbox.py:")
            # the saving request of a second save would have come here: a state, no 500
            assert outbox.deliver(raising) is DeliveryState.PENDING
            clock.advance(3600)
            assert [(d.entry_id, d.state) for d in outbox.run_once()] == [
                (raising, DeliveryState.FAILED)
            ]

    assert outbox_entry(database, raising).attempts == 3
    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{other}") == 1
    (kept,) = search(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{marker}")
    assert kept["name"] == [{"text": "Noor Aerts"}]  # nothing of the raising entry was sent
    raised = [r for r in caplog.records if "unexpected" in r.getMessage()]
    assert len(raised) == 3
    assert all("KeyError" in r.fields["error"] for r in raised)  # type: ignore[attr-defined]
    logged = " ".join(str(vars(r)) for r in caplog.records)
    assert "Aerts" not in logged  # the child's name, neither as saved nor as on the server
    assert "Patient/" not in logged


def test_a_refusal_that_cannot_be_recorded_does_not_stop_the_batch(
    database: Database, fhir_server: FhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Recording an outcome runs the entry kind's refusal hook in the same transaction; a
    hook that raises (a bug of ours) rolls the recording back. It aborted the worker's
    batch; now that entry waits for its lease to run out and the others are delivered."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    refused = _enqueue(
        database, tenant, fhir_server.base_url, _bundle_the_server_rejects(), patient="Patient/p1"
    )
    marker = str(uuid.uuid4())
    fine = _enqueue(
        database,
        tenant,
        fhir_server.base_url,
        _single_create(_person(marker)),
        patient="Patient/p2",
    )
    outbox = make_outbox(database, Clock())

    def broken_hook(_session: Any, _entry_id: int) -> None:
        raise RuntimeError("a bug in the undo")

    outbox.when_refused("test", broken_hook)
    with caplog.at_level(logging.ERROR, logger="service.outbox"):
        delivered = outbox.run_once()

    assert [(d.entry_id, d.state) for d in delivered] == [(fine, DeliveryState.DELIVERED)]
    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{marker}") == 1
    entry = outbox_entry(database, refused)
    assert (entry.state, entry.lease_owner is not None) == (DeliveryState.PENDING, True)
    assert "outbox delivery not recorded" in caplog.text


def _person(identifier: str) -> dict[str, Any]:
    return {
        "resourceType": "RelatedPerson",
        "identifier": [{"system": SYSTEM, "value": identifier}],
        "patient": {"reference": "Patient/p1"},
        "name": [{"given": ["Test"]}],
    }


def test_a_lost_answer_is_not_sent_again_and_an_if_match_conflict_is_kept(
    database: Database, fhir_server: FhirServer
) -> None:
    tenant = make_tenant(database, "a", fhir_server.base_url)
    with FhirClient(fhir_server.base_url, lambda: "t", 5.0) as client:  # closed on failure too
        created = client.transaction(_single_create(_person(str(uuid.uuid4()))))
        location = created["entry"][0]["response"]["location"]  # …/RelatedPerson/<id>/_history/1
        person_id = location.split("RelatedPerson/")[1].split("/")[0]
        current = client.read("RelatedPerson", person_id)

        # 1. A delivery whose answer was lost: before the retry the witness shows that the
        #    (atomic) transaction was applied → delivered without sending it again.
        marker = str(uuid.uuid4())
        tx = TransactionBuilder()
        tx.update({**current, "name": [{"given": ["Changed"]}]}, current["meta"]["versionId"])
        tx.create(_person(marker), {"system": SYSTEM, "value": marker})
        bundle = tx.bundle()
        witness = f"RelatedPerson?identifier={SYSTEM}|{marker}"
        entry_id = _enqueue(database, tenant, fhir_server.base_url, bundle, witness=witness)
        client.transaction(bundle)  # the first attempt, whose answer never arrived ...
        with database.session() as db:  # ... so the outbox recorded it as a failed attempt
            failed = db.get(OutboxEntry, entry_id)
            assert failed is not None
            failed.attempts, failed.last_error = 1, "POST: ReadTimeout"
        clock = Clock()
        outbox = make_outbox(database, clock)
        assert outbox.deliver(entry_id) is DeliveryState.DELIVERED
        assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{marker}") == 1
        assert client.read("RelatedPerson", person_id)["meta"]["versionId"] == "2"  # not sent twice

        # 2. A real lost update: someone else changed the resource → conflict, input kept.
        stale = client.read("RelatedPerson", person_id)
        client.transaction(_single_update({**stale, "name": [{"given": ["Other nurse"]}]}, stale))
        other = str(uuid.uuid4())
        tx = TransactionBuilder()
        tx.update({**stale, "name": [{"given": ["Mine"]}]}, stale["meta"]["versionId"])
        tx.create(_person(other), {"system": SYSTEM, "value": other})
        witness = f"RelatedPerson?identifier={SYSTEM}|{other}"
        entry_id = _enqueue(database, tenant, fhir_server.base_url, tx.bundle(), witness=witness)
        clock.advance(5)
        assert outbox.deliver(entry_id) is DeliveryState.CONFLICT
        assert client.read("RelatedPerson", person_id)["name"][0]["given"] == ["Other nurse"]
        kept = outbox_entry(database, entry_id).bundle["entry"][0]["resource"]
        assert kept["name"][0]["given"] == ["Mine"]
        assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{other}") == 0


#: Identifier values of a hospital's schemes, and each as a search writes it escaped
_HELD = {
    "URI characters": ("a&b=c#d+e%f", "a&b=c#d+e%f"),
    "search characters": ("MRN|7,a\\b$c", "MRN\\|7\\,a\\\\b\\$c"),
}


@pytest.mark.parametrize("merge", [False, True], ids=["create", "create-or-merge"])
@pytest.mark.parametrize("held", list(_HELD))
def test_a_create_sent_again_finds_its_identifier_whatever_characters_it_holds(
    database: Database, fhir_server: FhirServer, merge: bool, held: str
) -> None:
    """A transaction sent again (its answer lost, a double submit) creates nothing twice,
    also where the identifier's value holds ``&``, ``=``, ``#``, ``+``, ``%`` or a space.
    Written raw into ``ifNoneExist``, the server read a new parameter at the ``&`` (sekmet
    refused the save, an unknown search parameter: failed for good) and a space for a
    ``+`` (it found nothing and created a second resource). Percent-encoded now. And
    where it holds ``|``, ``,``, ``\\`` or ``$``, which FHIR search reads as a system's
    end, a second value, an escape, a composite's parts: unescaped, the server looked for
    other identifiers and the create sent again created a second resource. Escaped now
    (FHIR R4 search, "Escaping Search Parameters"), which sekmet reads."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    outbox = make_outbox(database, Clock())
    unique = str(uuid.uuid4())
    value, escaped = (f"{unique} {text}" for text in _HELD[held])
    person = _person(value)
    tx = TransactionBuilder()
    (tx.create_or_merge if merge else tx.create)(person, person["identifier"][0])
    for _sent in range(2):
        entry_id = _enqueue(database, tenant, fhir_server.base_url, tx.bundle())
        assert outbox.deliver(entry_id) is DeliveryState.DELIVERED
    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{escaped}") == 1


def test_an_update_reaches_a_server_that_validates_its_bundle_with_its_full_url(
    database: Database, fhir_server: FhirServer
) -> None:
    """R4 lets only a POST entry go without ``fullUrl``. A server validating the Bundle
    refused every save updating a resource (the concern Flag of each step, a child's
    edit) with 400: failed for good. Each update is sent with its resource's URL, a merge
    too (found by review). The strict server is a real relay in front of the real one."""
    with SlowRelay(fhir_server.base_url) as strict:
        strict.strict = True
        tenant = make_tenant(database, "a", strict.url)
        with FhirClient(fhir_server.base_url, lambda: "t", 5.0) as client:
            created = client.transaction(_single_create(_person(str(uuid.uuid4()))))
        location = created["entry"][0]["response"]["location"]
        person_id = location.split("RelatedPerson/")[1].split("/")[0]
        with FhirClient(fhir_server.base_url, lambda: "t", 5.0) as client:
            current = client.read("RelatedPerson", person_id)
        outbox = make_outbox(database, Clock())
        plain = _single_update({**current, "name": [{"given": ["Plain"]}]}, current)
        merge = TransactionBuilder()
        merge.merge_update({**current, "name": [{"given": ["Merged"]}]}, "2")
        for bundle in (plain, merge.bundle()):
            entry_id = _enqueue(database, tenant, strict.url, bundle)
            assert outbox.deliver(entry_id) is DeliveryState.DELIVERED
    (stored,) = search(fhir_server.base_url, "RelatedPerson", _id=person_id)
    assert stored["name"][0]["given"] == ["Merged"]
    assert stored["meta"]["versionId"] == "3"


def _single_create(resource: dict[str, Any]) -> dict[str, Any]:
    tx = TransactionBuilder()
    tx.create(resource, resource["identifier"][0])
    return tx.bundle()


def _single_update(resource: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    tx = TransactionBuilder()
    tx.update(resource, seen["meta"]["versionId"])
    return tx.bundle()


def _described_save(person: dict[str, Any], marker: str) -> dict[str, Any]:
    """A create-or-merge of ``person`` and a resource describing the write, with a variant
    for when it turns out to update (as a save's Provenance and AuditEvent have)."""

    def description(activity: str) -> dict[str, Any]:
        identifier = [{"system": SYSTEM, "value": marker}]
        return {"resourceType": "Basic", "identifier": identifier, "code": {"text": activity}}

    tx = TransactionBuilder()
    tx.create_or_merge(person, person["identifier"][0])
    assert tx.merges
    tx.add(description("create"), if_updating=description("update"))
    return tx.bundle()


def test_a_create_or_merge_is_described_as_what_it_turned_out_to_be(
    database: Database, fhir_server: FhirServer
) -> None:
    """The first delivery of a create-or-merge creates the resource: its description says
    "create". A second one merges over the resource found: the variant saying "update" is
    sent instead. The variants never reach the server as an extra element."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    outbox = make_outbox(database, Clock())
    person = _person(str(uuid.uuid4()))
    said = []
    for name in ("First", "Corrected"):
        marker = str(uuid.uuid4())
        bundle = _described_save({**person, "name": [{"given": [name]}]}, marker)
        entry_id = _enqueue(database, tenant, fhir_server.base_url, bundle)
        assert outbox.deliver(entry_id) is DeliveryState.DELIVERED
        (description,) = search(fhir_server.base_url, "Basic", identifier=f"{SYSTEM}|{marker}")
        said.append(description["code"]["text"])
        assert "kindreflexIfUpdating" not in str(description)
    assert said == ["create", "update"]
    identifier = f"{SYSTEM}|{person['identifier'][0]['value']}"
    (stored,) = search(fhir_server.base_url, "RelatedPerson", identifier=identifier)
    assert stored["name"][0]["given"] == ["Corrected"]


def test_a_transaction_whose_merges_write_nothing_is_not_described_as_a_write(
    database: Database, fhir_server: FhirServer
) -> None:
    """A create-or-merge delivered again with what the resource already says writes nothing,
    and nothing else is in its transaction: nor is its description (a save's Provenance or
    AuditEvent) sent, which would record a write that did not happen. It used to be
    created, saying "create"."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    outbox = make_outbox(database, Clock())
    person = _person(str(uuid.uuid4()))
    identifier = f"{SYSTEM}|{person['identifier'][0]['value']}"
    markers = (str(uuid.uuid4()), str(uuid.uuid4()))
    versions = []
    for marker in markers:
        entry_id = _enqueue(database, tenant, fhir_server.base_url, _described_save(person, marker))
        assert outbox.deliver(entry_id) is DeliveryState.DELIVERED
        (stored,) = search(fhir_server.base_url, "RelatedPerson", identifier=identifier)
        versions.append(stored["meta"]["versionId"])

    said = [search(fhir_server.base_url, "Basic", identifier=f"{SYSTEM}|{m}") for m in markers]
    assert [len(descriptions) for descriptions in said] == [1, 0]
    assert versions[0] == versions[1]


def _stored_for(client: FhirClient, patient_reference: str, name: str) -> dict[str, Any]:
    """A RelatedPerson the EHR stored, its ``patient`` as the EHR wrote it."""
    person = {**_person(str(uuid.uuid4())), "name": [{"text": name}]}
    person["patient"] = {"reference": patient_reference}
    answer = client.transaction(_single_create(person))
    location = answer["entry"][0]["response"]["location"]
    return client.read("RelatedPerson", location.split("RelatedPerson/")[1].split("/")[0])


def _renamed(stored: dict[str, Any], name: str) -> dict[str, Any]:
    """A save's merge update of ``stored``: ours names the patient relatively."""
    tx = TransactionBuilder()
    ours = {**_person("ours"), "id": stored["id"], "name": [{"text": name}]}
    tx.merge_update(ours, stored["meta"]["versionId"])
    return tx.bundle()


def test_a_child_the_ehr_refers_to_absolutely_is_edited_and_another_servers_refused(
    database: Database, fhir_server: FhirServer
) -> None:
    """An EHR's server may answer the child's ``patient`` absolute. The conditional
    create's match took that for the patient, the merge's owner check compared strings:
    the child loaded fine and every edit of it failed "belongs to another patient's
    record". Now both compare alike: absolute on the entry's FHIR server is the same
    patient, and the unchanged save is no change. An absolute reference to another
    server's Patient/p1 was taken for the patient by its ending alone; it is another
    patient's record, refused. sekmet stores its own absolute references relative, so a
    real relay in front of it answers them absolute, as such a server does."""
    with SlowRelay(fhir_server.base_url) as ehr:
        absolute = f"{ehr.url}/Patient/p1"
        ehr.rewrite = lambda body: body.replace(b'"Patient/p1"', f'"{absolute}"'.encode())
        tenant = make_tenant(database, "a", ehr.url)
        outbox = make_outbox(database, Clock())
        with FhirClient(ehr.url, lambda: "t", 5.0) as client:
            ours = _stored_for(client, "Patient/p1", "Emma Peeters")
            assert ours["patient"] == {"reference": absolute}
            theirs = _stored_for(client, "https://other.example/fhir/Patient/p1", "Emma Peeters")

            edited = _enqueue(database, tenant, ehr.url, _renamed(ours, "Emma Peters"))
            assert outbox.deliver(edited) is DeliveryState.DELIVERED
            after = client.read("RelatedPerson", ours["id"])
            assert (after["name"], after["meta"]["versionId"]) == ([{"text": "Emma Peters"}], "2")
            unchanged = _enqueue(database, tenant, ehr.url, _renamed(after, "Emma Peters"))
            assert outbox.deliver(unchanged) is DeliveryState.DELIVERED
            assert client.read("RelatedPerson", ours["id"])["meta"]["versionId"] == "2"

            elsewhere = _enqueue(database, tenant, ehr.url, _renamed(theirs, "Emma Peters"))
            assert outbox.deliver(elsewhere) is DeliveryState.FAILED
            said = outbox_entry(database, elsewhere).last_error or ""
            assert "belongs to another patient's record" in said
            assert client.read("RelatedPerson", theirs["id"])["name"] == [{"text": "Emma Peeters"}]


V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
#: The EHR's other role of a child's person, of the same code system as the child codes.
POWER_OF_ATTORNEY = {
    "coding": [
        {"system": V3_ROLE_CODE, "code": "HPOWATT", "display": "healthcare power of attorney"}
    ]
}


def _child(born: date, relationship: ChildRelationship) -> dict[str, Any]:
    child = Child("x", "Anna Peeters", born, relationship, LivesWith.NOT)
    return mapping.child_related_person(
        child, patient_ref="Patient/p1", identifier=mapping.identifier("child")
    )


def _roles(resource: dict[str, Any]) -> list[str]:
    return [c["code"] for r in resource["relationship"] for c in r["coding"]]


@pytest.mark.parametrize("roles_first", [True, False])
def test_an_edit_of_a_child_keeps_the_ehrs_other_roles_of_that_person(
    database: Database, fhir_server: FhirServer, roles_first: bool
) -> None:
    """The EHR records an adult child as the patient's child and her healthcare power of
    attorney (HPOWATT): both v3 RoleCode. The merge picked and removed relationship entries
    by code system: correcting the birth date dropped the power of attorney (or replaced
    it with the child code), and an unchanged save was taken for a change. Entries are now
    matched by the child-relationship value set: the EHR's other roles stay, whatever
    their order, and an unchanged save writes nothing."""
    base_url = fhir_server.base_url
    tenant = make_tenant(database, "a", base_url)
    outbox = make_outbox(database, Clock())
    born, corrected = date(1990, 4, 1), date(1991, 4, 1)
    ehrs = _child(born, ChildRelationship.NATURAL_CHILD)
    child_role = ehrs["relationship"][0]
    roles = [POWER_OF_ATTORNEY, child_role] if roles_first else [child_role, POWER_OF_ATTORNEY]
    with FhirClient(base_url, lambda: "t", 5.0) as client:
        created = client.transaction(_single_create({**ehrs, "relationship": roles}))
        location = created["entry"][0]["response"]["location"]
        child_id = location.split("RelatedPerson/")[1].split("/")[0]

        def save(born: date, relationship: ChildRelationship, version: str) -> dict[str, Any]:
            tx = TransactionBuilder()
            tx.merge_update({**_child(born, relationship), "id": child_id}, version)
            entry_id = _enqueue(database, tenant, base_url, tx.bundle())
            assert outbox.deliver(entry_id) is DeliveryState.DELIVERED
            return client.read("RelatedPerson", child_id)

        unchanged = save(born, ChildRelationship.NATURAL_CHILD, "1")
        assert unchanged["meta"]["versionId"] == "1"  # nothing written
        dated = save(corrected, ChildRelationship.NATURAL_CHILD, "1")
        assert dated["birthDate"] == "1991-04-01"
        assert dated["relationship"] == roles  # as the EHR wrote them
        stepchild = save(corrected, ChildRelationship.STEPCHILD, "2")
    expected = ["HPOWATT", "STPCHLD"] if roles_first else ["STPCHLD", "HPOWATT"]
    assert _roles(stepchild) == expected


def _due_at(database: Database, entry_id: int, at: datetime) -> None:
    with database.session() as db:
        db.execute(update(OutboxEntry).where(OutboxEntry.id == entry_id).values(next_attempt_at=at))


def test_a_patients_saves_are_delivered_in_order_and_a_failed_one_holds_back_nothing(
    database: Database, fhir_server: FhirServer
) -> None:
    """One patient's entries reach the server in save order: a later one is not claimed
    while an earlier one is still pending (the saving request leaves it to the worker),
    whichever comes due first. A failed entry needs a person: it holds back neither its
    own patient's later saves nor anyone else's, and another patient's pending entry, or
    a read's AuditEvent, is not held back by this patient's."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    base_url = fhir_server.base_url
    clock = Clock()
    outbox = make_outbox(database, clock)
    bad = _bundle_the_server_rejects()
    a, b = f"Patient/{uuid.uuid4()}", f"Patient/{uuid.uuid4()}"
    a_refused = _enqueue(database, tenant, base_url, bad, patient=a)
    b_first, b_later = (
        _enqueue(database, tenant, base_url, _single_create(_person(str(uuid.uuid4()))), patient=b)
        for _ in range(2)
    )
    a_later = _enqueue(
        database, tenant, base_url, _single_create(_person(str(uuid.uuid4()))), patient=a
    )
    b_read = _queue_read(database, tenant, base_url, "s1", b)
    assert outbox.deliver(a_refused) is DeliveryState.FAILED
    _due_at(database, b_first, clock.now + timedelta(minutes=5))  # waits for a retry
    _due_at(database, b_later, clock.now - timedelta(minutes=1))  # due first

    assert outbox.deliver(b_later) is DeliveryState.PENDING  # its turn comes after b_first
    delivered = [(d.entry_id, d.state) for d in outbox.run_once()]
    assert sorted(delivered) == sorted(
        [(a_later, DeliveryState.DELIVERED), (b_read, DeliveryState.DELIVERED)]
    )
    assert outbox.state_of(a_refused) is DeliveryState.FAILED  # for a person to look at

    clock.advance(600)
    assert [(d.entry_id, d.state) for d in outbox.run_once()] == [
        (b_first, DeliveryState.DELIVERED),
        (b_later, DeliveryState.DELIVERED),
    ]


def test_a_batch_is_delivered_longest_due_first(
    database: Database, fhir_server: FhirServer
) -> None:
    """The entries of a batch are sent in the order they were chosen in, the one due
    longest first (a retry waiting since before a newer save goes before it), not in the
    order the database happens to return the claimed rows."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    clock = Clock()
    outbox = make_outbox(database, clock)
    entries = [
        _enqueue(
            database,
            tenant,
            fhir_server.base_url,
            _single_create(_person(str(uuid.uuid4()))),
            patient=f"Patient/{uuid.uuid4()}",
        )
        for _ in range(3)
    ]
    for waited, entry_id in enumerate(entries):  # the newest entry has waited longest
        _due_at(database, entry_id, clock.now - timedelta(minutes=waited))

    assert [d.entry_id for d in outbox.run_once()] == entries[::-1]


def test_without_authorisation_an_entry_waits_for_the_next_launch_for_the_patient(
    database: Database, fhir_server: FhirServer
) -> None:
    """The real SessionTokens: an unknown (expired) session cannot give a token."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    entry_id = _queue_read(database, tenant, fhir_server.base_url, "expired-session", "Patient/p1")
    clock = Clock()
    settings = Settings(environment="test", database_url="sqlite://")
    expired = make_outbox(database, clock, tokens=SessionTokens(database, settings))

    assert expired.deliver(entry_id) is DeliveryState.WAITING_AUTHORISATION
    clock.advance(3600)
    assert expired.run_once() == []  # waits; no retry storm against the token endpoint

    outbox = make_outbox(database, clock, tokens=LoopbackTokens())
    server = fhir_server.base_url
    assert outbox.adopt_session(tenant.id, "ehr", server, "Patient/other", "new-session") == 0
    # the registration moved to another server: its Patient/p1 is someone else
    assert outbox.adopt_session(tenant.id, "ehr", _NOWHERE, "Patient/p1", "new-session") == 0
    assert outbox.adopt_session(tenant.id, "ehr", server, "Patient/p1", "new-session") == 1
    clock.advance(1)  # adopted entries are due from the real time of the adoption
    assert [d.state for d in outbox.run_once()] == [DeliveryState.DELIVERED]
    assert outbox_entry(database, entry_id).session_id == "new-session"


def test_readiness_fails_when_an_entry_waits_too_long(database: Database) -> None:
    tenant = make_tenant(database, "a", "http://127.0.0.1:9/fhir")  # nothing listens there
    check = make_outbox(database, Clock()).readiness_check(max_age=timedelta(minutes=15))
    assert check().ok
    assert check().detail == "empty"

    _queue_read(database, tenant, "http://127.0.0.1:9/fhir", "s1")
    clock = Clock()
    outbox = make_outbox(database, clock)
    check = outbox.readiness_check(max_age=timedelta(minutes=15))
    assert [d.state for d in outbox.run_once()] == [DeliveryState.PENDING]
    assert check().ok  # young: the outbox is doing its job
    clock.advance(16 * 60)
    result = check()
    assert not result.ok
    assert "1 pending" in result.detail


def test_readiness_fails_when_delivery_keeps_failing_however_young_the_entry(
    database: Database,
) -> None:
    """The FHIR server refuses every connection: each attempt fails and the next is due
    after its backoff. Past ``READY_MAX_ATTEMPTS`` failed attempts in a row /readyz fails,
    even while the entry is younger than the age that alarms (here set to a day): the
    server is not taking our writes, and retrying alone will not change that."""
    tenant = make_tenant(database, "a", _NOWHERE)
    _queue_read(database, tenant, _NOWHERE, "s1")
    clock = Clock()
    outbox = make_outbox(database, clock)
    check = outbox.readiness_check(max_age=timedelta(days=1))
    for attempt in range(1, READY_MAX_ATTEMPTS + 1):
        assert check().ok, f"before attempt {attempt}"
        assert [d.state for d in outbox.run_once()] == [DeliveryState.PENDING]
        clock.advance(RETRY_CAP_SECONDS)  # the next attempt is due

    failing = check()
    assert not failing.ok
    assert failing.detail == "delivery keeps failing: 1 pending"


def test_readiness_fails_when_an_entry_waits_for_a_sign_in_for_over_a_day(
    database: Database,
) -> None:
    """A waiting entry holds back its patient's later saves until someone launches the app
    for that patient: when nobody has for a day, the full /readyz (what operators alert on)
    fails, without naming the patient (/readyz may be reachable from outside)."""
    tenant = make_tenant(database, "a", "http://127.0.0.1:9/fhir")  # nothing listens there
    patient = "Patient/readiness-secret-7"
    entry_id = _queue_read(database, tenant, "http://127.0.0.1:9/fhir", "expired", patient)
    clock = Clock()
    settings = Settings(environment="test", database_url="sqlite://")
    outbox = make_outbox(database, clock, tokens=SessionTokens(database, settings))
    assert outbox.deliver(entry_id) is DeliveryState.WAITING_AUTHORISATION
    check = outbox.readiness_check()

    clock.advance(23 * 3600)  # a nurse's session and the next shift: not yet an alarm
    young = check()
    assert young.ok
    assert young.detail == "1 waiting-authorisation"

    clock.advance(2 * 3600)
    old = check()
    assert not old.ok
    assert old.detail == "waiting for a sign-in for over 1 day, 0:00:00: 1 waiting-authorisation"
    assert "readiness-secret-7" not in old.detail


#: A FHIR server where nothing listens.
_NOWHERE = "http://127.0.0.1:9/fhir"


def _waiting_since_its_save(
    database: Database, patient: str, clock: Clock
) -> tuple[TenantContext, int, Outbox]:
    """A read of ``patient`` whose session expired before its delivery: waiting for a
    sign-in from its save on (nothing listens at the FHIR server: it is never sent)."""
    tenant = make_tenant(database, "a", _NOWHERE)
    entry_id = _queue_read(database, tenant, _NOWHERE, "expired", patient)
    settings = Settings(environment="test", database_url="sqlite://")
    outbox = make_outbox(database, clock, tokens=SessionTokens(database, settings))
    assert outbox.deliver(entry_id) is DeliveryState.WAITING_AUTHORISATION
    return tenant, entry_id, outbox


def test_readiness_counts_a_taken_over_entrys_wait_from_the_take_over(
    database: Database,
) -> None:
    """An entry that waited hours for a sign-in and is taken over by the next launch for
    its patient was 'undelivered for over 15 minutes' from that moment until the worker's
    next cycle sent it: the full /readyz failed, a false alarm. Its wait for delivery now
    counts from the take-over: after 15 minutes more unsent, it is an alarm again."""
    clock = Clock()
    patient = "Patient/taken-over"
    tenant, entry_id, outbox = _waiting_since_its_save(database, patient, clock)
    saved_at = outbox_entry(database, entry_id).created_at
    check = outbox.readiness_check()

    clock.advance(3 * 3600)  # the next shift's nurse opens the patient's chart
    assert outbox.adopt_session(tenant.id, "ehr", _NOWHERE, patient, "next-shift") == 1
    taken_over = check()
    assert (taken_over.ok, taken_over.detail) == (True, "1 pending")
    clock.advance(14 * 60)
    assert check().ok

    clock.advance(2 * 60)  # 16 minutes deliverable and still not sent: the server is down
    stuck = check()
    assert not stuck.ok
    assert stuck.detail == "undelivered for over 0:15:00: 1 pending"
    assert outbox_entry(database, entry_id).created_at == saved_at  # still the save's time


def test_a_taken_over_entry_waiting_again_counts_its_wait_for_a_sign_in_from_its_save(
    database: Database,
) -> None:
    """Taken over, then waiting for a sign-in again (the new session expired too): the
    READY_MAX_WAIT of a day still counts from the save, not from the take-over."""
    clock = Clock()
    patient = "Patient/taken-over-twice"
    tenant, entry_id, outbox = _waiting_since_its_save(database, patient, clock)
    check = outbox.readiness_check()

    clock.advance(20 * 3600)
    assert outbox.adopt_session(tenant.id, "ehr", _NOWHERE, patient, "also-expired") == 1
    assert outbox.deliver(entry_id) is DeliveryState.WAITING_AUTHORISATION
    clock.advance(3 * 3600)
    assert check().ok  # 23 hours since the save
    clock.advance(2 * 3600)
    late = check()
    assert not late.ok
    assert late.detail.startswith("waiting for a sign-in for over 1 day")


def test_a_save_held_back_behind_one_waiting_for_a_sign_in_is_no_delivery_alarm(
    database: Database,
) -> None:
    """A later save of a patient whose earlier save waits for a sign-in is held back behind
    it (a patient's saves reach the server in order). It made the full /readyz fail after
    15 minutes, long before the waiting save's own alarm of a day, though no FHIR server
    was failing; the waiting save is what an operator must act on."""
    tenant = make_tenant(database, "a", "http://127.0.0.1:9/fhir")  # nothing listens there
    clock = Clock()
    settings = Settings(environment="test", database_url="sqlite://")
    outbox = make_outbox(database, clock, tokens=SessionTokens(database, settings))
    patient = "Patient/held-back"
    waiting = _enqueue(
        database, tenant, "http://127.0.0.1:9/fhir", {}, session="expired", patient=patient
    )
    assert outbox.deliver(waiting) is DeliveryState.WAITING_AUTHORISATION
    _enqueue(database, tenant, "http://127.0.0.1:9/fhir", {}, session="s2", patient=patient)
    check = outbox.readiness_check()

    clock.advance(3 * 3600)
    assert outbox.run_once() == []  # held back: not even tried
    held = check()
    assert (held.ok, held.detail) == (True, "1 pending, 1 waiting-authorisation")

    clock.advance(21 * 3600)  # a day since the waiting save: now that one is the alarm
    late = check()
    assert not late.ok
    assert late.detail.startswith("waiting for a sign-in for over 1 day")


def test_an_idle_cycle_takes_no_write_lock(tmp_path: Path) -> None:
    """SQLite: the worker's cycle with nothing due must not wait for (or take) the database's
    write lock, which the CDS path's writes need (service.cds.batching)."""
    url = f"sqlite:///{tmp_path / 'idle.db'}"
    migrate.upgrade(url)
    database = Database(url)
    other_writer = sqlite3.connect(tmp_path / "idle.db", isolation_level=None)
    other_writer.execute("BEGIN IMMEDIATE")
    try:
        assert make_outbox(database, Clock()).run_once() == []
    finally:
        other_writer.execute("ROLLBACK")
        other_writer.close()
        database.dispose()


def test_the_app_runs_the_worker_and_readyz_and_metrics_report_the_outbox(
    database_url: str, database: Database, fhir_server: FhirServer
) -> None:
    """The real app: its lifespan worker delivers with the session's real token source."""
    tenant = make_tenant(database, "default", fhir_server.base_url)
    settings = Settings(environment="test", database_url=database_url, outbox_interval_seconds=0.2)
    app = create_app(settings, database)
    session_id, _secret = app.state.sessions.create(
        NewSession(
            tenant_id=tenant.id,
            registration_id="ehr",
            registration_fingerprint=launched_under(tenant, "ehr"),
            path_prefix="",
            fhir_base_url=fhir_server.base_url,
            token_endpoint="http://127.0.0.1:9/token",
            user=AppUser(
                fhir_user="Practitioner/nurse-1", name="Sofie", roles=frozenset({"nurse"})
            ),
            language="nl",
            patient_id="p1",
            encounter_id=None,
            app_context=None,
            launch_details={},
            scope="launch openid fhirUser patient/*.c",
            access_token="loopback",
            refresh_token=None,
            access_expires_at=utcnow() + timedelta(hours=1),
        )
    )
    entry_id = _queue_read(database, tenant, fhir_server.base_url, session_id)

    with TestClient(app) as client:  # runs the lifespan: the worker starts
        ready = client.get("/readyz")
        assert ready.json()["checks"]["outbox"]["ok"] is True
        give_up = time.monotonic() + 30
        while outbox_entry(database, entry_id).state != DeliveryState.DELIVERED:
            assert time.monotonic() < give_up, "the worker did not deliver within 30 s"
            time.sleep(0.05)  # polling a background thread's effect, with a deadline
        metrics = client.get("/metrics").text
        assert 'kindreflex_outbox_deliveries_total{state="delivered"} 1.0' in metrics
        assert "kindreflex_outbox_lease_renewal_failures_total 0.0" in metrics
    assert len(_events(database, fhir_server.base_url, entry_id)) == 1


def test_a_holder_that_died_after_the_server_applied_its_delivery_is_not_repeated(
    database: Database, fhir_server: FhirServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance sends the transaction, the FHIR server applies it, and the instance dies
    before it records anything (killed, out of memory, its database connection gone). Its
    lease runs out and another instance claims the entry. The attempt was counted only
    when recorded, so the entry still said 0 attempts, its witness was not asked, and the
    transaction was sent again: the plain creates (Provenance, AuditEvent) twice.

    The death is the one fault mocked here: ``_record`` raises instead of writing."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    marker, plain = str(uuid.uuid4()), str(uuid.uuid4())
    tx = TransactionBuilder()
    tx.create(_person(marker), {"system": SYSTEM, "value": marker})
    tx.add(_person(plain))  # no ifNoneExist, like a Provenance: only the witness keeps it single
    witness = f"RelatedPerson?identifier={SYSTEM}|{marker}"
    entry_id = _enqueue(database, tenant, fhir_server.base_url, tx.bundle(), witness=witness)
    clock = Clock()
    dying, other = make_outbox(database, clock), make_outbox(database, clock)

    def killed(*_args: Any) -> None:
        raise RuntimeError("the process died before recording the delivery")

    monkeypatch.setattr(dying, "_record", killed)
    with pytest.raises(RuntimeError):
        dying.deliver(entry_id)
    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{plain}") == 1

    assert other.run_once() == []  # the dead holder's lease still runs
    clock.advance(3600)
    assert [(d.state, d.detail) for d in other.run_once()] == [
        (DeliveryState.DELIVERED, "applied earlier")
    ]
    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{plain}") == 1
    assert outbox_entry(database, entry_id).attempts == 2


def _answer_lost(_body: bytes) -> bytes:
    """A gateway's page in place of the server's answer: the transaction applied, unheard."""
    return b"<html>502 Bad Gateway</html>"


def _provenance(target: str, recorded: str) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": recorded,
        "agent": [{"who": {"reference": "Practitioner/nurse-1"}}],
    }


def test_a_witness_a_lenient_server_answers_on_a_later_page_is_found(
    database: Database, fhir_server: FhirServer
) -> None:
    """A closing's witness is its Provenance: ``Provenance?target=Flag/…&recorded=…``. A
    server ignoring ``recorded`` (FHIR's lenient handling) answers with every Provenance of
    the Flag, ours last, past its first page on a long case. The witness read the first
    page only, said "not applied", and the closing was sent again: two Provenances (and
    AuditEvents) of one closing. Now it follows the ``next`` links. The lenient server is
    a real relay dropping ``recorded`` in front of sekmet (which supports it), whose own
    paging (20 a page) is followed (tests/support/relay)."""
    flag = f"Flag/{uuid.uuid4()}"
    history = [_provenance(flag, f"2026-12-01T08:{minute:02}:00+00:00") for minute in range(20)]
    with FhirClient(fhir_server.base_url, lambda: "t", 5.0) as client:
        client.transaction(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"resource": p, "request": {"method": "POST", "url": "Provenance"}}
                    for p in history
                ],
            }
        )
    recorded = utcnow().isoformat()
    tx = TransactionBuilder()
    tx.add(_provenance(flag, recorded))
    witness = f"Provenance?target={flag}&recorded={recorded}"
    with SlowRelay(fhir_server.base_url) as lenient:
        tenant = make_tenant(database, "a", lenient.url)
        entry_id = _enqueue(database, tenant, lenient.url, tx.bundle(), witness=witness)
        clock = Clock()
        outbox = make_outbox(database, clock)
        lenient.rewrite = _answer_lost
        assert outbox.deliver(entry_id) is DeliveryState.PENDING
        lenient.rewrite = None
        lenient.ignored = {"recorded"}
        clock.advance(3600)
        assert [(d.state, d.detail) for d in outbox.run_once()] == [
            (DeliveryState.DELIVERED, "applied earlier")
        ]
    assert count(fhir_server.base_url, "Provenance", target=flag, recorded=recorded) == 1


def test_a_refused_witness_search_keeps_the_entry_pending_unsent_and_says_so(
    database: Database, fhir_server: FhirServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Before a retry the witness is asked; a server refusing that search (a 4xx: a
    parameter it does not support) made the entry ``failed``: the nurse told her save was
    not stored, the refusal hook undoing it, though the first attempt had been applied,
    and a save typed again a duplicate. Not knowing whether it was applied is no reason
    to send it again, nor to say it failed: it stays pending, is not sent, is logged at
    ERROR and, waiting, fails /readyz; once the server answers the search it is found
    applied. The refusal is a real relay answering 400 in sekmet's place (sekmet supports
    the parameter; tests/support/relay)."""
    marker, plain = str(uuid.uuid4()), str(uuid.uuid4())
    tx = TransactionBuilder()
    tx.create(_person(marker), {"system": SYSTEM, "value": marker})
    tx.add(_person(plain))  # no ifNoneExist, like a Provenance: only the witness keeps it single
    witness = f"RelatedPerson?identifier={SYSTEM}|{marker}"
    with SlowRelay(fhir_server.base_url) as server:
        tenant = make_tenant(database, "a", server.url)
        entry_id = _enqueue(database, tenant, server.url, tx.bundle(), witness=witness)
        clock = Clock()
        outbox = make_outbox(database, clock)
        undone: list[int] = []
        outbox.when_refused("test", lambda _session, refused: undone.append(refused))
        server.rewrite = _answer_lost
        assert outbox.deliver(entry_id) is DeliveryState.PENDING
        server.rewrite = None

        server.refused = [400]  # the witness search
        clock.advance(3600)
        with caplog.at_level(logging.ERROR, logger="service.outbox"):
            assert [d.state for d in outbox.run_once()] == [DeliveryState.PENDING]
        assert undone == []
        assert "witness" in (outbox_entry(database, entry_id).last_error or "")
        (alert,) = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "witness" in alert.getMessage()
        assert "Patient/" not in str(vars(alert))
        check = outbox.readiness_check()()
        assert not check.ok  # waiting an hour by now: an operator is told
        assert "1 pending" in check.detail

        clock.advance(3600)
        assert [(d.state, d.detail) for d in outbox.run_once()] == [
            (DeliveryState.DELIVERED, "applied earlier")
        ]
    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{plain}") == 1


#: The worker's deadline for one request in the tests of a transaction in doubt: the settle
#: window (``Outbox._settle_seconds``), longer than the backoff's first step (below).
IN_DOUBT_TIMEOUT = 10.0
#: The retry base of those tests: the default ``KINDREFLEX_OUTBOX_INTERVAL_SECONDS``, as the
#: app runs it (``make_outbox``'s 30 s backoff is longer than the settle window).
INTERVAL_SECONDS = 2.0


def _stored_person(base_url: str) -> dict[str, Any]:
    """A RelatedPerson the server holds (version 1), as a user is shown it."""
    with FhirClient(base_url, lambda: "t", 5.0) as client:
        created = client.transaction(_single_create(_person(str(uuid.uuid4()))))
        location = created["entry"][0]["response"]["location"]
        return client.read("RelatedPerson", location.split("RelatedPerson/")[1].split("/")[0])


def _given_name(base_url: str, person_id: str) -> tuple[list[str], str]:
    with FhirClient(base_url, lambda: "t", 5.0) as client:
        stored = client.read("RelatedPerson", person_id)
    return stored["name"][0]["given"], stored["meta"]["versionId"]


@pytest.mark.parametrize("edits", [True, False], ids=["if-match", "creates-only"])
def test_a_transaction_in_doubt_is_left_to_settle_before_its_witness_is_asked(
    database: Database, fhir_server: FhirServer, edits: bool
) -> None:
    """The server takes a transaction up late (a queue in front of it, a lock it waits
    for): the saving request stops waiting (its short timeout), the server goes on and
    applies it afterwards. The worker retried after the backoff's first step (1-2 s with
    the default interval), the witness found nothing yet, and the transaction went again;
    then the first copy landed. The second, with an If-Match on the version the first had
    just moved, was refused, 412: a ``conflict`` (the nurse told someone else changed her
    data) for a save the record holds; without one, its plain creates (a save's Provenance
    and AuditEvent) were stored twice. Now a transaction sent and not answered is in
    doubt: the next attempt waits the settle window (the worker's deadline) before it
    asks the witness, which then finds the first copy: delivered, sent once.

    Real FHIR server; the relay in front of it holds the transaction until the test lets
    it go (tests/support/relay), the outbox's clock is moved: no sleeping."""
    marker, plain = str(uuid.uuid4()), str(uuid.uuid4())
    with SlowRelay(fhir_server.base_url) as late:
        tenant = make_tenant(database, "a", late.url)
        tx = TransactionBuilder()
        if edits:
            shown = _stored_person(fhir_server.base_url)
            tx.update({**shown, "name": [{"given": ["Edited"]}]}, shown["meta"]["versionId"])
        tx.create(_person(marker), {"system": SYSTEM, "value": marker})  # the witness
        tx.add(_person(plain))  # a plain create, as a save's Provenance is
        witness = f"RelatedPerson?identifier={SYSTEM}|{marker}"
        entry_id = _enqueue(database, tenant, late.url, tx.bundle(), witness=witness)
        clock = Clock()
        outbox = Outbox(
            database,
            LoopbackTokens(),
            timeout=IN_DOUBT_TIMEOUT,
            retry_base=INTERVAL_SECONDS,
            clock=clock,
        )

        late.holding = 1  # the server takes the transaction up late
        assert outbox.deliver(entry_id, timeout=0.5) is DeliveryState.PENDING
        clock.advance(INTERVAL_SECONDS)  # the backoff's first step, at its longest
        assert outbox.run_once() == []  # not sent again while the first copy may land
        said = outbox_entry(database, entry_id).last_error or ""
        assert said.startswith("in doubt: ")
        assert "no whole answer within 0.5 s" in said
        settled_at = IN_DOUBT_TIMEOUT - INTERVAL_SECONDS
        assert settled_at - 1 <= _due_in(database, entry_id, clock) <= settled_at

        late.release()  # the server applies the first copy, its client long gone
        assert late.settled()
        clock.advance(settled_at)
        assert [(d.state, d.detail) for d in outbox.run_once()] == [
            (DeliveryState.DELIVERED, "applied earlier")
        ]
        assert late.transactions == 1

    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{marker}") == 1
    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{plain}") == 1
    if edits:
        assert _given_name(fhir_server.base_url, shown["id"]) == (["Edited"], "2")


@pytest.mark.parametrize("witnessed_by", ["create", "provenance"])
def test_a_resend_refused_because_the_copy_in_doubt_landed_first_is_delivered_not_a_conflict(
    database: Database, fhir_server: FhirServer, witnessed_by: str
) -> None:
    """A server slower still: the copy in doubt lands after the settle window, after the
    witness asked before the resend found nothing, just before the copy sent again. That
    one's If-Match is on the version the first copy moved: 412. It was a ``conflict``
    (for a social save, its refusal hook put the worklist row back) though the record
    holds the save. Now a 409/412 to a transaction sent again asks the witness again
    first: found, the entry is delivered; the copy refused wrote nothing. For either
    witness: a resource the save creates (a nurse's step 1 finding, beside her edit of a
    child, merged at delivery), or the Provenance of a save that only updates (a social
    worker's closing of the case's Flag), found by its target and instant.

    The relay holds the first copy until the second comes, then applies them in the order
    they came, as a server taking up a queue (tests/support/relay)."""
    shown = _stored_person(fhir_server.base_url)
    plain = str(uuid.uuid4())
    tx = TransactionBuilder()
    edited = {**shown, "name": [{"given": ["Edited"]}]}
    if witnessed_by == "create":
        marker = str(uuid.uuid4())
        tx.merge_update(edited, shown["meta"]["versionId"])
        tx.create(_person(marker), {"system": SYSTEM, "value": marker})
        tx.add(_person(plain))  # a plain create, as a save's Provenance is
        witness = f"RelatedPerson?identifier={SYSTEM}|{marker}"
        written = ("RelatedPerson", {"identifier": f"{SYSTEM}|{plain}"})
    else:
        tx.update(edited, shown["meta"]["versionId"])
        target, recorded = f"RelatedPerson/{shown['id']}", utcnow().isoformat()
        tx.add(_provenance(target, recorded))
        witness = f"Provenance?target={target}&recorded={recorded}"
        written = ("Provenance", {"target": target, "recorded": recorded})
    with SlowRelay(fhir_server.base_url) as late:
        tenant = make_tenant(database, "a", late.url)
        entry_id = _enqueue(database, tenant, late.url, tx.bundle(), witness=witness)
        clock = Clock()
        outbox = Outbox(
            database,
            LoopbackTokens(),
            timeout=IN_DOUBT_TIMEOUT,
            retry_base=INTERVAL_SECONDS,
            clock=clock,
        )
        undone: list[int] = []
        outbox.when_refused("test", lambda _session, refused: undone.append(refused))

        late.holding = 1
        assert outbox.deliver(entry_id, timeout=0.5) is DeliveryState.PENDING
        clock.advance(3600)  # well past the settle window
        deliveries = outbox.run_once()  # the witness: nothing yet; the resend: 412
        assert late.transactions == 2
        assert late.settled()

    assert [(d.state, d.detail) for d in deliveries] == [
        (DeliveryState.DELIVERED, "applied earlier, its resend refused")
    ]
    assert undone == []  # no refusal: a social save's worklist row stays
    assert _given_name(fhir_server.base_url, shown["id"]) == (["Edited"], "2")  # applied once
    kind, params = written  # the plain create: once
    assert count(fhir_server.base_url, kind, **params) == 1


def test_a_slow_batch_does_not_deliver_an_entry_another_instance_took_over(
    database: Database, fhir_server: FhirServer
) -> None:
    """A worker claims a batch with one lease for all of it, then delivers the entries one
    after the other. When the FHIR server is slow (each entry: a token, a witness search,
    vreads, the transaction, each up to the timeout) the lease runs out before the last
    entry; another instance claims and delivers it, and the first one, not looking, sent
    it again (its plain creates twice). The slowness is the shared test clock moved on
    while the first two entries are delivered; nothing is mocked."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    plains = [str(uuid.uuid4()) for _ in range(3)]
    ids = []
    for plain in plains:
        marker = str(uuid.uuid4())
        tx = TransactionBuilder()
        tx.create(_person(marker), {"system": SYSTEM, "value": marker})
        tx.add(_person(plain))
        witness = f"RelatedPerson?identifier={SYSTEM}|{marker}"
        patient = f"Patient/{uuid.uuid4()}"  # one patient's entries would wait for each other
        base_url = fhir_server.base_url
        ids.append(
            _enqueue(database, tenant, base_url, tx.bundle(), witness=witness, patient=patient)
        )
    clock = Clock()
    other = make_outbox(database, clock)
    calls: list[str] = []
    taken_over: list[Any] = []

    class SlowTokens(LoopbackTokens):
        def access_token(self, session_id: str) -> str:
            calls.append(session_id)
            if len(calls) <= 2:  # the batch's lease: 60 s + 2 timeouts (5 s) per entry
                clock.advance(50)
            if len(calls) == 2:  # the third entry's lease has run out: another takes it
                taken_over.extend(other.run_once())
            return super().access_token(session_id)

    slow = make_outbox(database, clock, tokens=SlowTokens())
    delivered = slow.run_once(limit=3)

    assert [(d.entry_id, d.state) for d in taken_over] == [(ids[2], DeliveryState.DELIVERED)]
    assert [(d.entry_id, d.state) for d in delivered] == [
        (ids[0], DeliveryState.DELIVERED),
        (ids[1], DeliveryState.DELIVERED),
    ]
    for plain in plains:
        assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{plain}") == 1
    assert outbox_entry(database, ids[2]).state == DeliveryState.DELIVERED


class _PastItsLease(NamedTuple):
    """An entry whose delivery runs far past its lease: the shared clock is moved on while
    it is under way, and then another instance looks for due entries."""

    outbox: Outbox  # the one delivering, its heartbeat every 10 ms
    entry_id: int
    plain: str  # the identifier of its plain create: once on the server, or twice
    taken_over: list[Delivery]  # what the other instance delivered meanwhile


def _past_its_lease(
    database: Database, fhir_server: FhirServer, renewed: bool = True, **options: Any
) -> _PastItsLease:
    """Queues the entry and makes the outbox (``options``: make_outbox's) to deliver it;
    ``renewed``: whether its heartbeat beats at all while the delivery is under way."""
    tenant = make_tenant(database, "a", fhir_server.base_url)
    marker, plain = str(uuid.uuid4()), str(uuid.uuid4())
    tx = TransactionBuilder()
    tx.create(_person(marker), {"system": SYSTEM, "value": marker})
    tx.add(_person(plain))
    witness = f"RelatedPerson?identifier={SYSTEM}|{marker}"
    entry_id = _enqueue(database, tenant, fhir_server.base_url, tx.bundle(), witness=witness)
    clock = Clock()
    other = make_outbox(database, clock)
    taken_over: list[Delivery] = []

    class SlowTokens(LoopbackTokens):
        def access_token(self, session_id: str) -> str:
            clock.advance(3600)  # far past any lease
            give_up = time.monotonic() + (10 if renewed else 0)
            while outbox_entry(database, entry_id).lease_until <= clock.now:  # type: ignore[operator]
                if time.monotonic() > give_up:
                    break  # not renewed: the other instance will show what that costs
                time.sleep(0.01)  # polling the heartbeat thread's effect, with a deadline
            taken_over.extend(other.run_once())
            return super().access_token(session_id)

    heartbeat = 0.01 if renewed else 3600
    slow = make_outbox(database, clock, tokens=SlowTokens(), heartbeat_seconds=heartbeat, **options)
    return _PastItsLease(slow, entry_id, plain, taken_over)


def test_a_delivery_that_outlasts_its_lease_keeps_it_and_is_not_sent_twice(
    database: Database, fhir_server: FhirServer
) -> None:
    """httpx's timeouts bound each read and write, not a whole exchange: a server answering
    a little at a time keeps one delivery going past its lease. Another instance then
    claimed the entry and sent it again (its plain creates twice). The holder now renews
    the lease while it delivers. The slowness is the shared clock moved past the lease
    while the delivery is under way; nothing is mocked."""
    slow = _past_its_lease(database, fhir_server)
    assert slow.outbox.deliver(slow.entry_id) == DeliveryState.DELIVERED

    assert slow.taken_over == []
    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{slow.plain}") == 1
    assert outbox_entry(database, slow.entry_id).lease_until is None  # released once recorded


def test_a_delivery_that_lost_its_lease_does_not_send_what_another_instance_took_over(
    database: Database, fhir_server: FhirServer
) -> None:
    """The heartbeat could not keep the lease (renewals refused past it, the process
    paused: here no beat comes at all) and another instance claimed and delivered the
    entry. The first went on and sent the transaction a second time (found by review: its
    plain creates twice). It asks for its lease once more before sending, and stops."""
    slow = _past_its_lease(database, fhir_server, renewed=False)
    assert slow.outbox.deliver(slow.entry_id) == DeliveryState.DELIVERED  # by the other

    assert [d.state for d in slow.taken_over] == [DeliveryState.DELIVERED]
    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{slow.plain}") == 1


def test_a_lease_renewal_the_database_refuses_is_logged_counted_and_tried_again(
    database: Database,
    fhir_server: FhirServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One database error while the heartbeat renewed a delivery's lease (a connection
    dropped, a failover) ended the heartbeat: past the logs (a thread's traceback on
    stderr), uncounted, and the delivery went on without its lease, for another instance
    to claim the entry and send it again. Now the error is logged by its type, counted
    in a metric, and the next beat renews the lease. The database error is injected (the
    first renewal raises): one failing UPDATE, and no other statement, cannot be caused
    otherwise."""
    registry = CollectorRegistry()
    failures = Counter("renewal_failures", "lease renewals refused", registry=registry)
    slow = _past_its_lease(database, fhir_server, lease_renewal_failures=failures)
    renew = slow.outbox._renew
    refused: list[int] = []

    def refused_once(entry: Any) -> bool:
        if not refused:
            refused.append(entry.id)
            cause = ConnectionError("server closed the connection unexpectedly")
            raise OperationalError("UPDATE outbox_entries SET lease_until=?", {}, cause)
        return renew(entry)

    monkeypatch.setattr(slow.outbox, "_renew", refused_once)
    with caplog.at_level(logging.ERROR, logger="service.outbox"):
        assert slow.outbox.deliver(slow.entry_id) == DeliveryState.DELIVERED

    assert slow.taken_over == []
    assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{slow.plain}") == 1
    (logged,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "lease" in logged.getMessage()
    assert logged.fields["error"] == "OperationalError"  # type: ignore[attr-defined]
    assert "UPDATE" not in str(vars(logged))  # the type, not the statement nor its values
    assert registry.get_sample_value("renewal_failures_total") == 1


def test_a_saving_requests_attempt_ends_within_the_screens_budget_and_the_worker_sends_it(
    database: Database, fhir_server: FhirServer
) -> None:
    """The user waits for the save's own attempt. A save merging three resources at
    delivery (a search each, then the transaction) to a server answering each request just
    within the timeout kept her waiting four timeouts. The attempt now ends within the
    screen's budget; the searches leave less than a timeout of it, so the transaction is
    not sent at all (cut off by the budget, the server would apply it unheard: the save
    said "pending" though it landed). The entry stays pending and the worker, bounded per
    request only, delivers it once. The slowness is a real relay holding each answer back
    (tests/support/relay). Each answer leaves 0.3 of the timeout to spare, for a loaded
    machine; three of them still run past the two timeouts before the transaction."""
    timeout = 2.5
    markers = [str(uuid.uuid4()) for _ in range(3)]
    with SlowRelay(fhir_server.base_url, delay=0.7 * timeout) as slow:
        tenant = make_tenant(database, "a", slow.url)
        tx = TransactionBuilder()
        for marker in markers:
            tx.create_or_merge(_person(marker), {"system": SYSTEM, "value": marker})
        entry_id = _enqueue(database, tenant, slow.url, tx.bundle())
        clock = Clock()
        outbox = make_outbox(database, clock)

        started = time.monotonic()
        state = outbox.deliver(entry_id, timeout=timeout)
        waited = time.monotonic() - started
        asked = slow.asked

        assert state is DeliveryState.PENDING
        assert waited < SCREEN_BUDGET_TIMEOUTS * timeout + 1
        assert asked <= 3  # the searches (fewer if one ran out of time), not the transaction
        budget = f"the save's {SCREEN_BUDGET_TIMEOUTS * timeout:g} s"
        assert budget in (outbox_entry(database, entry_id).last_error or "")
        for marker in markers:
            assert (
                count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{marker}") == 0
            )

        clock.advance(3600)  # the retry is due
        (delivery,) = outbox.run_once()

    assert delivery.state is DeliveryState.DELIVERED
    for marker in markers:
        assert count(fhir_server.base_url, "RelatedPerson", identifier=f"{SYSTEM}|{marker}") == 1


def test_a_patients_later_save_waits_for_the_id_of_an_earlier_one_still_committing(
    database: Database, fhir_server: FhirServer
) -> None:
    """The ids order a patient's deliveries. PostgreSQL gives an id when the row is
    inserted: a save still committing held id 10 while another nurse's, committed first,
    took 11 and was delivered first (found by review). The later save now cannot take an
    id before the earlier commits: tried with a lock timeout, it is refused while the
    earlier is open, and takes the next id once it has committed. Another patient's save
    does not wait. (SQLite has one writer at a time: there the earlier is simply first.)"""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    tenant = make_tenant(database, "a", fhir_server.base_url)
    postgres = database.engine.dialect.name == "postgresql"
    empty = TransactionBuilder().bundle()

    def later_save(patient: str) -> int:
        with database.session() as db:
            if postgres:
                db.execute(text("SET LOCAL lock_timeout = '200ms'"))
            return _enqueue_in(db, tenant, fhir_server.base_url, empty, patient=patient)

    with database.session() as earlier:
        first = _enqueue_in(earlier, tenant, fhir_server.base_url, empty, patient="Patient/p1")
        if postgres:
            with pytest.raises(DBAPIError, match="lock"):
                later_save("Patient/p1")
            assert later_save("Patient/p2") > first  # another patient: not held
    second = later_save("Patient/p1")

    assert second > first


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_database_that_does_not_answer_is_said_once_by_the_worker_not_every_cycle(
    database: Database, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker logged a full traceback every cycle (2 s) while the database was down,
    burying the log (found by review): now once when it stops answering, once when it
    answers again, and the worker goes on."""
    worker = OutboxWorker(make_outbox(database, Clock()), interval=60)
    caplog.set_level(logging.INFO, logger="service.outbox")

    with refusing_connections(database_url):
        worker.cycle()
        worker.cycle()
    worker.cycle()

    said = [r for r in caplog.records if r.name == "service.outbox"]
    assert [(r.levelname, r.getMessage()) for r in said] == [
        ("ERROR", "outbox: the database does not answer"),
        ("WARNING", "outbox: the database answers again"),
    ]
    assert not any(r.exc_info for r in said)
