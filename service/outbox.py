"""The outbox: FHIR transactions committed to our database first, delivered afterwards.

Nothing a nurse records may be lost because the hospital's FHIR server is down, slow or
restarting, or because this service restarts. So a save commits the transaction Bundle
(with who wrote it and through which session) to ``outbox_entries`` in the same local
transaction as everything else, and only then delivers it:

* at once, by the request that saved it (:meth:`Outbox.deliver`, short timeout), and
* otherwise by the worker (:class:`OutboxWorker`), which retries due entries with capped
  exponential backoff and jitter, across restarts (all state is in the database).

One server's outage delays no other's. One worker delivers for every hospital and FHIR
server of the instance, a batch's entries one after the other: once a server does not take
an attempt (down, not answering, throttling: ``Delivery.unavailable``), the worker sends it
nothing more in that cycle. Its other entries of the batch wait for their backoff unsent
(not counted as attempts), and the next batch is claimed without them
(:meth:`Outbox.run_once`). A server that hangs costs a cycle one timeout, not one per entry.

Exactly once. An instance *claims* entries with a lease (``lease_owner``/``lease_until``)
in one UPDATE whose subquery uses ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite takes
its write lock at the start of the statement), so two instances never deliver the same
entry concurrently; only the lease holder may record the result. While a delivery runs,
its holder renews the lease (``LEASE_HEARTBEAT_SECONDS``): httpx's timeouts bound each
read and write, not a whole exchange, so a server answering a little at a time could
otherwise outlast the lease and another instance send the entry a second time. A renewal
the database refuses is logged, counted and tried again at the next beat
(:meth:`Outbox._beat`). A holder that dies stops renewing, and its lease runs out. The
Bundle itself is idempotent where FHIR allows it: creates are conditional on business
identifiers (``ifNoneExist``), updates carry ``If-Match``. Provenance and AuditEvent have no
identifier in R4 (and a client-assigned id would need update scopes), so they are plain
creates; what keeps them single is the entry's *witness*, a search for a resource only
this transaction creates. Before any retry the witness is asked first: when a delivery
succeeded but its answer was lost, the (atomic) transaction was applied and is not sent
again. Its search is read to its last page (a lenient server answers with more than was
asked); a witness that cannot say (its search refused, or too long) keeps the entry
``pending``, unsent, and alerts (:func:`_not_known`).

A transaction sent and left unanswered is *in doubt* (``FhirUnanswered``: its deadline
passed, the connection was cut, a gateway answered 502/504 for the server): the server
does not drop it because our client stopped waiting, and may apply it seconds later. The
next attempt therefore comes no sooner than the settle window, the worker's whole request
deadline (``KINDREFLEX_FHIR_TIMEOUT_SECONDS``), however short the backoff: the witness
asked after the backoff alone (1-2 s) found nothing yet, the transaction went again,
then the first copy landed (its plain creates twice; the second copy's If-Match refused,
412, a ``conflict`` for a save the record holds). A 5xx the server answered itself is an
outage as before. And since a server may be slower still, a 409/412 to a transaction sent
again asks the witness once more before it is judged (:func:`_landed_or_refused`):
found, our earlier copy landed first, and the entry is delivered.

One patient's saves in save order. An entry that writes patient data is not claimed — by
the worker nor by the saving request, which then leaves it to the worker ("delivery
pending") — while an older entry for the same patient (same hospital and FHIR server)
is ``pending`` or ``waiting-authorisation``: a later save's values are the ones the server
keeps. Failed and conflicting entries need a person and block nothing; read AuditEvents
(kind ``audit``) depend on nothing and are neither held nor holding.

Updates that keep what others stored. :meth:`TransactionBuilder.merge_update` queues only
*our* elements of a resource someone else may also write (a child the EHR recorded), with
``If-Match`` on the version the user saw. Just before sending, the outbox reads that exact
version (vread) and lays our elements over it, so the save itself needs no FHIR server:
the input is committed first like any other. An element of that version that already
says what ours says stays as the EHR wrote it (its local codes, its texts), and of a
list only the entry ours stands for is replaced (the EHR's nickname for a child stays).
At that point it also refuses an update that would move the resource to another patient
(the version reference travelled through the browser) — the entry is ``failed`` — and
drops an update that changes nothing. :meth:`TransactionBuilder.create_or_merge` (a child
saved again while an earlier save of it may not be on the server yet) is a conditional
create that, when the resource with its identifier exists at delivery, becomes the same
merge over that resource's current version (a search, then If-Match on what it found);
given what the user was shown (the resource as the earlier save writes it), only what
she changed of it is laid over, so that what the EHR corrected since stays; an element
she changed that someone else also changed since, into another value, is a ``conflict``
(a three-way check: laid over, hers overwrote the other change unseen). What
describes the writes (a Provenance's activity and targets, an AuditEvent's action and
entities) is queued both ways and sent as they turned out, create or update, naming
only what was written (``if_updating`` of :meth:`TransactionBuilder.add`); a
transaction left with nothing to write is not sent.

Outcomes: a 4xx rejection is ``failed`` (logged at ERROR without patient data, never
retried), but for 429, 408 and 425 (``FhirThrottled``: the server, or a gateway in front
of it, asks to be asked later), to the transaction, a read at delivery or the witness
alike: ``pending`` like an outage, tried again after the backoff or the answer's
``Retry-After`` when longer, at most ``RETRY_CAP_SECONDS`` (:meth:`Outbox._retry_delay`);
409/412 is ``conflict`` (someone else changed a resource; the input is kept for the nurse)
— unless it was a race with another writer between the outbox's own read at delivery and
its write: a resource a create-or-merge's search found at delivery is at another version
by now, while every If-Match of the transaction as sent that the user's page carried (an
update's, a merge update's, the version laid over what the user was shown) still holds.
Nobody was shown the version read at delivery, so nothing of the user's was lost: the
entry stays ``pending`` and the next attempt reads and merges again, at most
``RACES_RETRIED`` times (counted in ``races``; the next race is a ``conflict``, counted
too, so nothing loops: the record kept changing under the save, :func:`kept_changing`,
which the nurse is told apart from a change of what she was shown). A 409/412 with every
If-Match of the transaction still current is neither: the server refused it for another
reason, lasting by its OperationOutcome's issue codes (a conditional create matching two
resources: :func:`refusal_lasts`), ``failed`` at once, or passing (a lock), sent again
within the same bound, then ``failed``, with the server's outcome. 401/403 or a session
whose tokens cannot be refreshed is ``waiting-authorisation``: the entry waits until the
next launch for the same patient through the same EHR registration
(:meth:`Outbox.adopt_session`), and is then delivered with that session's token — the
Provenance inside still names the original author.

Readiness (``/readyz``) fails when a pending entry waits longer than ``READY_MAX_AGE`` or
the oldest one has failed ``READY_MAX_ATTEMPTS`` times: the FHIR server is not taking our
writes. A pending entry waits from when it became deliverable: its save, or the launch
that took it over from waiting for authorisation (``taken_over_at``), however long ago it
was saved; the worker sends it at its next cycle. It also fails when an entry saved more
than ``READY_MAX_WAIT`` ago still waits for authorisation: nobody launched the app for
that patient since, and until someone does, the finding is not on the server and holds
back the patient's later saves. Failed, conflicting and younger waiting entries need a
person, not another instance, so they are only counted in the check's detail (and shown
on the worklist); a failed or conflicting write also gets a local audit row with outcome
``failure``. The detail counts, it never names a patient (``/readyz`` may be reachable
from outside); ``kindreflex outbox waiting`` lists the waiting entries for an operator,
``kindreflex outbox refused`` the failed and conflicting ones, with the server's reason
(:func:`undelivered`).

What else a refused write undoes belongs to the module that saved it: a hook registered
for the entry's kind (:meth:`Outbox.when_refused`) runs in the same local transaction
that records ``failed`` or ``conflict``, whoever recorded it: the saving request or the
worker, minutes or hours later.
"""

from __future__ import annotations

import logging
import random
import threading
import traceback
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter
from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from service.api.health import CheckResult, ReadinessCheck
from service.db.base import Database, passing_failure, utcnow
from service.db.models import AuditRecord, OutboxEntry, Tenant
from service.fhir import terminology
from service.fhir.client import (
    FhirClient,
    FhirConflict,
    FhirRejected,
    FhirThrottled,
    FhirUnanswered,
    FhirUnavailable,
    ReauthorisationRequired,
    Resource,
    identifier_of_token,
    identifier_token,
    search_params,
    search_query,
    summarise,
)
from service.fhir.mapping import (
    as_laid_over,
    current_name,
    meta_on_update,
    name_text,
    narrative_on_update,
)

log = logging.getLogger(__name__)

#: Retry delays grow from the worker interval up to this cap (seconds).
RETRY_CAP_SECONDS = 300.0
#: The readiness check fails when an entry waits longer than this for delivery.
READY_MAX_AGE = timedelta(minutes=15)
#: ... or when the oldest due entry has failed this many attempts in a row.
READY_MAX_ATTEMPTS = 8
#: ... or when an entry saved longer ago than this still waits for authorisation. A waiting
#: entry is normally taken over by the next launch for its patient, often within the same
#: nurse's session (8 hours) or by the next shift's; past both, nobody is likely to open
#: that patient's chart in time, and the finding (with the patient's later saves, which it
#: holds back) may never reach the FHIR server unless an operator has someone do so.
READY_MAX_WAIT = timedelta(hours=24)
#: How many times an entry whose create-or-merge lost a race at delivery (see the module
#: doc) is merged and sent again; one race more is a ``conflict`` (:func:`kept_changing`).
#: A race needs another write to the resource between two requests of ours, milliseconds
#: apart: a resource changed that often is best left to a person. A 409/412 that no version
#: explains is sent again as often, then ``failed`` (both counted in ``races``), unless the
#: server says it lasts (:func:`refusal_lasts`): then it is ``failed`` at once.
RACES_RETRIED = 3
#: The attempt (counted from the entry's first, outages included) from which an attempt
#: that raises an unexpected error (:func:`_unexpected`) is ``failed`` rather than
#: ``pending``: a passing cause (an odd answer) has had its retries, a bug of ours will not
#: pass by sending again, and the patient's later saves wait behind a pending entry.
UNEXPECTED_ATTEMPTS = 3
#: The pages of a witness search read at most. A witness finds one resource, but a server
#: ignoring one of its parameters (FHIR's lenient handling) answers with all the others
#: too: every Provenance of a Flag, a case's whole history, ours the newest. Ten pages
#: (2 000 resources at sekmet's 20 a page; HAPI's default is 20 too) bound the work of one
#: attempt; a longer search without the resource is not known (``_WitnessUnanswered``).
WITNESS_MAX_PAGES = 10
#: Each request of the saving request's own delivery attempt (``deliver(timeout=…)``), at
#: most: the nurse or the social worker waits for it, and the worker sends what it did not.
IMMEDIATE_TIMEOUT_SECONDS = 3.0
#: How long a stopping service waits for the worker's batch in progress: an entry cut
#: short is delivered by another instance once its lease ends (``deploy/kubernetes``'s
#: grace period leaves it this long).
STOP_TIMEOUT_SECONDS = 30
#: OperationOutcome issue codes (FHIR R4 IssueType) saying a 409/412 no version explains
#: will not pass: the content, or what a conditional request matched, must change first,
#: which sending the same transaction again cannot do (sekmet's 412 ``multiple-matches``
#: for a child the record holds twice; Microsoft's FHIR server says ``required`` for the
#: same). Every other code (``processing``: HAPI's lock on concurrent writes, ``conflict``,
#: ``transient``…) or none may pass, and is retried. See docs/architecture.md.
LASTING_ISSUE_CODES = frozenset(
    {
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
    }
)
#: The severities of an issue that refuses: a warning beside the error is not the reason.
_REFUSING_SEVERITIES = frozenset({"fatal", "error"})


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CONFLICT = "conflict"
    WAITING_AUTHORISATION = "waiting-authorisation"


#: What a refused entry (``failed`` or ``conflict``) undoes locally: called with the
#: session that records the state and the entry's id (see :meth:`Outbox.when_refused`).
RefusalHook = Callable[[Session, int], None]
#: How a delivery makes its FHIR client (base URL, token, timeout): the worker's bounds each
#: request (``FhirClient``), the saving request's all of them too (``FhirClient.for_save``).
_ClientMaker = Callable[[str, Callable[[], str], float], FhirClient]


class TokenSource(Protocol):
    """Access tokens per app session (``smart_app.session.SessionTokens``)."""

    def access_token(self, session_id: str) -> str: ...


@dataclass(frozen=True)
class NewEntry:
    """What a use case hands to the outbox: the transaction and on whose behalf it is sent."""

    kind: str
    registration_id: str
    fhir_base_url: str
    session_id: str
    author: str
    patient_ref: str | None
    bundle: Resource
    witness: str | None = None
    #: The saving request delivers the entry itself right after its commit
    #: (:meth:`Outbox.deliver`); the worker leaves it to that request for ``HELD_FOR_SAVER``.
    delivered_at_once: bool = False


#: How long the worker leaves an entry to the request that saved it. When the worker
#: claimed it in the moment between the commit and the request's own attempt, the nurse
#: saw "delivery pending" for a save that was being delivered. Should the request die
#: before its attempt, the worker delivers the entry after this.
HELD_FOR_SAVER = timedelta(seconds=30)
#: How often a running delivery renews its lease: well inside the shortest lease (60 s).
LEASE_HEARTBEAT_SECONDS = 15.0
#: The states of an entry that will still be delivered. An older entry for the same
#: patient in one of them holds a later one back (see the module doc). Failed and
#: conflicting ones need a person, and must not hold up the patient's later saves until
#: someone comes.
UNDELIVERED_STATES = (DeliveryState.PENDING, DeliveryState.WAITING_AUTHORISATION)
#: Entries outside the per-patient order: a read's AuditEvent (a plain create of its own).
_UNORDERED_KINDS = ("audit",)


@dataclass(frozen=True)
class Delivery:
    """The result of one delivery attempt."""

    entry_id: int
    state: DeliveryState
    detail: str = ""
    outcome: Resource | None = None  # the server's OperationOutcome, when it refused
    raced: bool = False  # a race at delivery lost, or a passing refusal no version explains
    retry_after: float | None = None  # a throttling server's Retry-After (seconds), if pending
    in_doubt: bool = False  # the transaction was sent and not answered: it may still land
    #: the FHIR server did not take the attempt (down, not answering, throttling): the
    #: worker sends nothing more to it in this cycle (:meth:`Outbox.run_once`)
    unavailable: bool = False


def _in_doubt(entry_id: int, error: FhirUnanswered) -> Delivery:
    """``pending``, the transaction *in doubt*: sent (or perhaps sent) and not answered, it
    may be applied yet, after the error (:meth:`Outbox._record` waits for it to settle)."""
    detail = f"in doubt: {error}"
    return Delivery(entry_id, DeliveryState.PENDING, detail, in_doubt=True, unavailable=True)


def _not_now(entry_id: int, error: FhirUnavailable) -> Delivery:
    """``pending``: the server is down, slow or throttling; a throttling server's
    ``Retry-After`` (:class:`FhirThrottled`) sets when the entry is tried again."""
    wait = error.retry_after if isinstance(error, FhirThrottled) else None
    return Delivery(entry_id, DeliveryState.PENDING, str(error), retry_after=wait, unavailable=True)


def enqueue(session: Session, tenant_id: int, entry: NewEntry) -> OutboxEntry:
    """Add an entry inside the caller's unit of work (committed with the rest of the save)."""
    _in_patient_order(session, tenant_id, entry)
    row = OutboxEntry(
        tenant_id=tenant_id,
        kind=entry.kind,
        registration_id=entry.registration_id,
        fhir_base_url=entry.fhir_base_url,
        session_id=entry.session_id,
        author=entry.author,
        patient_ref=entry.patient_ref,
        bundle=entry.bundle,
        witness=entry.witness,
        state=DeliveryState.PENDING,
        attempts=0,
        next_attempt_at=utcnow() + (HELD_FOR_SAVER if entry.delivered_at_once else timedelta()),
    )
    session.add(row)
    session.flush()
    return row


def _in_patient_order(session: Session, tenant_id: int, entry: NewEntry) -> None:
    """A patient's entries are delivered in the order of their ids (:func:`_in_its_turn`),
    which must be the order their saves commit. PostgreSQL gives the id when the row is
    inserted: a save whose transaction was still open held an older id than one of
    another nurse committed before it, and the later one was delivered first (found by
    review). A lock per patient, taken before the id and held until the commit, gives
    the ids in commit order; SQLite has one writer at a time."""
    ordered = entry.patient_ref is not None and entry.kind not in _UNORDERED_KINDS
    if not ordered or session.get_bind().dialect.name != "postgresql":
        return
    key = f"outbox|{tenant_id}|{entry.fhir_base_url}|{entry.patient_ref}"
    session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))


@dataclass(frozen=True)
class Undelivered:
    """An entry a person must act on, as ``kindreflex outbox waiting`` and ``kindreflex
    outbox refused`` list it."""

    entry_id: int
    tenant_slug: str
    fhir_base_url: str
    patient_ref: str | None
    kind: str
    saved_at: datetime
    tenant_id: int
    state: DeliveryState
    last_error: str | None
    #: A later entry of the same author, session, kind, patient and FHIR server, not
    #: refused (delivered, or on its way), of a kind a user saves (not ``audit``): the
    #: screen saved again, as a nurse does at once when a conflict brings her form back.
    #: The author too: an entry waiting for a sign-in takes the session of the patient's
    #: next launch, whoever's (``Outbox.adopt_session``; found by review).
    saved_since: int | None = None
    #: The EHR registration it was saved through: only a launch through it sends an
    #: entry waiting for a sign-in (None: not read).
    registration_id: str | None = None


#: The outcomes of a write that did not happen and will never be sent again (audited as
#: failures): someone removes the cause the FHIR server named and has it recorded anew.
REFUSED_STATES = (DeliveryState.FAILED, DeliveryState.CONFLICT)


def undelivered(
    session: Session, states: Collection[DeliveryState], tenant_id: int | None = None
) -> list[Undelivered]:
    """The entries in one of ``states`` (all hospitals', or one's), oldest first. They name
    patients: a caller that shows them audits the reading."""
    later = aliased(OutboxEntry)
    saved_since = (
        select(func.min(later.id))
        .where(
            later.tenant_id == OutboxEntry.tenant_id,
            later.fhir_base_url == OutboxEntry.fhir_base_url,
            later.patient_ref == OutboxEntry.patient_ref,
            later.kind == OutboxEntry.kind,
            later.kind.not_in(_UNORDERED_KINDS),  # an AuditEvent holds no earlier one
            later.session_id == OutboxEntry.session_id,
            later.author == OutboxEntry.author,
            later.id > OutboxEntry.id,
            later.state.not_in(REFUSED_STATES),
        )
        .correlate(OutboxEntry)
        .scalar_subquery()
    )
    query = (
        select(
            OutboxEntry.id,
            Tenant.slug,
            OutboxEntry.fhir_base_url,
            OutboxEntry.patient_ref,
            OutboxEntry.kind,
            OutboxEntry.created_at,
            OutboxEntry.tenant_id,
            OutboxEntry.state,
            OutboxEntry.last_error,
            saved_since.label("saved_since"),
            OutboxEntry.registration_id,
        )
        .join(Tenant, Tenant.id == OutboxEntry.tenant_id)
        .where(OutboxEntry.state.in_(states))
        .order_by(OutboxEntry.created_at, OutboxEntry.id)
    )
    if tenant_id is not None:
        query = query.where(OutboxEntry.tenant_id == tenant_id)
    return [
        Undelivered(
            row.id,
            row.slug,
            row.fhir_base_url,
            row.patient_ref,
            row.kind,
            row.created_at,
            row.tenant_id,
            DeliveryState(row.state),
            row.last_error,
            row.saved_since,
            row.registration_id,
        )
        for row in session.execute(query)
    ]


#: The outcome of an attempt that found, before sending, that another instance holds the
#: entry now (:meth:`Outbox._still_ours`).
LEASE_LOST = "lease lost"


@dataclass(frozen=True)
class _Claimed:
    """A claimed entry, detached from any session while it is being delivered."""

    id: int
    lease: str
    tenant_id: int
    kind: str
    fhir_base_url: str
    session_id: str
    bundle: Resource
    witness: str | None
    attempts: int  # this attempt's number: 1 for the first (counted when claimed)
    races: int = 0  # the races at delivery lost so far (see RACES_RETRIED)


class Outbox:
    """Claims and delivers outbox entries. One per process; safe to use from several threads."""

    def __init__(
        self,
        database: Database,
        tokens: TokenSource,
        *,
        timeout: float,
        retry_base: float,
        clock: Callable[[], datetime] = utcnow,
        deliveries: Counter | None = None,
        heartbeat_seconds: float = LEASE_HEARTBEAT_SECONDS,
        lease_renewal_failures: Counter | None = None,
    ) -> None:
        self._database = database
        self._tokens = tokens
        self._timeout = timeout
        # The settle window: how long a transaction in doubt (sent, not answered:
        # ``_in_doubt``) is left before the next attempt asks the witness, at least. A
        # server does not drop a transaction whose client went away, it applies it when it
        # comes to it; asked after the backoff alone (1-2 s), the witness found nothing
        # yet, the transaction went again, then the first copy landed. The window is the
        # worker's whole deadline for one request (``timeout``,
        # KINDREFLEX_FHIR_TIMEOUT_SECONDS, at most 300 s): the time the hospital's server
        # is given to answer us; one slower than that does not answer the worker either.
        # Counted from the end of the attempt, which waited itself, the next attempt comes
        # more than that deadline after the copy was sent: a copy the server applies
        # within it is found by the witness. One applied later still is met by the 412 of
        # a resend's If-Match, asked about again (``_landed_or_refused``).
        self._settle_seconds = timeout
        self._retry_base = retry_base
        self._clock = clock  # tests move time forward instead of sleeping
        self._deliveries = deliveries  # Prometheus: attempts by resulting state (alerting)
        self._heartbeat_seconds = heartbeat_seconds
        self._lease_renewal_failures = lease_renewal_failures  # Prometheus (alerting)
        self._owner = uuid.uuid4().hex[:12]
        self._refusal_hooks: dict[str, RefusalHook] = {}
        # the entries of each batch in progress (by its lease) that have not begun
        self._unbegun: dict[str, Sequence[_Claimed]] = {}
        self._turns = threading.Lock()

    # -- public ------------------------------------------------------------------------------

    def when_refused(self, kind: str, hook: RefusalHook) -> None:
        """Run ``hook`` whenever an entry of ``kind`` is recorded ``failed`` or ``conflict``,
        in the transaction recording it (both commit, or neither): by the saving request's
        :meth:`deliver` or the worker's :meth:`run_once` alike. Wired at start-up."""
        self._refusal_hooks[kind] = hook

    def deliver(self, entry_id: int, *, timeout: float | None = None) -> DeliveryState:
        """Try to deliver one entry now (the saving request), even before it is due for the
        worker (``HELD_FOR_SAVER``, or a retry's backoff). Returns its state afterwards.

        The user waits for this attempt: its requests end within the save's budget
        (``FhirClient.for_save``), as a screen's reads do. A save that
        merges several resources at delivery, each read just within the timeout, kept the
        nurse waiting a timeout per read; once the budget is spent the entry stays pending
        ("saved, delivery pending") and the worker, bounded per request, sends it."""
        claimed = self._claim(OutboxEntry.id == entry_id, limit=1, due_now=False)
        if not claimed:
            # a worker has it, it is delivered already, or an older save of the patient
            # comes first: then the worker sends it after that one, without the hold
            self._release_hold(entry_id)
            return self.state_of(entry_id)
        seconds = timeout or self._timeout
        delivery = self._deliver(claimed[0], seconds, FhirClient.for_save)
        if delivery.detail == LEASE_LOST:  # another instance has it: its outcome is the one
            return self.state_of(entry_id)
        return delivery.state

    def run_once(
        self, limit: int = 20, stopping: Callable[[], bool] = lambda: False
    ) -> list[Delivery]:
        """Deliver the entries that are due (the worker's cycle; tests call it directly).

        The batch is claimed under one lease, but its entries are delivered one after the
        other: each one's lease is renewed when its turn comes (:meth:`_renew`), and one
        that another instance took over meanwhile (a slow server ran the batch past its
        lease) is left to it, not sent a second time. A batch that delivered something is
        followed by another (up to ``limit`` entries in all): a patient's later save is
        claimed once the earlier one is delivered.

        One worker serves every hospital and FHIR server of the instance, so a server that
        did not take an attempt (``Delivery.unavailable``: down, not answering, throttling)
        is sent nothing more in this cycle: its other entries of the batch wait for their
        backoff unsent (:meth:`_postpone`), and the next batch is claimed without its
        entries. A server that hangs costs the cycle one timeout, not one per entry: the
        saves for the others (another hospital, a second FHIR server) waited batch ×
        timeout behind it, and a batch of its entries alone left them to the next cycle.

        Once ``stopping`` says so (the instance shuts down: a rollout, a node drained), the
        entries of the batch not yet begun are released for another instance at once. They
        stayed leased by the stopped instance for minutes (the lease covers the whole batch,
        each running into its timeout), the saves of those patients with them (found by
        review)."""
        deliveries: list[Delivery] = []
        unavailable: dict[str, Delivery] = {}  # FHIR base URL → the attempt it did not take
        while len(deliveries) < limit and not stopping():
            batch: list[Delivery] = []
            elsewhere = (
                OutboxEntry.fhir_base_url.not_in(tuple(unavailable)) if unavailable else None
            )
            claimed = self._claim(elsewhere, limit=limit - len(deliveries))
            for turn, entry in enumerate(claimed):
                if not self._may_begin(claimed, turn, stopping):
                    break
                if cause := unavailable.get(entry.fhir_base_url):
                    self._postpone(entry, cause)  # it would wait for the same server
                elif self._renew(entry) and (delivery := self._deliver_in_batch(entry)):
                    batch.append(delivery)
                    if delivery.unavailable:
                        unavailable[entry.fhir_base_url] = delivery
            with self._turns:
                self._unbegun.pop(claimed[0].lease if claimed else "", None)
            deliveries += batch
            # a server found unavailable is left out of the next claim: the others' turn
            if not any(d.state is DeliveryState.DELIVERED or d.unavailable for d in batch):
                break
        return deliveries

    def _may_begin(self, claimed: Sequence[_Claimed], turn: int, stop: Callable[[], bool]) -> bool:
        """Whether the batch's entry ``turn`` may begin: not once the instance stops, when
        it and the rest are released instead. Under the lock :meth:`release_unbegun` takes:
        an entry is begun or released, never both."""
        with self._turns:
            if stop():
                self._release(claimed[turn:])
                self._unbegun.pop(claimed[turn].lease, None)
                return False
            self._unbegun[claimed[turn].lease] = claimed[turn + 1 :]
            return True

    def release_unbegun(self, wait: float) -> None:
        """Release the entries of the batches in progress that have not begun, once the
        instance stops: the delivery in flight may outlast the wait for it (a FHIR server
        that does not answer), and the process then ends before the batch comes to them.
        Waits at most ``wait`` seconds for the worker's turn (a database that holds it)."""
        if not self._turns.acquire(timeout=wait):
            return
        try:
            for entries in self._unbegun.values():
                self._release(entries)
            self._unbegun.clear()
        finally:
            self._turns.release()

    def state_of(self, entry_id: int) -> DeliveryState:
        with self._database.session() as session:
            state = session.scalar(select(OutboxEntry.state).where(OutboxEntry.id == entry_id))
        if state is None:
            raise LookupError(f"no outbox entry {entry_id}")
        return DeliveryState(state)

    def adopt_session(
        self,
        tenant_id: int,
        registration_id: str,
        fhir_base_url: str,
        patient_ref: str,
        session_id: str,
    ) -> int:
        """A new launch for a patient: entries waiting for authorisation use its session.

        Same tenant, same EHR registration, same FHIR server and same patient, so the new
        token's patient scope covers the writes and the token goes only to the server it was
        issued for: a registration moved to another server (an EHR migration) has another
        ``Patient/123``, and its token must not reach the old one. Returns how many entries
        became due again. They are
        deliverable from now (``taken_over_at``, what readiness counts a pending entry's
        wait from); ``created_at`` stays the time of the save.
        """
        now = self._clock()
        with self._database.session() as session:
            result = session.execute(
                update(OutboxEntry)
                .where(
                    OutboxEntry.tenant_id == tenant_id,
                    OutboxEntry.registration_id == registration_id,
                    OutboxEntry.fhir_base_url == fhir_base_url,
                    OutboxEntry.patient_ref == patient_ref,
                    OutboxEntry.state == DeliveryState.WAITING_AUTHORISATION,
                )
                .values(
                    session_id=session_id,
                    state=DeliveryState.PENDING,
                    next_attempt_at=now,
                    taken_over_at=now,
                )
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def readiness_check(
        self, max_age: timedelta = READY_MAX_AGE, max_wait: timedelta = READY_MAX_WAIT
    ) -> ReadinessCheck:
        """Not ready when an entry waits too long for delivery or for a sign-in, or delivery
        keeps failing (see module doc). The detail counts entries by state, never names one.

        A pending entry's wait counts from when it became deliverable (a take-over of a
        waiting entry is not an entry undelivered since its save); the wait for a sign-in
        counts from the save. A pending entry held back behind a save of its patient that
        waits for a sign-in is not counted as undelivered: the waiting save's own wait
        (``max_wait``) is what an operator must act on, and the later one follows it."""

        def check() -> CheckResult:
            deliverable_since = func.coalesce(OutboxEntry.taken_over_at, OutboxEntry.created_at)
            # outside the pool, as the database check (``Database.probe_engine``)
            with self._database.probe_session() as session:
                oldest, attempts = session.execute(
                    select(deliverable_since, OutboxEntry.attempts)
                    .where(
                        OutboxEntry.state == DeliveryState.PENDING,
                        # behind a save waiting for a sign-in: that one's wait is the alarm
                        ~_held_back_by((DeliveryState.WAITING_AUTHORISATION,)),
                    )
                    .order_by(deliverable_since, OutboxEntry.id)
                    .limit(1)
                ).one_or_none() or (None, 0)
                stuck = _count_by_state(session)
                # asked only when something waits: the usual check stays two queries
                waiting_since = (
                    session.scalar(
                        select(OutboxEntry.created_at)
                        .where(OutboxEntry.state == DeliveryState.WAITING_AUTHORISATION)
                        .order_by(OutboxEntry.created_at, OutboxEntry.id)
                        .limit(1)
                    )
                    if stuck.get(DeliveryState.WAITING_AUTHORISATION)
                    else None
                )
            detail = ", ".join(f"{n} {state}" for state, n in sorted(stuck.items())) or "empty"
            now = self._clock()
            if oldest is not None and now - oldest > max_age:
                return CheckResult("outbox", False, f"undelivered for over {max_age}: {detail}")
            if attempts >= READY_MAX_ATTEMPTS:
                return CheckResult("outbox", False, f"delivery keeps failing: {detail}")
            if waiting_since is not None and now - waiting_since > max_wait:
                return CheckResult(
                    "outbox", False, f"waiting for a sign-in for over {max_wait}: {detail}"
                )
            return CheckResult("outbox", True, detail)

        return check

    # -- claiming ----------------------------------------------------------------------------

    def _claim(self, condition: Any, limit: int, *, due_now: bool = True) -> list[_Claimed]:
        now = self._clock()
        lease = f"{self._owner}:{uuid.uuid4().hex[:12]}"
        due = [
            OutboxEntry.state == DeliveryState.PENDING,
            or_(OutboxEntry.lease_until.is_(None), OutboxEntry.lease_until < now),
        ]
        if due_now:
            due.append(OutboxEntry.next_attempt_at <= now)
        if condition is not None:
            due.append(condition)
        due.append(_in_its_turn())
        chosen_order = (OutboxEntry.next_attempt_at, OutboxEntry.id)  # longest due first
        candidates = (
            select(OutboxEntry.id)
            .where(*due)
            .order_by(*chosen_order)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite locks the whole database
        )
        # Most cycles find nothing: ask first, in a read of its own. SQLite's UPDATE takes the
        # database's write lock even when it matches no row, every cycle of every instance,
        # and holds up the CDS path's writes (service.cds.batching). The UPDATE re-checks.
        with self._database.session() as session:
            if session.scalar(select(OutboxEntry.id).where(*due).limit(1)) is None:
                return []
        with self._database.session() as session:
            session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id.in_(candidates.scalar_subquery()), *due)
                # The attempt counts from its claim, not its result: an instance that dies
                # after the server applied the transaction, before recording it, leaves an
                # entry whose next holder must ask the witness first (see _attempt).
                .values(
                    lease_owner=lease,
                    lease_until=now + self._lease_for(limit),
                    attempts=OutboxEntry.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
            rows = session.scalars(
                select(OutboxEntry).where(OutboxEntry.lease_owner == lease).order_by(*chosen_order)
            )
            return [
                _Claimed(
                    id=row.id,
                    lease=lease,
                    tenant_id=row.tenant_id,
                    kind=row.kind,
                    fhir_base_url=row.fhir_base_url,
                    session_id=row.session_id,
                    bundle=row.bundle,
                    witness=row.witness,
                    attempts=row.attempts,
                    races=row.races,
                )
                for row in rows
            ]

    def _release(self, entries: Sequence[_Claimed], *, due_at: datetime | None = None) -> None:
        """Give claimed entries up unattempted: due again as they were (now, for any
        instance) or at ``due_at``, their claim not counted as an attempt (``_claim``
        counted it)."""
        due = {} if due_at is None else {"next_attempt_at": due_at}
        with self._database.session() as session:
            for entry in entries:
                session.execute(
                    update(OutboxEntry)
                    .where(OutboxEntry.id == entry.id, OutboxEntry.lease_owner == entry.lease)
                    .values(
                        lease_owner=None, lease_until=None, attempts=OutboxEntry.attempts - 1, **due
                    )
                    .execution_options(synchronize_session=False)
                )

    def _postpone(self, entry: _Claimed, cause: Delivery) -> None:
        """Give a claimed entry up unsent until its backoff has passed: its FHIR server did
        not take an earlier attempt of the cycle (``cause``), and sending it would only wait
        for the server too, keeping the other servers' entries waiting (:meth:`run_once`).
        Not an attempt: the backoff stays its own, so one entry the server cannot take (a
        transaction it is too slow for) does not keep the server's others back (its own
        grows with its attempts); a throttling server's ``Retry-After`` holds for it too."""
        wait = self._retry_delay(entry.attempts - 1, cause.retry_after)
        self._release([entry], due_at=self._clock() + timedelta(seconds=wait))
        fields = {"outbox_id": entry.id, "after": cause.entry_id}
        log.info("outbox entry postponed: its FHIR server is unavailable", extra={"fields": fields})

    def _release_hold(self, entry_id: int) -> None:
        """The saving request did not deliver its entry: the worker need not wait
        ``HELD_FOR_SAVER`` for it (an entry it holds or that waits for a retry is left)."""
        now = self._clock()
        with self._database.session() as session:
            session.execute(
                update(OutboxEntry)
                .where(
                    OutboxEntry.id == entry_id,
                    OutboxEntry.state == DeliveryState.PENDING,
                    OutboxEntry.attempts == 0,
                    OutboxEntry.lease_owner.is_(None),
                    OutboxEntry.next_attempt_at > now,
                )
                .values(next_attempt_at=now)
                .execution_options(synchronize_session=False)
            )

    def _renew(self, entry: _Claimed) -> bool:
        """A fresh lease for one entry of a claimed batch, if it is still ours."""
        if self._extended(entry):
            return True
        log.warning("outbox lease lost", extra={"fields": {"outbox_id": entry.id}})
        return False

    def _extended(self, entry: _Claimed) -> bool:
        with self._database.session() as session:
            result = session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id == entry.id, OutboxEntry.lease_owner == entry.lease)
                .values(lease_until=self._clock() + self._lease_for(1))
                .execution_options(synchronize_session=False)
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _still_ours(self, entry: _Claimed) -> bool:
        """The lease renewed once more, just before the transaction is sent: the heartbeat
        may have found it lost (renewals refused past the lease, the process paused) while
        the attempt went on, and another instance may have claimed the entry since. Sent
        anyway, the transaction went twice at once (found by review). A database that
        cannot say is no lease: the entry is tried again once its lease has run out."""
        try:
            return self._extended(entry)
        except Exception as error:  # the database's: not known to be ours
            fields = {"outbox_id": entry.id, "error": type(error).__name__}
            log.error("outbox lease not checked: database error", extra={"fields": fields})
            return False

    def _lease_for(self, batch: int) -> timedelta:
        """Long enough for every delivery of the batch to run into its timeout, and a margin:
        an entry is never claimed by another instance while its holder may still send it."""
        return timedelta(seconds=60 + 2 * self._timeout * batch)

    # -- delivering --------------------------------------------------------------------------

    def _deliver(
        self, entry: _Claimed, timeout: float, client_for: _ClientMaker = FhirClient
    ) -> Delivery:
        with self._lease_kept(entry):
            delivery = self._attempt(entry, timeout, client_for)
        self._record(entry, delivery)
        return delivery

    def _deliver_in_batch(self, entry: _Claimed) -> Delivery | None:
        """:meth:`_deliver` for one entry of the worker's batch: an attempt records its own
        errors (:meth:`_attempt`), but recording can fail too (the database, a refusal hook
        of ours). Such an entry stays leased until its lease runs out, then is tried again;
        the batch's other entries (other patients' saves) are delivered all the same."""
        try:
            return self._deliver(entry, self._timeout)
        except Exception as error:  # one entry must not stop the batch
            fields = {"outbox_id": entry.id, "error": type(error).__name__}
            log.error("outbox delivery not recorded", extra={"fields": fields})
            return None

    @contextmanager
    def _lease_kept(self, entry: _Claimed) -> Iterator[None]:
        """Renew the entry's lease every ``heartbeat_seconds`` until the block ends, or until
        the lease is lost (:meth:`_beat`)."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self._heartbeat_seconds) and self._beat(entry):
                pass

        heartbeat = threading.Thread(target=renew, name=f"outbox-lease-{entry.id}", daemon=True)
        heartbeat.start()
        try:
            yield
        finally:
            done.set()
            heartbeat.join()

    def _beat(self, entry: _Claimed) -> bool:
        """One renewal of the heartbeat; whether to go on (False: the lease is lost). A
        database error (a dropped connection, a failover) is logged by its type, never its
        message (the statement and its values), counted (``lease_renewal_failures``) and
        the next beat tries again, well within the lease. It ended the heartbeat's thread,
        its traceback on stderr only, and the delivery went on past its lease for another
        instance to send the entry a second time."""
        try:
            return self._renew(entry)
        except Exception as error:  # the database's: the next beat may get through
            fields = {"outbox_id": entry.id, "error": type(error).__name__}
            log.error("outbox lease not renewed: database error", extra={"fields": fields})
            if self._lease_renewal_failures is not None:
                self._lease_renewal_failures.inc()
            return True

    def _attempt(self, entry: _Claimed, timeout: float, client_for: _ClientMaker) -> Delivery:
        """One delivery attempt, whatever happens in it: an error no branch of
        :meth:`_send` expects (a server's answer our code does not handle, a bug) is the
        entry's, recorded (:func:`_unexpected`); it used to escape, leaving the entry
        leased and aborting the worker's batch (other patients' saves) every cycle, and
        the saving request a 500."""
        try:
            return self._send(entry, timeout, client_for)
        except Exception as error:  # recorded as the entry's outcome
            return _unexpected(entry, error)

    def _send(self, entry: _Claimed, timeout: float, client_for: _ClientMaker) -> Delivery:
        try:
            token = self._tokens.access_token(entry.session_id)
        except ReauthorisationRequired:
            return Delivery(entry.id, DeliveryState.WAITING_AUTHORISATION, "session expired")
        except Exception as error:  # the token endpoint may be down: retry like the server
            return Delivery(entry.id, DeliveryState.PENDING, f"token: {type(error).__name__}")
        # the worker's: each request bounded, not the delivery as a screen's reads are (its
        # transaction comes last: service.fhir.client); the saving request's: both (deliver)
        with client_for(entry.fhir_base_url, lambda: token, timeout) as client:
            sent: _Sent | None = None
            try:
                # an earlier attempt may have been applied (its answer, or its holder, lost)
                if entry.attempts > 1 and entry.witness and _witness_exists(client, entry.witness):
                    return Delivery(entry.id, DeliveryState.DELIVERED, "applied earlier")
                sent = _merged(client, entry.bundle)
                if not self._still_ours(entry):
                    return Delivery(entry.id, DeliveryState.PENDING, LEASE_LOST)
                if sent.bundle["entry"]:  # else every merge found nothing to write
                    try:
                        client.transaction(sent.bundle)
                    except FhirUnanswered as unanswered:  # not a read's: this may land yet
                        return _in_doubt(entry.id, unanswered)
            except _WitnessUnanswered as unanswered:
                return _not_known(entry, unanswered)
            except _Refused as refusal:
                return Delivery(entry.id, DeliveryState.FAILED, str(refusal))
            except _ChangedByBoth as conflict:
                return Delivery(entry.id, DeliveryState.CONFLICT, str(conflict))
            except FhirConflict as error:
                return _landed_or_refused(client, entry, sent, error)
            except FhirRejected as error:
                if error.needs_authorisation:
                    return Delivery(entry.id, DeliveryState.WAITING_AUTHORISATION, str(error))
                return Delivery(entry.id, DeliveryState.FAILED, str(error), error.outcome)
            except FhirUnavailable as error:
                return _not_now(entry.id, error)
        return Delivery(entry.id, DeliveryState.DELIVERED)

    def _record(self, entry: _Claimed, delivery: Delivery) -> None:
        now = self._clock()
        values: dict[str, Any] = {"state": delivery.state, "lease_owner": None, "lease_until": None}
        if delivery.state is DeliveryState.DELIVERED:
            values["delivered_at"] = now
        else:
            values["last_error"] = delivery.detail[:2000]
            values["outcome"] = delivery.outcome
        if delivery.state is DeliveryState.PENDING:
            wait = self._retry_delay(entry.attempts - 1, delivery.retry_after)
            if delivery.in_doubt:
                wait = max(wait, self._settle_seconds)
            values["next_attempt_at"] = now + timedelta(seconds=wait)
        if delivery.raced:
            values["races"] = OutboxEntry.races + 1
        with self._database.session() as session:
            result = session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id == entry.id, OutboxEntry.lease_owner == entry.lease)
                .values(**values)
            )
            if result.rowcount == 1 and delivery.state in REFUSED_STATES:  # type: ignore[attr-defined]
                _audit_failure(session, entry, now)
                hook = self._refusal_hooks.get(entry.kind)
                if hook is not None:
                    hook(session, entry.id)
        if result.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("outbox lease lost", extra={"fields": {"outbox_id": entry.id}})
            return
        _log_delivery(delivery)
        if self._deliveries is not None:
            self._deliveries.labels(str(delivery.state)).inc()

    def _retry_delay(self, attempts: int, retry_after: float | None) -> float:
        """The wait before the next attempt: the backoff, or longer when a throttling server
        asked for longer (``Retry-After``), never past ``RETRY_CAP_SECONDS``: a server
        asking for hours (or a mistyped header) must not park a nurse's save that long."""
        backoff = self._backoff(attempts)
        if retry_after is None:
            return backoff
        return max(backoff, min(retry_after, RETRY_CAP_SECONDS))

    def _backoff(self, attempts: int) -> float:
        """Capped exponential backoff with jitter, so recovering servers are not stampeded."""
        ceiling = min(RETRY_CAP_SECONDS, self._retry_base * 2**attempts)
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def _unexpected(entry: _Claimed, error: Exception) -> Delivery:
    """An attempt that raised what no outcome expects: ``pending`` (it may have been sent:
    the next attempt asks the witness first) until its ``UNEXPECTED_ATTEMPTS``-th attempt,
    then ``failed`` for a person. Logged at ERROR by the exception's type and where it was
    raised only: its message may quote the bundle or the server's answer (a name)."""
    where = traceback.extract_tb(error.__traceback__)[-1]
    detail = (
        f"unexpected {type(error).__name__} at "
        f"{Path(where.filename).name}:{where.lineno} ({where.name})"
    )
    fields = {"outbox_id": entry.id, "attempt": entry.attempts, "error": detail}
    log.error("outbox delivery raised an unexpected error", extra={"fields": fields})
    last = entry.attempts >= UNEXPECTED_ATTEMPTS
    return Delivery(entry.id, DeliveryState.FAILED if last else DeliveryState.PENDING, detail)


def _landed_or_refused(
    client: FhirClient, entry: _Claimed, sent: _Sent | None, error: FhirConflict
) -> Delivery:
    """A 409/412 to a transaction sent again: our earlier copy may have landed meanwhile.

    The witness was asked before this attempt sent it and found nothing; but a transaction
    in doubt (``_in_doubt``, or sent by a holder that died) may land after that question,
    later than the settle window, just before our copy. Its If-Matches are then on the
    versions our earlier copy moved: refused, 412, though the record holds the save. So
    the witness is asked again, first: a resource only this transaction creates (the
    conditional create of a finding; a save that only updates, a closing or a referral's
    status, its Provenance by target and instant) exists only if a copy of this
    transaction was applied, whole (a transaction is atomic). Then the entry is delivered,
    not a ``conflict`` (the nurse told someone else changed her data, a social save's
    worklist row put back by its refusal hook): this copy was refused whole, so nothing of
    it was written twice. Not found, no copy of ours moved a version (it would have
    created the witness in the same transaction): judged as any 409/412
    (:func:`_conflict_or_race`). A witness that cannot say keeps the entry ``pending``,
    unsent (:func:`_not_known`). On a first attempt nothing of ours was sent before: not
    asked."""
    if sent is None or entry.attempts <= 1 or not entry.witness:
        return _conflict_or_race(client, entry, sent, error)
    try:
        landed = _witness_exists(client, entry.witness)
    except _WitnessUnanswered as unanswered:
        return _not_known(entry, unanswered)
    except FhirUnavailable as unreachable:
        return _not_now(entry.id, unreachable)
    except FhirRejected as refused:  # _witness_exists lets only a want of authorisation through
        return Delivery(entry.id, DeliveryState.WAITING_AUTHORISATION, str(refused))
    if landed:
        return Delivery(entry.id, DeliveryState.DELIVERED, "applied earlier, its resend refused")
    return _conflict_or_race(client, entry, sent, error)


def _conflict_or_race(
    client: FhirClient, entry: _Claimed, sent: _Sent | None, error: FhirConflict
) -> Delivery:
    """A 409/412: a ``conflict``, a race to merge again at the next attempt (``pending``),
    or a refusal no version explains (``failed``).

    Versions only grow, so a version current now was current when the server refused.
    Every If-Match of the transaction is read again: those the user's page carried
    (:attr:`_Sent.shown`) and those on versions a create-or-merge's search found at
    delivery (:attr:`_Sent.read_at_delivery`).

    * One the user was shown has moved: someone changed what she saw: a ``conflict``.
    * All of those hold, one read at delivery has moved: somebody wrote it between our read
      and our write, and nobody was shown that version: a race, merged again at the next
      attempt. Past ``RACES_RETRIED`` races, one more is a conflict, counted as a race
      (:func:`kept_changing`). (A resource read at delivery that moved only after the
      refusal is taken for a race too, retried within the same bound.)
    * None has moved: no If-Match failed. The server refused the transaction for another
      reason. One its OperationOutcome says lasts (:func:`refusal_lasts`: a conditional
      create matching two resources, the record holding a child twice, sekmet's 412
      ``multiple-matches``) is ``failed`` at once, in the server's words, for a person to
      look at: resending it only kept that person waiting. Any other may pass (a lock:
      HAPI answers concurrent writes with 409 ``processing``): sent again as it is, within
      ``RACES_RETRIED`` (the If-Matches still guard it), then ``failed``. It was a
      ``conflict`` that told the nurse someone had changed her data, and to save again,
      which fails the same way when the refusal lasts.

    A ``conflict`` before the transaction was sent (``sent`` None) stays one. A re-read
    refused for want of a sign-in waits for one, as a delivery would."""
    conflict = Delivery(entry.id, DeliveryState.CONFLICT, summarise(error.outcome), error.outcome)
    if sent is None:
        return conflict
    try:
        shown_held = _all_still_at(client, sent.shown)
        moved_at_delivery = shown_held and not _all_still_at(client, sent.read_at_delivery)
    except FhirUnavailable as unreachable:  # not known: nothing was written, try again later
        return _not_now(entry.id, unreachable)
    except FhirRejected as refused:  # _still_at lets only a want of authorisation through
        return Delivery(entry.id, DeliveryState.WAITING_AUTHORISATION, str(refused))
    if not shown_held:
        return conflict
    if not moved_at_delivery:
        if refusal_lasts(error.outcome):
            detail = f"refused, no version changed, lasting: {conflict.detail}"
            return Delivery(entry.id, DeliveryState.FAILED, detail, error.outcome)
        detail = f"refused {entry.races + 1}, no version changed: {conflict.detail}"
        last = entry.races >= RACES_RETRIED
        state = DeliveryState.FAILED if last else DeliveryState.PENDING
        return Delivery(entry.id, state, detail, error.outcome, raced=True)
    detail = f"race {entry.races + 1}: changed after its read at delivery: {conflict.detail}"
    if entry.races >= RACES_RETRIED:  # an operator (and the nurse's chart) can tell it apart
        return replace(conflict, detail=detail, raced=True)
    return Delivery(entry.id, DeliveryState.PENDING, detail, error.outcome, raced=True)


def refusal_lasts(outcome: Resource | None) -> bool:
    """Whether a server's refusal no version explains will not pass by sending the same
    transaction again: one of its refusing issues (an error or fatal one, or one that names
    no severity) has a code of :data:`LASTING_ISSUE_CODES`. Resending such a refusal only
    delays the person who must act (merge a duplicate, correct the data); a refusal with no
    OperationOutcome, or only codes that may pass, is retried (:func:`_conflict_or_race`)."""
    issues = (outcome or {}).get("issue") or []
    return any(
        isinstance(issue, dict)
        and issue.get("severity", "error") in _REFUSING_SEVERITIES
        and issue.get("code") in LASTING_ISSUE_CODES
        for issue in issues
    )


def kept_changing(state: str, races: int) -> bool:
    """Whether an entry is a ``conflict`` because the record kept changing under it: it lost
    one race at delivery more than ``RACES_RETRIED`` (see :func:`_conflict_or_race`), so
    another writer kept changing a resource the outbox read at delivery, while everything
    the user was shown still held. Nobody changed what the user saw; the save is not in
    the record all the same."""
    return state == DeliveryState.CONFLICT and races > RACES_RETRIED


def _all_still_at(client: FhirClient, versions: Sequence[tuple[str, str]]) -> bool:
    """Whether each ``(Type/id, version)`` still is (read one by one, up to the first not)."""
    return all(_still_at(client, reference, version) for reference, version in versions)


def _still_at(client: FhirClient, reference: str, version: str) -> bool:
    """Whether ``Type/id`` is still at ``version`` (a resource gone is not). A read refused
    for want of authorisation says nothing of the version: raised."""
    resource_type, _, resource_id = reference.partition("/")
    try:
        current = client.read(resource_type, resource_id)
    except FhirRejected as refused:
        if refused.needs_authorisation:
            raise
        return False
    return bool(current.get("meta", {}).get("versionId") == version)


def _in_its_turn() -> Any:
    """No older entry of the same patient (same tenant, FHIR server) still to be delivered
    (:data:`UNDELIVERED_STATES`): a patient's saves reach the server in save order (entry id).
    Only undelivered rows are looked at (the ``state`` index), and entries without a
    patient or of :data:`_UNORDERED_KINDS` are not ordered."""
    return ~_held_back_by(UNDELIVERED_STATES)


def _held_back_by(states: Sequence[DeliveryState]) -> Any:
    """Whether an older entry of the same patient in one of ``states`` holds this one back
    (:func:`_in_its_turn`); an entry without a patient or of an unordered kind never is."""
    older = aliased(OutboxEntry)
    held = exists().where(
        older.state.in_(states),
        older.tenant_id == OutboxEntry.tenant_id,
        older.fhir_base_url == OutboxEntry.fhir_base_url,
        older.patient_ref == OutboxEntry.patient_ref,
        older.kind.not_in(_UNORDERED_KINDS),
        older.id < OutboxEntry.id,
    )
    return and_(
        OutboxEntry.patient_ref.is_not(None), OutboxEntry.kind.not_in(_UNORDERED_KINDS), held
    )


def _audit_failure(session: Session, entry: _Claimed, at: datetime) -> None:
    """A failure row beside the save's own audit row (same actor, action and entities).

    An AuditEvent delivery of its own (kind ``audit``) has nothing further to record."""
    from service import audit  # imported here: service.audit queues through this module

    if entry.kind == "audit":
        return
    saved = session.scalar(
        select(AuditRecord).where(AuditRecord.outbox_id == entry.id).order_by(AuditRecord.id)
    )
    if saved is None:
        return
    fact = audit.AuditFact(
        actor=saved.actor,
        action=audit.AuditAction(saved.action),
        patient_ref=saved.patient_ref,
        entities=tuple(saved.entities),
        outcome="failure",
        at=at,
    )
    audit.record_local(session, entry.tenant_id, fact, entry.fhir_base_url, entry.id)


class _Refused(Exception):  # noqa: N818 - a reason, not an error of ours
    """A queued update the outbox must not send (see :func:`_merged`)."""


class _ChangedByBoth(Exception):  # noqa: N818 - a reason, not an error of ours
    """A create-or-merge would overwrite what someone else changed since the user was
    shown it (:func:`_changed_by_both`): a ``conflict``, as an If-Match refused."""


#: The elements naming whose record a resource belongs to: a merge may not change them.
_OWNER_ELEMENTS = ("patient", "subject")


@dataclass(frozen=True)
class _Sent:
    """A transaction as sent (:func:`_merged`), and where its If-Match preconditions came
    from, for telling a race from a conflict (:func:`_conflict_or_race`)."""

    bundle: Resource
    #: The If-Match preconditions on versions a create-or-merge found at delivery (nobody
    #: saw them): ``(Type/id, version)``.
    read_at_delivery: tuple[tuple[str, str], ...]
    #: The other If-Match preconditions, likewise: what the user was shown.
    shown: tuple[tuple[str, str], ...]


def _merged(client: FhirClient, bundle: Resource) -> _Sent:
    """The bundle as sent: each :meth:`TransactionBuilder.merge_update` laid over the version
    it names (read now), unchanged ones and those the resource says by now left out; each
    :meth:`TransactionBuilder.create_or_merge` likewise over the resource its identifier
    finds (:func:`_merged_create`); the descriptions of the writes as they turned out
    (:func:`_described`). Raises :class:`_Refused`."""
    entries = []
    found: dict[str, str] = {}  # fullUrl of a create → the resource it found
    read_now: set[str] = set()  # resources whose If-Match was read now, not shown to the user
    left_out: set[str] = set()  # the bundle's references to merges that write nothing
    for entry in bundle["entry"]:
        if not entry.get(_MERGE):
            entries.append(entry)
            continue
        request = entry["request"]
        if request["method"] == "POST":
            merged = _merged_create(client, entry, found)
            read_now |= {e["request"]["url"] for e in merged if "ifMatch" in e["request"]}
            if not merged:  # the resource found already says what ours says
                left_out.add(entry["fullUrl"])
            entries += merged
            continue
        version = request["ifMatch"].removeprefix('W/"').removesuffix('"')
        ours = entry["resource"]
        seen = client.read(ours["resourceType"], f"{ours['id']}/_history/{version}")
        _check_owner(seen, ours, client.base_url)
        # ours as the version the user saw: nothing changed, unless she was shown an
        # earlier save's edit instead (_SHOWN): then ours may undo that edit, and only the
        # resource as it is now can say there is nothing to write
        if _SHOWN not in entry and _unchanged(seen, ours):
            left_out.add(request["url"])
            continue
        now = _read_now(client, ours)
        # changed since the version she saw (an earlier save's edit delivered, say); only a
        # change into what ours says, or into what she was shown, is no conflict; any
        # other, a deletion too, is left to If-Match to refuse
        moved = now is not None and now.get("meta", {}).get("versionId") != version
        current = now if moved else None
        latest = seen if current is None else current
        owned = _other_owner(latest, ours, client.base_url) is None
        if now is not None and owned and _unchanged(latest, ours):
            left_out.add(request["url"])  # the resource already says what ours says
            continue
        if current is not None and _SHOWN in entry:
            # changed since into what the user was shown (an earlier save's edit, delivered
            # meanwhile): ours applies over it, as it did over what she saw; or by someone
            # else after it: only what she changed of what she was shown, as a
            # create-or-merge. Judged against the version she saw, a colleague's revert of
            # that edit was no change, and her page saved again as it was undid the
            # revert, "delivered" (found by review)
            _check_owner(current, ours, client.base_url)
            as_shown = _unchanged(current, entry[_SHOWN])
            changes = (
                ours if as_shown else _her_changes(current, entry[_SHOWN], ours, request["url"])
            )
            if changes is None:
                left_out.add(request["url"])
                continue
            entries.append(_over_current(client, request, current, changes))
            # a 412 is the resource moved before our write: a race, merged again (each
            # time against what she was shown), not a conflict (found by review)
            read_now.add(request["url"])
            continue
        if current is not None and _apart(seen, current, ours):
            # the EHR changed only what ours does not write (a child's phone number): ours
            # applies over the resource as it is now and the EHR's change stays, where
            # If-Match on the version seen refused the whole save (found by review)
            entries.append(_over_current(client, request, current, ours))
            read_now.add(request["url"])  # moved before our write: a race, merged again
            continue
        if now is not None and current is None and _SHOWN in entry:
            # the version she saw unchanged since: the earlier edit she was shown is not in
            # the record (refused), and of its values, those she left as shown are not hers
            # to write: they were written under her name (found by review). Gone, it is
            # sent as it is, for If-Match to refuse (found by review)
            ours = _changed_from(entry[_SHOWN], ours)
            if _unchanged(seen, ours):
                left_out.add(request["url"])
                continue
        entries.append({"resource": laid_over(seen, ours), "request": request})
    entries = _described(entries, left_out)
    preconditions = [
        (e["request"]["url"], e["request"]["ifMatch"].removeprefix('W/"').removesuffix('"'))
        for e in entries
        if "ifMatch" in e["request"]
    ]
    entries = _referring(entries, found) if found else entries
    sent = {**bundle, "entry": [_with_full_url(entry, client.base_url) for entry in entries]}
    return _Sent(
        sent,
        read_at_delivery=tuple(p for p in preconditions if p[0] in read_now),
        shown=tuple(p for p in preconditions if p[0] not in read_now),
    )


def _with_full_url(entry: Resource, base_url: str) -> Resource:
    """``entry`` with a ``fullUrl``, the resource's absolute URL for an update: R4 lets only
    a POST's go without one, and a server validating the Bundle strictly refuses a PUT
    without (found by review). Added as sent, so that a queued bundle names no server."""
    if "fullUrl" in entry or entry["request"]["method"] != "PUT":
        return entry
    return {"fullUrl": f"{base_url}/{entry['request']['url']}", **entry}


def _over_current(
    client: FhirClient, request: Resource, current: Resource, ours: Resource
) -> Resource:
    """The entry laying ``ours`` over the resource as it is now, ``If-Match`` on its version."""
    _check_owner(current, ours, client.base_url)
    now = {**request, "ifMatch": f'W/"{current["meta"]["versionId"]}"'}
    return {"resource": laid_over(current, ours), "request": now}


def _apart(seen: Resource, current: Resource, ours: Resource) -> bool:
    """Whether what changed from ``seen`` (the version the user saw) to ``current`` lies
    apart from what ``ours`` writes: each element ours writes, and each extension of a URL
    ours writes, is in ``current`` as it was in ``seen``. A three-way merge: then laying
    ours over ``current`` writes what the user meant and keeps the other change."""
    written = [key for key in ours if key not in _KEPT_AS_THEIRS]
    if any(seen.get(key) != current.get(key) for key in written):
        return False
    urls = {extension.get("url") for extension in ours.get("extension", [])}

    def of_ours(resource: Resource) -> list[Any]:
        return [e for e in resource.get("extension", []) if e.get("url") in urls]

    return of_ours(seen) == of_ours(current)


def _read_now(client: FhirClient, ours: Resource) -> Resource | None:
    """The resource ``ours`` updates as it is now; None when it is gone (410) or not ours
    to read: the update itself will say."""
    try:
        return client.read(ours["resourceType"], ours["id"])
    except FhirRejected:
        return None


def _described(entries: list[Resource], left_out: Set[str]) -> list[Resource]:
    """The merged ``entries`` with the descriptions of what they write (those added with an
    ``if_updating`` variant, :meth:`TransactionBuilder.add`) as sent: the variant when an
    entry updates a resource, and without ``left_out``, the merges that write nothing, so
    that a Provenance or AuditEvent never records a write that did not happen. When
    nothing else is written, no description either: the transaction is empty."""
    updating = any(entry["request"]["method"] == "PUT" for entry in entries)
    if all(_IF_UPDATING in entry for entry in entries):
        return []
    return [_description_as_sent(entry, updating, left_out) for entry in entries]


def _description_as_sent(entry: Resource, updating: bool, left_out: Set[str]) -> Resource:
    if _IF_UPDATING not in entry:
        return entry
    sent = {key: value for key, value in entry.items() if key != _IF_UPDATING}
    resource = entry[_IF_UPDATING] if updating else entry["resource"]
    return {**sent, "resource": _naming_only_written(resource, left_out)}


def _naming_only_written(description: Resource, left_out: Set[str]) -> Resource:
    """``description`` without the items of its lists that name a resource of ``left_out``
    (a Provenance's ``target``, an AuditEvent's ``entity``)."""
    return {
        key: [item for item in value if not _names_any(item, left_out)]
        if isinstance(value, list)
        else value
        for key, value in description.items()
    }


def _names_any(value: Any, references: Set[str]) -> bool:
    """Whether ``value`` holds a ``reference`` to one of ``references``."""
    if isinstance(value, dict):
        named = value.get("reference") in references
        return named or any(_names_any(item, references) for item in value.values())
    if isinstance(value, list):
        return any(_names_any(item, references) for item in value)
    return False


def _merged_create(client: FhirClient, entry: Resource, found: dict[str, str]) -> list[Resource]:
    """A :meth:`TransactionBuilder.create_or_merge` as sent: the conditional create as
    queued while no resource has its identifier (or several do: the server then refuses
    it, a conflict); else our elements laid over the one found, with If-Match on its
    current version, or nothing when that changes nothing. The bundle's references to
    the create's ``fullUrl`` then name the resource found (``found``)."""
    request, ours = entry["request"], entry["resource"]
    params = search_params(request["ifNoneExist"])
    answer = client.search(request["url"], params)
    matches = [
        resource
        for e in answer.get("entry", [])
        if (resource := e.get("resource", {})).get("resourceType") == request["url"]
        and _matches(resource, params, client.base_url)
    ]
    if len(matches) != 1:
        return [{key: value for key, value in entry.items() if key not in (_MERGE, _SHOWN)}]
    (seen,) = matches
    _check_owner(seen, {**ours, "id": seen["id"]}, client.base_url)
    reference = f"{seen['resourceType']}/{seen['id']}"
    found[entry["fullUrl"]] = reference
    changes = _her_changes(seen, entry.get(_SHOWN), ours, reference)
    if changes is None:
        return []
    version = seen["meta"]["versionId"]
    update_request = {"method": "PUT", "url": reference, "ifMatch": f'W/"{version}"'}
    return [{"resource": laid_over(seen, changes), "request": update_request}]


def shown_in(entry: Resource) -> Resource | None:
    """What the user was shown of the resource a queued merge entry writes, an earlier
    save's edit or creation of it (:meth:`TransactionBuilder.merge_update`,
    :meth:`TransactionBuilder.create_or_merge`); None when she was shown the resource
    itself, or nothing (a resource she added)."""
    shown = entry.get(_SHOWN)
    return shown if isinstance(shown, dict) else None


def _her_changes(
    found: Resource, shown: Resource | None, ours: Resource, reference: str
) -> Resource | None:
    """What of ``ours`` to lay over ``found``, the resource as it is at delivery: all of it;
    with ``shown``, what the user was shown of it, only the elements she changed of that
    (:func:`_changed_from`). None when ``found`` already says them (she changed nothing,
    say). Raises :class:`_ChangedByBoth` when someone else changed one of them too
    (:func:`_changed_by_both`)."""
    changes = ours if shown is None else _changed_from(shown, ours)
    if _unchanged(found, changes):
        return None
    both = _changed_by_both(found, shown, changes) if shown is not None else []
    if both:
        raise _ChangedByBoth(f"{reference}: {', '.join(both)} changed since the user was shown it")
    return changes


def _changed_by_both(seen: Resource, shown: Resource, changes: Resource) -> list[str]:
    """The elements of ``changes`` (what the user changed of the resource as she was shown
    it; extensions URL by URL) that the resource found at delivery also changed since
    (someone else, the EHR), into something else than hers: a three-way check. Laid over,
    hers overwrote the other change unseen; an element only one side changed is merged.
    Compared as :func:`_unchanged` compares, so that the server's way of writing a value
    she was shown (a name's ``use``, a coding's ``display``) is no change."""
    elements = [key for key in changes if key not in ("resourceType", *_KEPT_AS_THEIRS)]
    elements += [_EXTENSION + url for url in _by_url(changes.get("extension", []))]
    return [
        element
        for element in elements
        if not _holds_as(seen, shown, element) and not _holds_as(seen, changes, element)
    ]


def _holds_as(resource: Resource, other: Resource, element: str) -> bool:
    """Whether ``resource`` says what ``other`` says of ``element`` (a key, or
    :data:`_EXTENSION` and a URL), compared as :func:`_unchanged` compares; an element
    neither has is held too."""
    if element.startswith(_EXTENSION):
        url = element.removeprefix(_EXTENSION)
        ours = _without_displays(_by_url(other.get("extension", [])).get(url, []))
        return _one_for_one(_by_url(resource.get("extension", [])).get(url, []), ours)
    if element not in other:
        return element not in resource
    value = _without_displays(other[element])
    return _unchanged(resource, {"resourceType": resource["resourceType"], element: value})


def _without_displays(value: Any) -> Any:
    """``value`` without its codings' ``display``: how a code is shown to people (which the
    EHR may word otherwise, or a release of ours) is not what it says."""
    if isinstance(value, list):
        return [_without_displays(item) for item in value]
    if isinstance(value, dict):
        return {k: _without_displays(v) for k, v in value.items() if k != "display"}
    return value


_EXTENSION = "extension "


def _changed_from(shown: Resource, ours: Resource) -> Resource:
    """``ours`` without the elements the user left as she was shown them (extensions URL by
    URL): laid over the resource found at delivery, those keep its values, which someone
    else (the EHR) may have corrected after the earlier save wrote what she was shown.
    What names the resource and whose it is (:data:`_KEPT_AS_THEIRS`) stays."""
    kept = ("resourceType", *_KEPT_AS_THEIRS)
    changed = {
        key: value
        for key, value in ours.items()
        if key != "extension" and (key in kept or shown.get(key) != value)
    }
    shown_by_url = _by_url(shown.get("extension", []))
    extensions = [
        extension
        for url, of_url in _by_url(ours.get("extension", [])).items()
        if shown_by_url.get(url) != of_url
        for extension in of_url
    ]
    return {**changed, "extension": extensions} if extensions else changed


def _referring(value: Any, found: Mapping[str, str]) -> Any:
    """``value`` with each ``reference`` to a key of ``found`` naming its resource."""
    if isinstance(value, list):
        return [_referring(item, found) for item in value]
    if isinstance(value, dict):
        return {
            key: found.get(item, item)
            if key == "reference" and isinstance(item, str)
            else _referring(item, found)
            for key, item in value.items()
        }
    return value


def _check_owner(seen: Resource, ours: Resource, base_url: str) -> None:
    """Refuses a merge moving ``seen`` to another patient's record (:func:`_other_owner`)."""
    element = _other_owner(seen, ours, base_url)
    if element is not None:
        raise _Refused(f"{ours['resourceType']}/{ours['id']} belongs to another {element}'s record")


def _other_owner(seen: Resource, ours: Resource, base_url: str) -> str | None:
    """The owner element (``patient``, ``subject``) of ``seen`` naming another record than
    ours, if any. Relative or absolute (the EHR's own writes may be absolute), as the
    conditional create's match compares (:func:`_refers`): compared as strings, a child
    the EHR stored with an absolute ``patient`` loaded fine and every edit was refused.
    The merge keeps the server's spelling (:data:`_KEPT_AS_THEIRS`)."""
    for element in _OWNER_ELEMENTS:
        theirs = seen.get(element, {}).get("reference", "")
        if element in ours and not _refers(theirs, ours[element].get("reference", ""), base_url):
            return element
    return None


def laid_over(seen: Resource, ours: Resource) -> Resource:
    """``ours``' elements laid over ``seen``'s (see :func:`_element`); extensions are merged
    by URL, identifiers kept, ``meta`` is the server's with our profile added
    (:func:`~service.fhir.mapping.meta_on_update`: its tags and security labels stay), and
    its narrative unless the merge changes anything
    (:func:`~service.fhir.mapping.narrative_on_update`)."""
    stored = seen  # as the server holds it: its narrative describes this
    seen, ours = as_laid_over(seen, ours)
    merged = {**seen, "meta": meta_on_update(seen.get("meta"), ours.get("meta"))}
    for key, mine in ours.items():
        if key not in _KEPT_AS_THEIRS:
            merged[key] = _element(key, seen[key], mine) if key in seen else mine
    own = {ext["url"] for ext in ours.get("extension", [])}
    merged["extension"] = [
        *(e for e in seen.get("extension", []) if e.get("url") not in own),
        *ours.get("extension", []),
    ]
    if not merged["extension"]:
        del merged["extension"]
    # theirs kept, ours added for a system they lack: a child the EHR recorded without our
    # business identifier (read as ours by our profile or extension) was written as our
    # profile without it, which the profile refuses (found by review)
    theirs = seen.get("identifier", [])
    systems = {identifier.get("system") for identifier in theirs}
    merged["identifier"] = [
        *theirs,
        *(i for i in ours.get("identifier", []) if i.get("system") not in systems),
    ]
    if not merged["identifier"]:
        del merged["identifier"]
    return narrative_on_update(stored, merged)


#: Elements a merge never takes from ours, nor compares with ``seen``'s (``extension`` is
#: merged by URL, ``meta`` kept with our profile added). The owner elements stay as the
#: server wrote them (an absolute reference stays absolute): :func:`_check_owner` found
#: them naming the same record as ours.
_KEPT_AS_THEIRS = ("id", "meta", "identifier", "extension", *_OWNER_ELEMENTS)


def _element(key: str, theirs: Any, mine: Any) -> Any:
    """One element after the merge: ``theirs`` itself when it already says what ours says
    (:func:`_agrees`: the EHR's codings, texts and name parts stay), else ours — of a list,
    only the entry ours stands for: the EHR's other entries (a nickname, the person's
    other roles) stay, except other answers to what ours answers (:func:`_answers`),
    which would now contradict ours (a second child relationship)."""
    if isinstance(theirs, list) and _stands_for_one(mine) and theirs:
        at = _corresponding(theirs, mine[0], key)
        if at is None:  # no entry of theirs answers what ours answers: ours beside theirs
            return [*theirs, mine[0]]
        if _entry_agrees(key, theirs[at], mine[0]):
            return theirs
        ours = _answers(key, mine[0])
        return [
            _replacing(key, entry, mine[0]) if i == at else entry
            for i, entry in enumerate(theirs)
            if i == at or not ours & _answers(key, entry)
        ]
    return theirs if _agrees(theirs, mine) else mine


#: The parts of a list entry our mapping writes or replaces (``mapping.child_related_person``):
#: a name's text and parts, a relationship's codings and text. Of the entry ours replaces,
#: the parts not listed here are the EHR's and stay. A name's prefix and suffix are listed
#: though ours has none: they belonged to the old name ("Jhr.", "II"), not to the one the
#: nurse typed. An unchanged name is not replaced at all and keeps them.
_MODELLED_PARTS = {
    "name": ("text", "family", "given", "prefix", "suffix"),
    "relationship": ("coding", "text"),
}


def _replacing(key: str, theirs: Any, mine: dict[str, Any]) -> dict[str, Any]:
    """Our entry in place of theirs, keeping what of theirs ours does not model: a
    corrected name stays the kind of name it was (its ``use``: official, usual…) for as
    long as it was (its ``period``), its extensions and ``id`` stay. An element without
    a list of its parts is replaced whole."""
    modelled = _MODELLED_PARTS.get(key)
    if modelled is None or not isinstance(theirs, dict):
        return mine
    return {**{part: v for part, v in theirs.items() if part not in modelled}, **mine}


def _entry_agrees(key: str, theirs: Any, mine: Any) -> bool:
    """A name is compared as people read it: its text, or its parts where it has no text
    (a dropped family name is a change even though the parts ours leaves out are only
    theirs)."""
    if key == "name":
        return name_text(theirs) == name_text(mine)
    return _agrees(theirs, mine)


def _stands_for_one(mine: Any) -> bool:
    """Our list of one structure (a name, a relationship, a coding) stands for one entry of
    theirs: the one :func:`_corresponding` finds. Lists of strings (given names) are
    compared whole: a dropped middle name is a change."""
    return isinstance(mine, list) and len(mine) == 1 and isinstance(mine[0], dict)


def _corresponding(theirs: list[Any], mine: dict[str, Any], key: str | None = None) -> int | None:
    """The entry of ``theirs`` ours stands for: of a person's names (``key`` name) the one
    the nurse was shown and edited (:func:`~service.fhir.mapping.current_name`: the official
    one, say, not an old name before it); else the one answering what ``mine`` answers
    (:func:`_answers`; the element ``key`` of a resource, None: inside one), else the
    first. Of an element answered from a value set, no entry (None) when none of theirs
    answers from it: the first is another answer (the EHR's role)."""
    if key == "name":
        shown = current_name(theirs)
        return 0 if shown is None else shown
    answers = _answers(key, mine)
    if answers:
        for at, entry in enumerate(theirs):
            if answers & _answers(key, entry):
                return at
    return None if answers and key in _ANSWERED_FROM else 0


#: The elements of ours whose entry is one answer from a value set, by the value set's id:
#: of theirs, the entry with a coding in it is the one ours stands for. Its code system is
#: not enough: v3 RoleCode holds the child codes and the EHR's other roles of the same
#: person (HPOWATT, POWATT, RESPRSN…), which the merge dropped or replaced.
_ANSWERED_FROM = {"relationship": "child-relationship"}


def _answers(key: str | None, entry: Any) -> frozenset[str]:
    """What an entry of a list answers, for pairing ours with theirs: of an element of
    :data:`_ANSWERED_FROM`, its value set when one of its codings is in it (else nothing);
    elsewhere the code systems of the entry (a coding, or a CodeableConcept's)."""
    if not isinstance(entry, dict):
        return frozenset()
    value_set_id = _ANSWERED_FROM.get(key or "")
    if value_set_id is None:
        return frozenset(_systems(entry))
    members = terminology.value_set(value_set_id)
    codings = [c for c in entry.get("coding", []) if isinstance(c, dict)]
    found = any(members.contains(c.get("system"), str(c.get("code", ""))) for c in codings)
    return frozenset({value_set_id}) if found else frozenset()


def _systems(value: dict[str, Any]) -> set[str]:
    if "system" in value:
        return {value["system"]}
    return {c["system"] for c in value.get("coding", []) if isinstance(c, dict) and "system" in c}


def _unchanged(seen: Resource, ours: Resource) -> bool:
    """Whether the merge would keep every element of ``seen`` as it is: :func:`laid_over`
    would write nothing ``seen`` does not say already.

    Where both sides have a value they must agree; what only one side spells out (the
    EHR's name ``use``, our coding's ``display``) is representation, not a change. The
    resource type's rules of the merge (:func:`~service.fhir.mapping.as_laid_over`) come
    first, as in the overlay: what they change of ``seen`` itself (an old concern Flag's
    ``encounter`` dropped) is a change.

    Extensions are compared as the overlay writes them: ours of a URL take the place of
    all of ``seen``'s of that URL, so, URL by URL, each of ours must agree with one of
    ``seen``'s, a different one each, and ``seen`` may have no more of that URL than ours:
    one more would be dropped by the write, a change. (A concern Flag has one
    ``concern-trigger`` per Hague trigger; a trigger of the server's that ours does not
    name is added to ours by ``as_laid_over`` and kept, so it is no change.)"""
    laid, ours = as_laid_over(seen, ours)
    if laid != seen:
        return False
    theirs_by_url = _by_url(seen.get("extension", []))
    for url, ours_of_url in _by_url(ours.get("extension", [])).items():
        if not _one_for_one(theirs_by_url.get(url, []), ours_of_url):
            return False
    mine = {k: v for k, v in ours.items() if k not in _KEPT_AS_THEIRS}
    return all(
        key in seen and _element(key, seen[key], value) is seen[key] for key, value in mine.items()
    )


def _by_url(extensions: list[Any]) -> dict[Any, list[Any]]:
    """Extensions grouped by URL, each URL's in their order."""
    grouped: dict[Any, list[Any]] = {}
    for extension in extensions:
        url = extension.get("url") if isinstance(extension, dict) else None
        grouped.setdefault(url, []).append(extension)
    return grouped


def _one_for_one(theirs: list[Any], mine: list[Any]) -> bool:
    """Whether each of ``mine`` agrees with (:func:`_agrees`) a different one of ``theirs``
    and none of ``theirs`` is left over: a matching of the two lists (augmenting paths, as
    an entry of ours may agree with several of theirs)."""
    if len(theirs) != len(mine):
        return False
    taken: dict[int, int] = {}  # index in theirs → the index in mine that has it

    def place(i: int, tried: set[int]) -> bool:
        for j, candidate in enumerate(theirs):
            if j in tried or not _agrees(candidate, mine[i]):
                continue
            tried.add(j)
            if j not in taken or place(taken[j], tried):
                taken[j] = i
                return True
        return False

    return all(place(i, set()) for i in range(len(mine)))


#: What only ours spells out and still agrees: how a code or a reference is shown to people,
#: not what it says. Any other element only ours has — a period's ``end``, a quantity's
#: ``value`` — is something the server's version does not say yet: a change. (Before, every
#: element only ours had agreed: a closing laid over the concern Flag lost its end.)
_SHOWN_ONLY = frozenset({"display", "text"})


def _agrees(theirs: Any, mine: Any) -> bool:
    if isinstance(theirs, dict) and isinstance(mine, dict):
        return all(
            _agrees(theirs[key], value) if key in theirs else key in _SHOWN_ONLY
            for key, value in mine.items()
        )
    if isinstance(theirs, list) and isinstance(mine, list):
        if _stands_for_one(mine) and theirs:
            at = _corresponding(theirs, mine[0])
            return at is not None and _agrees(theirs[at], mine[0])
        return len(theirs) == len(mine) and all(map(_agrees, theirs, mine))
    return bool(theirs == mine)


class _WitnessUnanswered(Exception):  # noqa: N818 - a state of knowledge, not an error of ours
    """The witness cannot say whether an earlier attempt was applied (:func:`_witness_exists`);
    ``reason`` says why in a few words without the server's text, for the logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"witness unanswered, not sent again: {detail}")
        self.reason = reason


def _witness_exists(client: FhirClient, witness: str) -> bool:
    """Whether the search ``Type?params`` finds the resource only this transaction creates.
    Not knowing is no reason to send the transaction again, nor to call it failed: an
    outage propagates (``pending``), a refusal for want of a sign-in too (it waits for
    one), and any other refusal of the search (a 4xx: a parameter the server does not
    support) or a search longer than :data:`WITNESS_MAX_PAGES` without the resource raises
    :class:`_WitnessUnanswered` (``pending``, an operator alerted: :func:`_not_known`).

    What the server found is checked against the parameters it can be checked against
    (``identifier``, ``target``, ``recorded``): a server that ignores a parameter it does
    not support (FHIR's lenient handling) answers with more than was asked, e.g. every
    Provenance of the Flag, and an entry never sent must not count as applied. Ours is
    then the newest, on the last page: every page is read, not the first only."""
    resource_type, _, query = witness.partition("?")
    params = search_params(query)
    try:
        found = client.search_pages(resource_type, params, max_pages=WITNESS_MAX_PAGES)
    except FhirRejected as refused:
        if refused.needs_authorisation:
            raise
        raise _WitnessUnanswered(f"search refused {refused.status}", str(refused)) from refused
    resources = (e.get("resource", {}) for e in found.bundle.get("entry", []))
    if any(
        resource.get("resourceType") == resource_type
        and _matches(resource, params, client.base_url)
        for resource in resources
    ):
        return True
    if not found.complete:
        longer = f"the search has more than {WITNESS_MAX_PAGES} pages"
        raise _WitnessUnanswered(longer, longer)
    return False


def _not_known(entry: _Claimed, unanswered: _WitnessUnanswered) -> Delivery:
    """An entry whose earlier attempt may have been applied and whose witness cannot say:
    ``pending`` and not sent (each later attempt asks the witness again first, so a refusal
    that passes ends it either way). Logged at ERROR: a refusal that lasts needs a person
    (the server's search parameters, or a look at the record), and meanwhile the entry
    holds back its patient's later saves; ``/readyz`` fails once it has waited
    ``READY_MAX_AGE``. ``failed`` told the user "not saved" for what may be stored, and
    what she typed again was a duplicate."""
    fields = {"outbox_id": entry.id, "attempt": entry.attempts, "reason": unanswered.reason}
    log.error("outbox entry's witness unanswered: kept pending, not sent", extra={"fields": fields})
    return Delivery(entry.id, DeliveryState.PENDING, str(unanswered))


def _matches(resource: Resource, params: dict[str, str], base_url: str) -> bool:
    """Whether ``resource`` (found on the FHIR server at ``base_url``) meets ``params``."""
    return all(_matches_one(resource, name, value, base_url) for name, value in params.items())


def _matches_one(resource: Resource, name: str, value: str, base_url: str) -> bool:
    if name == "identifier":
        system, code = identifier_of_token(value)
        identifiers = resource.get("identifier", [])
        return any(i.get("system") == system and i.get("value") == code for i in identifiers)
    if name == "patient":
        return _refers(resource.get("patient", {}).get("reference", ""), value, base_url)
    if name == "target":
        targets = resource.get("target", [])
        return any(_refers(t.get("reference", ""), value, base_url) for t in targets)
    if name == "recorded":
        return _instant(resource.get("recorded")) == _instant(value)
    return True  # a parameter the witnesses do not use: the server's answer stands


def _refers(reference: str, value: str, base_url: str) -> bool:
    """Whether ``reference`` (on the FHIR server at ``base_url``) names ``value``
    (``Type/id``): relative, or absolute on that server. Any URL ending in ``/Patient/1``
    was taken for it, another server's Patient/1 too: someone else's record."""
    return reference in (value, f"{base_url.rstrip('/')}/{value}")


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _count_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(OutboxEntry.state, func.count())
        .where(OutboxEntry.state != DeliveryState.DELIVERED)
        .group_by(OutboxEntry.state)
    )
    return {state: int(count) for state, count in rows}


def _log_delivery(delivery: Delivery) -> None:
    fields = {"outbox_id": delivery.entry_id, "state": str(delivery.state)}
    if delivery.state is DeliveryState.FAILED:
        # An operator must look: the FHIR server refuses what a nurse recorded.
        log.error("FHIR server rejected an outbox entry", extra={"fields": fields})
    elif delivery.state is DeliveryState.DELIVERED:
        log.info("outbox entry delivered", extra={"fields": fields})
    else:
        log.warning("outbox entry not delivered", extra={"fields": fields})


class OutboxWorker:
    """A background thread that runs :meth:`Outbox.run_once` every ``interval`` seconds."""

    def __init__(
        self, outbox: Outbox, interval: float, stop_timeout: float = STOP_TIMEOUT_SECONDS
    ) -> None:
        self._outbox = outbox
        self._interval = interval
        self._stop_timeout = stop_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._database_down = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="outbox-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._stop_timeout)
            if self._thread.is_alive():  # a delivery outlasts the wait: the rest goes now
                self._release_unbegun()

    def _release_unbegun(self) -> None:
        """Best effort, as the service stops: entries not released (the database does not
        answer either) stay leased until their lease runs out, as before, and the stop
        goes on; an error here was the app's "shutdown failed" (found by review)."""
        try:
            self._outbox.release_unbegun(wait=self._stop_timeout)
        except Exception as error:
            fields = {"error": type(error).__name__}
            log.warning("outbox: entries not begun kept their lease", extra={"fields": fields})

    def _loop(self) -> None:
        while True:
            self.cycle()
            if self._stop.wait(self._interval):  # the schedule, not synchronisation
                return

    def cycle(self) -> None:
        """One run; a failure keeps the worker alive. A database that does not answer is
        said once, when it stops and when it answers again: a traceback every cycle (every
        2 s) buried the log while it was down (found by review); /readyz says it too."""
        try:
            self._outbox.run_once(stopping=self._stop.is_set)
        except Exception as error:
            down = passing_failure(error)
            if not down:
                log.exception("outbox cycle failed")
            elif not self._database_down:
                fields = {"error": type(error).__name__}
                log.error("outbox: the database does not answer", extra={"fields": fields})
            self._database_down = down
            return
        if self._database_down:
            log.warning("outbox: the database answers again")
        self._database_down = False


#: Marks a bundle entry as a merge update; never sent (:func:`_merged` rebuilds the entry).
_MERGE = "kindreflexMerge"
_IF_UPDATING = "kindreflexIfUpdating"
#: On a merge update, what the user was shown of the resource instead of the version it
#: names: an earlier save's edit of that version, still waiting then; on a create-or-merge,
#: the resource as an earlier save writes it (never sent).
_SHOWN = "kindreflexShown"


class TransactionBuilder:
    """Builds one idempotent FHIR transaction: what a retry may safely send again.

    * :meth:`create` — a conditional create on the resource's business identifier;
    * :meth:`update` — a PUT with ``If-Match`` on the version the user saw;
    * :meth:`merge_update` — the same, with only our elements, merged at delivery;
    * :meth:`create_or_merge` — a conditional create that becomes such a merge over the
      resource its identifier finds at delivery (an earlier save of it delivered first);
    * :meth:`add` — a plain create, for resources without an identifier in R4 (Provenance,
      AuditEvent): the outbox's witness keeps them from being sent twice.

    Each method returns the reference other entries of the bundle use for the resource.
    """

    def __init__(self) -> None:
        self._entries: list[Resource] = []

    def create(
        self, resource: Resource, identifier: dict[str, str], *, patient_ref: str | None = None
    ) -> str:
        """A conditional create by ``identifier``; with ``patient_ref``, only a resource of
        that patient counts as the one already there: an identifier that came from the
        browser (a new child's) and names another patient's resource creates this
        patient's own instead of making the save refer to someone else's."""
        full_url = f"urn:uuid:{uuid.uuid4()}"
        params = {"identifier": identifier_token(identifier["system"], identifier["value"])}
        if patient_ref is not None:
            params["patient"] = patient_ref
        self._entries.append(
            {
                "fullUrl": full_url,
                "resource": resource,
                "request": {
                    "method": "POST",
                    "url": resource["resourceType"],
                    "ifNoneExist": search_query(params),
                },
            }
        )
        return full_url

    def create_or_merge(
        self,
        resource: Resource,
        identifier: dict[str, str],
        *,
        patient_ref: str | None = None,
        shown: Resource | None = None,
    ) -> str:
        """A :meth:`create` of a resource an earlier transaction, still undelivered or
        delivered since, may have created with the same identifier: at delivery, our
        elements are laid over the resource found by the identifier, with If-Match on its
        version (see the module doc), so the later save's values are the ones kept.
        ``shown``: the resource as the user was shown it, as that earlier transaction
        writes it. Then only the elements she changed are laid over: one she left as it
        was keeps the value of the resource found, which the EHR may have corrected since."""
        reference = self.create(resource, identifier, patient_ref=patient_ref)
        self._entries[-1][_MERGE] = True
        if shown is not None:
            self._entries[-1][_SHOWN] = shown
        return reference

    def update(self, resource: Resource, version_id: str) -> str:
        reference = f"{resource['resourceType']}/{resource['id']}"
        self._entries.append(
            {
                "resource": resource,
                "request": {"method": "PUT", "url": reference, "ifMatch": f'W/"{version_id}"'},
            }
        )
        return reference

    def merge_update(
        self, resource: Resource, version_id: str, *, shown: Resource | None = None
    ) -> str:
        """An update of ``resource`` (its ``id``, and only our elements) over the version the
        user saw, merged with that version at delivery (see the module doc). ``shown``: our
        elements as the user saw them instead, an earlier save's edit of that version (still
        waiting, or delivered since); once that edit is delivered, the update applies over
        it, and whether it changes anything is asked of the resource as it is then: ours
        may be that version's own values, undoing the edit."""
        reference = self.update(resource, version_id)
        self._entries[-1][_MERGE] = True
        if shown is not None:
            self._entries[-1][_SHOWN] = shown
        return reference

    def add(self, resource: Resource, *, if_updating: Resource | None = None) -> str:
        """A plain create. With ``if_updating``, ``resource`` describes the transaction's
        writes (a Provenance, an AuditEvent) where its merges decide them at delivery: it
        is sent as it says when the transaction as sent updates nothing, ``if_updating``
        when it updates a resource (a :meth:`create_or_merge` updating the one it found, a
        :meth:`merge_update` kept), either one without the references to the merges that
        turned out to write nothing, and neither when nothing else is written."""
        full_url = f"urn:uuid:{uuid.uuid4()}"
        request = {"method": "POST", "url": resource["resourceType"]}
        entry: Resource = {"fullUrl": full_url, "resource": resource, "request": request}
        if if_updating is not None:
            entry[_IF_UPDATING] = if_updating
        self._entries.append(entry)
        return full_url

    @property
    def merges(self) -> bool:
        """Whether a merge decides at delivery what the transaction writes: of each
        :meth:`create_or_merge`, a create, an update or nothing; of each
        :meth:`merge_update`, an update or nothing."""
        return any(e.get(_MERGE) for e in self._entries)

    def bundle(self) -> Resource:
        return {"resourceType": "Bundle", "type": "transaction", "entry": list(self._entries)}

    def stable_references(self) -> list[str]:
        """How to find each created or updated resource later, without server ids:
        ``Type?identifier=system%7Cvalue`` for a create (its ``ifNoneExist``), ``Type/id``
        for an update."""
        return [
            entry["request"]["url"]
            + (f"?{entry['request']['ifNoneExist']}" if entry["request"].get("ifNoneExist") else "")
            for entry in self._entries
            if "ifNoneExist" in entry["request"] or "ifMatch" in entry["request"]
        ]
