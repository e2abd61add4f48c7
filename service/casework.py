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

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from service import audit
from service.audit import AuditAction, AuditFact
from service.fhir import mapping, terminology
from service.fhir.client import FhirClient, Resource
from service.fhir.terminology import identifier_system
from service.outbox import TransactionBuilder
from service.protocol import Step, Step4Decision, Step5Progress, Step6Referral

#: The findings the social service records.
CaseworkFinding = Step4Decision | Step5Progress | Step6Referral


@dataclass(frozen=True)
class CaseRecord:
    """What the FHIR server holds of a case, as a step save needs it (read when the case is
    opened; the server is the source of truth for the details).

    ``child_refs``: each child's protocol ``Child.ref`` → its RelatedPerson reference;
    ``flag``: the concern Flag as read (``id`` and ``meta.versionId`` guard the update);
    ``reason_ref``: the finding that led to step 6 (the step 4 decision, step 5 not
    restored or a step 2 acute danger), for the referral's ``reasonReference``.
    """

    patient_ref: str
    encounter_ref: str | None
    child_refs: Mapping[str, str]
    flag: Resource
    reason_ref: str | None = None


@dataclass(frozen=True)
class Referral:
    """A step 6 referral's own identifier value and the partner Organization it goes to
    (as ``service.admin.partners_io.organization`` publishes the directory entry; created
    on the server when it is not there yet, matched on its partner identifier)."""

    identifier_value: str
    organization: Resource


def step_transaction(
    record: CaseRecord,
    finding: CaseworkFinding,
    *,
    finding_identifier: str,
    referral: Referral | None = None,
    now: datetime,
) -> Resource:
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
    )
    written = [*([referral_ref] if referral_ref else []), tx.create(observation, identifier)]
    written.append(_update_flag(tx, record.flag, last_step=finding.step, closed_at=None))
    _sign(tx, record, written, finding.recorded_by, now)
    return tx.bundle()


def close_transaction(record: CaseRecord, *, author: str, closed_at: datetime) -> Resource:
    """Closing a case: the Flag becomes inactive with ``period.end``; history stays."""
    tx = TransactionBuilder()
    written = [_update_flag(tx, record.flag, last_step=None, closed_at=closed_at)]
    _sign(tx, record, written, author, closed_at)
    return tx.bundle()


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
    performer_ref = tx.create(referral.organization, partner)
    identifier = mapping.identifier("referral", referral.identifier_value)
    request = mapping.referral_service_request(
        finding,
        patient_ref=record.patient_ref,
        encounter_ref=record.encounter_ref,
        performer_ref=performer_ref,
        reason_refs=[record.reason_ref],
        child_refs=record.child_refs,
        identifier=identifier,
    )
    return tx.create(request, identifier)


def _update_flag(
    tx: TransactionBuilder,
    flag: Resource,
    *,
    last_step: Step | None,
    closed_at: datetime | None,
) -> str:
    """The Flag as read, with a new last step or closed; If-Match on the version read."""
    ours = [i for i in flag["identifier"] if i.get("system") == identifier_system("concern")]
    trigger_url = terminology.extension_url("concern-trigger")
    step_url = terminology.extension_url("concern-last-step")
    previous_step = next(
        (e["valueCoding"]["code"] for e in flag.get("extension", []) if e["url"] == step_url),
        None,
    )
    mapped = mapping.concern_flag(
        patient_ref=flag["subject"]["reference"],
        encounter_ref=flag.get("encounter", {}).get("reference"),
        author=flag["author"]["reference"],
        flagged_at=datetime.fromisoformat(flag["period"]["start"]),
        identifier=ours[0],
        last_step=last_step or (Step(previous_step) if previous_step else None),
        triggers=[
            e["valueCoding"]["code"] for e in flag.get("extension", []) if e["url"] == trigger_url
        ],
        closed_at=closed_at,
    )
    # Whatever the EHR stored besides our elements survives the update.
    merged = {**flag, **mapped, "id": flag["id"], "identifier": flag["identifier"]}
    return tx.update(merged, flag["meta"]["versionId"])


def _sign(
    tx: TransactionBuilder, record: CaseRecord, written: list[str], author: str, now: datetime
) -> None:
    tx.put_new(mapping.provenance(targets=written, author=author, recorded=now, update=True))
    fact = AuditFact(
        actor=author,
        action=AuditAction.UPDATE,
        patient_ref=record.patient_ref,
        entities=tuple(tx.stable_references()),
        outcome="success",
        at=now,
    )
    tx.put_new(audit.audit_event(fact, entity_references=written))


# -- reading a case from the FHIR server --------------------------------------------------------

#: The findings a referral may give as its reason (profile kindreflex-referral).
_REASON_STEPS = (Step.STEP_2, Step.STEP_4, Step.STEP_5)


class CaseNotOnServerError(LookupError):
    """The concern's Flag is not (or not yet) on the FHIR server: its save is still pending."""


def load_case_record(client: FhirClient, patient_ref: str, flag_identifier: str) -> CaseRecord:
    """What the FHIR server holds of a case: its Flag (with the version to update), the
    patient's children and the latest finding a referral may give as its reason."""
    system = identifier_system("concern")
    flags = _resources(client.search("Flag", {"identifier": f"{system}|{flag_identifier}"}), "Flag")
    if len(flags) != 1:
        raise CaseNotOnServerError(
            f"The concern's Flag is not on the FHIR server yet ({len(flags)} found); its "
            "delivery is pending. Try again when the worklist shows it as sent."
        )
    related = client.search("RelatedPerson", {"patient": patient_ref, "_count": "100"})
    children = [
        r for r in _resources(related, "RelatedPerson") if mapping.child_from_related_person(r)
    ]
    child_refs = {f"RelatedPerson/{r['id']}": f"RelatedPerson/{r['id']}" for r in children}
    flag = flags[0]
    return CaseRecord(
        patient_ref=patient_ref,
        encounter_ref=flag.get("encounter", {}).get("reference"),
        child_refs=child_refs,
        flag=flag,
        reason_ref=_latest_reason(client, patient_ref),
    )


def _latest_reason(client: FhirClient, patient_ref: str) -> str | None:
    step_system = terminology.code_system_url("kindreflex-step")
    codes = ",".join(f"{step_system}|{step.value}" for step in _REASON_STEPS)
    found = _resources(
        client.search("Observation", {"subject": patient_ref, "code": codes, "_count": "100"}),
        "Observation",
    )
    if not found:
        return None
    latest = max(found, key=lambda r: datetime.fromisoformat(r["effectiveDateTime"]))
    return f"Observation/{latest['id']}"


def _resources(bundle: Resource, resource_type: str) -> list[Resource]:
    """The matches of a search (not the OperationOutcome a server may add)."""
    found = (e.get("resource", {}) for e in bundle.get("entry", []))
    return [r for r in found if r.get("resourceType") == resource_type]
