"""The FHIR transactions of the social service's saves (steps 4, 5 and 6, closing a case).

Pure: from what the FHIR server holds of a case (:class:`CaseRecord`, read when the case is
opened) and a finding the protocol accepted, one idempotent transaction Bundle for the
outbox — the same guarantees as the triage save (``service.triage``): creates are
conditional on business identifiers, the Flag's update carries ``If-Match`` on the version
read (a second social worker's stale save is refused, nothing overwritten), and every
write names its author in a Provenance and an AuditEvent. Resources are built only by
``service.fhir.mapping``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import audit
from service.admin import partners_io
from service.audit import AuditAction, AuditFact, Channel
from service.db.base import Database, utcnow
from service.db.models import Concern, OutboxEntry
from service.fhir import mapping, terminology
from service.fhir.client import (
    FhirClient,
    FhirRejected,
    Resource,
    SearchPages,
    identifier_search,
    identifier_token,
    search_query,
)
from service.fhir.terminology import identifier_system
from service.local_time import local, local_now
from service.outbox import (
    IMMEDIATE_TIMEOUT_SECONDS,
    REFUSED_STATES,
    UNDELIVERED_STATES,
    DeliveryState,
    Outbox,
    TokenSource,
    TransactionBuilder,
    laid_over,
)
from service.protocol import (
    CONCERN_STEPS,
    CaseClosure,
    Child,
    CloseReason,
    Finding,
    KindreflexCase,
    ProtocolError,
    ReferralStatus,
    Step,
    Step1Finding,
    Step4Decision,
    Step5Progress,
    Step6Referral,
    apply,
    check_closure,
    check_plausible_dates,
    check_referral_status,
    leads_to_referral,
    referral_subjects,
    reopens_after_referral_change,
)
from service.scopes import is_granted
from service.social import (
    CaseConflict,
    CaseNotFoundError,
    Step4Input,
    Step5Input,
    Step6Input,
)
from service.text import typed_text, worklist_display
from service.triage import KIND as TRIAGE_KIND
from service.triage import LaunchInfo, enqueue_save, search_chart

log = logging.getLogger(__name__)

#: The outbox kind of the social service's saves.
KIND = "social"

#: The findings the social service records.
CaseworkFinding = Step4Decision | Step5Progress | Step6Referral
#: A finding read back, with the id of its Observation on the FHIR server.
RecordedFinding = tuple[str, Finding]


@dataclass(frozen=True)
class CaseRecord:
    """What the FHIR server holds of a case, as a step save needs it (read when the case is
    opened; the server is the source of truth for the details).

    ``encounter_ref``: the ED visit that raised the concern, its findings' encounter (the
    Flag has none, see ``mapping.concern_flag``); the social service's findings name it;
    ``child_refs``: each child of the case (of its step 1s: a step 1 after the concern was
    raised does not take a child off it) by protocol ``Child.ref`` → its RelatedPerson
    reference, what its findings and a referral name (not every child RelatedPerson of the
    chart: a child the nurse took off the list before the concern stays there); every
    child of the chart when the server holds no step 1 of the case (a concern raised
    elsewhere);
    ``children``: every child of the chart, by RelatedPerson reference;
    ``flag``: the concern Flag as read (``id`` and ``meta.versionId`` guard the update);
    ``reason_ref``: the finding that led to step 6 (the step 4 decision, step 5 not
    restored or a step 2 acute danger), for the referral's ``reasonReference``;
    ``expecting_ref``: the expected child's Observation the case's latest step 1 names
    (``hasMember``); a referral naming no child in particular names it beside the case's
    minors, or alone when there are none (a concern about an unborn child), while the case
    still expects it: not once a step 1 records the baby born (:func:`referral_about`, the
    case's ``expecting``, ``protocol._still_expected``);
    ``people``: the names of the people the case names (the findings' authors, the Flag's),
    by reference, as the same searches included their Practitioners; someone absent is
    shown by reference. ``findings_complete``: False when the findings' search had more
    pages than a case reads (:data:`MAX_SEARCH_PAGES`), or than the case page's budget left
    time for (``FhirClient.for_screen``): the history shown lacks some.
    ``added_notes``: the notes others (the EHR's users) added to each finding of the
    concern, in the order of the findings :func:`load_case_record` returns (and so of the
    replayed case's): shown as theirs, not the recorder's (``mapping.added_notes``).
    """

    patient_ref: str
    encounter_ref: str | None
    child_refs: Mapping[str, str]
    flag: Resource
    reason_ref: str | None = None
    expecting_ref: str | None = None
    children: Mapping[str, Child] = field(default_factory=dict)
    patient: mapping.PatientIdentity | None = None
    people: Mapping[str, str] = field(default_factory=dict)
    findings_complete: bool = True
    added_notes: tuple[tuple[mapping.AddedNote, ...], ...] = ()


@dataclass(frozen=True)
class Referral:
    """A step 6 referral's own identifier value, the partner Organization it goes to (as
    ``service.admin.partners_io.organization`` publishes the directory entry; created on
    the server when it is not there yet, matched on its partner identifier), whom it is
    about (:func:`referral_about`) and whether it follows from acute danger (the case's
    ``acute_danger`` as the protocol keeps it: a step 2 acute danger or the team decision
    "acute danger"), which makes its priority stat.

    ``updates_facility``: the Organization the partner identifier finds is laid over with
    the directory's entry (a create-or-merge: its name and phone numbers as the directory
    says them now; what the EHR added stays), when the session's token grants the update of
    Organizations (:func:`updates_facilities`); else it is created once and left as it is
    (a plain conditional create), as every referral did before 2026-12-07: the name and
    phone of the day of the first referral stayed on the record for good (found by review)."""

    identifier_value: str
    organization: Resource
    about: tuple[str, ...]
    acute_danger: bool
    updates_facility: bool = False


def referral_about(
    record: CaseRecord, case: KindreflexCase, finding: Step6Referral
) -> tuple[str, ...]:
    """The references of whom ``finding`` is about (``protocol.referral_subjects``): the
    children's RelatedPersons and the expected child's Observation."""
    children, expecting = referral_subjects(case, finding)
    refs = [record.child_refs[child.ref] for child in children]
    if expecting is not None and record.expecting_ref is not None:
        refs.append(record.expecting_ref)
    return tuple(refs)


@dataclass(frozen=True)
class Plan:
    """A save's transaction and how to find what it writes (``Type?identifier=…`` for a
    create, ``Type/id`` for an update), for the audit.

    ``witness``: the search for a resource only this transaction creates (the outbox's
    witness, ``service.outbox``). Before a retry the outbox asks it: a save whose answer was
    lost was applied, and sending it again would meet its own Flag update's If-Match (412)
    and show the social worker a conflict for a save that was recorded."""

    bundle: Resource
    written: tuple[str, ...]
    witness: str | None = None


def step_transaction(
    record: CaseRecord,
    finding: CaseworkFinding,
    *,
    finding_identifier: str,
    referral: Referral | None = None,
    plan_version: str | None = None,
    actor: str,
    now: datetime,
) -> Plan:
    """One idempotent transaction for a step 4, 5 or 6 save: the finding (conditional
    create), for step 6 the referral ServiceRequest, the Flag's last step (If-Match on the
    version read), a Provenance naming the author and the write's AuditEvent."""
    tx = TransactionBuilder()
    referral_ref = _add_referral(tx, record, finding, referral)
    identifier = mapping.identifier("finding", finding_identifier)
    observation = mapping.finding_observation(
        finding,
        patient_ref=record.patient_ref,
        encounter_ref=record.encounter_ref,
        child_refs=record.child_refs,
        identifier=identifier,
        referral_ref=referral_ref,
        plan_version=plan_version,
    )
    written = [*([referral_ref] if referral_ref else []), tx.create(observation, identifier)]
    written.append(_update_flag(tx, record.flag, last_step=finding.step))
    _sign(tx, record, written, now, author=finding.recorded_by, actor=actor)
    witness = identifier_search("Observation", identifier["system"], identifier["value"])
    return Plan(tx.bundle(), tuple(tx.stable_references()), witness)


def close_transaction(
    record: CaseRecord, *, author: str, actor: str, closed_at: datetime, closure: CaseClosure
) -> Plan:
    """Closing a case: the Flag becomes inactive with ``period.end`` and the reason; the
    findings and any referral stay as they are (history stays readable; a referral's own
    status goes on with the facility's work, see :func:`referral_transaction`)."""
    tx = TransactionBuilder()
    written = [_update_flag(tx, record.flag, last_step=None, closed=(closed_at, closure))]
    witness = _sign(tx, record, written, closed_at, author=author, actor=actor)
    return Plan(tx.bundle(), tuple(tx.stable_references()), witness)


def referral_transaction(
    record: CaseRecord,
    referral: Resource,
    status: ReferralStatus,
    *,
    author: str,
    author_name: str,
    actor: str,
    note: str | None,
    now: datetime,
    reopen: bool = False,
) -> Plan:
    """A referral's new status: the ServiceRequest as read with the status (and the note,
    naming ``author`` or, where R4 does not admit that reference, ``author_name``),
    If-Match on the version read, signed like every case write; with ``reopen``, the closed
    concern Flag active again in the same transaction (its end and close reason gone,
    If-Match on the version read: ``protocol.reopens_after_referral_change``). Raises the
    protocol's error when the referral is already finished."""
    try:
        current = ReferralStatus(referral["status"])
    except ValueError:  # a draft or an unknown status, set by someone else on the server
        raise NoReferralError(
            f"The referral {referral['id']} on the FHIR server has the status "
            f"'{referral['status']}', which Kindreflex does not follow up: change it in the EHR."
        ) from None
    check_referral_status(current, status, note)
    tx = TransactionBuilder()
    updated = mapping.referral_with_status(
        referral, status, author=author, author_name=author_name, at=now, note=note
    )
    written = [tx.update(updated, referral["meta"]["versionId"])]
    if reopen:
        written.append(_update_flag(tx, record.flag, last_step=None))
    witness = _sign(tx, record, written, now, author=author, actor=actor)
    return Plan(tx.bundle(), tuple(tx.stable_references()), witness)


def _add_referral(
    tx: TransactionBuilder,
    record: CaseRecord,
    finding: CaseworkFinding,
    referral: Referral | None,
) -> str | None:
    if not isinstance(finding, Step6Referral):
        return None
    if referral is None or record.reason_ref is None:
        raise ValueError("a step 6 save needs its referral and the finding that led to it")
    partner_system = identifier_system("partner")
    (partner,) = [i for i in referral.organization["identifier"] if i["system"] == partner_system]
    write = tx.create_or_merge if referral.updates_facility else tx.create
    performer_ref = write(referral.organization, partner)
    identifier = mapping.identifier("referral", referral.identifier_value)
    request = mapping.referral_service_request(
        finding,
        patient_ref=record.patient_ref,
        encounter_ref=record.encounter_ref,
        performer_ref=performer_ref,
        reason_refs=[record.reason_ref],
        about=referral.about,
        identifier=identifier,
        acute_danger=referral.acute_danger,
    )
    return tx.create(request, identifier)


def _update_flag(
    tx: TransactionBuilder,
    flag: Resource,
    *,
    last_step: Step | None,
    closed: tuple[datetime, CaseClosure] | None = None,
) -> str:
    """The Flag as read, with a new last step, closed, or (neither given) open again with
    its last step; If-Match on the version read."""
    ours = [i for i in flag["identifier"] if i.get("system") == identifier_system("concern")]
    trigger_url = terminology.extension_url("concern-trigger")
    step_url = terminology.extension_url("concern-last-step")
    previous_step = next(
        (e["valueCoding"]["code"] for e in flag.get("extension", []) if e["url"] == step_url),
        None,
    )
    mapped = mapping.concern_flag(
        patient_ref=flag["subject"]["reference"],
        author=flag["author"]["reference"],
        flagged_at=datetime.fromisoformat(flag["period"]["start"]),
        identifier=ours[0],
        last_step=last_step or (Step(previous_step) if previous_step else None),
        triggers=[
            e["valueCoding"]["code"] for e in flag.get("extension", []) if e["url"] == trigger_url
        ],
        closed_at=closed[0] if closed else None,
        closure=closed[1] if closed else None,
    )
    # Laid over the Flag as read, as a nurse's later save lays hers (``outbox.laid_over``):
    # whatever the EHR stored besides our elements survives the update, its own codings of
    # code and category, the subject's display, its extensions and meta (tags, security
    # labels) with our profile added. It replaced code, category and subject whole before,
    # dropping the EHR's (found by review). The period is ours whole: the merge keeps what
    # only the server's says, and an end must go with our status, never stay from theirs.
    merged = {**laid_over(flag, mapped), "period": mapped["period"]}
    return tx.update(merged, flag["meta"]["versionId"])


def _sign(
    tx: TransactionBuilder,
    record: CaseRecord,
    written: list[str],
    now: datetime,
    *,
    author: str,
    actor: str,
) -> str:
    """Add the Provenance, naming the ``author`` as the EHR does (``fhirUser``), and the
    AuditEvent, naming them as the audit does (``actor``: ``audit.actor_url``). Returns the
    search that finds this Provenance (its first target and its instant): the witness of a
    save that only updates (closing a case, a referral's status), which creates nothing
    with an identifier."""
    provenance = mapping.provenance(targets=written, author=author, recorded=now, update=True)
    tx.add(provenance)
    stable = tuple(tx.stable_references())
    fact = AuditFact(
        actor=actor,
        action=AuditAction.of_write(stable),
        patient_ref=record.patient_ref,
        entities=stable,
        outcome="success",
        at=now,
    )
    tx.add(audit.audit_event(fact, entity_references=written))
    return f"Provenance?{search_query({'target': written[0], 'recorded': provenance['recorded']})}"


# -- reading a case from the FHIR server --------------------------------------------------------

#: The page sizes of a case's searches (``_count``): the patient's step findings, and its
#: referrals. Further pages are followed (the server's ``next`` links) ...
FINDINGS_PAGE_SIZE = 500
REFERRALS_PAGE_SIZE = 100
#: ... up to this many pages of one search: a bound on the work one case's read makes
#: (5,000 findings, 1,000 referrals: far more than any family's case). Beyond it the case
#: says its history is incomplete (``CaseFile.history_complete``) rather than hiding it.
MAX_SEARCH_PAGES = 10


class CaseNotOnServerError(LookupError):
    """The concern's Flag is not (or not yet) on the FHIR server: its save is still pending
    (the nurse's save refused for good: :class:`RaisingSaveRefusedError`)."""


#: How much of the FHIR server's reason a refused save's error carries (as ``kindreflex
#: outbox refused`` prints it, on one line).
REASON_SHOWN = 300


class RaisingSaveRefusedError(CaseNotOnServerError):
    """The nurse's triage save that raised the concern, the case's latest save, was refused
    by the FHIR server for good (``failed``: a 4xx; ``conflict``): its Flag is not on the
    server and never will be, as the outbox never sends a refused entry again. Not a
    delivery under way: nothing can be recorded or closed on the case until a nurse records
    the finding again from the patient's chart (a new triage save for the patient continues
    this concern, its worklist row: ``triage._concern_to_continue``). The case stays on the
    worklist all the same: a nurse flagged a child, and the social service must see it.

    ``state``: ``failed`` or ``conflict``; ``saved_at``: when the nurse saved; ``reason``:
    the server's answer as the outbox recorded it, on one line (None: none recorded)."""

    def __init__(self, state: DeliveryState, saved_at: datetime, reason: str | None) -> None:
        self.state = state
        self.saved_at = saved_at
        self.reason = " ".join(reason.split())[:REASON_SHOWN] if reason else None
        why = "the record changed meanwhile" if state is DeliveryState.CONFLICT else None
        why = why or (f"reason: {self.reason}" if self.reason else "no reason recorded")
        super().__init__(
            f"The FHIR server refused the nurse's save of {local(saved_at):%d/%m/%Y %H:%M} that "
            f"raised this concern ({why}): nothing of it is on the patient's record and it is "
            "never sent again, so nothing can be recorded or closed on this case. A nurse "
            "records the finding again from the patient's chart in the EHR; the "
            "administrators find the refusal with `kindreflex outbox refused`."
        )


class SaveOnItsWayError(Exception):
    """The case's latest save is not on the FHIR server yet. A change now would be built on
    the case without it, and the save delivered first would make it a conflict that the
    user, told it was saved, never sees: the change waits until that save is delivered."""

    def __init__(self) -> None:
        super().__init__(
            "The case's previous save is still on its way to the FHIR server; record this "
            "once it is delivered (the case page shows its state)."
        )


def load_case_record(
    client: FhirClient, patient_ref: str, flag_identifier: str
) -> tuple[CaseRecord, list[RecordedFinding]]:
    """What the FHIR server holds of a case, in three searches: its Flag (with the version
    to update), the patient with the children, and the step findings of this concern in
    the order they were recorded, each with its Observation's id (one search of all the
    patient's findings, among which the latest a referral may give as its reason, and of
    the expected children their step 1 findings name). As read, not replayed
    (:func:`replayed`).

    The Flag's and the findings' searches include their authors' Practitioners
    (``_include``), for their names: no request per person. A server may ignore an
    ``_include`` (sekmet ignores ``Flag:author``, with a warning): the Flag's author, the
    nurse who raised the concern, is named all the same by the step 2 finding she recorded.
    """
    system = identifier_system("concern")
    flag_bundle = client.search(
        "Flag", {"identifier": identifier_token(system, flag_identifier), "_include": "Flag:author"}
    )
    flags = _resources(flag_bundle, "Flag")
    if len(flags) != 1:
        raise CaseNotOnServerError(
            f"The concern's Flag is not on the FHIR server yet ({len(flags)} found); its "
            "delivery is pending. Try again when the worklist shows it as sent."
        )
    chart = search_chart(client, patient_ref)
    children = {
        f"RelatedPerson/{r['id']}": replace(child, ref=f"RelatedPerson/{r['id']}")
        for r in chart.related_persons
        if (child := mapping.child_from_related_person(r)) is not None
    }
    withdrawn = {f"RelatedPerson/{r['id']}" for r in chart.related_persons if mapping.withdrawn(r)}
    finding_pages = _step_search(client, patient_ref)
    finding_bundle = finding_pages.bundle
    observations = _with_pregnancies_named(_resources(finding_bundle, "Observation"))
    by_id = {resource["id"]: resource for resource in observations}
    flag = flags[0]
    recorded = _recorded(observations, children, withdrawn)
    concern = _findings(recorded, mapping.flag_period(flag))
    findings = [finding for _, finding in concern]
    case_children = _concern_children(findings) or list(children)
    record = CaseRecord(
        patient_ref=patient_ref,
        encounter_ref=next((f.encounter_ref for f in findings if f.encounter_ref), None),
        child_refs={ref: ref for ref in case_children},
        flag=flag,
        reason_ref=_latest_reason(recorded),
        expecting_ref=_expecting_ref(by_id, concern),
        children=children,
        patient=None if chart.patient is None else mapping.patient_identity(chart.patient),
        people=_people(client.base_url, flag_bundle, finding_bundle),
        findings_complete=finding_pages.complete,
        added_notes=tuple(mapping.added_notes(by_id[id_]) for id_, _ in concern),
    )
    return record, concern


def replayed(record: CaseRecord, findings: list[RecordedFinding]) -> KindreflexCase:
    """The case its findings (:func:`load_case_record`) make, replayed by the protocol.
    The protocol accepted each of ours when it was saved: findings it refuses in the order
    recorded were made so by another writer (the EHR named a relative who is no child of
    the case, or dated a finding before an earlier step). That is no refusal of the user's
    input: the case cannot be read, naming the finding where the replay stops and the
    protocol's rule, never its message (it may quote a value, a child's name)."""
    case = KindreflexCase.open(record.patient_ref, record.encounter_ref or "Encounter/unknown")
    for id_, finding in findings:
        try:
            case = apply(case, finding)
        except ProtocolError as error:
            problem = (
                "the findings, replayed in the order recorded, break the Kindreflex "
                f"protocol's rule {error.code.value} here"
            )
            raise mapping.UnreadableResourceError(f"Observation/{id_}", problem) from error
    return case


def _with_pregnancies_named(observations: list[Resource]) -> list[Resource]:
    """The Observations as read, with each step 1 that names no expected child naming the
    pregnancy written in the same save. Until 2026-12-04 the triage save wrote the step 1
    without ``hasMember``: read so, a pregnancy-only step 1 says "no children, nothing
    expected" and the case cannot be opened. The pregnancy is the step 1's when it is the
    only one not named by a step 1 that the same save wrote: the same patient, encounter,
    author and moment (the save gives both the step 1's ``recorded_at``). Not a guess by
    time: a moment to the microsecond, in one encounter, by one author, is one save."""
    named = {mapping.expected_child_reference(resource) for resource in observations}
    pregnancies: dict[_Save, list[str]] = {}
    for resource in observations:
        ref, save = f"Observation/{resource['id']}", _save_of(resource)
        if save and ref not in named and mapping.expected_child_from_observation(resource):
            pregnancies.setdefault(save, []).append(ref)
    return [_naming(resource, pregnancies) for resource in observations]


#: What the Observations of one triage save share: the patient, the encounter, the author
#: and the moment (compared as moments, whatever the server's notation of them).
_Save = tuple[str, str, str, datetime]


def _naming(resource: Resource, pregnancies: Mapping[_Save, list[str]]) -> Resource:
    """``resource``, a step 1 without ``hasMember`` naming the one pregnancy of its save."""
    if (
        mapping.step_of_observation(resource) is not Step.STEP_1
        or mapping.expected_child_reference(resource) is not None
        or resource.get("valueBoolean") is not True
    ):
        return resource
    save = _save_of(resource)
    found = pregnancies.get(save, []) if save else []
    return {**resource, "hasMember": [{"reference": found[0]}]} if len(found) == 1 else resource


def _save_of(observation: Resource) -> _Save | None:
    """The save that wrote ``observation`` (None: its moment cannot be read; a step 1 so is
    unreadable when it is read, and a pregnancy so is named by no one)."""
    try:
        at = mapping.moment(observation, "effectiveDateTime")
    except mapping.UnreadableResourceError:
        return None
    performers = observation.get("performer") or [{}]
    return (
        str((observation.get("subject") or {}).get("reference")),
        str((observation.get("encounter") or {}).get("reference")),
        str(performers[0].get("reference")),
        at,
    )


def _concern_children(findings: list[Finding]) -> list[str]:
    """The children a concern is about: those of its step 1s, the latest's first (a later
    step 1 does not take a child off an open concern: ``protocol._children_after``)."""
    step_1s = [f for f in reversed(findings) if isinstance(f, Step1Finding)]
    return list(dict.fromkeys(child.ref for step_1 in step_1s for child in step_1.children))


def _step_search(client: FhirClient, patient_ref: str) -> SearchPages:
    """Every Kindreflex step finding of the patient (one search serves the case's history
    and the referral's reason) and every expected child (a step 1 names its own in
    ``hasMember``: the same search reads them, no request per case), with the
    Practitioners who recorded them; page by page."""
    system = terminology.code_system_url("kindreflex-step")
    expecting = f"{terminology.code_system_url('record-type')}|expecting-child"
    codes = ",".join([*(f"{system}|{step.value}" for step in Step), expecting])
    params = {
        "subject": patient_ref,
        "code": codes,
        "_count": str(FINDINGS_PAGE_SIZE),
        "_include": "Observation:performer",
    }
    return client.search_pages("Observation", params, max_pages=MAX_SEARCH_PAGES)


def _people(base_url: str, *bundles: Resource) -> dict[str, str]:
    """The names of the Practitioners the searches included (on the FHIR server at
    ``base_url``), by either reference the case names them with: relative
    (``Practitioner/<id>``, as some EHRs send ``fhirUser``) and absolute (as others do,
    and as the worklist names its assignee: ``audit.actor_url``), cut to the worklist's
    column."""
    names = {
        f"Practitioner/{person['id']}": name
        for bundle in bundles
        for person in _resources(bundle, "Practitioner")
        if (name := worklist_display(mapping.display_name(person) or ""))
    }
    return names | {audit.actor_url(ref, base_url): name for ref, name in names.items()}


def _recorded(
    observations: list[Resource], children: Mapping[str, Child], withdrawn: Collection[str]
) -> list[RecordedFinding]:
    """The patient's step findings, each with its Observation's id, in the order they were
    recorded (a retracted Observation is none: ``mapping.finding_from_observation``); a
    step 1 with the expected child it names, when it is among ``observations``.
    ``withdrawn``: the children the EHR withdrew, whom a step 1 still names (left out)."""
    expecting = {
        f"Observation/{resource['id']}": expected
        for resource in observations
        if (expected := mapping.expected_child_from_observation(resource)) is not None
    }
    parsed = (
        (
            resource["id"],
            mapping.finding_from_observation(
                resource, children=children, expecting=expecting, withdrawn_children=withdrawn
            ),
        )
        for resource in observations
    )
    recorded = [(id_, finding) for id_, finding in parsed if finding is not None]
    # a nurse's save records its steps 1-3 at one instant, and a search without _sort
    # returns them in any order: the step breaks the tie (step 2 after its step 1)
    return sorted(recorded, key=lambda pair: (pair[1].recorded_at, pair[1].step.number))


def _expecting_ref(by_id: Mapping[str, Resource], concern: list[RecordedFinding]) -> str | None:
    """The expected child's Observation named by the case's latest step 1 that names one (a
    later step 1 does not take the expected child off an open concern, as the children,
    until it is born: ``protocol._still_expected``, and a referral then names none)."""
    step_1_id = next(
        (id_ for id_, f in reversed(concern) if isinstance(f, Step1Finding) and f.expecting),
        None,
    )
    if step_1_id is None:
        return None
    return mapping.expected_child_reference(by_id[step_1_id])


def _findings(
    recorded: list[RecordedFinding], period: tuple[datetime, datetime | None]
) -> list[RecordedFinding]:
    """The findings of this concern (with their Observations' ids) the protocol replays, in
    the order they were recorded:
    from the step 1 of the triage that raised it (the Flag's start is its step 2) until the
    case was closed (the Flag's end). Another concern of the patient is replayed on its own
    case: an earlier one's route must not carry into this one, which starts with the team's
    decision (step 4), and a closed case's history ends when it was closed."""
    raised_at, closed_at = period  # the Flag's (mapping.flag_period)
    # to the millisecond: the Flag's moments may have been written again since the findings
    # (mapping.to_the_millisecond)
    findings = [
        (id_, f)
        for id_, f in recorded
        if closed_at is None or mapping.to_the_millisecond(f.recorded_at) <= closed_at
    ]
    starts = [
        at
        for at, (_, f) in enumerate(findings)
        if isinstance(f, Step1Finding) and mapping.to_the_millisecond(f.recorded_at) <= raised_at
    ]
    return findings[starts[-1] :] if starts else findings


def _latest_reason(recorded: list[RecordedFinding]) -> str | None:
    """The latest finding a referral may follow from (``leads_to_referral``), for its
    ``reasonReference``: the latest of steps 2, 4 and 5 whatever it said gave a nurse's
    later "no concern" as the reason of a referral to the VK or the parket."""
    reasons = [id_ for id_, finding in recorded if leads_to_referral(finding)]
    return f"Observation/{reasons[-1]}" if reasons else None


class IncompleteCaseError(CaseNotOnServerError):
    """The FHIR server holds more of the case than a read takes (:data:`MAX_SEARCH_PAGES`, or
    a next page not under its base URL): a change made from part of its history could be
    wrong (a step the protocol refuses taken, a case with a step due closed, an older
    referral's status changed). Shown, not changed: the EHR holds the whole record."""

    def __init__(self) -> None:
        super().__init__(
            "The FHIR server holds more of this case's history than Kindreflex reads; "
            "nothing was saved. Record it in the EHR."
        )


class ClosedOnServerError(CaseNotOnServerError):
    """The concern's Flag is inactive on the FHIR server while the worklist still had the
    case open: someone closed it in the EHR. Nothing is recorded on it (a step would reopen
    the Flag and erase its end and reason); opening the case shows it closed."""

    def __init__(self) -> None:
        super().__init__(
            "This concern was closed in the EHR; nothing was saved. Kindreflex follows it up "
            "no further: a new concern is raised at the patient's next triage."
        )


class CaseOnAnotherServerError(CaseNotOnServerError):
    """The case's patient is on the FHIR server of another EHR of the hospital: the session's
    server and access token cannot read it (and its ``Patient/123`` is someone else)."""

    def __init__(self, fhir_base_url: str) -> None:
        super().__init__(
            f"This case was recorded through another EHR (FHIR server {fhir_base_url}); "
            "open it from that EHR."
        )
        self.fhir_base_url = fhir_base_url


class UnknownEncounterError(LookupError):
    """A step names a visit (``encounter_ref``) that is no Encounter of the case's patient
    on the FHIR server: its finding and referral would be filed in another patient's visit,
    or name one that is not there (:func:`_check_encounter`)."""


def _check_encounter(client: FhirClient, record: CaseRecord, encounter_ref: str | None) -> None:
    """Refuses a step's own ``encounter_ref`` unless it is an Encounter of the case's patient
    (its ``subject``, relative or absolute on this server); the case's encounter, or none,
    needs no read. Any reference the API was given was written as the finding's and the
    referral's ``encounter`` (found by review): another patient's visit put the team's
    decision about these children in that patient's record."""
    if encounter_ref is None or encounter_ref == record.encounter_ref:
        return
    try:
        encounter = client.read(*encounter_ref.split("/", 1))
    except FhirRejected as refused:
        if refused.status not in (404, 410):
            raise  # a token refused is the launch's to say, not a wrong visit
        encounter = {}
    subject = encounter.get("subject")
    reference = subject.get("reference") if isinstance(subject, Mapping) else None
    own = (record.patient_ref, f"{client.base_url.rstrip('/')}/{record.patient_ref}")
    if reference not in own:
        raise UnknownEncounterError(
            f"The encounter {encounter_ref} is not a visit of this patient on the FHIR "
            "server: name one of the patient's own visits, or none (the visit that raised "
            "the concern)."
        )


class NoReferralError(LookupError):
    """The case has no referral on the FHIR server that Kindreflex follows up (no step 6
    delivered yet, or the one to change has a status someone else set, such as draft)."""


class UnknownReferralError(LookupError):
    """The referral named is not one of the case's: another case's or patient's, or one the
    EHR retracted (``mapping.RETRACTED``). Nothing is changed."""


def _referrals(client: FhirClient, record: CaseRecord) -> tuple[list[Resource], SearchPages]:
    """The case's referral ServiceRequests as read (with versions), newest first: those of
    the patient made while this concern was open (a later concern of the same patient has
    its own). With the search's pages, whose Bundle includes the facilities referred to."""
    code = f"{terminology.code_system_url('record-type')}|referral"
    params = {
        "subject": record.patient_ref,
        "code": code,
        "_count": str(REFERRALS_PAGE_SIZE),
        "_include": "ServiceRequest:performer",
    }
    pages = client.search_pages("ServiceRequest", params, max_pages=MAX_SEARCH_PAGES)
    bundle = pages.bundle
    start, end = mapping.flag_period(record.flag)
    ours = [
        r
        for r in _resources(bundle, "ServiceRequest")
        if r.get("status") not in mapping.RETRACTED
        and start <= _authored(r)
        and (end is None or _authored(r) <= end)
    ]
    return sorted(ours, key=_authored, reverse=True), pages


def _authored(request: Resource) -> datetime:
    return mapping.moment(request, "authoredOn")


def referred_facilities(
    client: FhirClient, referrals: list[Resource], bundle: Resource
) -> dict[str, Resource]:
    """The Organizations the referrals go to, by the reference they are named with: as the
    search included them, read one by one where a server ignored ``_include``."""
    included = {f"Organization/{o['id']}": o for o in _resources(bundle, "Organization")}
    named = (mapping.referral_performer(r) for r in referrals)
    references = {reference for reference in named if reference is not None}
    return {
        reference: included.get(reference) or client.read(*reference.split("/", 1))
        for reference in sorted(references)
        if reference.startswith("Organization/")
    }


def _every_referral(client: FhirClient, record: CaseRecord) -> list[Resource]:
    """The case's referrals (:func:`_referrals`), every one: a change is not ruled on part
    of them (the latest may be among those not read)."""
    found, pages = _referrals(client, record)
    if not pages.complete:
        raise IncompleteCaseError()
    return found


def _referral(client: FhirClient, record: CaseRecord, referral_id: str | None) -> Resource:
    """The case's referral ServiceRequest ``referral_id``, as read (with version); without
    an id its most recent one, as the API's body meant before a case's earlier referrals
    could be followed up (a VK's referral stays active after a later one to the police)."""
    found = _every_referral(client, record)
    if referral_id is not None:
        named = [r for r in found if r["id"] == referral_id]
        if not named:
            raise UnknownReferralError(
                f"ServiceRequest/{referral_id} is not one of this case's referrals; "
                "nothing was changed."
            )
        return named[0]
    if not found:
        raise NoReferralError(
            "This case has no referral on the FHIR server yet; record step 6 first (or wait "
            "until its delivery shows as sent)."
        )
    return found[0]


def _referral_statuses(
    client: FhirClient, record: CaseRecord, changed: tuple[str, ReferralStatus] | None = None
) -> list[ReferralStatus]:
    """Where the case's referrals stand on the FHIR server, with the referral ``changed``
    names (its id and new status) as the change makes it; one with a status Kindreflex
    does not follow (a draft the EHR made) is left out."""
    followed = {status.value for status in ReferralStatus}
    referrals = _every_referral(client, record)
    changed_id, new_status = changed or (None, None)
    return [
        new_status if r["id"] == changed_id and new_status else ReferralStatus(r["status"])
        for r in referrals
        if r.get("status") in followed
    ]


def _resources(bundle: Resource, resource_type: str) -> list[Resource]:
    """The matches of a search (not the OperationOutcome a server may add)."""
    found = (e.get("resource", {}) for e in bundle.get("entry", []))
    return [r for r in found if r.get("resourceType") == resource_type]


# -- the use case: a social worker's save ----------------------------------------------------

StepInput = Step4Input | Step5Input | Step6Input


#: What a referral's status change did to its case closed as "referred" when it left no
#: referral standing (``protocol.reopens_after_referral_change``): reopened it, or kept it
#: closed because the patient has another open case (one open concern per patient), where
#: the children are followed.
Reopening = Literal["reopened", "kept-closed"]


@dataclass(frozen=True)
class StepResult:
    """Where a save stands: delivered to FHIR, or pending in the outbox (the worker
    delivers it), or failed (the server rejected it; kept for the operators).
    ``reopening``: what a referral's status change did to its closed case (None: nothing)."""

    status: Literal["delivered", "pending", "failed"]
    outbox_id: int
    next_steps: tuple[str, ...]
    row_version: int
    reopening: Reopening | None = None


@dataclass(frozen=True)
class _Index:
    """What a save changes in the case's row of the concerns index."""

    last_step: str
    status: str
    follow_up_due: date | None
    acute_danger: bool

    @classmethod
    def of(cls, row: Concern) -> _Index:
        return cls(row.last_step, row.status, row.follow_up_due, row.acute_danger)

    def stored(self, row_version: int) -> dict[str, Any]:
        """As ``concerns.before_save`` keeps it (JSON), with the row version the save moved
        on from (:meth:`Casework.saved_twice`)."""
        due = self.follow_up_due.isoformat() if self.follow_up_due else None
        return {**asdict(self), "follow_up_due": due, "row_version": row_version}

    @classmethod
    def stored_as(cls, stored: dict[str, Any]) -> _Index:
        due = stored["follow_up_due"]
        return cls(
            stored["last_step"],
            stored["status"],
            date.fromisoformat(due) if due else None,
            bool(stored["acute_danger"]),
        )


class FhirChangedConflict(CaseConflict):
    """The FHIR server's Flag changed since the case was read (If-Match refused the save).
    The input is kept in the outbox (``outbox_id``) for the social worker to redo."""

    def __init__(self, outbox_id: int, current_version: int) -> None:
        super().__init__("changed", None, current_version)
        self.outbox_id = outbox_id
        self.message = (
            "Someone else changed this case on the FHIR server since you opened it. Nothing "
            "was overwritten; open the case again and redo your input."
        )


class CloseRefusedError(ValueError):
    """A case is closed only when no step 4, 5 or 6 is due, or after a referral (step 6)."""


def closable(case: KindreflexCase) -> bool:
    """Whether the social service may close the case: no step 4, 5 or 6 due, or referred.
    The referral counts while it is the social service's latest step and no new concern
    asks for a team decision (step 4): a nurse's "no concern" at a later visit (the
    Kindreflex is done at every contact) keeps the referral's route open; it must not keep
    the case from closing."""
    if not case.has_open_concern:
        return True
    casework = [f.step for f in case.findings if f.step in CONCERN_STEPS]
    return casework[-1:] == [Step.STEP_6] and Step.STEP_4 not in case.next_steps


@dataclass(frozen=True)
class CaseFile:
    """A case as the FHIR server holds it, for reading its history: the protocol's state
    (findings, children, next steps), the referrals (as read, newest first) with their
    facilities and, for a closed case, why it was closed."""

    case_id: int
    status: str
    row_version: int
    follow_up_due: date | None
    case: KindreflexCase
    referrals: tuple[Resource, ...]
    closure: CaseClosure | None
    #: when the concern was closed, as its Flag's ``period.end`` says (None: open); a Flag
    #: closed in the EHR may have it without a ``closure``
    closed_at: datetime | None = None
    #: each referral's performer reference → the facility's Organization as read (its
    #: name and phone numbers, e.g. for the printable referral summary)
    facilities: Mapping[str, Resource] = field(default_factory=dict)
    patient: mapping.PatientIdentity | None = None
    #: the names of the people the case names, by reference (``CaseRecord.people``)
    people: Mapping[str, str] = field(default_factory=dict)
    #: False: the FHIR server holds more findings or referrals than a case reads
    #: (:data:`MAX_SEARCH_PAGES`), or than the page's budget left time to read; the history
    #: shown lacks some
    history_complete: bool = True
    #: the notes others added to each finding, in the order of ``case.findings``
    #: (``CaseRecord.added_notes``)
    added_notes: tuple[tuple[mapping.AddedNote, ...], ...] = ()


class Casework:
    """The social service's saves (steps 4-6 and closing a case). Constructed per request."""

    def __init__(
        self, database: Database, outbox: Outbox, tokens: TokenSource, timeout: float
    ) -> None:
        self._database = database
        self._outbox = outbox
        self._tokens = tokens
        self._timeout = timeout

    def record_step(
        self, ctx: LaunchInfo, case_id: int, expected_version: int, step: StepInput
    ) -> StepResult:
        """Validate ``step`` against the case as the FHIR server holds it, then save it."""
        concern = self._concern(ctx, case_id, expected_version)
        with self._client(ctx, change=True) as client:
            record, case = self._read(ctx, concern, client)
            _check_encounter(client, record, step.encounter_ref)
        _whole(record)
        now = local_now()  # the protocol's "today" (a contact, a follow-up) is Belgian
        author = ctx.user.fhir_user
        if isinstance(step, Step6Input):
            finding: CaseworkFinding = step.finding(
                author, now, ctx.tenant.config.partners.directory()
            )
        else:
            finding = step.finding(author, now)
        check_plausible_dates(finding)  # a new finding's dates (old ones replay as recorded)
        case = apply(case, finding)  # the protocol's verdict (ProtocolError)
        referral = None
        if isinstance(step, Step6Input) and isinstance(finding, Step6Referral):
            referral = Referral(
                _business_id(ctx, case_id, "referral", now),
                _organization(ctx, step.partner_id),
                referral_about(record, case, finding),
                acute_danger=case.acute_danger,  # the route into step 6 (apply keeps it there)
                updates_facility=updates_facilities(ctx),
            )
        plan = step_transaction(
            record,
            finding,
            finding_identifier=_business_id(ctx, case_id, finding.step.value, now),
            referral=referral,
            plan_version=str(ctx.tenant.config.plan.revision),  # the wording shown
            actor=ctx.actor,
            now=now,
        )
        follow_up = finding.first_check if isinstance(finding, Step5Progress) else None
        return self._save(
            ctx,
            concern,
            plan,
            _Index(finding.step.value, "open", follow_up, case.acute_danger),
            case.next_steps,
        )

    def close_case(
        self, ctx: LaunchInfo, case_id: int, expected_version: int, closure: CaseClosure
    ) -> StepResult:
        """Close the case: the Flag inactive with its end and the reason; the findings and
        any referral stay as they are."""
        concern = self._concern(ctx, case_id, expected_version)
        with self._client(ctx, change=True) as client:
            record, case = self._read(ctx, concern, client)
            _whole(record)
            referred = closure.reason is CloseReason.REFERRED
            statuses = _referral_statuses(client, record) if referred else []
        if not closable(case):
            due = ", ".join(sorted(s.value for s in case.next_steps))
            raise CloseRefusedError(
                f"This case still waits for {due}; close it after the team decision found "
                "the home safe, after safety was restored, or after a referral."
            )
        check_closure(case, closure, statuses)
        plan = close_transaction(
            record,
            author=ctx.user.fhir_user,
            actor=ctx.actor,
            closed_at=utcnow(),
            closure=closure,
        )
        # a closed case keeps its acute danger (the protocol keeps it once set): the closed
        # worklist still says which cases were acute, as opening one would set it again
        acute = concern.acute_danger or case.acute_danger
        index = _Index(concern.last_step, "closed", None, acute)
        return self._save(ctx, concern, plan, index, frozenset())

    def open_case(self, ctx: LaunchInfo, case_id: int) -> CaseFile:
        """The case with its history (an audited read), open or closed."""
        concern = self._concern(ctx, case_id, None)
        with self._client(ctx) as client:
            record, case = self._read(ctx, concern, client)
            referrals, pages = _referrals(client, record)
            facilities = referred_facilities(client, referrals, pages.bundle)
        status, version = self._reconcile_index(ctx, concern, record, case)
        return CaseFile(
            case_id=concern.id,
            status=status,
            row_version=version,
            follow_up_due=concern.follow_up_due,
            case=case,
            referrals=tuple(referrals),
            closure=mapping.closure_from_flag(record.flag),
            closed_at=mapping.flag_period(record.flag)[1],
            facilities=facilities,
            patient=record.patient,
            people=record.people,
            history_complete=record.findings_complete and pages.complete,
            added_notes=record.added_notes,
        )

    def update_referral(
        self,
        ctx: LaunchInfo,
        case_id: int,
        expected_version: int,
        referral_id: str | None,
        status: ReferralStatus,
        note: str | None,
    ) -> StepResult:
        """The case's referral ``referral_id`` (None: its latest) gets a new status (If-Match
        on the version read).

        Allowed on a closed case too: the facility's work goes on after the hospital closed
        its concern, and the referral keeps telling where it stands. A case closed as
        "referred" that the change leaves with no referral standing (its last one revoked)
        is reopened in the same transaction, back on the worklist with step 6 open, unless
        the patient has another open case (:meth:`_reopening`).
        """
        concern = self._concern(ctx, case_id, expected_version, closed_too=True)
        with self._client(ctx, change=True) as client:
            record, case = self._read(ctx, concern, client)
            referral = _referral(client, record, referral_id)
            closure = mapping.closure_from_flag(record.flag)
            # a closed case's referrals are all read: whether one still stands decides
            changed = (referral["id"], status)
            statuses = _referral_statuses(client, record, changed) if closure else []
        reopening = self._reopening(concern, reopens_after_referral_change(closure, statuses))
        now = utcnow()

        def save(reopening: Reopening | None) -> StepResult:
            plan = referral_transaction(
                record,
                referral,
                status,
                author=ctx.user.fhir_user,
                # the launch names a user without a name by their reference
                author_name=typed_text(ctx.user.name) or ctx.user.fhir_user,
                actor=ctx.actor,
                note=note,
                now=now,
                reopen=reopening == "reopened",
            )
            index = _Index.of(concern)
            if reopening == "reopened":  # on the worklist again: nothing planned, step 6 open
                index = replace(index, status="open", follow_up_due=None)
            result = self._save(ctx, concern, plan, index, case.next_steps)
            return replace(result, reopening=reopening)

        try:
            return save(reopening)
        except IntegrityError:
            if reopening != "reopened":
                raise
            # a nurse's triage opened another case of the patient since _reopening looked:
            # the unique open-concern index refused this one open, nothing was written.
            # The change is made as it would have been then, the case kept closed.
            return save("kept-closed")

    def _reopening(self, concern: Concern, reopens: bool) -> Reopening | None:
        """What the change does to the case it ``reopens`` by the protocol: reopened, or
        kept closed when the patient has another open case (one open concern per patient:
        the children are followed there; the index's ``uq_concerns_open_patient``)."""
        if not reopens:
            return None
        with self._database.session() as session:
            other = _other_open_concern(session, concern)
        return "kept-closed" if other else "reopened"

    def saved_twice(self, ctx: LaunchInfo, case_id: int, seen_version: int) -> bool:
        """Whether the one change since the version a refused form showed is this session's
        own save from that version: the form was sent twice (a double click, a reload), no
        colleague changed the case."""
        with self._database.session() as session:
            row = session.execute(
                select(Concern.row_version, Concern.before_save, OutboxEntry.session_id)
                .join(OutboxEntry, OutboxEntry.id == Concern.outbox_id)
                .where(Concern.tenant_id == ctx.tenant.id, Concern.id == case_id)
            ).one_or_none()
        return (
            row is not None
            and row.row_version == seen_version + 1
            and row.session_id == ctx.session_id
            and (row.before_save or {}).get("row_version") == seen_version
        )

    # -- steps of the use case --------------------------------------------------------------

    def _concern(
        self,
        ctx: LaunchInfo,
        case_id: int,
        expected_version: int | None,
        *,
        closed_too: bool = False,
    ) -> Concern:
        """The case's index row; for a change (``expected_version`` given) only at the
        version the user saw, and only open unless ``closed_too``."""
        with self._database.session() as session:
            row = session.scalar(
                select(Concern).where(Concern.tenant_id == ctx.tenant.id, Concern.id == case_id)
            )
            if row is None:
                raise CaseNotFoundError(f"There is no case {case_id} in this hospital.")
            if row.fhir_base_url != ctx.fhir_base_url:
                raise CaseOnAnotherServerError(row.fhir_base_url)
            if expected_version is None:  # a read
                session.expunge(row)
                return row
            if row.status != "open" and not closed_too:
                raise CaseConflict.of("closed", row)
            if row.row_version != expected_version:
                raise CaseConflict.of("changed", row)
            session.expunge(row)
        if self._save_on_its_way(row):
            raise SaveOnItsWayError()
        return row

    def _reconcile_index(
        self, ctx: LaunchInfo, concern: Concern, record: CaseRecord, case: KindreflexCase
    ) -> tuple[str, int]:
        """The worklist shows what the server says from now on: the names of the patient (of
        an open case), of the flagging nurse and of the assignee when the case names them (a
        concern indexed from a Flag, a colleague assigned by reference, a row older than the
        names), the acute danger of the case's findings (a concern indexed from a Flag,
        which does not carry it: the worklist's "acute danger first" order must know), and a
        concern closed in the EHR as closed. The index is reconciled with the server when a
        case is opened. A name is not a user's change, so the row version stays for it; the
        row as read, so a name goes to the person it is of (a colleague claiming the case
        meanwhile: corrected at the next opening). Closing moves the version on: a nurse's
        save that read the case open just before must not join a closed case (found by
        review: her niet-pluis reached no worklist). Returns the case's status and row version
        as the worklist now has them (the version a change from the opened page is based on:
        the one before the closing was taken for someone else's change)."""
        # a closed case keeps no name the retention emptied: opening it does not refill one
        patient = record.patient.name if record.patient and concern.status == "open" else None
        assignee = concern.assigned_to
        names = {
            "patient_display": worklist_display(patient) if patient else None,
            "flagged_by_display": record.people.get(concern.flagged_by),
            "assigned_to_display": record.people.get(assignee) if assignee else None,
        }
        changed: dict[str, object] = {
            column: name
            for column, name in names.items()
            if name and name != getattr(concern, column)
        }
        if case.acute_danger and not concern.acute_danger:  # the protocol keeps it once set
            changed["acute_danger"] = True
        # closed or retracted in the EHR: off the open worklist (and free for a new concern),
        # unless a save still on its way may reopen it (a nurse's niet-pluis). A retracted
        # one stayed open for good, with its names, refusing every step (found by review).
        if (
            (record.flag.get("status") == "inactive" or mapping.withdrawn(record.flag))
            and concern.status == "open"
            and not self._save_on_its_way(concern)
        ):
            # closed now, for the retention that empties a closed case's names; closed when
            # the EHR ended the Flag (its days open count up to then), else as of now
            ended = mapping.flag_period(record.flag)[1]
            changed.update(
                status="closed",
                follow_up_due=None,
                updated_at=utcnow(),
                closed_at=ended or utcnow(),
                row_version=Concern.row_version + 1,
            )
        if not changed:
            return concern.status, concern.row_version
        with self._database.session() as session:
            result = session.execute(
                update(Concern)
                .where(
                    Concern.tenant_id == ctx.tenant.id,
                    Concern.id == concern.id,
                    Concern.row_version == concern.row_version,
                )
                .values(**changed)
                .execution_options(synchronize_session=False)
            )
        moved_on = "row_version" in changed and result.rowcount == 1  # type: ignore[attr-defined]
        return str(changed.get("status", concern.status)), concern.row_version + moved_on

    def _save_on_its_way(self, concern: Concern) -> bool:
        """Whether the case's latest save (``concerns.outbox_id``) is still to be delivered."""
        latest = concern.outbox_id
        return latest is not None and self._outbox.state_of(latest) in UNDELIVERED_STATES

    def _raising_save_refused(self, concern: Concern) -> RaisingSaveRefusedError | None:
        """The refusal of the case's latest save when it is a nurse's triage save the FHIR
        server refused for good (a social save needs the Flag on the server to be made)."""
        with self._database.session() as session:
            refused = session.execute(
                select(OutboxEntry.state, OutboxEntry.created_at, OutboxEntry.last_error).where(
                    OutboxEntry.id == concern.outbox_id,
                    OutboxEntry.kind == TRIAGE_KIND,
                    OutboxEntry.state.in_(REFUSED_STATES),
                )
            ).one_or_none()
        if refused is None:
            return None
        state, saved_at, reason = refused
        return RaisingSaveRefusedError(DeliveryState(state), saved_at, reason)

    def _read(
        self, ctx: LaunchInfo, concern: Concern, client: FhirClient
    ) -> tuple[CaseRecord, KindreflexCase]:
        """The case from the FHIR server (the source of truth), replayed by the protocol.
        A Flag not on the server because the FHIR server refused the nurse's save that raised
        it is :class:`RaisingSaveRefusedError`, not a delivery under way."""
        try:
            record, findings = load_case_record(
                client, concern.patient_ref, concern.flag_identifier
            )
        except CaseNotOnServerError as missing:
            refused = self._raising_save_refused(concern)
            if refused is not None:
                raise refused from missing
            raise
        fact = AuditFact(
            actor=ctx.actor,
            action=AuditAction.READ,
            patient_ref=record.patient_ref,
            entities=(f"Flag/{record.flag['id']}", *record.children),  # every child read
            outcome="success",
            at=utcnow(),
        )
        channel = Channel(ctx.tenant.id, ctx.registration_id, ctx.fhir_base_url, ctx.session_id)
        with self._database.session() as session:
            audit.record_read(session, channel, fact)
        return record, replayed(record, findings)

    def _client(self, ctx: LaunchInfo, *, change: bool = False) -> FhirClient:
        """A client for the case page's reads (within the screen's budget; a search's further
        pages as far as it allows, the page then saying its history is incomplete), or for
        the reads before a ``change`` of the case: every page, within the larger budget of
        a change (``FhirClient.for_change``), else the server does not answer now and
        nothing is changed. A change is never ruled on part of the history (:func:`_whole`,
        :func:`_referral`); within the screen's budget a long case on a slow server
        could never be changed."""
        make = FhirClient.for_change if change else FhirClient.for_screen
        return make(
            ctx.fhir_base_url, lambda: self._tokens.access_token(ctx.session_id), self._timeout
        )

    def _save(
        self,
        ctx: LaunchInfo,
        concern: Concern,
        plan: Plan,
        index: _Index,
        next_steps: frozenset[Step],
    ) -> StepResult:
        """Outbox entry, index row and audit row in ONE local unit of work, then delivery."""
        now = utcnow()
        with self._database.session() as session:
            entry = enqueue_save(session, ctx, KIND, concern.patient_ref, plan.bundle, plan.witness)
            version = concern.row_version + 1
            changed = session.execute(
                update(Concern)
                .where(Concern.id == concern.id, Concern.row_version == concern.row_version)
                .values(
                    last_step=index.last_step,
                    status=index.status,
                    follow_up_due=index.follow_up_due,
                    acute_danger=index.acute_danger,
                    outbox_id=entry.id,
                    before_save=_Index.of(concern).stored(concern.row_version),
                    row_version=version,
                    updated_at=now,
                    closed_at=now if _closing(concern, index) else concern.closed_at,
                )
                .execution_options(synchronize_session=False)
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined] # CursorResult of an UPDATE
                # Another save came between our reading and now: undo everything.
                raise CaseConflict("changed", None, concern.row_version + 1)
            fact = AuditFact(
                actor=ctx.actor,
                action=AuditAction.of_write(plan.written),  # as the save's AuditEvent says
                patient_ref=concern.patient_ref,
                entities=tuple(plan.written),
                outcome="success",
                at=now,
            )
            audit.record_local(session, ctx.tenant.id, fact, entry.fhir_base_url, entry.id)
        state = self._outbox.deliver(
            entry.id, timeout=min(self._timeout, IMMEDIATE_TIMEOUT_SECONDS)
        )
        if state in (DeliveryState.CONFLICT, DeliveryState.FAILED):
            version = self._version(concern.id)  # the row went back (undo_refused_save)
        if state is DeliveryState.CONFLICT:
            raise FhirChangedConflict(entry.id, version)
        return StepResult(
            _status(state), entry.id, tuple(sorted(s.value for s in next_steps)), version
        )

    def _version(self, case_id: int) -> int:
        with self._database.session() as session:
            version = session.scalar(select(Concern.row_version).where(Concern.id == case_id))
        return int(version or 0)


def _whole(record: CaseRecord) -> None:
    """A step or a closing is ruled on the case's whole history, never on part of it, and
    never on a concern the EHR closed or retracted: the save would write its Flag back as
    active, without the end and the reason of its closing."""
    if not record.findings_complete:
        raise IncompleteCaseError()
    if record.flag.get("status") == "inactive":
        raise ClosedOnServerError()
    if record.flag.get("status") != "active":
        raise CaseNotOnServerError(
            f"The concern's Flag on the FHIR server has the status '{record.flag.get('status')}' "
            "(retracted in the EHR): nothing can be recorded on this case."
        )


def install(outbox: Outbox) -> None:
    """Wire the outbox (at start-up): a refused social save puts its case's worklist row
    back, whether the saving request or the worker records the refusal."""
    outbox.when_refused(KIND, undo_refused_save)


def undo_refused_save(session: Session, outbox_id: int) -> None:
    """The FHIR server refused a social save (If-Match, or a rejection), at once or when the
    worker delivered it later: the case's index row goes back to what the server still
    holds (``concerns.before_save``) — a refused closing leaves the case open, to be closed
    again — unless another save (a step, a triage) changed the row since: its ``outbox_id``
    then names that save. The row keeps the refused entry: the worklist shows its state. Its
    ``row_version`` moves on (a form still showing the refused save is stale). Runs in the
    outbox's transaction that records the refusal (``Outbox.when_refused``).

    A case the refused save closed stays closed when the patient has another open concern
    by now (a later triage opened one; one open concern per patient): logged."""
    row = session.scalar(select(Concern).where(Concern.outbox_id == outbox_id))
    if row is None or row.before_save is None:
        return
    before = _Index.stored_as(row.before_save)
    if before.status == "open" and row.status != "open" and _other_open_concern(session, row):
        log.warning(
            "refused closing not undone: the patient has another open concern",
            extra={"fields": {"case_id": row.id, "outbox_id": outbox_id}},
        )
        return
    session.execute(
        update(Concern)
        .where(Concern.id == row.id, Concern.outbox_id == outbox_id)
        .values(
            last_step=before.last_step,
            status=before.status,
            follow_up_due=before.follow_up_due,
            acute_danger=before.acute_danger,
            before_save=None,
            row_version=Concern.row_version + 1,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )


def _closing(concern: Concern, index: _Index) -> bool:
    """Whether the save closes the open case (its days open stop counting then); a save on a
    closed case (a referral's status) keeps the moment it was closed."""
    return concern.status == "open" and index.status == "closed"


def _other_open_concern(session: Session, row: Concern) -> bool:
    """Whether the row's patient has another open concern (on the same server)."""
    other = session.scalar(
        select(Concern.id)
        .where(
            Concern.tenant_id == row.tenant_id,
            Concern.fhir_base_url == row.fhir_base_url,
            Concern.patient_ref == row.patient_ref,
            Concern.status == "open",
            Concern.id != row.id,
        )
        .limit(1)
    )
    return other is not None


def _organization(ctx: LaunchInfo, partner_id: str) -> Resource:
    """The Organization of the directory's partner ``partner_id`` (``Step6Input`` found it
    in the directory, whose ids the entries share)."""
    return partners_io.organization(ctx.tenant.config.partners.entry(partner_id))


def updates_facilities(ctx: LaunchInfo) -> bool:
    """Whether a referral in ``ctx``'s session lays the directory's entry over its
    facility's Organization (``Referral.updates_facility``): when the session's token grants
    finding and updating Organizations (``user/Organization.us``; asked for by default, an
    optional right: ``scopes.OPTIONAL_RIGHTS``), as its token response says, or its refresh
    since. Not granted, the update would be refused and the referral wait for a sign-in
    that never brings the right: it creates the Organization once instead."""
    return is_granted(ctx.scope, "user", "Organization", "us")


def _business_id(ctx: LaunchInfo, case_id: int, kind: str, at: datetime) -> str:
    """Stable for the same save sent twice (a retry of the same request)."""
    key = f"{ctx.session_id}/case/{case_id}/{kind}/{at.isoformat()}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def _status(state: DeliveryState) -> Literal["delivered", "pending", "failed"]:
    if state is DeliveryState.DELIVERED:
        return "delivered"
    if state is DeliveryState.FAILED:
        return "failed"
    return "pending"
