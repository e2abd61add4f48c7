"""The nurse's save at triage (steps 1-3): validate, commit locally, deliver to FHIR.

``Triage.record_triage`` is the whole use case, in order:

1. The protocol validates the findings (a :class:`~service.protocol.ProtocolError` goes
   back to the nurse; nothing is written).
2. One idempotent FHIR transaction is built with ``service.fhir.mapping``: the children
   (RelatedPerson; conditional create on the child identifier, or an update with
   ``If-Match`` of a child already on the server), an expected child, the step findings,
   the open-concern Flag (niet-pluis or unclear), a Provenance naming the user and the
   write's AuditEvent. A child already on the server whom the nurse only confirmed (the
   version and the values the page showed) is referenced, not written: the Provenance
   and the audit then say "create", not "update" (the audit's "transaction": both).
3. In ONE local transaction: the outbox entry (the bundle, who, which session), the
   audit row and — for a concern — the worklist row. From here on nothing is lost.
4. One delivery attempt with a short timeout. The nurse sees "delivered", or "pending"
   (the worker delivers it), or — when another user changed a child meanwhile — a
   :class:`SaveConflict`; the input stays in the outbox either way.

Business identifiers make every retry safe: a new child's identifier is the UUID of its
``urn:uuid:`` form reference (stable across a double submit), a finding's is derived
from the session, step and submission (``TriageInput.submission``: the same form posted
again; else the time it was recorded), the concern's is reused while the patient's
concern stays open, and so are the Flag's start and author (when and by whom it was first
raised), whichever of several pending saves is delivered first. The saves of one session
take turns (:func:`_one_save_at_a_time`), so a double submit's second post finds the
first's entry and joins it. A returning patient's chart shows, besides the server's
children, the new children of saves still waiting in the outbox (:meth:`Triage.load_chart`),
with their identifiers: saved again, such a child is the same RelatedPerson, not a second,
and it has the values of the later save: a new child an earlier save of the patient
already queued is queued with ``TransactionBuilder.create_or_merge`` (laid over the child
its identifier finds at delivery), and the outbox delivers a patient's saves in order.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Annotated, Literal, Protocol

from fastapi import Depends, Request
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from service import audit
from service.audit import AuditAction, AuditFact, Channel
from service.db.base import Database, insert_new, utcnow
from service.db.models import (
    AppSession,
    AuditRecord,
    Concern,
    OutboxEntry,
    PageSave,
    ShownChild,
    ShownEdit,
)
from service.fhir import mapping, terminology
from service.fhir.client import (
    FhirClient,
    FhirRejected,
    FhirUnavailable,
    FhirUnreadable,
    Resource,
    identifier_search,
)
from service.outbox import (
    IMMEDIATE_TIMEOUT_SECONDS,
    REFUSED_STATES,
    UNDELIVERED_STATES,
    DeliveryState,
    NewEntry,
    Outbox,
    TokenSource,
    TransactionBuilder,
    enqueue,
    kept_changing,
    shown_in,
)
from service.protocol import (
    Child,
    ErrorCode,
    ExpectedChild,
    Finding,
    KindreflexCase,
    MissingInformationError,
    SafetyAssessment,
    Step,
    Step1Finding,
    Step2Finding,
    Step3Support,
)
from service.tenancy import TenantContext
from service.text import same_name, user_display, worklist_display

log = logging.getLogger(__name__)

#: How often a save is tried when the patient's concern changes under it (see
#: :meth:`Triage._commit_retrying`).
_COMMIT_ATTEMPTS = 3
#: The outbox kind of the triage saves.
KIND = "triage"
#: Why a save's edit of a child was refused, besides its entry's state (``conflict``:
#: someone else had changed the child first; ``failed``): a conflict because the record
#: kept changing under the save (``service.outbox.kept_changing``); nobody changed the child.
KEPT_CHANGING = "kept-changing"
#: Why a save's edit of a child was refused, as the chart tells it: a conflict, but the
#: child is still in the version the edit was made on. Someone else had changed another
#: part of the save first (another child, the concern's Flag); nobody changed this child.
CHANGED_ELSEWHERE = "changed-elsewhere"
#: Every reason of a refused edit (:attr:`_Save.refusal`, and :data:`CHANGED_ELSEWHERE`).
_REFUSAL_REASONS = (DeliveryState.CONFLICT, CHANGED_ELSEWHERE, KEPT_CHANGING, DeliveryState.FAILED)

_VERSIONED_CHILD = "RelatedPerson/{id}/_history/{version}"
_FHIR_ID = r"[A-Za-z0-9\-]+[A-Za-z0-9\-.]{0,63}"  # FHIR id syntax, but never only dots
_VERSIONED_REF = re.compile(rf"RelatedPerson/(?P<id>{_FHIR_ID})/_history/(?P<version>{_FHIR_ID})")
_CHILD_REFERENCE = re.compile(rf"RelatedPerson/(?P<id>{_FHIR_ID})(?:/_history/{_FHIR_ID})?$")


class User(Protocol):
    @property
    def fhir_user(self) -> str: ...
    @property
    def name(self) -> str: ...


class LaunchInfo(Protocol):
    """What the use case reads of ``smart_app.session.LaunchContext`` (``service`` does not
    import ``smart_app``; the real LaunchContext satisfies this structurally)."""

    @property
    def session_id(self) -> str: ...
    @property
    def tenant(self) -> TenantContext: ...
    @property
    def registration_id(self) -> str: ...
    @property
    def fhir_base_url(self) -> str: ...
    @property
    def patient_id(self) -> str | None: ...
    @property
    def encounter_id(self) -> str | None: ...
    @property
    def user(self) -> User: ...
    @property
    def actor(self) -> str: ...  # the user as the audit names them (audit.actor_url)
    @property
    def scope(self) -> str: ...  # what the session's token grants (its token response's)


def enqueue_save(
    session: Session,
    ctx: LaunchInfo,
    kind: str,
    patient_ref: str,
    bundle: Resource,
    witness: str | None,
) -> OutboxEntry:
    """The outbox entry of a user's save (a triage, a social service's step), sent on her
    behalf through her launch, within the caller's unit of work; the saving request
    delivers it itself (``NewEntry.delivered_at_once``)."""
    return enqueue(
        session,
        ctx.tenant.id,
        NewEntry(
            kind=kind,
            registration_id=ctx.registration_id,
            fhir_base_url=ctx.fhir_base_url,
            session_id=ctx.session_id,
            author=ctx.user.fhir_user,
            patient_ref=patient_ref,
            bundle=bundle,
            witness=witness,
            delivered_at_once=True,
        ),
    )


@dataclass(frozen=True)
class TriageInput:
    """The nurse's findings of one save. ``step2`` is None only when step 1 closes the case."""

    step1: Step1Finding
    step2: Step2Finding | None = None
    step3: Step3Support | None = None
    #: The same for the same form posted again (a double click, a browser resending it),
    #: else different: the findings' identifiers come from it instead of their time, which
    #: each post stamps anew. None: from the time (a caller that keeps it stable).
    submission: str | None = None
    #: The page the findings were given on (``RecordedChart.page``): the waiting edits of a
    #: child it showed are hers to lay her values over, and the ones this save makes are
    #: remembered for it. None: a page that showed no waiting edit.
    page: str | None = None


@dataclass(frozen=True)
class Chart:
    """A patient's chart as one search returns it (see :func:`search_chart`)."""

    patient: Resource | None  # None: the server does not know the patient
    related_persons: list[Resource]
    flags: list[Resource]


#: How many pages of the chart's search are read at most (each of up to 100 entries).
CHART_MAX_PAGES = 10
#: What the chart's search includes with the Patient (``_revinclude``): the EHR's
#: CapabilityStatement must declare both (the admin's connection test asks).
CHART_REVINCLUDES = ("RelatedPerson:patient", "Flag:patient")


def search_chart(client: FhirClient, patient_ref: str) -> Chart:
    """The Patient, every RelatedPerson and every Flag that names them
    (``Patient?_id=…&_revinclude=RelatedPerson:patient&_revinclude=Flag:patient``), in one
    request as a rule. A server that pages the included resources (many cap them at 100)
    is read page by page; a chart not read in full is unreadable (``FhirUnreadable``): a
    child left out would be typed again as a new one, an open concern left out would get
    a second Flag (found by review: the first page alone was read)."""
    query = [
        ("_id", patient_ref.removeprefix("Patient/")),
        *(("_revinclude", included) for included in CHART_REVINCLUDES),
        ("_count", "100"),
    ]
    pages = client.search_pages("Patient", query, max_pages=CHART_MAX_PAGES)
    if not pages.complete:
        raise FhirUnreadable(f"the chart has more than {CHART_MAX_PAGES} pages, or pages elsewhere")
    found = [e.get("resource", {}) for e in pages.bundle.get("entry", [])]
    patients = [r for r in found if f"{r.get('resourceType')}/{r.get('id')}" == patient_ref]
    related = [r for r in found if r.get("resourceType") == "RelatedPerson"]
    flags = [r for r in found if r.get("resourceType") == "Flag"]
    return Chart(patients[0] if patients else None, related, flags)


@dataclass(frozen=True)
class RecordedChart:
    """What the hospital's FHIR server holds for the nurse at triage, with what our saves
    still waiting in the outbox will change in it (:meth:`Triage.load_chart`)."""

    patient: mapping.PatientIdentity | None
    children: list[Child]
    #: The refs of the children shown with the values of a save still waiting in the outbox:
    #: a new child (its ``urn:uuid:``) or an edit of a child on the server (the version it
    #: was made on). The page marks them "delivery pending".
    pending: frozenset[str] = frozenset()
    #: The refs of children on the server (as shown: the server's version) whose edit in a
    #: save of ours the server refused because someone else had changed the child first
    #: (``conflict``), and that no save since has named again.
    conflicts: frozenset[str] = frozenset()
    #: Likewise, the children whose edit was refused in a conflict over another part of its
    #: save: the child is still in the version the edit was made on (``changed-elsewhere``).
    changed_elsewhere: frozenset[str] = frozenset()
    #: Likewise, the children whose edit the server refused for another reason (``failed``:
    #: the save's content, say), shown as the server has them, until a save names them again.
    failed: frozenset[str] = frozenset()
    #: Likewise, the children whose edit was not applied because the record kept changing
    #: under its save (another writer's changes of the concern's Flag, not of the child).
    kept_changing: frozenset[str] = frozenset()
    #: Of each child on the server that a save of ours created, by its ref: the
    #: ``urn:uuid:`` of its identifier, the ref a page showed it by while that save waited
    #: (two, of a child the EHR merged from two).
    identified_as: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: The page the chart is shown on, new for each chart read: a save from it names it
    #: (``TriageInput.page``). The waiting edits it shows are remembered for this page, not
    #: for the app session: another tab of the session did not show them.
    page: str = field(default_factory=lambda: uuid.uuid4().hex)


#: What the nurse is told of her save: on the record; to follow by itself (the server did
#: not answer); waiting for a sign-in (her EHR token ran out: sent when the app is opened
#: again for the patient, not by itself); refused.
SaveStatus = Literal["delivered", "pending", "waiting-sign-in", "failed"]


@dataclass(frozen=True)
class EditsShown:
    """The waiting edits of children and the waiting new children that one page showed
    (``ShownEdit``), or that a save from it wrote (:meth:`Triage.edits_shown`)."""

    #: (the ref of the version an edit was made on, or of a new child its ``urn:uuid:``; a
    #: fingerprint of its values)
    seen: frozenset[tuple[str, str]] = frozenset()
    #: The saves made from the page (``PageSave``: their outbox entry ids). What the latest
    #: of them wrote of a child is what the page stands for: values alone cannot tell her
    #: save from a colleague's later one with the values her page first showed.
    saved_in: frozenset[int] = frozenset()

    @classmethod
    def of(cls, edits: Iterable[Child]) -> EditsShown:
        """These edits (each under the ref of the version it was made on) and new children
        (under their ``urn:uuid:``)."""
        return cls(frozenset((edit.ref, _fingerprint(edit)) for edit in edits))

    def include(self, made_on: str, child: Child) -> bool:
        """Whether the page showed an edit of the version ``made_on`` (or the new child
        ``made_on``) with ``child``'s values (its name, birth date, relationship and living
        with the patient)."""
        return (made_on, _fingerprint(child)) in self.seen


@dataclass(frozen=True)
class SaveResult:
    status: SaveStatus
    concern_flagged: bool
    outbox_id: int


@dataclass(frozen=True)
class RefusedAnswers:
    """The nurse's own answers in a save of hers the record refused: steps 1 to 3 but the
    children, which the chart shows as the record has them, marked
    (:meth:`Triage.refused_answers`)."""

    saved_at: datetime
    no_children: bool  # step 1 named no child and expected none
    expecting: ExpectedChild | None
    step2: Step2Finding | None
    step3: Step3Support | None
    #: The children the save created (by the ``urn:uuid:`` of their identifier): the record
    #: does not hold them, unless another save wrote them since.
    new_children: tuple[Child, ...] = ()
    #: Why the record refused the save (``_Save.refusal``): someone else changed the
    #: patient's data first (``conflict``), the record kept changing under it
    #: (``kept-changing``), or it refused the content (``failed``: saved again as it
    #: was, it may well be refused again).
    refusal: str = DeliveryState.CONFLICT


class ChildRecordedMeanwhile(Exception):  # noqa: N818 - says what happened, as SaveConflict
    """New children of a save that another save of the patient already writes as its own
    new children (the same name and date of birth): two pages opened before either saved.
    ``refs``: this save's ref of each → the ref of that child in the other save (its
    ``urn:uuid:``): saved under it, the child is that one, merged, not a second. Nothing
    is saved."""

    def __init__(self, refs: Mapping[str, str]) -> None:
        super().__init__(f"{len(refs)} child(ren) recorded meanwhile by another save")
        self.refs = refs


class SaveConflict(Exception):  # noqa: N818 - name agreed between the engineers
    """Another user changed a child since it was loaded. The input is kept (``outbox_id``)."""

    def __init__(self, outbox_id: int, message: str) -> None:
        super().__init__(message)
        self.outbox_id = outbox_id
        self.message = message


@dataclass(frozen=True)
class _Plan:
    """The transaction of one save and what the local rows need to know about it."""

    bundle: Resource
    witness: str
    written: list[str]  # stable references (TransactionBuilder.stable_references)


class Triage:
    """The triage use cases; one per app (``app.state.triage``)."""

    def __init__(
        self, database: Database, outbox: Outbox, tokens: TokenSource, timeout: float
    ) -> None:
        self._database = database
        self._outbox = outbox
        self._tokens = tokens
        self._timeout = timeout

    # -- save ---------------------------------------------------------------------------------

    def record_triage(self, ctx: LaunchInfo, findings: TriageInput) -> SaveResult:
        validate(ctx, findings)
        patient_ref = _patient_ref(ctx)
        concern = _raises_concern(findings)
        entry_id = self._commit_retrying(ctx, findings, concern)
        self._outbox.adopt_session(
            ctx.tenant.id, ctx.registration_id, ctx.fhir_base_url, patient_ref, ctx.session_id
        )
        quick = min(self._timeout, IMMEDIATE_TIMEOUT_SECONDS)
        state = self._outbox.deliver(entry_id, timeout=quick)
        if state is DeliveryState.CONFLICT:
            raise SaveConflict(
                entry_id,
                "Someone else changed a child of this patient since you opened the form. "
                "Your input is kept; reload the children and save again.",
            )
        return SaveResult(_status(state), concern, entry_id)

    def _commit_retrying(self, ctx: LaunchInfo, findings: TriageInput, concern: bool) -> int:
        """:meth:`_commit`, done again when the patient's concern changed under it: another
        save opened it at this moment (the unique open-concern index: IntegrityError; the
        save now joins that one), or another save, an assignment or a closing changed the
        open concern's row between our reading and our update (its ``row_version``:
        StaleDataError; the save now updates the row as it is, or opens a new concern when
        it was closed). Each attempt is rolled back whole, so none writes anything twice."""
        for _ in range(_COMMIT_ATTEMPTS - 1):
            try:
                return self._commit(ctx, findings, concern)
            except (IntegrityError, StaleDataError):
                continue
        return self._commit(ctx, findings, concern)

    def _commit(self, ctx: LaunchInfo, findings: TriageInput, concern: bool) -> int:
        """One local transaction: outbox entry, audit row, worklist row. Returns the entry id.

        The same findings submitted again (a double click, a retried request) have the same
        witness: they join the entry already saved instead of writing anything twice.
        """
        patient_ref = _patient_ref(ctx)
        now = utcnow()
        with self._database.session() as session:
            _one_save_at_a_time(session, ctx.session_id)
            open_concern = _concern_to_continue(session, ctx, patient_ref) if concern else None
            flag_id = open_concern.flag_identifier if open_concern else str(uuid.uuid4())
            raised = _raised(ctx, findings, flag_id, open_concern) if concern else None
            shown = _shown_children(session, ctx.session_id)
            # an earlier save can have queued a new child, or an edit of a loaded one
            new = any(_parse_versioned(c.ref) is None for c in findings.step1.children)
            edited = any(_parse_versioned(c.ref) is not None for c in findings.step1.children)
            saves = _patient_saves(session, ctx) if new or edited else []
            # another save's edit of a version counts only if her page showed it: laid over
            # one it never showed, her save overwrote another nurse's change unseen
            seen = EditsShown()
            if saves:
                page = _shown_edits(session, ctx.session_id, findings.page)
                seen = _as_the_page_stands(page, saves, patient_ref)
            queued = _queued_children(saves, patient_ref, seen, findings.step1.children)
            undelivered = [save for save in saves if save.state in UNDELIVERED_STATES]
            edits = _edits_seen(undelivered, patient_ref, seen)
            delivered = [save for save in saves if save.state == DeliveryState.DELIVERED]
            landed = _edits_seen(delivered, patient_ref, seen)
            plan = _plan(ctx, findings, raised, now, shown, queued, edits, landed)
            earlier = _entry_with_witness(session, ctx.tenant.id, plan.witness)
            if earlier is not None:
                return earlier
            entry = enqueue_save(session, ctx, KIND, patient_ref, plan.bundle, plan.witness)
            if new:  # read again under the patient's lock the entry holds (PostgreSQL)
                _refuse_recorded_meanwhile(session, ctx, findings.step1.children, entry.id)
            # her page now stands for what she saved from it, unless the record refuses it
            # (_as_the_page_stands). Not a ShownEdit: remembered as shown, a refused save's
            # values read later as what her page showed, once a colleague wrote the same,
            # and her next save laid her values over the colleague's (found by review)
            if findings.page is not None:
                row = {
                    "session_id": ctx.session_id,
                    "page_id": findings.page,
                    "outbox_id": entry.id,
                }
                insert_new(session, PageSave, [row])
            fact = _write_fact(ctx, patient_ref, plan.written, now, _updates(plan.written))
            audit.record_local(session, ctx.tenant.id, fact, entry.fhir_base_url, entry.id)
            if concern:
                _index_concern(session, ctx, findings, open_concern, flag_id, entry.id, now)
                session.flush()  # the unique open-concern index speaks here, inside the try
            return entry.id

    # -- returning patient's children ----------------------------------------------------------

    def load_chart(self, ctx: LaunchInfo) -> RecordedChart:
        """The patient and their children already on the FHIR server: one audited search
        (the Patient with ``_revinclude`` of its RelatedPersons).

        Each child's ``ref`` is versioned (``RelatedPerson/7/_history/2``): a later save
        updates exactly the version shown, with If-Match — unless the nurse changed none of
        its values, which the session remembers (``ShownChild``).

        Laid over them, what this patient's saves still waiting in the outbox will write
        (``pending``): the new children the server does not hold yet, and the latest
        edit of a child on the server, shown with its saved values and the ref of the
        version it was made on (saved again unchanged, it is referenced, not written a
        second time: :func:`_write_children`). A child whose edit the server refused
        because someone else changed it first is shown as the server has it now, in
        ``conflicts`` (refused for another reason: ``failed``; not applied because the
        record kept changing under the save: ``kept_changing``), until a later save names
        it again (:func:`_refused_edits`).
        """
        patient_ref = _patient_ref(ctx)
        try:
            with self._client(ctx) as client:
                chart = search_chart(client, patient_ref)
            recorded = _readable(chart)
        except (FhirUnavailable, FhirRejected):
            self._audit_read(ctx, patient_ref, "failure")
            raise
        name = recorded.patient.name if recorded.patient else None
        self._audit_read(ctx, patient_ref, "success", recorded.children, name)
        self._index_unlisted_concern(ctx, chart, recorded)
        identified_as = _identified_as(chart.related_persons)
        outstanding = self._outstanding(ctx, identified_as)
        on_server = _child_identifiers(chart.related_persons)
        new = [c for c in outstanding.new_children if _child_uuid(c.ref) not in on_server]
        children, pending = [], {c.ref for c in new}
        # the refs of the children whose latest edit was refused, by why (_Save.refusal)
        told: dict[str, set[str]] = {reason: set() for reason in _REFUSAL_REASONS}
        shown_edits = []
        for child in recorded.children:
            edit = outstanding.edits.get(_child_id(child.ref))
            if edit is not None:  # the server's version, as our waiting save will change it
                children.append(edit)
                pending.add(edit.ref)
                shown_edits.append(edit)
                continue
            children.append(child)
            refused = outstanding.refused.get(_child_id(child.ref))
            if refused is not None:
                told_of = refused.told_of(child)
                if told_of is not None:
                    told[told_of].add(child.ref)
        self._remember_edits(ctx, recorded.page, [*shown_edits, *new])
        return replace(
            recorded,
            children=_eldest_first([*children, *new]),
            pending=frozenset(pending),
            conflicts=frozenset(told[DeliveryState.CONFLICT]),
            changed_elsewhere=frozenset(told[CHANGED_ELSEWHERE]),
            failed=frozenset(told[DeliveryState.FAILED]),
            kept_changing=frozenset(told[KEPT_CHANGING]),
            identified_as=identified_as,
        )

    def pending_chart(self, ctx: LaunchInfo) -> RecordedChart:
        """What the page can show when the FHIR server cannot be read: the children of this
        patient's saves still waiting in the outbox, new ones and edits of children on the
        server (with the ref of the version the edit was made on), all pending delivery."""
        outstanding = self._outstanding(ctx)
        children = _eldest_first([*outstanding.new_children, *outstanding.edits.values()])
        chart = RecordedChart(None, children, pending=frozenset(c.ref for c in children))
        self._remember_edits(ctx, chart.page, children)
        return chart

    def _remember_edits(self, ctx: LaunchInfo, page: str, edits: Iterable[Child]) -> None:
        """Remember what of the saves still waiting the page shows (``ShownEdit``): their
        edits of children on the server (a save from the page may lay her values over
        those, and only those) and their new children (by ``urn:uuid:``: the form after a
        conflict keeps her row of one only when the record holds it as the page showed
        it)."""
        shown = list(edits)
        if shown:
            with self._database.session() as session:
                _remember_shown_edits(session, ctx.session_id, page, shown)

    def _outstanding(
        self, ctx: LaunchInfo, identified_as: Mapping[str, tuple[str, ...]] | None = None
    ) -> _Outstanding:
        """``identified_as``: the record's children's identifiers (``RecordedChart``), by
        which a refused save of a child that was still waiting to be created tells which
        child on the record it was."""
        ids = {urn: _child_id(ref) for ref, urns in (identified_as or {}).items() for urn in urns}
        with self._database.session() as session:
            saves = _patient_saves(session, ctx)
            refused = _refused_edits(session, saves, _patient_ref(ctx), ids)
        undelivered = [save for save in saves if save.state in UNDELIVERED_STATES]
        return _Outstanding(
            new_children=_eldest_first(_created_children(undelivered, _patient_ref(ctx)).values()),
            edits=_edited_children(undelivered, _patient_ref(ctx)),
            refused=refused,
        )

    def _index_unlisted_concern(
        self, ctx: LaunchInfo, chart: Chart, recorded: RecordedChart
    ) -> None:
        """Put an open concern the FHIR server holds, and the worklist does not know, on the
        worklist (the local database restored from an older backup, say). Else the social
        service would never see it, and a niet-pluis now would raise a second Flag beside
        it instead of continuing it. A concern the worklist knows, even as closed (its
        closing may still be on its way to the server), is left as it is. A Flag of ours the
        EHR changed so that it cannot be read (:func:`_open_concerns`) is left out with a
        warning in the log: the nurse sees the children and records her triage all the
        same."""
        found = _open_concerns(chart.flags)
        if not found:
            return
        concern = max(found, key=lambda c: c.flagged_at)  # the worklist holds one per patient
        patient_ref = _patient_ref(ctx)
        try:
            with self._database.session() as session:
                if _listed(session, ctx, patient_ref, concern.identifier):
                    return
                # a concurrent load may index it first: the unique indexes keep one row
                row = concern_index_row(
                    concern,
                    tenant_id=ctx.tenant.id,
                    fhir_base_url=ctx.fhir_base_url,
                    patient_ref=patient_ref,
                    patient_name=recorded.patient.name if recorded.patient else None,
                    children_birth_dates=(c.birth_date.isoformat() for c in recorded.children),
                )
                insert_new(session, Concern, [row])
        except SQLAlchemyError as error:  # the chart is read; the worklist waits for the next load
            log.error(
                "an open concern on the FHIR server could not be put on the worklist",
                extra={"fields": {"flag": concern.identifier, "error": type(error).__name__}},
            )
            return
        log.warning(
            "an open concern on the FHIR server was not on the worklist: indexed",
            extra={"fields": {"tenant": ctx.tenant.slug, "flag": concern.identifier}},
        )

    def refused_answers(self, ctx: LaunchInfo) -> RefusedAnswers | None:
        """Her answers in the latest save of this visit (the launch's encounter), when the
        record refused it: offered back on the form, so that what she typed in a crisis is
        not typed again. The form shown at once after a refusal keeps them
        (``smart_app.nurse``); a refusal met at delivery, after she had left the page, left
        only the children marked (the chart's ``conflicts``).

        None when a save of the visit came since (the record holds that one), when the
        refused save is a colleague's (a page prefilled with another nurse's judgement would
        save it under her name), or when it cannot be read. Retention empties the payload of
        a delivered save, never a refused one's: a save since whose payload is gone may have
        been of this visit, so it counts as one (found by review: the purge of the save that
        followed brought answers it had replaced back)."""
        encounter_ref = _launch_refs(ctx)[1]
        with self._database.session() as session:
            saves = _patient_saves(session, ctx)
        visit = [
            (save, steps)
            for save in saves
            if (steps := _step_observations(save))
            and steps[Step.STEP_1].get("encounter", {}).get("reference") == encounter_ref
        ]
        if not visit:
            return None
        save, steps = visit[-1]
        if save.state not in REFUSED_STATES or save.author != ctx.user.fhir_user:
            return None
        if any(later.id > save.id and not _entries(later) for later in saves):
            return None
        try:
            return _answers(save, steps, _patient_ref(ctx))
        except mapping.UnreadableResourceError:
            log.warning("a refused save's answers could not be read back: not offered")
            return None

    def edits_shown(self, ctx: LaunchInfo, page: str) -> EditsShown:
        """The waiting edits of children and new children that ``page`` showed, or that a
        save from it wrote: the form after a conflict tells by them a child the record now
        holds as her page showed it (an edit delivered meanwhile) from one someone else
        changed. Of a child a save from the page wrote, only what the latest such save
        wrote (:func:`_as_the_page_stands`)."""
        with self._database.session() as session:
            shown = _shown_edits(session, ctx.session_id, page)
            saves = _patient_saves(session, ctx) if shown.saved_in else []
        return _as_the_page_stands(shown, saves, _patient_ref(ctx))

    def has_open_concern(self, ctx: LaunchInfo) -> bool:
        """Whether the patient's concern is open on the social service's worklist (one local
        query, no FHIR request): the triage page says so, and that "no concern" now does
        not close it."""
        with self._database.session() as session:
            return _open_concern(session, ctx, _patient_ref(ctx)) is not None

    def pending_children(self, ctx: LaunchInfo) -> list[Child]:
        """The new children of the saves for this patient (same hospital, same FHIR server)
        that still wait in the outbox, as the latest of them recorded each; ``ref`` is the
        ``urn:uuid:`` of the child's identifier, so saving the child again reuses it (a
        conditional create: one RelatedPerson). Also shown when the server cannot be read
        (:meth:`pending_chart`)."""
        return self._outstanding(ctx).new_children

    def _audit_read(
        self,
        ctx: LaunchInfo,
        patient_ref: str,
        outcome: audit.Outcome,
        shown: Sequence[Child] = (),
        patient_name: str | None = None,
    ) -> None:
        """The read's audit row (naming the children it showed) and what the page showed of
        them (``ShownChild``) and of the patient (their name, which the worklist shows for
        a concern this session raises), in one transaction: a confirmation is only
        recognised for a read that is audited."""
        fact = AuditFact(
            actor=ctx.actor,
            action=AuditAction.SEARCH,
            patient_ref=patient_ref,
            entities=tuple(unversioned(c.ref) for c in shown),
            outcome=outcome,
            at=utcnow(),
        )
        channel = Channel(ctx.tenant.id, ctx.registration_id, ctx.fhir_base_url, ctx.session_id)
        with self._database.session() as session:
            audit.record_read(session, channel, fact)
            if shown:
                _remember_shown(session, ctx.session_id, shown)
            if patient_name:
                session.execute(
                    update(AppSession)
                    .where(AppSession.id == ctx.session_id)
                    .values(patient_display=worklist_display(patient_name))
                )

    def _client(self, ctx: LaunchInfo) -> FhirClient:
        """A client for one screen's reads (the nurse's triage page): they end within one budget."""
        return FhirClient.for_screen(
            ctx.fhir_base_url, lambda: self._tokens.access_token(ctx.session_id), self._timeout
        )


# -- pure parts of the use case -------------------------------------------------------------


def _launch_refs(ctx: LaunchInfo) -> tuple[str, str]:
    """The patient and encounter a save records against (both come from the EHR launch)."""
    if not ctx.encounter_id:
        raise MissingInformationError(
            ErrorCode.VALUE_REQUIRED,
            "The EHR opened the app without an encounter; open it from the patient's triage.",
        )
    return _patient_ref(ctx), f"Encounter/{ctx.encounter_id}"


def _patient_ref(ctx: LaunchInfo) -> str:
    if not ctx.patient_id:
        raise MissingInformationError(
            ErrorCode.VALUE_REQUIRED,
            "The EHR opened the app without a patient; open it from the patient's record.",
        )
    return f"Patient/{ctx.patient_id}"


def validate(ctx: LaunchInfo, findings: TriageInput) -> None:
    """The protocol's verdict on the moves of a save (raises ProtocolError): the save asks
    it, and the nurse's page with the form's other errors."""
    moves: list[Finding] = [findings.step1]
    moves += [f for f in (findings.step2, findings.step3) if f is not None]
    KindreflexCase.replay(*_launch_refs(ctx), moves)


def _raises_concern(findings: TriageInput) -> bool:
    step2 = findings.step2
    return step2 is not None and step2.assessment is not SafetyAssessment.NO_CONCERN


def _parse_versioned(ref: str) -> tuple[str, str] | None:
    """``RelatedPerson/<id>/_history/<version>`` → (id, version); anything else is a new child.

    The ref comes back from the browser, so it is checked strictly (FHIR id syntax)."""
    match = _VERSIONED_REF.fullmatch(ref)
    return (match["id"], match["version"]) if match else None


def unversioned(ref: str) -> str:
    """``RelatedPerson/7/_history/2`` → ``RelatedPerson/7``; any other ref as it is."""
    return ref.split("/_history/")[0]


def _new_child_identifier(ref: str) -> str:
    """A new child's identifier: the UUID of its ``urn:uuid:`` form ref, else a fresh one."""
    try:
        return str(uuid.UUID(ref.removeprefix("urn:uuid:")))
    except ValueError:
        return str(uuid.uuid4())


def _finding_identifier(
    ctx: LaunchInfo, findings: TriageInput, finding: Finding, part: str = ""
) -> dict[str, str]:
    """Stable for the same findings submitted twice in the same session (a double click):
    from the submission when the caller names it, else from the time it was recorded."""
    made = findings.submission or str(finding.recorded_at)
    key = f"{ctx.session_id}/{ctx.encounter_id}/{finding.step.value}/{made}{part}"
    return mapping.identifier("finding", uuid.uuid5(uuid.NAMESPACE_URL, key))


@dataclass(frozen=True)
class _Raised:
    """The open concern a save's Flag stands for: its identifier, and when and by whom it
    was first raised (``period.start`` and ``author``). Of a concern open already, the
    Hague triggers its Flag says by now (``known``, as the worklist keeps them); None when
    this save raises it."""

    identifier: str
    at: datetime
    by: str
    known: frozenset[str] | None = None


def _raised(
    ctx: LaunchInfo, findings: TriageInput, flag_identifier: str, open_concern: Concern | None
) -> _Raised:
    """A concern already open keeps its first raising: every save of it sends the same Flag,
    so whichever pending entry the server gets first (the worker's order is the backoff's,
    not the saves') starts the Flag when the concern was first raised."""
    if open_concern is not None:
        known = frozenset(open_concern.triggers or ())
        return _Raised(flag_identifier, open_concern.flagged_at, open_concern.flagged_by, known)
    assert findings.step2 is not None  # only asked for a concern, which step 2 raises
    return _Raised(flag_identifier, findings.step2.recorded_at, ctx.user.fhir_user)


def _plan(
    ctx: LaunchInfo,
    findings: TriageInput,
    raised: _Raised | None,
    now: datetime,
    shown: Mapping[str, str],
    queued: Mapping[str, Child | None] | None = None,
    edits: Mapping[str, Child] | None = None,
    landed: Mapping[str, Child] | None = None,
) -> _Plan:
    """The save's transaction; its witness is the step 1 finding (always part of a save)."""
    patient_ref = _patient_ref(ctx)
    tx = TransactionBuilder()
    child_refs, children_written = _write_children(
        tx, findings.step1.children, patient_ref, shown, queued or {}, edits or {}, landed or {}
    )
    written = [
        *children_written,
        *_write_findings(tx, ctx, findings, child_refs),
        *_write_flag(tx, ctx, findings, raised),
    ]
    stable = tx.stable_references()
    # Resources are updated by merges only, which write what they turn out to at delivery
    # (a re-saved pending child may update the first save's, an edit change nothing): the
    # outbox then sends the description of what was written.
    as_created = _description(ctx, written, stable, now, False)
    as_updated: tuple[Resource | None, Resource | None] = (None, None)
    if tx.merges:
        as_updated = _description(ctx, written, stable, now, True)
    for resource, if_updating in zip(as_created, as_updated, strict=True):
        tx.add(resource, if_updating=if_updating)
    witness = _finding_identifier(ctx, findings, findings.step1)
    return _Plan(
        tx.bundle(), identifier_search("Observation", witness["system"], witness["value"]), stable
    )


def _write_findings(
    tx: TransactionBuilder, ctx: LaunchInfo, findings: TriageInput, child_refs: Mapping[str, str]
) -> list[str]:
    """The expected child and the step findings; returns their references in the bundle.
    The step 1 names the expected child's Observation (``hasMember``: its ``urn:uuid:``
    here, which the server resolves like every reference of the transaction), so that the
    pregnancy is read back with it."""
    patient_ref, encounter_ref = _launch_refs(ctx)
    step1 = findings.step1
    written = []
    expecting_ref = None
    if step1.expecting is not None:
        identifier = _finding_identifier(ctx, findings, step1, "/expecting")
        resource = mapping.expecting_observation(
            step1.expecting,
            patient_ref=patient_ref,
            encounter_ref=encounter_ref,
            performer=ctx.user.fhir_user,
            recorded_at=step1.recorded_at,
            identifier=identifier,
        )
        expecting_ref = tx.create(resource, identifier)
        written.append(expecting_ref)
    for finding in (step1, findings.step2, findings.step3):
        if finding is not None:
            identifier = _finding_identifier(ctx, findings, finding)
            resource = mapping.finding_observation(
                finding,
                patient_ref=patient_ref,
                encounter_ref=encounter_ref,
                child_refs=child_refs,
                identifier=identifier,
                plan_version=str(ctx.tenant.config.plan.revision),  # the wording shown
                expecting_ref=expecting_ref,
            )
            written.append(tx.create(resource, identifier))
    return written


def _write_flag(
    tx: TransactionBuilder, ctx: LaunchInfo, findings: TriageInput, raised: _Raised | None
) -> list[str]:
    """The open-concern Flag of a niet-pluis or unclear step 2 (none otherwise).

    A concern open already keeps its Flag, which then says what this visit found too: its
    last step is step 2 again (the team decides anew, step 4) and its triggers are those of
    every visit since it was raised. It is laid over the Flag on the server (a
    create-or-merge: one read more at delivery), which writes only what is news and, when
    the Flag already says it all, writes nothing and is not named in the save's Provenance
    and AuditEvent. (A plain conditional create found the Flag and changed nothing, but the
    save's Provenance still said this nurse created it.) The Flag may also still be on its
    way in an earlier save: then this one creates it, and says so.
    """
    if raised is None or findings.step2 is None:
        return []
    triggers = (raised.known or frozenset()) | {t.value for t in findings.step2.triggers}
    identifier = mapping.identifier("concern", raised.identifier)
    flag = mapping.concern_flag(
        patient_ref=_launch_refs(ctx)[0],
        author=raised.by,
        flagged_at=raised.at,
        identifier=identifier,
        last_step=Step.STEP_2,
        triggers=triggers,
    )
    return [(tx.create if raised.known is None else tx.create_or_merge)(flag, identifier)]


def _write_children(
    tx: TransactionBuilder,
    children: tuple[Child, ...],
    patient_ref: str,
    shown: Mapping[str, str],
    queued: Mapping[str, Child | None] | None = None,
    edits: Mapping[str, Child] | None = None,
    landed: Mapping[str, Child] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Add the children to the transaction. Returns Child.ref → the reference the findings
    use, and the references of the children written.

    A loaded child the nurse only confirmed — the page showed this version with these
    values (``shown``: ref → fingerprint) — is referenced and not written. Any other loaded
    child is a merge update on the version the nurse saw: the outbox lays our fields over
    that version at delivery (keeping what the EHR stored besides them, leaving an
    unchanged child alone, refusing a child of another patient), so the save needs no FHIR
    server and If-Match still refuses a lost update.

    A new child whose identifier an earlier save of the patient already queued (``queued``:
    it was shown pending delivery, or saved twice from one form) is a create-or-merge: at
    delivery it updates the child that save created, else creates it; the outbox sends
    the patient's saves in order, so this save's values are the ones kept. Only those the
    nurse changed, though: the child as her page showed it pending (else as the earlier
    saves write it) is its ``shown``, so that what the EHR or another save changed of the
    child since, and she did not change, stays changed (see :func:`_queued_children`).

    A loaded child posted with the values of an edit an earlier save still waiting made of
    the same version (``edits``: ref → the edit, of saves pending or waiting, that her
    page showed: ``ShownEdit``): the page showed that edit pending delivery and the nurse
    kept it. It is referenced, not written
    again: that save writes it, and a second update on the same version would be refused
    at delivery. Such a child posted with other values is a change of what the page
    showed (the edit, not the version the session saw), so it is written, over that edit
    once it is delivered (``TransactionBuilder.merge_update``'s ``shown``). An edit already
    delivered is no reason to reference: someone else may have changed the child since,
    and this save's edit of the version its page showed must then be refused, not lost; it
    is written, and left out at delivery when the record already says what it says
    (``service.outbox._merged``).

    Nor, once an edit of that version was delivered (``landed``: ref → the latest
    delivered edit of it, if her page showed it or she saved it from that page), are the
    version's own values a confirmation: the page showed
    the edit pending (or the nurse saved it herself), and she put the version's values
    back, undoing it. Taken for a confirmation, the undo was only referenced and the
    server kept the edit. It is written over that edit (``shown``), as over a pending
    one."""
    queued, edits, landed = queued or {}, edits or {}, landed or {}
    refs: dict[str, str] = {}
    written: list[str] = []
    for child in children:
        seen = _parse_versioned(child.ref)
        earlier = edits.get(child.ref)
        as_shown_edit = earlier or landed.get(child.ref)
        if seen is None:
            refs[child.ref] = _write_new_child(tx, child, patient_ref, queued)
            written.append(refs[child.ref])
        elif _confirms(child, earlier, as_shown_edit, shown.get(child.ref)):
            refs[child.ref] = unversioned(child.ref)
        else:
            child_id, version = seen
            # the identifier only counts when the EHR's version has none of its own
            ours = mapping.child_related_person(
                child, patient_ref=patient_ref, identifier=mapping.identifier("child")
            )
            # over the earlier save's edit the page showed, once that is delivered
            as_shown = None
            if as_shown_edit is not None:
                as_shown = mapping.child_related_person(
                    as_shown_edit, patient_ref=patient_ref, identifier=mapping.identifier("child")
                )
            refs[child.ref] = tx.merge_update({**ours, "id": child_id}, version, shown=as_shown)
            written.append(refs[child.ref])
    return refs, written


def _write_new_child(
    tx: TransactionBuilder, child: Child, patient_ref: str, queued: Mapping[str, Child | None]
) -> str:
    """A new child's conditional create, or its create-or-merge over the child an earlier
    save queued, as that save writes it (see :func:`_write_children`)."""
    identifier = mapping.identifier("child", _new_child_identifier(child.ref))
    resource = mapping.child_related_person(child, patient_ref=patient_ref, identifier=identifier)
    if identifier["value"] not in queued:
        return tx.create(resource, identifier, patient_ref=patient_ref)
    earlier = queued[identifier["value"]]
    shown = None
    if earlier is not None:
        shown = mapping.child_related_person(
            earlier, patient_ref=patient_ref, identifier=identifier
        )
    return tx.create_or_merge(resource, identifier, patient_ref=patient_ref, shown=shown)


def _confirms(child: Child, pending: Child | None, edited: Child | None, shown: str | None) -> bool:
    """Whether ``child`` is as the page showed it, only confirmed: the earlier save's edit
    of its version still waiting (``pending``), else the version itself (``shown``: its
    fingerprint), unless an edit of that version was saved (``edited``): then the
    version's values undo the edit, a change."""
    if pending is not None:
        return _fingerprint(child) == _fingerprint(pending)
    return edited is None and _fingerprint(child) == shown


#: What the nurse sees of a child, and may change: the fields of its row.
_SHOWN_FIELDS = ("name", "birth_date", "relationship", "lives_with")


def _fingerprint(child: Child) -> str:
    """What the nurse sees of a child (:data:`_SHOWN_FIELDS`), hashed: equal
    fingerprints, nothing changed."""
    shown = (str(getattr(child, field)) for field in _SHOWN_FIELDS)
    return hashlib.sha256("\x1f".join(shown).encode()).hexdigest()


def _remember_shown(session: Session, session_id: str, shown: Sequence[Child]) -> None:
    """Record what the page showed; a version shown before is already recorded (its
    fingerprint cannot differ: a version's values never change)."""
    rows = [{"session_id": session_id, "ref": c.ref, "fingerprint": _fingerprint(c)} for c in shown]
    insert_new(session, ShownChild, rows)


def _remember_shown_edits(
    session: Session, session_id: str, page: str, edits: Sequence[Child]
) -> None:
    """Record the waiting edits and new children a page showed: by the version each edit
    was made on, or the new child's ``urn:uuid:``, and a fingerprint of its values."""
    rows = [
        {"session_id": session_id, "page_id": page, "ref": ref, "fingerprint": fingerprint}
        for ref, fingerprint in sorted(EditsShown.of(edits).seen)
    ]
    insert_new(session, ShownEdit, rows)


def _shown_edits(session: Session, session_id: str, page: str | None) -> EditsShown:
    if page is None:
        return EditsShown()
    of_the_page = (ShownEdit.session_id == session_id) & (ShownEdit.page_id == page)
    rows = session.execute(select(ShownEdit.ref, ShownEdit.fingerprint).where(of_the_page))
    saves = session.scalars(
        select(PageSave.outbox_id).where(
            PageSave.session_id == session_id, PageSave.page_id == page
        )
    )
    return EditsShown(frozenset((ref, fp) for ref, fp in rows.all()), frozenset(saves.all()))


def _edits_seen(saves: Iterable[_Save], patient_ref: str, seen: EditsShown) -> dict[str, Child]:
    """The latest edit of each version among those her page stands for (``seen``: what it
    showed, or what its latest save wrote, :func:`_as_the_page_stands`), by the version it
    was made on. Seen ones only: another nurse's later edit of the version, never shown,
    hid the one her page showed (found by review)."""
    return {c.ref: c for c in _edits(saves, patient_ref) if seen.include(c.ref, c)}


def _as_the_page_stands(shown: EditsShown, saves: Sequence[_Save], patient_ref: str) -> EditsShown:
    """``shown`` with, of each child a save from the page wrote (one the record did not
    refuse), only what the latest such save wrote. The values the page displayed before
    are not what it stands for any more: a colleague's later save back to them (a revert
    of hers) was taken for what her page showed, by the merge base of her next save from
    the page (the Back button) and by the form after a conflict, and her values undid the
    revert unseen (found by review).

    A refused save wrote nothing, and what it changed its page never showed: a release
    before 2026-12-06 remembered those values as shown when the save was made, and a
    page open across the upgrade has them still (found by review)."""
    from_page = [s for s in saves if s.id in shown.saved_in]
    kept = [s for s in from_page if s.state not in REFUSED_STATES]
    saved = {
        child.ref: _fingerprint(child)
        for save in kept
        for child in _children_saved(_entries(save), patient_ref)
    }
    unshown = {
        (child.ref, _fingerprint(child))
        for save in from_page
        if save.state in REFUSED_STATES
        for child, _ in _changed_by_her(_entries(save), patient_ref)
    }
    others = {seen for seen in shown.seen if seen[0] not in saved and seen not in unshown}
    return replace(shown, seen=frozenset(others | set(saved.items())))


def _shown_children(session: Session, session_id: str) -> dict[str, str]:
    rows = session.execute(
        select(ShownChild.ref, ShownChild.fingerprint).where(ShownChild.session_id == session_id)
    )
    return dict(rows.all())


def _open_concerns(flags: Iterable[Resource]) -> list[mapping.OpenConcern]:
    """The open concerns the Flags of the chart record. One the FHIR server holds in a form
    we cannot read (``mapping.open_concern_of``: a partial ``period.start``, say) is left
    out and logged, naming the Flag, for the EHR's administrators: it must not keep the
    nurse from her patient's triage (were the chart unreadable, its children would not be
    shown), nor be indexed with a start that is not a moment."""
    found = []
    for flag in flags:
        try:
            concern = mapping.open_concern_of(flag)
        except mapping.UnreadableResourceError as error:
            log.warning("an open concern left off the worklist: %s", error)
            continue
        if concern is not None:
            found.append(concern)
    return found


def _readable(chart: Chart) -> RecordedChart:
    """The chart as the nurse sees it. A resource the server holds in a form FHIR or our
    profile does not allow (no version, a birth date that is no full date, an unknown code,
    a name that is no text) makes the chart unreadable: the nurse is told the children were
    not loaded, rather than shown some of them as if complete. A child of ours that cannot
    be read is ``mapping.UnreadableResourceError``, a ``FhirUnreadable`` naming it; a child
    the EHR withdrew (``active`` false) is no child and is not shown."""
    try:
        patient = None if chart.patient is None else mapping.patient_identity(chart.patient)
        return RecordedChart(patient, _children_of(chart.related_persons))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise FhirUnreadable(f"the chart cannot be read: {type(error).__name__}") from error


def _children_of(related_persons: list[Resource]) -> list[Child]:
    """The recorded children, eldest first (a server returns them in no promised order)."""
    children = []
    for resource in related_persons:
        child = mapping.child_from_related_person(resource)
        if child is not None:
            ref = _VERSIONED_CHILD.format(id=resource["id"], version=resource["meta"]["versionId"])
            children.append(replace(child, ref=ref))
    return _eldest_first(children)


def _eldest_first(children: Iterable[Child]) -> list[Child]:
    return sorted(children, key=lambda child: (child.birth_date, child.name))


def _child_written(
    entry: Resource, patient_ref: str, method: Literal["POST", "PUT"]
) -> tuple[Resource, Child] | None:
    """The RelatedPerson of this patient a queued transaction entry writes with ``method``,
    and the child it records (its ``ref`` still to be set)."""
    resource, request = entry.get("resource", {}), entry.get("request", {})
    if request.get("method") != method or resource.get("resourceType") != "RelatedPerson":
        return None
    if resource.get("patient", {}).get("reference") != patient_ref:
        return None
    child = mapping.child_from_related_person(resource)
    return None if child is None else (resource, child)


def _created_child(entry: Resource, patient_ref: str) -> Child | None:
    """The child a queued transaction entry creates for this patient (a conditional create
    on our child identifier, see :func:`_write_children`), with its ``urn:uuid:`` ref."""
    written = _child_written(entry, patient_ref, "POST")
    if written is None:
        return None
    resource, child = written
    found = _child_identifiers([resource])
    return replace(child, ref=f"urn:uuid:{found.pop()}") if len(found) == 1 else None


@dataclass(frozen=True)
class _Save:
    """One triage save of the patient in the outbox (oldest first by ``id``)."""

    id: int
    state: str
    bundle: Resource
    races: int  # races at delivery lost (``service.outbox.kept_changing``)
    saved_at: datetime
    author: str  # the nurse who saved it (her fhirUser)

    @property
    def refusal(self) -> str:
        """Why the save is not in the record, as the chart tells it: its state, or
        :data:`KEPT_CHANGING` for a conflict that was the record changing under it."""
        return KEPT_CHANGING if kept_changing(self.state, self.races) else self.state


@dataclass(frozen=True)
class _Outstanding:
    """What the patient's saves in the outbox change on the chart (see ``load_chart``)."""

    new_children: list[Child]  # undelivered new children, eldest first
    edits: dict[str, Child]  # child id → the latest undelivered edit (ref: its version)
    #: child id → why its latest edit was refused, for the children no save named since
    refused: dict[str, _Refusal]


@dataclass(frozen=True)
class _Refusal:
    """Why the save with a child's latest edit was refused (conflict, kept-changing or
    failed: :attr:`_Save.refusal`), what its page showed of the child (the ref of the
    version the edit was made on; of a child then waiting to be created, the fingerprint
    of its values as the page showed them, "" when she added it) and the fingerprint of
    what it wrote of the child."""

    reason: str
    made_on: str
    wrote: str

    def told_of(self, child: Child) -> str | None:
        """What the chart tells of ``child``, as the record holds it now: nothing when it
        holds what the refused edit wrote (another save wrote it since: the page marked a
        child on the record as entered, found by review); a conflict over another part of
        the save (:data:`CHANGED_ELSEWHERE`) when it holds the child as the edit saw it."""
        if _fingerprint(child) == self.wrote:
            return None
        untouched = self.made_on in (child.ref, _fingerprint(child))
        return (
            CHANGED_ELSEWHERE
            if self.reason == DeliveryState.CONFLICT and untouched
            else self.reason
        )


def _patient_saves(session: Session, ctx: LaunchInfo) -> list[_Save]:
    """The patient's triage saves (same hospital and FHIR server), oldest first."""
    rows = session.execute(
        select(
            OutboxEntry.id,
            OutboxEntry.state,
            OutboxEntry.bundle,
            OutboxEntry.races,
            OutboxEntry.created_at,
            OutboxEntry.author,
        )
        .where(
            OutboxEntry.tenant_id == ctx.tenant.id,
            OutboxEntry.fhir_base_url == ctx.fhir_base_url,
            OutboxEntry.patient_ref == _patient_ref(ctx),
            OutboxEntry.kind == KIND,
        )
        .order_by(OutboxEntry.id)
    )
    return [
        _Save(id, state, bundle or {}, races, at, by) for id, state, bundle, races, at, by in rows
    ]


def _entries(save: _Save) -> list[Resource]:
    return list(save.bundle.get("entry", []))  # a purged payload is empty


def _step_observations(save: _Save) -> dict[Step, Resource]:
    """The step Observations a save writes, by step; empty when it writes no step 1."""
    found = {}
    for entry in _entries(save):
        resource = entry.get("resource", {})
        step = mapping.step_of_observation(resource)
        if step is not None:
            found[step] = resource
    return found if Step.STEP_1 in found else {}


def _answers(save: _Save, steps: Mapping[Step, Resource], patient_ref: str) -> RefusedAnswers:
    """The answers a save records: its step Observations and the children it created (those
    it edited are the chart's, as the record has them)."""
    expected = {
        str(entry.get("fullUrl")): child
        for entry in _entries(save)
        if (child := mapping.expected_child_from_observation(entry.get("resource", {})))
    }
    read = {
        step: mapping.finding_from_observation(resource, expecting=expected)
        for step, resource in steps.items()
    }
    step1, step2, step3 = (read.get(step) for step in (Step.STEP_1, Step.STEP_2, Step.STEP_3))
    expecting = step1.expecting if isinstance(step1, Step1Finding) else None
    return RefusedAnswers(
        saved_at=save.saved_at,
        no_children=not steps[Step.STEP_1].get("focus") and expecting is None,
        expecting=expecting,
        step2=step2 if isinstance(step2, Step2Finding) else None,
        step3=step3 if isinstance(step3, Step3Support) else None,
        new_children=tuple(_created_children([save], patient_ref).values()),
        refusal=save.refusal,
    )


def _created_children(saves: Iterable[_Save], patient_ref: str) -> dict[str, Child]:
    """The new children ``saves`` create, by identifier; of one created twice, the later."""
    return {_child_uuid(child.ref): child for child in _created(saves, patient_ref)}


def _children_saved(entries: list[Resource], patient_ref: str) -> list[Child]:
    """The edits of children on the server a save's transaction ``entries`` make (by the
    version each is made on) and the new children they write (by ``urn:uuid:``): what
    her page stands for once she saved them (:func:`_as_the_page_stands`)."""
    return [
        *_read(entries, patient_ref, _edited_child),
        *_read(entries, patient_ref, _created_child),
    ]


def _created(saves: Iterable[_Save], patient_ref: str) -> Iterator[Child]:
    """The new children ``saves`` create, in the saves' order (by ``urn:uuid:`` ref)."""
    for save in saves:
        yield from _read(_entries(save), patient_ref, _created_child)


def _changed_by_her(
    entries: Iterable[Resource], patient_ref: str
) -> Iterator[tuple[Child, str | None]]:
    """The children a save's transaction ``entries`` write with values her page did not
    show them with (edits by the version they were made on, new children by
    ``urn:uuid:``), each with the fingerprint of what it showed: an earlier save's edit or
    new child (``outbox.shown_in``); None for the version itself, or a child she added. A
    child she only confirmed is written as it was shown while it waits to be created."""
    for entry in entries:
        child = _edited_child(entry, patient_ref) or _created_child(entry, patient_ref)
        if child is None:
            continue
        shown = shown_in(entry)
        was = mapping.child_from_related_person(shown) if shown is not None else None
        as_shown = None if was is None else _fingerprint(was)
        if as_shown != _fingerprint(child):
            yield child, as_shown


def _read(
    entries: Iterable[Resource], patient_ref: str, reader: Callable[[Resource, str], Child | None]
) -> Iterator[Child]:
    """What ``reader`` (:func:`_created_child`, :func:`_edited_child`) reads of each queued
    transaction entry that writes a child of this patient, in the entries' order."""
    for entry in entries:
        if (child := reader(entry, patient_ref)) is not None:
            yield child


def _refuse_recorded_meanwhile(
    session: Session, ctx: LaunchInfo, children: Iterable[Child], entry_id: int
) -> None:
    """Raises :class:`ChildRecordedMeanwhile` for the new ``children`` another save of the
    patient wrote since the launch. Read after this save's entry took the patient's lock
    (``outbox.enqueue``): two nurses saving at once each read before the other committed,
    and both children were recorded. SQLite has one writer at a time."""
    launched = session.get(AppSession, ctx.session_id)
    others = [save for save in _patient_saves(session, ctx) if save.id != entry_id]
    since = launched.created_at if launched is not None else None
    again = _recorded_meanwhile(children, others, _patient_ref(ctx), since)
    if again:
        raise ChildRecordedMeanwhile(again)


def _recorded_meanwhile(
    children: Iterable[Child], saves: Sequence[_Save], patient_ref: str, since: datetime | None
) -> dict[str, str]:
    """The refs of the new ``children`` that another save of the patient made ``since`` the
    launch (one the server did not refuse) creates under another identifier, by name and
    date of birth. The form refuses a child typed twice in its rows; two pages opened
    before either saved (two nurses, the card clicked twice) each created the child, and
    the record held every one twice, which no form could undo (found by review). A save
    before the launch is on the page, recorded or pending: the form's own check."""
    meanwhile = [
        s for s in saves if s.state not in REFUSED_STATES and (since is None or s.saved_at >= since)
    ]
    written = _created_children(meanwhile, patient_ref)
    known = {(same_name(child.name), child.birth_date): child.ref for child in written.values()}
    return {
        child.ref: known[(same_name(child.name), child.birth_date)]
        for child in children
        if _parse_versioned(child.ref) is None
        and _child_uuid(child.ref) not in written
        and (same_name(child.name), child.birth_date) in known
    }


def _queued_children(
    saves: Sequence[_Save], patient_ref: str, seen: EditsShown, hers: Iterable[Child] = ()
) -> dict[str, Child | None]:
    """The new children ``saves`` create, by identifier: each as her page stands for it
    (``seen``: as it showed it pending, or as its latest save wrote it), else as the
    latest save the FHIR server did not refuse writes it (what the server holds once they
    are delivered). None when it refused them all: none of them wrote it, but one
    refused after an unexpected error may have (``outbox.UNEXPECTED_ATTEMPTS``), so
    whatever the identifier finds then gets all of the nurse's values.

    As her page showed it: another save of the child since (a colleague's rename) is not
    what she saw, and taken for it, the values she left as they were counted as changed
    back and undid that save's change, every save "delivered" (found by review). Of the
    saves whose values her page stands for, the latest, refused or not: a colleague's
    save her page showed waiting and the record refused since wrote nothing, and the
    latest save it did not refuse taken instead, the refused values she left as shown
    counted as her change and were written under her name, over a change her page never
    showed (found by review). Against what she was shown, they are no change of hers.
    What she changed of those (``hers``: her rows) is compared with what the refused save
    was itself based on, as the record holds it: taken for the refused values, nobody's
    change since counted as someone else's, a conflict."""
    kept = [save for save in saves if save.state not in REFUSED_STATES]
    written = _created_children(kept, patient_ref)
    mine = {child.ref: child for child in hers}
    as_shown: dict[str, Child] = {}
    for save in saves:
        for entry in _entries(save):
            child = _created_child(entry, patient_ref)
            if child is None or not seen.include(child.ref, child):
                continue
            based_on = shown_in(entry) if save.state in REFUSED_STATES else None
            base = mapping.child_from_related_person(based_on) if based_on else None
            as_shown[_child_uuid(child.ref)] = _as_she_knew(child, base, mine.get(child.ref))
    return {
        found: as_shown.get(found, written.get(found))
        for found in _created_children(saves, patient_ref)
    }


def _as_she_knew(shown: Child, base: Child | None, mine: Child | None) -> Child:
    """The merge base of her row ``mine`` of a child her page showed waiting (``shown``),
    from a save the record refused that was itself based on ``base``: what she left as
    shown, as shown (no change of hers); what she changed, as the refused save's base
    (what the record holds, unless someone changed it since)."""
    if base is None or mine is None:
        return shown
    changed = {f: getattr(base, f) for f in _SHOWN_FIELDS if getattr(mine, f) != getattr(shown, f)}
    return replace(shown, **changed)


def _edited_child(entry: Resource, patient_ref: str) -> Child | None:
    """The edit a queued transaction entry makes of a child on the server (a merge update
    with If-Match, see :func:`_write_children`), with the ref of the version it was made on."""
    written = _child_written(entry, patient_ref, "PUT")
    if written is None:
        return None
    resource, child = written
    version = str(entry["request"].get("ifMatch", "")).removeprefix('W/"').removesuffix('"')
    ref = _VERSIONED_CHILD.format(id=resource.get("id"), version=version)
    return replace(child, ref=ref) if _parse_versioned(ref) is not None else None


def _edited_children(saves: Iterable[_Save], patient_ref: str) -> dict[str, Child]:
    """The edits ``saves`` make of children on the server, by child id; of a child edited
    twice, the later save's."""
    return {_child_id(child.ref): child for child in _edits(saves, patient_ref)}


def _edits(saves: Iterable[_Save], patient_ref: str) -> Iterator[Child]:
    """The edits ``saves`` make of children on the server, in the saves' order."""
    for save in saves:
        yield from _read(_entries(save), patient_ref, _edited_child)


def _refused_edits(
    session: Session, saves: Sequence[_Save], patient_ref: str, ids: Mapping[str, str]
) -> dict[str, _Refusal]:
    """The ids of the children whose latest edit the FHIR server refused, because someone
    else had changed them first (a ``conflict`` entry), because the record kept changing
    under the save (a ``conflict`` past its races, :data:`KEPT_CHANGING`) or for another
    reason (``failed``: the nurse is no less unaware of it), with that reason
    (:attr:`_Save.refusal`) and the ref of the version the edit was made on, that no save
    made after the refusal
    names (writes, or references as confirmed): the nurse who opens the chart next must be
    told her edit is not in the record, until a save of the child after that tells it was
    seen. "After" is in the order of the audit trail (the refusal's failure row and the
    later save's own row), whose clock is not the outbox's. A later save delivered long
    ago whose payload retention emptied cannot say whom it named: it counts as naming the
    child (a save names the children its page showed), so a notice it cleared does not
    come back with the purge.

    So is a refused save's change of a new child the record holds (``ids``: the
    ``urn:uuid:`` of our identifier → the child's id): a create-or-merge over the child
    an earlier save created. The chart showed it as the record has it, unmarked (found by
    review). One that only carried the child as her page showed it waiting changed
    nothing of it (found by review)."""
    # child id → the last refused save editing it, what its page showed of the child, and
    # what it wrote of it
    refused: dict[str, tuple[_Save, str, Child]] = {}
    for save in saves:
        if save.state in REFUSED_STATES:
            for child_id, child in _edited_children([save], patient_ref).items():
                refused[child_id] = (save, child.ref, child)
            for child, was in _changed_by_her(_entries(save), patient_ref):
                if child.ref in ids:
                    refused[ids[child.ref]] = (save, was or "", child)
    if not refused:
        return {}
    rows = session.execute(
        select(AuditRecord.outbox_id, AuditRecord.outcome, func.min(AuditRecord.id))
        .where(AuditRecord.outbox_id.in_([save.id for save in saves]))
        .group_by(AuditRecord.outbox_id, AuditRecord.outcome)
    )
    audited = {(outbox_id, outcome): row_id for outbox_id, outcome, row_id in rows.all()}
    named = {  # read once per save, not once per refused child
        save.id: _named_children(save, patient_ref, ids)
        for save in saves
        if save.state not in REFUSED_STATES and _entries(save)
    }
    seen = set()
    for child_id, (refusing, _, _) in refused.items():
        since = audited.get((refusing.id, "failure"), 0)
        for save in saves:
            made = audited.get((save.id, "success"), 0)
            if (
                save.id > refusing.id
                and save.state not in REFUSED_STATES
                and made > since
                and (not _entries(save) or child_id in named[save.id])
            ):
                seen.add(child_id)
                break
    return {
        child_id: _Refusal(save.refusal, made_on, _fingerprint(child))
        for child_id, (save, made_on, child) in refused.items()
        if child_id not in seen
    }


def _named_children(save: _Save, patient_ref: str, ids: Mapping[str, str]) -> set[str]:
    """The ids of the RelatedPersons a save writes or references, and of those the record
    holds (``ids``) that it creates by our identifier while its page did not show them
    waiting: added on it, or filled back after a refusal. A page that showed a child
    waiting was drawn before the child's creation was delivered, and so before any
    refusal of a change of it: its save tells nothing of that refusal (found by review)."""
    found = {
        ids[c.ref]
        for c, was in _changed_by_her(_entries(save), patient_ref)
        if was is None and c.ref in ids
    }

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("reference", "url") and isinstance(item, str):
                    if match := _CHILD_REFERENCE.match(item):
                        found.add(match["id"])
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(save.bundle)
    return found


def _child_identifiers(related_persons: Iterable[Resource]) -> set[str]:
    """The values of our child identifiers (UUIDs) the resources carry."""
    return {value for resource in related_persons for value in _our_identifiers(resource)}


def _identified_as(related_persons: Iterable[Resource]) -> dict[str, tuple[str, ...]]:
    """The ``urn:uuid:`` refs of our child identifiers of each versioned RelatedPerson."""
    return {
        _VERSIONED_CHILD.format(id=resource.get("id"), version=version): refs
        for resource in related_persons
        if (version := resource.get("meta", {}).get("versionId"))
        and (refs := tuple(f"urn:uuid:{value}" for value in _our_identifiers(resource)))
    }


def _our_identifiers(resource: Resource) -> list[str]:
    """The values of the resource's child identifiers of ours."""
    system = terminology.identifier_system("child")
    return [
        str(identifier["value"])
        for identifier in resource.get("identifier", [])
        if identifier.get("system") == system and identifier.get("value")
    ]


def _child_uuid(ref: str) -> str:
    return ref.removeprefix("urn:uuid:")


def _child_id(ref: str) -> str:
    """``RelatedPerson/7/_history/2`` → ``7``."""
    return unversioned(ref).removeprefix("RelatedPerson/")


def _description(
    ctx: LaunchInfo, written: list[str], stable: list[str], now: datetime, update: bool
) -> tuple[Resource, Resource]:
    """The save's Provenance and AuditEvent, naming ``written`` (the bundle's references)."""
    author = ctx.user.fhir_user
    provenance = mapping.provenance(targets=written, author=author, recorded=now, update=update)
    fact = _write_fact(ctx, _patient_ref(ctx), stable, now, update)
    return provenance, audit.audit_event(fact, written)


def _write_fact(
    ctx: LaunchInfo, patient_ref: str, written: list[str], now: datetime, update: bool
) -> AuditFact:
    return AuditFact(
        actor=ctx.actor,
        # a save always creates its step findings: with an update beside them, a transaction
        action=AuditAction.TRANSACTION if update else AuditAction.CREATE,
        patient_ref=patient_ref,
        entities=tuple(written),
        outcome="success",
        at=now,
    )


def _updates(stable_references: list[str]) -> bool:
    """Whether the save updates a resource (creates are ``Type?identifier=…``)."""
    return any("?" not in ref for ref in stable_references)


def _status(state: DeliveryState) -> SaveStatus:
    if state is DeliveryState.DELIVERED:
        return "delivered"
    if state is DeliveryState.FAILED:
        return "failed"
    if state is DeliveryState.WAITING_AUTHORISATION:
        return "waiting-sign-in"
    return "pending"


def _one_save_at_a_time(session: Session, session_id: str) -> None:
    """Serialise the saves of one app session, before anything is read: a double submit's
    second post waits here until the first has committed, then finds its entry (the
    witness) and joins it, instead of both finding none and writing two. A no-op UPDATE of
    the session's row: PostgreSQL locks that row, SQLite takes its write lock."""
    session.execute(
        update(AppSession)
        .where(AppSession.id == session_id)
        .values(sealed=AppSession.sealed)
        .execution_options(synchronize_session=False)
    )


def _entry_with_witness(session: Session, tenant_id: int, witness: str) -> int | None:
    """A live outbox entry of the same save (conflicting or refused ones may be redone)."""
    live = (DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.WAITING_AUTHORISATION)
    return session.scalar(
        select(OutboxEntry.id).where(
            OutboxEntry.tenant_id == tenant_id,
            OutboxEntry.witness == witness,
            OutboxEntry.state.in_(live),
        )
    )


# -- the worklist index ------------------------------------------------------------------------


def _open_concern(session: Session, ctx: LaunchInfo, patient_ref: str) -> Concern | None:
    """The patient's open concern: the patient of this FHIR server (another EHR of the same
    hospital may have its own ``Patient/123``)."""
    return session.scalar(
        select(Concern).where(
            Concern.tenant_id == ctx.tenant.id,
            Concern.fhir_base_url == ctx.fhir_base_url,
            Concern.patient_ref == patient_ref,
            Concern.status == "open",
        )
    )


def _concern_to_continue(session: Session, ctx: LaunchInfo, patient_ref: str) -> Concern | None:
    """The concern a niet-pluis now continues: the patient's open one, else one whose
    closing is still on its way to the FHIR server. Her save reopens that one (its Flag is
    laid over, closed or not by then: ``mapping._concern_as_laid_over``); a second Flag
    raised beside it stayed active with the first when the server then refused the
    closing, and the first could no longer be closed (found by review)."""
    open_concern = _open_concern(session, ctx, patient_ref)
    if open_concern is not None:
        return open_concern
    waiting = session.scalars(
        select(Concern)
        .join(OutboxEntry, OutboxEntry.id == Concern.outbox_id)
        .where(
            Concern.tenant_id == ctx.tenant.id,
            Concern.fhir_base_url == ctx.fhir_base_url,
            Concern.patient_ref == patient_ref,
            Concern.status == "closed",
            OutboxEntry.state.in_(UNDELIVERED_STATES),
        )
        .order_by(Concern.id.desc())
    )
    # the save that waits is the closing when the row was open before it; a closed case's
    # referral status may wait too, long after its closing was delivered: not reopened
    return next((row for row in waiting if (row.before_save or {}).get("status") == "open"), None)


def _listed(session: Session, ctx: LaunchInfo, patient_ref: str, flag_identifier: str) -> bool:
    """Whether the worklist knows the concern (open or closed), or has an open one for the
    patient."""
    known = select(Concern.id).where(
        Concern.tenant_id == ctx.tenant.id, Concern.flag_identifier == flag_identifier
    )
    return (
        _open_concern(session, ctx, patient_ref) is not None
        or session.scalar(known.limit(1)) is not None
    )


def concern_index_row(
    concern: mapping.OpenConcern,
    *,
    tenant_id: int,
    fhir_base_url: str,
    patient_ref: str,
    patient_name: str | None,
    children_birth_dates: Iterable[str],
) -> dict[str, object]:
    """The worklist row of an open concern known from its Flag only (one the index lost, or
    the demo's seeded one). The acute danger of its step 2 is not in the Flag, nor its
    author's name: opening the case fills them in (``Casework.open_case``)."""
    return {
        "tenant_id": tenant_id,
        "fhir_base_url": fhir_base_url,
        "patient_ref": patient_ref,
        "patient_display": worklist_display(patient_name) if patient_name else None,
        "flag_identifier": concern.identifier,
        "flagged_at": concern.flagged_at,
        "flagged_by": concern.flagged_by,
        "triggers": list(concern.triggers),
        "children_birth_dates": sorted(children_birth_dates),
        "last_step": concern.last_step.value,
        "status": "open",
        "acute_danger": False,
        "updated_at": utcnow(),
    }


def _index_concern(
    session: Session,
    ctx: LaunchInfo,
    findings: TriageInput,
    row: Concern | None,
    flag_identifier: str,
    outbox_id: int,
    now: datetime,
) -> None:
    """The worklist row, in the same local transaction as the outbox entry."""
    step2 = findings.step2
    assert step2 is not None  # only called for a concern, which step 2 raises
    # the name the FHIR server gave this session's page, never one the browser posted
    shown_name = session.scalar(
        select(AppSession.patient_display).where(AppSession.id == ctx.session_id)
    )
    if row is None:
        row = Concern(
            tenant_id=ctx.tenant.id,
            fhir_base_url=ctx.fhir_base_url,
            patient_ref=f"Patient/{ctx.patient_id}",
            flag_identifier=flag_identifier,
            flagged_at=step2.recorded_at,
            flagged_by=ctx.user.fhir_user,
            flagged_by_display=user_display(ctx.user.fhir_user, ctx.user.name),
            status="open",
            acute_danger=False,
        )
        session.add(row)
    if row.status != "open":  # its closing still on its way (_concern_to_continue)
        row.status, row.before_save, row.follow_up_due = "open", None, None
    row.patient_display = shown_name or row.patient_display
    row.triggers = sorted({*(row.triggers or ()), *(t.value for t in step2.triggers)})
    row.children_birth_dates = sorted(c.birth_date.isoformat() for c in findings.step1.children)
    row.last_step = Step.STEP_2.value
    row.acute_danger = row.acute_danger or step2.acute_danger  # as the protocol keeps it
    row.outbox_id = outbox_id
    row.updated_at = now


def triage_of(request: Request) -> Triage:
    triage: Triage = request.app.state.triage
    return triage


TriageDep = Annotated[Triage, Depends(triage_of)]
