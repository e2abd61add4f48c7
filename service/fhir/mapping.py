"""From the protocol's domain types to FHIR R4 resources (plain JSON dicts), and back.

Pure functions: no I/O, no clock. Every resource conforms to its Kindreflex profile
(``meta.profile``) and carries the business identifier the caller passes (``{"system",
"value"}``, the system from :func:`service.fhir.terminology.identifier_system`), so that
writes are conditional creates. Codes, displays, URLs and the codes of other systems (the
observation category, the referral intent, the Provenance author role) come from the built
guide through :mod:`service.fhir.terminology`; nothing is typed here.

References are strings as they go on the wire: ``"Patient/123"``, an absolute URL, or an
``urn:uuid:`` of a transaction entry. ``child_refs`` maps a protocol ``Child.ref`` to the
reference of that child's RelatedPerson.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from service.fhir import terminology as t
from service.protocol import (
    AgreedAction,
    CaseClosure,
    Child,
    ChildFinding,
    ChildRelationship,
    CloseReason,
    Consultation,
    ContactChannel,
    ExpectedChild,
    FacilityContact,
    Factor,
    FactorKind,
    Finding,
    HagueTrigger,
    HeardChild,
    KeyPerson,
    KeyPersonRole,
    LivesWith,
    PregnancyOf,
    ProgressAssessment,
    ReferralStatus,
    ReferralTarget,
    SafetyAction,
    SafetyAssessment,
    Step,
    Step1Finding,
    Step2Finding,
    Step3Support,
    Step4Decision,
    Step5Progress,
    Step6Referral,
    SupportAction,
    TeamDecision,
)

__all__ = [
    "PROFILE_OF_STEP",
    "Resource",
    "child_from_related_person",
    "child_related_person",
    "closure_from_flag",
    "concern_flag",
    "expected_child_from_observation",
    "expected_child_reference",
    "expecting_observation",
    "finding_from_observation",
    "finding_observation",
    "identifier",
    "meta_on_update",
    "provenance",
    "referral_service_request",
    "referral_with_status",
]

Resource = dict[str, Any]

#: The profile (id) of each step's finding.
PROFILE_OF_STEP: Final[Mapping[Step, str]] = {
    Step.STEP_1: "kindreflex-step1-finding",
    Step.STEP_2: "kindreflex-step2-finding",
    Step.STEP_3: "kindreflex-step3-finding",
    Step.STEP_4: "kindreflex-step4-finding",
    Step.STEP_5: "kindreflex-step5-finding",
    Step.STEP_6: "kindreflex-step6-finding",
}


def identifier(kind: t.IdentifierKind, value: str | uuid.UUID | None = None) -> dict[str, str]:
    """A business identifier of our naming system ``kind``; a new UUID when no value."""
    return {"system": t.identifier_system(kind), "value": str(value or uuid.uuid4())}


def _meta(profile_id: str) -> dict[str, list[str]]:
    return {"profile": [t.profile_url(profile_id)]}


#: The parts of ``meta`` the FHIR server manages: an update does not send them back.
_SERVER_MANAGED_META = ("versionId", "lastUpdated")


def meta_on_update(stored: Mapping[str, Any] | None, ours: Mapping[str, Any] | None) -> Resource:
    """The ``meta`` of our update of a resource the FHIR server holds: ``stored`` (its
    ``meta`` as read) without what the server manages (``versionId``, ``lastUpdated``),
    with the profile(s) of ``ours`` (the mapping's ``meta``) added to ``meta.profile``,
    once each. The EHR's ``tag`` and ``security`` labels survive as they are: dropping a
    security label could widen who may read the resource."""
    meta = {k: v for k, v in (stored or {}).items() if k not in _SERVER_MANAGED_META}
    profiles = [*meta.get("profile", []), *(ours or {}).get("profile", [])]
    if profiles:
        meta["profile"] = list(dict.fromkeys(profiles))
    return meta


def _ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


def _instant(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a FHIR dateTime with a time needs a time zone")
    return moment.isoformat()


def _component(code: str, **value: Any) -> Resource:
    return {"code": t.codeable_concept("finding-component", code), **value}


def _texts(code: str, texts: Iterable[str | None]) -> list[Resource]:
    """A string component per text given, trimmed; blank or missing texts are left out."""
    return [_component(code, valueString=text.strip()) for text in texts if text and text.strip()]


def _coded_component(code: str, cs_id: str, value_code: str) -> Resource:
    return _component(code, valueCodeableConcept=t.codeable_concept(cs_id, value_code))


def _category(profile_id: str, element_id: str) -> list[Any]:
    return [t.element_pattern(profile_id, element_id)]


# --------------------------------------------------------------------------------------
# Children (RelatedPerson)
# --------------------------------------------------------------------------------------
def child_related_person(
    child: Child, *, patient_ref: str, identifier: Mapping[str, str], ssin: str | None = None
) -> Resource:
    """A child of the patient (profile kindreflex-child).

    The name is written as the nurse typed it, as ``name.text`` only: the screen has one
    field, and no rule splits it right ("Noor De Smet" and "Lotte van den Berg" have
    particles, an eID writes "PEETERS Emma"); a guessed ``family`` would be wrong in the
    EHR's own name fields and in every search or sort on them.
    """
    ids: list[Mapping[str, str]] = [dict(identifier)]
    if ssin:
        ids.append({"system": _ssin_system(), "value": ssin})
    return {
        "resourceType": "RelatedPerson",
        "meta": _meta("kindreflex-child"),
        "identifier": ids,
        "extension": [
            {
                "url": t.extension_url("lives-with"),
                "valueCoding": t.coding("lives-with", child.lives_with),
            }
        ],
        "patient": _ref(patient_ref),
        "relationship": [
            {"coding": [t.value_set_coding("child-relationship", child.relationship)]}
        ],
        "name": [{"text": child.name}],
        "birthDate": child.birth_date.isoformat(),
    }


def _ssin_system() -> str:
    pattern = t.element_pattern("kindreflex-child", "RelatedPerson.identifier:ssin.system")
    return str(pattern)


@dataclass(frozen=True)
class PatientIdentity:
    """Who a chart is about, as the hospital's FHIR server names them: for the patient
    banner (SMART ``need_patient_banner``), the worklist, the case page and the call to a
    facility. ``birth_date`` is a FHIR date, possibly partial."""

    name: str | None
    birth_date: str | None
    gender: str | None


def patient_identity(patient: Mapping[str, Any]) -> PatientIdentity:
    birth_date, gender = patient.get("birthDate"), patient.get("gender")
    return PatientIdentity(
        display_name(patient),
        birth_date if isinstance(birth_date, str) else None,
        gender if isinstance(gender, str) else None,
    )


def display_name(resource: Mapping[str, Any]) -> str | None:
    """A person's first HumanName as people read it: its text, else given names and family."""
    names = resource.get("name")
    if not isinstance(names, list) or not names or not isinstance(names[0], dict):
        return None
    first = names[0]
    text = first.get("text") or " ".join([*first.get("given", []), first.get("family", "")])
    return str(text).strip() or None


def child_from_related_person(resource: Mapping[str, Any]) -> Child | None:
    """The protocol's Child from a kindreflex-child RelatedPerson (None if not one).

    ``ref`` is ``RelatedPerson/<id>`` (or the business identifier's value when the
    resource has no id yet); the caller may replace it (e.g. by a versioned reference).
    """
    if resource.get("resourceType") != "RelatedPerson":
        return None
    lives_with_url = t.extension_url("lives-with")
    lives_with = next(
        (
            e.get("valueCoding", {}).get("code")
            for e in resource.get("extension", [])
            if e.get("url") == lives_with_url
        ),
        None,
    )
    relationship_vs = t.value_set("child-relationship")
    relationship = next(
        (
            c["code"]
            for rel in resource.get("relationship", [])
            for c in rel.get("coding", [])
            if relationship_vs.contains(c.get("system"), c.get("code", ""))
        ),
        None,
    )
    birth = resource.get("birthDate")
    if lives_with is None or relationship is None or not birth or len(str(birth)) != 10:
        return None
    text = display_name(resource)
    if resource.get("id"):
        ref = f"RelatedPerson/{resource['id']}"
    else:
        ours = t.identifier_system("child")
        ref = next(
            (i["value"] for i in resource.get("identifier", []) if i.get("system") == ours), ""
        )
    if not ref or text is None:
        return None
    return Child(
        ref=ref,
        name=text.strip(),
        birth_date=date.fromisoformat(str(birth)),
        relationship=ChildRelationship(relationship),
        lives_with=LivesWith(lives_with),
    )


# --------------------------------------------------------------------------------------
# Expecting a child (Observation)
# --------------------------------------------------------------------------------------
def expecting_observation(
    expecting: ExpectedChild,
    *,
    patient_ref: str,
    encounter_ref: str | None,
    performer: str,
    recorded_at: datetime,
    identifier: Mapping[str, str],
) -> Resource:
    """The patient or the partner expects a child (profile kindreflex-expecting-child).

    The step 1 Observation recorded with it names it in ``hasMember``
    (:func:`finding_observation`'s ``expecting_ref``): without that link, nothing on the
    server would say which step 1 it answers, and the step 1 read back would be "no
    children, nothing expected"."""
    profile = "kindreflex-expecting-child"
    resource: Resource = {
        "resourceType": "Observation",
        "meta": _meta(profile),
        "identifier": [dict(identifier)],
        "status": "final",
        "category": _category(profile, "Observation.category:socialHistory"),
        "code": t.codeable_concept("record-type", "expecting-child"),
        "subject": _ref(patient_ref),
        "effectiveDateTime": _instant(recorded_at),
        "performer": [_ref(performer)],
        "valueCodeableConcept": t.codeable_concept("pregnancy-of", expecting.pregnancy_of),
    }
    if encounter_ref:
        resource["encounter"] = _ref(encounter_ref)
    if expecting.expected_date is not None:
        resource["component"] = [
            _component("expected-delivery-date", valueDateTime=expecting.expected_date.isoformat())
        ]
    return resource


def expected_child_from_observation(resource: Mapping[str, Any]) -> ExpectedChild | None:
    """The expected child a kindreflex-expecting-child Observation records
    (:func:`expecting_observation`); None for any other resource, or one the EHR retracted
    (:data:`RETRACTED`). A step 1 read back gets it through its ``hasMember``
    (:func:`finding_from_observation`'s ``expecting``)."""
    system = t.code_system_url("record-type")
    if (
        resource.get("resourceType") != "Observation"
        or resource.get("status") in RETRACTED
        or not any(
            c.get("system") == system and c.get("code") == "expecting-child"
            for c in resource.get("code", {}).get("coding", [])
        )
    ):
        return None
    components = _components_by_code(resource.get("component", []))
    return ExpectedChild(
        pregnancy_of=PregnancyOf(_value_code(resource.get("valueCodeableConcept"))),
        expected_date=next(iter(_dates(components, "expected-delivery-date")), None),
    )


def expected_child_reference(step1: Mapping[str, Any]) -> str | None:
    """The reference of the expected child's Observation a step 1 Observation names
    (``hasMember``), or None when it names none."""
    return next((str(m["reference"]) for m in step1.get("hasMember", []) if "reference" in m), None)


# --------------------------------------------------------------------------------------
# Step findings (Observation)
# --------------------------------------------------------------------------------------
def finding_observation(
    finding: Finding,
    *,
    patient_ref: str,
    encounter_ref: str | None,
    child_refs: Mapping[str, str],
    identifier: Mapping[str, str],
    referral_ref: str | None = None,
    plan_version: str | None = None,
    expecting_ref: str | None = None,
) -> Resource:
    """A step finding (profiles kindreflex-step1-finding … kindreflex-step6-finding).

    ``encounter_ref`` is the case's encounter; the finding's own ``encounter_ref`` wins.
    ``referral_ref`` (step 6) is the reference of the referral ServiceRequest.
    ``expecting_ref`` (step 1 with an expected child) is the reference of the
    :func:`expecting_observation` written with it, named in ``hasMember``.
    """
    step = finding.step
    profile = PROFILE_OF_STEP[step]
    resource: Resource = {
        "resourceType": "Observation",
        "meta": _meta(profile),
        "identifier": [dict(identifier)],
        "status": "final",
        "category": _category(profile, "Observation.category:socialHistory"),
        "code": t.codeable_concept("kindreflex-step", step),
        "subject": _ref(patient_ref),
        "effectiveDateTime": _instant(finding.recorded_at),
        "performer": [_ref(finding.recorded_by)],
    }
    encounter = finding.encounter_ref or encounter_ref
    if encounter:
        resource["encounter"] = _ref(encounter)
    focus = _focus(finding, child_refs)
    if focus:
        resource["focus"] = [_ref(r) for r in focus]
    components: list[Resource] = []
    match finding:
        case Step1Finding():
            resource["valueBoolean"] = bool(finding.children) or finding.expecting is not None
            if finding.expecting is not None:
                if not expecting_ref:
                    raise ValueError("no Observation reference for the expected child")
                resource["hasMember"] = [_ref(expecting_ref)]
        case Step2Finding():
            resource["valueCodeableConcept"] = t.codeable_concept(
                "safety-assessment", finding.assessment
            )
            components += _texts("reason", finding.reasons)
            components += _texts("who-helps", [finding.who_helps])
            components += _consultations(finding.consultations)
            components.append(_component("urgency", valueBoolean=finding.acute_danger))
            components += [
                _coded_component("trigger", "hague-trigger", code)
                for code in sorted(finding.triggers)
            ]
        case Step3Support():
            components += [
                _coded_component("support-action", "support-action", code)
                for code in sorted(finding.actions)
            ]
            components += _services(finding.services)
        case Step4Decision():
            resource["valueCodeableConcept"] = t.codeable_concept("team-decision", finding.decision)
            components += [_factor_component(f) for f in finding.factors]
            components += _consultations(finding.consultations)
            components.append(
                _component("discussed-with-patient", valueBoolean=finding.discussed_with_patient)
            )
            for heard in finding.children_heard:
                child = _concerned_child(_child_ref(child_refs, heard.child_ref))
                consent = _component("child-consent", valueBoolean=heard.consent_given)
                components.append({**consent, "extension": [child]})
                if heard.own_say and heard.own_say.strip():
                    say = _component("child-say", valueString=heard.own_say.strip())
                    components.append({**say, "extension": [child]})
            components += [_key_person_component(k) for k in finding.key_persons]
            components += _texts("patient-explanation", [finding.patient_explanation])
            components += _texts("team-member", finding.team_members)
        case Step5Progress():
            resource["valueCodeableConcept"] = t.codeable_concept(
                "safety-progress", finding.progress
            )
            components += [
                _coded_component("safety-action", "safety-action", code)
                for code in sorted(finding.actions)
            ]
            components += _services(finding.services)
            components += _consultations(finding.consultations)
            components += [_agreed_action_component(a) for a in finding.agreed_actions]
            if finding.next_follow_up is not None:
                components.append(
                    _component("next-follow-up", valueDateTime=finding.next_follow_up.isoformat())
                )
        case Step6Referral():
            resource["valueCodeableConcept"] = t.codeable_concept("partner-type", finding.target)
            if referral_ref:
                resource["basedOn"] = [_ref(referral_ref)]
            components.append(_component("with-cooperation", valueBoolean=finding.with_cooperation))
            components.append(_component("patient-informed", valueBoolean=finding.patient_informed))
            components += _texts("not-informed-reason", [finding.not_informed_reason])
            components += _texts("follow-up", finding.follow_up_actions)
            if finding.contact is not None:
                components += _contact_components(finding.contact)
    if plan_version:
        components.append(_component("plan-version", valueString=plan_version))
    if components:
        resource["component"] = components
    if finding.note and finding.note.strip():
        resource["note"] = [{"text": finding.note.strip()}]
    return resource


def _focus(finding: Finding, child_refs: Mapping[str, str]) -> list[str]:
    if isinstance(finding, Step1Finding):
        return [_child_ref(child_refs, c.ref) for c in finding.children]
    if isinstance(finding, ChildFinding):
        return [_child_ref(child_refs, ref) for ref in finding.focus]
    return []


def _child_ref(child_refs: Mapping[str, str], ref: str) -> str:
    try:
        return child_refs[ref]
    except KeyError:
        raise ValueError(f"no RelatedPerson reference for child {ref!r}") from None


def _consultations(consultations: Iterable[str]) -> list[Resource]:
    return [
        _coded_component("consultation", "consultation-type", code)
        for code in sorted(consultations)
    ]


def _services(services: Iterable[str]) -> list[Resource]:
    return [_coded_component("service", "partner-type", code) for code in sorted(services)]


def _factor_component(factor: Factor) -> Resource:
    """A factor: a code of the guide's catalogue, or ``system|code`` of a hospital's own."""
    concept: Resource
    catalogue = t.code_system("factor")
    if factor.code in catalogue.concepts:
        concept = t.codeable_concept("factor", factor.code)
    elif "|" in factor.code:
        system, code = factor.code.split("|", 1)
        concept = {"coding": [{"system": system, "code": code}]}
    else:
        concept = {"coding": [{"code": factor.code}]}
    if factor.text and factor.text.strip():
        concept["text"] = factor.text.strip()
    component = _component("factor", valueCodeableConcept=concept)
    component["extension"] = [
        {"url": t.extension_url("factor-kind"), "valueCoding": t.coding("factor-kind", factor.kind)}
    ]
    return component


def _concerned_child(reference: str) -> Resource:
    """The extension naming the child a component is about."""
    return {"url": t.extension_url("concerned-child"), "valueReference": _ref(reference)}


def _key_person_component(person: KeyPerson) -> Resource:
    concept = t.codeable_concept("key-person-role", person.role)
    if person.text and person.text.strip():
        concept["text"] = person.text.strip()
    return _component("key-person", valueCodeableConcept=concept)


def _agreed_action_component(action: AgreedAction) -> Resource:
    component = _component("agreed-action", valueString=action.text.strip())
    if action.follow_up_on is not None:
        component["extension"] = [
            {"url": t.extension_url("follow-up-date"), "valueDate": action.follow_up_on.isoformat()}
        ]
    return component


def _contact_components(contact: FacilityContact) -> list[Resource]:
    return [
        _component("contact-date", valueDateTime=contact.on.isoformat()),
        _component("contact-person", valueString=contact.person.strip()),
        _coded_component("contact-channel", "contact-channel", contact.channel),
    ]


# --------------------------------------------------------------------------------------
# Referral (ServiceRequest), open concern (Flag), authorship (Provenance)
# --------------------------------------------------------------------------------------
def referral_service_request(
    finding: Step6Referral,
    *,
    patient_ref: str,
    encounter_ref: str | None,
    performer_ref: str,
    reason_refs: Sequence[str],
    child_refs: Mapping[str, str],
    identifier: Mapping[str, str],
    status: str = "active",
    expecting_ref: str | None = None,
) -> Resource:
    """The step 6 referral (profile kindreflex-referral).

    ``performer_ref``: the partner Organization of the directory; ``reason_refs``: the
    finding(s) that led to step 6 (the step 4 decision, or step 5, or step 2 acute danger).
    ``supportingInfo`` names who the referral is about: the finding's focus (all children
    when the focus is empty: pass them all in ``child_refs``); for a case without a child,
    the expected child's Observation (``expecting_ref``, a concern about an unborn child).
    With neither there is no ``supportingInfo`` (FHIR allows no empty array; such a
    referral does not conform to the profile, see docs/architecture.md).
    """
    profile = "kindreflex-referral"
    children = (
        [_child_ref(child_refs, r) for r in finding.focus]
        if finding.focus
        else list(child_refs.values())
    )
    concerned = children or ([expecting_ref] if expecting_ref else [])
    resource: Resource = {
        "resourceType": "ServiceRequest",
        "meta": _meta(profile),
        "identifier": [dict(identifier)],
        "extension": [
            {"url": t.extension_url("patient-informed"), "valueBoolean": finding.patient_informed}
        ],
        "status": status,
        "intent": t.element_pattern(profile, "ServiceRequest.intent"),
        "code": t.codeable_concept("record-type", "referral"),
        "subject": _ref(patient_ref),
        "authoredOn": _instant(finding.recorded_at),
        "requester": _ref(finding.recorded_by),
        "performerType": t.codeable_concept("partner-type", finding.target),
        "performer": [_ref(performer_ref)],
        "reasonReference": [_ref(r) for r in reason_refs],
    }
    if concerned:
        resource["supportingInfo"] = [_ref(r) for r in concerned]
    encounter = finding.encounter_ref or encounter_ref
    if encounter:
        resource["encounter"] = _ref(encounter)
    notes = []
    if not finding.patient_informed and finding.not_informed_reason:
        notes.append({"text": finding.not_informed_reason.strip()})
    if finding.note and finding.note.strip():
        notes.append({"text": finding.note.strip()})
    if notes:
        resource["note"] = notes
    return resource


def referral_with_status(
    request: Mapping[str, Any],
    status: ReferralStatus,
    *,
    author: str,
    at: datetime,
    note: str | None = None,
) -> Resource:
    """The referral ``request`` as read, with a new status; ``note`` is added as an
    annotation naming its author and time (earlier notes stay). Its ``meta`` is the
    server's (:func:`meta_on_update`)."""
    updated: Resource = {
        **request,
        "meta": meta_on_update(request.get("meta"), _meta("kindreflex-referral")),
        "status": status.value,
    }
    if note and note.strip():
        annotation = {"authorReference": _ref(author), "time": _instant(at), "text": note.strip()}
        updated["note"] = [*request.get("note", []), annotation]
    return updated


#: The extensions of the concern Flag that are ours (:func:`concern_flag` writes them);
#: an update replaces these and keeps any other the EHR added.
CONCERN_FLAG_EXTENSIONS = ("concern-last-step", "concern-trigger", "concern-close-reason")


def concern_flag(
    *,
    patient_ref: str,
    author: str,
    flagged_at: datetime,
    identifier: Mapping[str, str],
    last_step: Step | None = None,
    triggers: Iterable[str] = (),
    closed_at: datetime | None = None,
    closure: CaseClosure | None = None,
) -> Resource:
    """An open Kindreflex concern (profile kindreflex-open-concern); inactive when closed.

    A closed concern has both ``closed_at`` (``period.end``) and ``closure``, the reason in
    the extension concern-close-reason (R4 Flag has no status reason).

    No ``Flag.encounter``: in R4 it says the alert is "only relevant during the encounter",
    and an EHR that honours it would hide the concern at the next presentation, where it
    must warn. The ED visit that raised it is its step findings' encounter.
    """
    if (closed_at is None) != (closure is None):
        raise ValueError("a closed concern needs both its end and the reason it was closed")
    profile = "kindreflex-open-concern"
    extensions = []
    if last_step is not None:
        extensions.append(
            {
                "url": t.extension_url("concern-last-step"),
                "valueCoding": t.coding("kindreflex-step", last_step),
            }
        )
    extensions += [
        {"url": t.extension_url("concern-trigger"), "valueCoding": t.coding("hague-trigger", code)}
        for code in sorted(set(triggers))
    ]
    if closure is not None:
        reason = t.codeable_concept("case-close-reason", closure.reason)
        if closure.text and closure.text.strip():
            reason["text"] = closure.text.strip()
        extensions.append(
            {"url": t.extension_url("concern-close-reason"), "valueCodeableConcept": reason}
        )
    period = {"start": _instant(flagged_at)}
    if closed_at is not None:
        period["end"] = _instant(closed_at)
    resource: Resource = {
        "resourceType": "Flag",
        "meta": _meta(profile),
        "identifier": [dict(identifier)],
        "status": "inactive" if closed_at is not None else "active",
        "category": _category(profile, "Flag.category:safety"),
        "code": t.codeable_concept("record-type", "open-concern"),
        "subject": _ref(patient_ref),
        "period": period,
        "author": _ref(author),
    }
    if extensions:
        resource["extension"] = extensions
    return resource


@dataclass(frozen=True)
class OpenConcern:
    """An active Kindreflex concern Flag as the worklist indexes it."""

    identifier: str
    flagged_at: datetime
    flagged_by: str
    last_step: Step
    triggers: tuple[str, ...]


def open_concern_of(flag: Mapping[str, Any]) -> OpenConcern | None:
    """The open concern an active Flag of ours records (:func:`concern_flag`), or None for
    any other Flag: inactive, of another kind, without our identifier or a start. A Flag
    without the last-step extension was raised at step 2, where the Kindreflex hands off."""
    system = t.identifier_system("concern")
    identifiers = [i.get("value") for i in flag.get("identifier", []) if i.get("system") == system]
    kind = t.codeable_concept("record-type", "open-concern")["coding"][0]
    if (
        flag.get("resourceType") != "Flag"
        or flag.get("status") != "active"
        or not any(
            c.get("system") == kind["system"] and c.get("code") == kind["code"]
            for c in flag.get("code", {}).get("coding", [])
        )
        or len(identifiers) != 1
        or not flag.get("period", {}).get("start")
    ):
        return None
    steps = _extension_codes(flag, "concern-last-step")
    return OpenConcern(
        identifier=str(identifiers[0]),
        flagged_at=datetime.fromisoformat(flag["period"]["start"]),
        flagged_by=str(flag.get("author", {}).get("reference", "")),
        last_step=Step(steps[0]) if steps and steps[0] in set(Step) else Step.STEP_2,
        triggers=tuple(sorted(_extension_codes(flag, "concern-trigger"))),
    )


def as_laid_over(seen: Resource, ours: Resource) -> tuple[Resource, Resource]:
    """The server's version of a resource of ours and ours, as the outbox lays ours over it
    at delivery (``service.outbox``: a create-or-merge, a merge update). What the resource
    type asks of that merge beyond the outbox's general rules is said here; only the
    concern Flag asks anything (:func:`_concern_as_laid_over`)."""
    if seen.get("resourceType") == ours.get("resourceType") == "Flag":
        return _concern_as_laid_over(seen, ours)
    return seen, ours


def _concern_as_laid_over(seen: Resource, ours: Resource) -> tuple[Resource, Resource]:
    """The concern Flag on the server as a later visit's niet-pluis finds it
    (``service.triage._write_flag``), and ours to lay over it. Ours is open: a Flag
    closed on the server meanwhile (the worklist still said open) is reopened whole, not
    made ``active`` with the closed concern's end and close reason kept. A Flag an earlier
    version wrote with an ``encounter`` loses it (:func:`concern_flag`: profile 0..0).
    Ours says the triggers the worklist row knows; the Flag's triggers are those of every
    visit since it was raised, so one the row does not know (a row older than e9f6723 kept
    only the latest visit's) stays beside ours."""
    seen = {key: value for key, value in seen.items() if key != "encounter"}
    trigger = t.extension_url("concern-trigger")
    known = set(_extension_codes(ours, "concern-trigger"))
    lost = [
        e
        for e in seen.get("extension", [])
        if e.get("url") == trigger
        and isinstance(e.get("valueCoding"), dict)
        and e["valueCoding"].get("code") not in known
    ]
    if lost:
        ours = {**ours, "extension": [*ours.get("extension", []), *lost]}
    if ours.get("status") != "active" or seen.get("status") == "active":
        return seen, ours
    closing = t.extension_url("concern-close-reason")
    period = {k: v for k, v in seen.get("period", {}).items() if k != "end"}
    kept = [e for e in seen.get("extension", []) if e.get("url") != closing]
    return {**seen, "period": period, "extension": kept}, ours


def _extension_codes(resource: Mapping[str, Any], extension_id: str) -> list[str]:
    """The codes of the resource's ``valueCoding`` extensions of the guide's ``extension_id``."""
    url = t.extension_url(extension_id)
    return [
        str(e["valueCoding"].get("code"))
        for e in resource.get("extension", [])
        if e.get("url") == url and isinstance(e.get("valueCoding"), dict)
    ]


def provenance(
    *,
    targets: Sequence[str],
    author: str,
    recorded: datetime,
    encounter_ref: str | None = None,
    update: bool = False,
    resource_id: str | None = None,
) -> Resource:
    """Who wrote ``targets`` (profile kindreflex-provenance).

    R4 Provenance has no encounter nor identifier: ``encounter_ref`` is accepted for the
    callers' convenience and not written; give ``resource_id`` (a UUID) to write it with
    an idempotent PUT.
    """
    del encounter_ref  # no such element in R4 Provenance
    if not targets:
        raise ValueError("a Provenance needs at least one target")
    resource: Resource = {
        "resourceType": "Provenance",
        "meta": _meta("kindreflex-provenance"),
        "target": [_ref(r) for r in targets],
        "recorded": _instant(recorded),
        "activity": {
            "coding": [t.value_set_coding("provenance-activity", "UPDATE" if update else "CREATE")]
        },
        "agent": [
            {
                "type": {"coding": [t.value_set_coding("provenance-author-role", "author")]},
                "who": _ref(author),
            }
        ],
    }
    if resource_id:
        resource["id"] = resource_id
    return resource


# --------------------------------------------------------------------------------------
# Back: a step finding Observation to the protocol's Finding (reconciling from the server)
# --------------------------------------------------------------------------------------
#: The statuses of a resource that records nothing (FHIR R4: written in error, or never
#: happened): a finding, a referral or a concern the EHR retracted.
RETRACTED = frozenset({"entered-in-error", "cancelled"})


def step_of_observation(resource: Mapping[str, Any]) -> Step | None:
    """The Kindreflex step an Observation records (its code), or None for another one."""
    if resource.get("resourceType") != "Observation":
        return None
    step_system = t.code_system_url("kindreflex-step")
    step_code = next(
        (
            c.get("code")
            for c in resource.get("code", {}).get("coding", [])
            if c.get("system") == step_system
        ),
        None,
    )
    return Step(step_code) if step_code in {s.value for s in Step} else None


def finding_from_observation(
    resource: Mapping[str, Any],
    *,
    children: Mapping[str, Child] | None = None,
    expecting: Mapping[str, ExpectedChild] | None = None,
) -> Finding | None:
    """The protocol's finding recorded in a Kindreflex step Observation.

    None when the resource is not a Kindreflex step finding, or one that was retracted
    (:data:`RETRACTED`: the EHR marked it entered in error). Children are named by the
    references in ``focus`` (and in the child-consent extension), as written. A step 1
    Observation does not hold the children themselves: pass ``children`` (reference →
    Child, e.g. from :func:`child_from_related_person`) to fill ``Step1Finding.children``;
    nor the expected child, a separate Observation it names in ``hasMember``: pass
    ``expecting`` (reference → ExpectedChild, from
    :func:`expected_child_from_observation`) to fill ``Step1Finding.expecting``. Raises the
    protocol's errors when the recorded content breaks a rule of the protocol.
    """
    step = step_of_observation(resource)
    if step is None or resource.get("status") in RETRACTED:
        return None
    components = _components_by_code(resource.get("component", []))
    notes = [n.get("text", "") for n in resource.get("note", []) if n.get("text")]
    performers = resource.get("performer", [])
    base: dict[str, Any] = {
        "recorded_by": performers[0].get("reference", "") if performers else "",
        "recorded_at": datetime.fromisoformat(str(resource.get("effectiveDateTime", ""))),
        "encounter_ref": resource.get("encounter", {}).get("reference"),
        "note": "\n".join(notes) or None,
    }
    focus = tuple(str(f["reference"]) for f in resource.get("focus", []) if "reference" in f)
    if step is Step.STEP_1:
        known = children or {}
        member = expected_child_reference(resource)
        return Step1Finding(
            **base,
            children=tuple(known[r] for r in focus if r in known),
            expecting=(expecting or {}).get(member) if member else None,
        )
    base["focus"] = focus
    value = _value_code(resource.get("valueCodeableConcept"))
    consultations = frozenset(Consultation(c) for c in _codes(components, "consultation"))
    services = frozenset(ReferralTarget(c) for c in _codes(components, "service"))
    match step:
        case Step.STEP_2:
            return Step2Finding(
                **base,
                assessment=SafetyAssessment(value),
                reasons=tuple(_strings(components, "reason")),
                who_helps=next(iter(_strings(components, "who-helps")), None),
                consultations=consultations,
                acute_danger=any(_booleans(components, "urgency")),
                triggers=frozenset(HagueTrigger(c) for c in _codes(components, "trigger")),
            )
        case Step.STEP_3:
            return Step3Support(
                **base,
                actions=frozenset(SupportAction(c) for c in _codes(components, "support-action")),
                services=services,
            )
        case Step.STEP_4:
            return Step4Decision(
                **base,
                decision=TeamDecision(value),
                factors=tuple(_factor(c) for c in components.get("factor", [])),
                consultations=consultations,
                discussed_with_patient=any(_booleans(components, "discussed-with-patient")),
                children_heard=_children_heard(components),
                key_persons=tuple(_key_person(c) for c in components.get("key-person", [])),
                patient_explanation=next(iter(_strings(components, "patient-explanation")), None),
                team_members=tuple(_strings(components, "team-member")),
            )
        case Step.STEP_5:
            return Step5Progress(
                **base,
                progress=ProgressAssessment(value),
                actions=frozenset(SafetyAction(c) for c in _codes(components, "safety-action")),
                services=services,
                consultations=consultations,
                agreed_actions=tuple(
                    _agreed_action(c) for c in components.get("agreed-action", [])
                ),
                next_follow_up=next(iter(_dates(components, "next-follow-up")), None),
            )
        case _:
            return Step6Referral(
                **base,
                target=ReferralTarget(value),
                with_cooperation=any(_booleans(components, "with-cooperation")),
                patient_informed=any(_booleans(components, "patient-informed")),
                not_informed_reason=next(iter(_strings(components, "not-informed-reason")), None),
                follow_up_actions=tuple(_strings(components, "follow-up")),
                contact=_contact(components),
            )


def _components_by_code(raw: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    system = t.code_system_url("finding-component")
    result: dict[str, list[Mapping[str, Any]]] = {}
    for component in raw:
        for coding in component.get("code", {}).get("coding", []):
            if coding.get("system") == system:
                result.setdefault(str(coding.get("code")), []).append(component)
    return result


def _value_code(concept: Mapping[str, Any] | None) -> str:
    codings = (concept or {}).get("coding", [])
    return str(codings[0].get("code", "")) if codings else ""


def _codes(components: Mapping[str, list[Mapping[str, Any]]], code: str) -> list[str]:
    return [_value_code(c.get("valueCodeableConcept")) for c in components.get(code, [])]


def _strings(components: Mapping[str, list[Mapping[str, Any]]], code: str) -> list[str]:
    return [str(c["valueString"]) for c in components.get(code, []) if "valueString" in c]


def _booleans(components: Mapping[str, list[Mapping[str, Any]]], code: str) -> list[bool]:
    return [c["valueBoolean"] is True for c in components.get(code, []) if "valueBoolean" in c]


def _factor(component: Mapping[str, Any]) -> Factor:
    concept = component.get("valueCodeableConcept", {})
    coding = (concept.get("coding") or [{}])[0]
    code = str(coding.get("code", ""))
    system = coding.get("system")
    if system and system != t.code_system_url("factor"):
        code = f"{system}|{code}"
    kind_url = t.extension_url("factor-kind")
    kind = next(
        (
            e.get("valueCoding", {}).get("code")
            for e in component.get("extension", [])
            if e.get("url") == kind_url
        ),
        FactorKind.RISK.value,
    )
    return Factor(code, FactorKind(kind), concept.get("text"))


def _children_heard(components: Mapping[str, list[Mapping[str, Any]]]) -> tuple[HeardChild, ...]:
    """Each child-consent component, with the child's own say (child-say) when recorded."""
    says = {_child_of(c): str(c["valueString"]) for c in components.get("child-say", [])}
    return tuple(
        HeardChild(
            child_ref=_child_of(c),
            consent_given=c.get("valueBoolean") is True,
            own_say=says.get(_child_of(c)),
        )
        for c in components.get("child-consent", [])
    )


def _child_of(component: Mapping[str, Any]) -> str:
    child_url = t.extension_url("concerned-child")
    return next(
        (
            str(e.get("valueReference", {}).get("reference", ""))
            for e in component.get("extension", [])
            if e.get("url") == child_url
        ),
        "",
    )


def _dates(components: Mapping[str, list[Mapping[str, Any]]], code: str) -> list[date]:
    return [
        date.fromisoformat(str(c["valueDateTime"])[:10])
        for c in components.get(code, [])
        if "valueDateTime" in c
    ]


def _key_person(component: Mapping[str, Any]) -> KeyPerson:
    concept = component.get("valueCodeableConcept", {})
    return KeyPerson(KeyPersonRole(_value_code(concept)), concept.get("text"))


def _agreed_action(component: Mapping[str, Any]) -> AgreedAction:
    url = t.extension_url("follow-up-date")
    due = next(
        (str(e["valueDate"]) for e in component.get("extension", []) if e.get("url") == url), None
    )
    return AgreedAction(
        str(component.get("valueString", "")), date.fromisoformat(due) if due else None
    )


def _contact(components: Mapping[str, list[Mapping[str, Any]]]) -> FacilityContact | None:
    day = next(iter(_dates(components, "contact-date")), None)
    if day is None:
        return None
    return FacilityContact(
        on=day,
        person=next(iter(_strings(components, "contact-person")), ""),
        channel=ContactChannel(next(iter(_codes(components, "contact-channel")), "")),
    )


def closure_from_flag(flag: Mapping[str, Any]) -> CaseClosure | None:
    """Why a concern Flag was closed (None: it is open, or was closed without a reason)."""
    url = t.extension_url("concern-close-reason")
    concept = next(
        (e["valueCodeableConcept"] for e in flag.get("extension", []) if e.get("url") == url), None
    )
    if concept is None:
        return None
    return CaseClosure(CloseReason(_value_code(concept)), concept.get("text"))
