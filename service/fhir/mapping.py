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

import functools
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from service.fhir import terminology as t
from service.fhir.client import FhirUnreadable
from service.protocol import (
    ACUTE_DANGER_TARGETS,
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
    ProtocolError,
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
    "FHIR_ID",
    "PROFILE_OF_STEP",
    "REFERENCE_TYPE",
    "ROUTINE",
    "STAT",
    "AddedNote",
    "Resource",
    "UnreadableResourceError",
    "added_notes",
    "child_from_related_person",
    "child_related_person",
    "closure_from_flag",
    "concern_flag",
    "expected_child_from_observation",
    "expected_child_reference",
    "expecting_observation",
    "finding_from_observation",
    "finding_observation",
    "flag_period",
    "identifier",
    "meta_on_update",
    "moment",
    "provenance",
    "referral_priority",
    "referral_service_request",
    "referral_with_status",
    "withdrawn",
]

Resource = dict[str, Any]

#: A FHIR R4 id (datatypes.html#id), as long as the session's patient and encounter columns.
FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: A reference's resource type (an absolute or relative reference, perhaps versioned): the
#: launch's check of who fhirUser is, and the type an annotation may name as its author.
REFERENCE_TYPE: Final = re.compile(r"(?:^|/)([A-Za-z]+)/[^/]+(?:/_history/[^/]+)?$")

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


def narrative_on_update(stored: Mapping[str, Any], updated: Resource) -> Resource:
    """``updated``, our update of the resource the server holds as ``stored``, without the
    server's narrative (``text``) when it changes any element but ``meta``: that narrative
    describes ``stored`` (R4's status ``generated`` says it is generated entirely from the
    content), and sent back it would tell the EHR's readers the old values. R4 makes it
    optional; the server may generate it anew. An update that changes nothing keeps it."""
    if _content(updated) == _content(stored):
        return updated
    return {key: value for key, value in updated.items() if key != "text"}


def _content(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if key not in ("meta", "text")}


def _ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


def _instant(moment: datetime) -> str:
    """A moment as written to FHIR: to the millisecond at most (``instant_text``)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a FHIR dateTime with a time needs a time zone")
    return instant_text(moment)


def instant_text(moment: datetime) -> str:
    """``moment`` to the millisecond at most (whole seconds without a fraction).

    Many FHIR servers keep a moment to the millisecond (HAPI's, Java's Date). Written with
    microseconds, a moment came back other than sent: the witness that finds a save by its
    Provenance's ``recorded`` (``Provenance?recorded=``) then missed on such a server, and
    a save it had applied was sent again, to be refused as changed meanwhile."""
    kept = to_the_millisecond(moment)
    return kept.isoformat(timespec="milliseconds" if kept.microsecond else "seconds")


def to_the_millisecond(moment: datetime) -> datetime:
    """``moment`` as :func:`instant_text` writes it. A moment an earlier release wrote to the
    microsecond is compared so with one written since: a Flag's start, rewritten with its
    next save, would otherwise lie before the step 1 it was raised with."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


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
# Reading our resources back: one error for whatever another writer made of them
# --------------------------------------------------------------------------------------
class UnreadableResourceError(FhirUnreadable):
    """A resource of ours (by its profile, business identifier or code) that the FHIR server
    holds in a form the readers below cannot read as its profile says: the EHR, or another
    writer, changed it (a SNOMED translation put first is fine, a partial date of birth,
    an unknown code or a missing value is not). ``resource`` names it (``Observation/123``,
    or its type when it has no id); ``problem`` says what is wrong with which element,
    never the element's value (the message goes to the logs).

    A :class:`FhirUnreadable`: the screens say which resource cannot be read, as they say
    the server's answer is not FHIR (the case page, the social service's API), and the
    nurse's chart is not loaded, rather than showing part of it as if it were all. The
    EHR's administrators correct the resource; nothing is read from it until then."""

    def __init__(self, resource: str, problem: str) -> None:
        super().__init__(f"{resource} cannot be read: {problem}")
        self.resource = resource
        self.problem = problem


class _MalformedError(ValueError):
    """What a reader's helper found wrong (an element and what it lacks), raised as an
    :class:`UnreadableResourceError` naming the resource by :func:`_reads`."""


_P = ParamSpec("_P")
_R = TypeVar("_R")
_E = TypeVar("_E", bound=StrEnum)


def _reads(
    read: Callable[Concatenate[Mapping[str, Any], _P], _R],
) -> Callable[Concatenate[Mapping[str, Any], _P], _R]:
    """The one way a reader of our resources fails: whatever it cannot read in ``resource``
    (its first argument), a :class:`_MalformedError` of its helpers or a parse, key, type
    or enum error of Python, is an :class:`UnreadableResourceError` naming the resource.
    So is what the protocol refuses to build from it (a niet-pluis step 2 whose reasons
    the EHR removed): the protocol accepted each finding of ours when it was saved, so
    another writer made it so; it is not the user's input to correct. The problem names
    the protocol's rule, not its message, which may quote a value (a child's name)."""

    @functools.wraps(read)
    def reading(resource: Mapping[str, Any], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return read(resource, *args, **kwargs)
        except _MalformedError as error:
            raise UnreadableResourceError(_named(resource), str(error)) from error
        except ProtocolError as error:
            problem = f"breaks the Kindreflex protocol's rule {error.code.value}"
            raise UnreadableResourceError(_named(resource), problem) from error
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            problem = f"an element is not as its profile says ({type(error).__name__})"
            raise UnreadableResourceError(_named(resource), problem) from error

    return reading


def _named(resource: Any) -> str:
    """``Type/id`` of a resource as the errors name it (its type alone without an id)."""
    if not isinstance(resource, Mapping):
        return "a resource"
    kind, id_ = resource.get("resourceType"), resource.get("id")
    kind = kind if isinstance(kind, str) else "a resource"
    return f"{kind}/{id_}" if isinstance(id_, str) and id_ else kind


def withdrawn(resource: Mapping[str, Any]) -> bool:
    """Whether the EHR withdrew the resource: a status that records nothing
    (:data:`RETRACTED`), or ``active`` false, R4's way for a resource without such a
    status (a RelatedPerson entered by mistake). A withdrawn resource is read as none."""
    return resource.get("status") in RETRACTED or resource.get("active") is False


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    """The codings of a CodeableConcept (none when it is missing)."""
    if concept is None:
        return []
    codings = concept.get("coding", [])
    if not isinstance(codings, list):
        raise _MalformedError("a coding that is not a list")
    return codings


def _coded(codings: Iterable[Mapping[str, Any]], kind: type[_E], where: str) -> _E:
    """The protocol's code that ``codings`` hold in the guide's code system of ``kind``
    (``t.PROTOCOL_ENUM_CODE_SYSTEMS``), whatever other codings stand beside or before it
    (an EHR's translation). None of that system, or a code the protocol does not know, or
    two different ones: unreadable, where ``where`` names the element."""
    cs_id = t.PROTOCOL_ENUM_CODE_SYSTEMS[kind.__name__]
    system = t.code_system_url(cs_id)
    codes = {c.get("code") for c in codings if c.get("system") == system}
    if not codes:
        raise _MalformedError(f"{where} has no code of CodeSystem {cs_id}")
    if len(codes) > 1:
        raise _MalformedError(f"{where} has several codes of CodeSystem {cs_id}")
    (code,) = codes
    if code not in {member.value for member in kind}:
        raise _MalformedError(f"{where} has a code that is not in CodeSystem {cs_id}")
    return kind(code)


#: A FHIR date in full (YYYY-MM-DD): a year or a month alone is a valid FHIR date, not a day.
_FULL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
#: A FHIR dateTime with its time, and so (FHIR requires it then) its zone.
_FULL_MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _day(value: Any, where: str) -> date:
    """A day: a full FHIR date (a year or a month alone is a valid FHIR date, not a day), or
    the day a dateTime with its time names as written (a ``valueDateTime`` of a day)."""
    if isinstance(value, str) and _FULL_MOMENT.fullmatch(value):
        value = value[:10]
    if not isinstance(value, str) or not _FULL_DATE.fullmatch(value):
        raise _MalformedError(f"{where} is not a full date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _MalformedError(f"{where} is not a date of the calendar") from None


def _moment(value: Any, where: str) -> datetime:
    """A FHIR dateTime with its time and time zone; a partial one ("2026-05") or a day
    alone is not a moment (and a datetime without a zone could not be compared)."""
    if not isinstance(value, str) or not _FULL_MOMENT.fullmatch(value):
        raise _MalformedError(f"{where} is not a dateTime with a time and a time zone")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise _MalformedError(f"{where} is not a moment of the calendar") from None


@_reads
def moment(resource: Mapping[str, Any], element: str) -> datetime:
    """The moment a resource of ours holds at ``element`` (a path: ``period.start``,
    ``authoredOn``): a FHIR dateTime with its time and time zone, else
    :class:`UnreadableResourceError`."""
    value: Any = resource
    for name in element.split("."):
        value = value.get(name) if isinstance(value, Mapping) else None
    return _moment(value, element)


def flag_period(flag: Mapping[str, Any]) -> tuple[datetime, datetime | None]:
    """When the concern a Flag of ours records was raised and, once closed, closed
    (``period.start``, ``period.end``); unreadable without a start or with a partial one."""
    end = flag.get("period", {}).get("end") if isinstance(flag.get("period"), dict) else None
    return moment(flag, "period.start"), None if end is None else moment(flag, "period.end")


# --------------------------------------------------------------------------------------
# Children (RelatedPerson)
# --------------------------------------------------------------------------------------
def child_related_person(
    child: Child, *, patient_ref: str, identifier: Mapping[str, str]
) -> Resource:
    """A child of the patient (profile kindreflex-child).

    The name is written as the nurse typed it, as ``name.text`` only: the screen has one
    field, and no rule splits it right ("Noor De Smet" and "Lotte van den Berg" have
    particles, an eID writes "PEETERS Emma"); a guessed ``family`` would be wrong in the
    EHR's own name fields and in every search or sort on them.
    """
    return {
        "resourceType": "RelatedPerson",
        "meta": _meta("kindreflex-child"),
        "identifier": [dict(identifier)],
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


#: HumanName.use in the order a person's name is chosen for the screens; any other use
#: (temp, nickname, anonymous, maiden) after these.
_NAME_USES: Final = ("official", "usual", None)


def current_name(names: Any) -> int | None:
    """Which of a person's HumanNames (``name``) the screens show, by its place in the list;
    None when none is shown. An official name, else a usual one, else one without a use,
    else one of another use; the first of its kind. A name of use ``old`` is never shown:
    it is no longer the person's name (an EHR keeps the name before a marriage or a
    correction that way; shown on the banner or the worklist it names someone else, a
    wrong-patient risk). A name whose ``period`` has an end is shown only when every
    other name has one too: it has ended or will (these readers have no clock), and a
    current name is there. The outbox's merge replaces this same name with the one the
    nurse typed (``service.outbox``)."""
    if not isinstance(names, list):
        return None
    shown = [
        (at, name)
        for at, name in enumerate(names)
        if isinstance(name, dict) and name.get("use") != "old" and name_text(name)
    ]
    if not shown:
        return None

    def preference(entry: tuple[int, Mapping[str, Any]]) -> tuple[bool, int, int]:
        at, name = entry
        period = name.get("period")
        ends = isinstance(period, dict) and bool(period.get("end"))
        use = name.get("use")
        rank = _NAME_USES.index(use) if use in _NAME_USES else len(_NAME_USES)
        return ends, rank, at

    return min(shown, key=preference)[0]


def name_text(name: Mapping[str, Any]) -> str | None:
    """One HumanName as people read it: its text, else its given names and family (of its
    parts, only those that are text)."""
    text, given, family = name.get("text"), name.get("given"), name.get("family")
    if not isinstance(text, str) or not text.strip():
        parts = [*(given if isinstance(given, list) else []), family]
        text = " ".join(part for part in parts if isinstance(part, str))
    return text.strip() or None


def display_name(resource: Mapping[str, Any]) -> str | None:
    """A person's name as the screens show it (:func:`current_name`), read by
    :func:`name_text`; None when the resource has no such name."""
    names: Any = resource.get("name")
    at = current_name(names)
    return None if at is None else name_text(names[at])


@_reads
def child_from_related_person(resource: Mapping[str, Any]) -> Child | None:
    """The protocol's Child from a RelatedPerson of ours (profile kindreflex-child, as
    :func:`child_related_person` writes it), or None for any other resource: not a
    RelatedPerson, not ours (none of our profile, child identifier or lives-with
    extension: the EHR's own record of a relative), or one the EHR withdrew
    (:func:`withdrawn`: ``active`` false, R4's way to take back a RelatedPerson entered by
    mistake). A withdrawn child is no child: not on the nurse's list, not in a case, not
    on a referral.

    One of ours is read whole or not at all: a date of birth that is not a full date (a
    year or a month alone is valid FHIR: "2017-09"), a relationship outside the ValueSet
    child-relationship, no lives-with code, no name to show:
    :class:`UnreadableResourceError`. Left out instead, the child would vanish from the
    nurse's list, from the case and from a referral naming all the children.

    ``ref`` is ``RelatedPerson/<id>`` (or the business identifier's value when the
    resource has no id yet); the caller may replace it (e.g. by a versioned reference).
    """
    if (
        resource.get("resourceType") != "RelatedPerson"
        or not _our_child(resource)
        or withdrawn(resource)
    ):
        return None
    codings = _extension_codings(resource, "lives-with")
    lives_with = _coded(codings, LivesWith, "extension lives-with")
    relationship_vs = t.value_set("child-relationship")
    relationship = next(
        (
            c["code"]
            for rel in resource.get("relationship", [])
            for c in _codings(rel)
            if c.get("system") and relationship_vs.contains(c.get("system"), c.get("code", ""))
        ),
        None,
    )
    if relationship is None:
        raise _MalformedError("relationship has no code of ValueSet child-relationship")
    birth_date = _day(resource.get("birthDate"), "birthDate")
    text = display_name(resource)
    if text is None:
        raise _MalformedError("name has no name to show (text, given or family)")
    if resource.get("id"):
        ref = f"RelatedPerson/{resource['id']}"
    else:
        ours = t.identifier_system("child")
        ref = next(
            (i["value"] for i in resource.get("identifier", []) if i.get("system") == ours), ""
        )
    if not ref:
        raise _MalformedError("has neither an id nor a child identifier of ours")
    return Child(
        ref=ref,
        name=text.strip(),
        birth_date=birth_date,
        relationship=ChildRelationship(relationship),
        lives_with=lives_with,
    )


def _our_child(resource: Mapping[str, Any]) -> bool:
    """Whether a RelatedPerson says it is a child of ours: our profile, our child identifier
    or our lives-with extension, any of them (an EHR's copy may keep only some)."""
    profile, system = t.profile_url("kindreflex-child"), t.identifier_system("child")
    lives_with = t.extension_url("lives-with")
    return (
        profile in (resource.get("meta") or {}).get("profile", [])
        or any(i.get("system") == system for i in resource.get("identifier", []))
        or any(e.get("url") == lives_with for e in resource.get("extension", []))
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
        component = _component(
            "expected-delivery-date", valueDateTime=expecting.expected_date.isoformat()
        )
        component["code"]["coding"].append(_loinc_expected_delivery_date())
        resource["component"] = [component]
    return resource


#: The element of the expecting-child profile whose pattern is the LOINC coding of the
#: expected delivery date (11778-8 Delivery date Estimated).
_LOINC_DELIVERY_DATE = "Observation.component:expectedDeliveryDate.code.coding:loinc"


def _loinc_expected_delivery_date() -> dict[str, str]:
    """LOINC's code of the expected delivery date, written beside ours so that a reader who
    knows LOINC and not the guide finds the date (design: reuse LOINC where it exists)."""
    return dict(t.element_pattern("kindreflex-expecting-child", _LOINC_DELIVERY_DATE))


@_reads
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
        pregnancy_of=_coded(
            _codings(resource.get("valueCodeableConcept")), PregnancyOf, "valueCodeableConcept"
        ),
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
    about: Sequence[str],
    identifier: Mapping[str, str],
    acute_danger: bool,
    status: str = "active",
) -> Resource:
    """The step 6 referral (profile kindreflex-referral).

    ``performer_ref``: the partner Organization of the directory; ``reason_refs``: the
    finding(s) that led to step 6 (the step 4 decision, or step 5, or step 2 acute danger).
    ``acute_danger``: the case's route into step 6 comes from acute danger (the protocol's
    ``KindreflexCase.acute_danger``); the referral's ``priority`` is then ``stat``, else
    ``routine``, always written: R4 reads a missing priority as normal, and a parket or
    police referral read as routine would wait its turn.
    ``about``: whom the referral is about, in ``supportingInfo``: the children's
    RelatedPersons and the expected child's Observation (``casework.referral_about``).
    With none there is no ``supportingInfo`` (FHIR allows no empty array; such a referral
    does not conform to the profile, see docs/architecture.md).
    """
    profile = "kindreflex-referral"
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
        "priority": _priority(STAT if acute_danger else ROUTINE),
        "requester": _ref(finding.recorded_by),
        "performerType": t.codeable_concept("partner-type", finding.target),
        "performer": [_ref(performer_ref)],
        "reasonReference": [_ref(r) for r in reason_refs],
    }
    if about:
        resource["supportingInfo"] = [_ref(r) for r in about]
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


#: A referral's priorities (ValueSet referral-priority, of FHIR request-priority): stat,
#: "actioned immediately - highest possible priority. E.g. an emergency", when it follows
#: from acute danger; routine otherwise.
STAT: Final = "stat"
ROUTINE: Final = "routine"


def _priority(code: str) -> str:
    """A code of the guide's ValueSet referral-priority (checked against the built guide)."""
    return t.value_set_coding("referral-priority", code)["code"]


def referral_priority(request: Mapping[str, Any]) -> str:
    """The priority of a referral ServiceRequest of ours as read. One written before the
    service wrote a priority has none: routine, as R4 reads a missing priority, except a
    referral to the parket or the police, which the protocol allows only with acute
    danger (``protocol.ACUTE_DANGER_TARGETS``): stat."""
    written = request.get("priority")
    if isinstance(written, str) and written:
        return written
    system = t.code_system_url("partner-type")
    codings = _codings(request.get("performerType"))
    acute = {target.value for target in ACUTE_DANGER_TARGETS}
    if any(c.get("system") == system and c.get("code") in acute for c in codings):
        return STAT
    return ROUTINE


def referral_performer(request: Mapping[str, Any], part: str = "reference") -> str | None:
    """The reference of the facility a referral ServiceRequest names (``part="display"``:
    its name, as the reference gives it). None: it names none (the EHR may have rewritten
    the performer as a display only, which FHIR allows)."""
    performers = request.get("performer")
    first = performers[0] if isinstance(performers, list) and performers else None
    value = first.get(part) if isinstance(first, Mapping) else None
    return value if isinstance(value, str) else None


def referral_target(request: Mapping[str, Any]) -> str | None:
    """The kind of facility (vk, ocj, parket, police) a referral is to, as our coding of
    ``performerType`` says; None: the EHR took that coding away."""
    concept = request.get("performerType")
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    system = t.code_system_url("partner-type")
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, Mapping) and coding.get("system") == system:
            code = coding.get("code")
            return code if isinstance(code, str) else None
    return None


def referral_with_status(
    request: Mapping[str, Any],
    status: ReferralStatus,
    *,
    author: str,
    author_name: str,
    at: datetime,
    note: str | None = None,
) -> Resource:
    """The referral ``request`` as read, with a new status; ``note`` is added as an
    annotation naming its author and time (earlier notes stay): by ``author``, the user's
    reference, where R4 admits its type there, else by ``author_name``
    (:func:`_annotation_author`). Its ``meta`` is the server's (:func:`meta_on_update`),
    its narrative too unless the update changes it (:func:`narrative_on_update`). A
    referral written before the service wrote a priority gets the one it is read with
    (:func:`referral_priority`), which the profile requires."""
    updated: Resource = {
        **request,
        "meta": meta_on_update(request.get("meta"), _meta("kindreflex-referral")),
        "status": status.value,
        "priority": referral_priority(request),
    }
    if note and note.strip():
        annotation = {
            **_annotation_author(author, author_name),
            "time": _instant(at),
            "text": note.strip(),
        }
        updated["note"] = [*request.get("note", []), annotation]
    return narrative_on_update(request, updated)


#: The types R4 admits in Annotation.authorReference (Annotation.author[x]): not a
#: PractitionerRole, which the launch admits as a user (``smart_app.launch._AUTHORS``).
_ANNOTATION_AUTHORS = frozenset({"Practitioner", "Patient", "RelatedPerson", "Organization"})


def _annotation_author(author: str, author_name: str) -> Resource:
    """An annotation's author: ``authorReference`` where R4 admits the reference's type,
    else ``authorString``, the user's name (a server checking reference targets refuses
    a PractitionerRole there, and the outbox could never deliver the write)."""
    typed = REFERENCE_TYPE.search(author)
    if typed and typed.group(1) in _ANNOTATION_AUTHORS:
        return {"authorReference": _ref(author)}
    return {"authorString": author_name}


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


@_reads
def open_concern_of(flag: Mapping[str, Any]) -> OpenConcern | None:
    """The open concern an active Flag of ours records (:func:`concern_flag`), or None for
    any other Flag: inactive, of another kind, without our identifier. A Flag without the
    last-step extension was raised at step 2, where the Kindreflex hands off.

    One of ours whose ``period.start`` is not a dateTime with its time zone (a partial
    "2026-05" is valid FHIR; a day alone could not be compared with the others), or
    whose last step is not a code of ours, is :class:`UnreadableResourceError`."""
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
    ):
        return None
    steps = _extension_codings(flag, "concern-last-step")
    return OpenConcern(
        identifier=str(identifiers[0]),
        flagged_at=_moment(flag.get("period", {}).get("start"), "period.start"),
        flagged_by=str(flag.get("author", {}).get("reference", "")),
        last_step=_coded(steps, Step, "extension concern-last-step") if steps else Step.STEP_2,
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
    return [
        str(coding.get("code"))
        for coding in _extension_values(resource, extension_id, "valueCoding")
        if isinstance(coding, dict)
    ]


def _extension_values(element: Mapping[str, Any], extension_id: str, value: str) -> list[Any]:
    """The ``value`` (``valueCoding``, ``valueDate`` …) of each of ``element``'s extensions
    of the guide's ``extension_id``; None where one lacks it."""
    url = t.extension_url(extension_id)
    return [e.get(value) for e in element.get("extension", []) if e.get("url") == url]


def _extension_codings(element: Mapping[str, Any], extension_id: str) -> list[Mapping[str, Any]]:
    """The codings of ``element``'s extensions ``extension_id``, for :func:`_coded` (an empty
    one where an extension lacks its ``valueCoding``: no code, so unreadable)."""
    return [coding or {} for coding in _extension_values(element, extension_id, "valueCoding")]


def provenance(
    *,
    targets: Sequence[str],
    author: str,
    recorded: datetime,
    encounter_ref: str | None = None,
    update: bool = False,
) -> Resource:
    """Who wrote ``targets`` (profile kindreflex-provenance): one save's writes, by the
    user who saved.

    R4 Provenance has no encounter nor identifier: ``encounter_ref`` is accepted for the
    callers' convenience and not written. Without an identifier there is no conditional
    create: the callers add it to the save's own transaction as a plain create
    (``TransactionBuilder.add``), which the outbox sends once (its witness).
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
    return resource


# --------------------------------------------------------------------------------------
# Back: a step finding Observation to the protocol's Finding (reconciling from the server)
# --------------------------------------------------------------------------------------
#: The statuses of a resource that records nothing (FHIR R4: written in error, or never
#: happened): a finding, a referral or a concern the EHR retracted.
RETRACTED = frozenset({"entered-in-error", "cancelled"})

#: FHIR R4's request-status codes, each of which a server may hold on a referral: we write
#: four (``protocol.ReferralStatus``), the EHR may set any of the others.
REQUEST_STATUSES: Final = (
    "draft",
    "active",
    "on-hold",
    "revoked",
    "completed",
    "entered-in-error",
    "unknown",
)


def request_status(resource: Mapping[str, Any]) -> str:
    """A request's status as R4 names it; a code outside request-status (a server that does
    not validate its binding) says no more than ``unknown`` does."""
    status = resource.get("status")
    return status if status in REQUEST_STATUSES else "unknown"


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


@_reads
def finding_from_observation(
    resource: Mapping[str, Any],
    *,
    children: Mapping[str, Child] | None = None,
    expecting: Mapping[str, ExpectedChild] | None = None,
    withdrawn_children: Collection[str] = (),
) -> Finding | None:
    """The protocol's finding recorded in a Kindreflex step Observation.

    Read whole or not at all (:class:`UnreadableResourceError`): each coded value is the
    code of the guide's code system for it, whatever codings the EHR added beside or
    before it; a value the profile requires (an effectiveDateTime with its time zone, a
    component's value) must be there. Given ``children``, a step 1 must name in ``focus``
    only children among them or among ``withdrawn_children`` (the references of the
    children the EHR withdrew, :func:`withdrawn`: left out of the finding, as the children
    no longer are); a reference to any other (a child of ours that could not be read and
    so is not among ``children``, or one the server no longer holds) makes it
    unreadable, rather than a case without that child and a referral that does not name
    it.

    None when the resource is not a Kindreflex step finding, or one that was retracted
    (:data:`RETRACTED`: the EHR marked it entered in error). Children are named by the
    references in ``focus`` (and in the child-consent extension), as written. A step 1
    Observation does not hold the children themselves: pass ``children`` (reference →
    Child, e.g. from :func:`child_from_related_person`) to fill ``Step1Finding.children``;
    nor the expected child, a separate Observation it names in ``hasMember``: pass
    ``expecting`` (reference → ExpectedChild, from
    :func:`expected_child_from_observation`) to fill ``Step1Finding.expecting``. Recorded
    content that breaks a rule of the protocol is unreadable too (:func:`_reads`).
    """
    step = step_of_observation(resource)
    if step is None or resource.get("status") in RETRACTED:
        return None
    components = _components_by_code(resource.get("component", []))
    performers = resource.get("performer", [])
    base: dict[str, Any] = {
        "recorded_by": performers[0].get("reference", "") if performers else "",
        "recorded_at": _moment(resource.get("effectiveDateTime"), "effectiveDateTime"),
        "encounter_ref": resource.get("encounter", {}).get("reference"),
        "note": _recorders_note(resource.get("note", [])),
    }
    focus = tuple(str(f["reference"]) for f in resource.get("focus", []) if "reference" in f)
    if step is Step.STEP_1:
        if children is not None:
            _names_known_children(focus, children, withdrawn_children)
        known = children or {}
        member = expected_child_reference(resource)
        return Step1Finding(
            **base,
            children=tuple(known[r] for r in focus if r in known),
            expecting=(expecting or {}).get(member) if member else None,
        )
    base["focus"] = focus
    value = _codings(resource.get("valueCodeableConcept"))
    consultations = frozenset(_codes(components, "consultation", Consultation))
    services = frozenset(_codes(components, "service", ReferralTarget))
    match step:
        case Step.STEP_2:
            return Step2Finding(
                **base,
                assessment=_coded(value, SafetyAssessment, "valueCodeableConcept"),
                reasons=tuple(_strings(components, "reason")),
                who_helps=next(iter(_strings(components, "who-helps")), None),
                consultations=consultations,
                acute_danger=any(_booleans(components, "urgency")),
                triggers=frozenset(_codes(components, "trigger", HagueTrigger)),
            )
        case Step.STEP_3:
            return Step3Support(
                **base,
                actions=frozenset(_codes(components, "support-action", SupportAction)),
                services=services,
            )
        case Step.STEP_4:
            return Step4Decision(
                **base,
                decision=_coded(value, TeamDecision, "valueCodeableConcept"),
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
                progress=_coded(value, ProgressAssessment, "valueCodeableConcept"),
                actions=frozenset(_codes(components, "safety-action", SafetyAction)),
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
                target=_coded(value, ReferralTarget, "valueCodeableConcept"),
                with_cooperation=any(_booleans(components, "with-cooperation")),
                patient_informed=any(_booleans(components, "patient-informed")),
                not_informed_reason=next(iter(_strings(components, "not-informed-reason")), None),
                follow_up_actions=tuple(_strings(components, "follow-up")),
                contact=_contact(components),
            )


def _recorders_note(notes: list[Mapping[str, Any]]) -> str | None:
    """The note written with the finding: the first annotation without an author or a
    time, as :func:`finding_observation` writes it (one at most, first). The others are
    another writer's (:func:`added_notes`), never the recorder's text."""
    note, _ = _notes_split(notes)
    text = None if note is None else note.get("text")
    if text is not None and not isinstance(text, str):
        raise _MalformedError("note has an annotation without text")
    return text if text and text.strip() else None


def _notes_split(
    notes: Iterable[Mapping[str, Any]],
) -> tuple[Mapping[str, Any] | None, list[Mapping[str, Any]]]:
    """The recorder's annotation (the first without an author or a time) and the others,
    in their order. An EHR that adds a note with neither after ours gets it shown as added
    by someone unnamed, rather than the finding made unreadable (a case that cannot open)."""
    own: Mapping[str, Any] | None = None
    others: list[Mapping[str, Any]] = []
    for note in notes:
        if own is None and not _annotated(note):
            own = note
        else:
            others.append(note)
    return own, others


def _annotated(note: Mapping[str, Any]) -> bool:
    """Whether an annotation says who wrote it or when: not as we write a finding's note."""
    return any(note.get(key) for key in ("authorReference", "authorString", "time"))


@dataclass(frozen=True)
class AddedNote:
    """A note another writer added to a finding of ours (an annotation with its author or
    time: the EHR's user): shown as theirs, never as the recorder's. ``author``: the
    author's reference, else their name as written; ``time``: as written (a FHIR
    dateTime)."""

    text: str
    author: str | None
    time: str | None


@_reads
def added_notes(resource: Mapping[str, Any]) -> tuple[AddedNote, ...]:
    """The notes others added to a finding Observation of ours (:func:`_recorders_note`
    is the recorder's own), in the order the resource lists them."""
    found = []
    for note in _notes_split(resource.get("note", []))[1]:
        added = _added_note(note)
        if added is None:
            raise _MalformedError("note has an annotation without text")
        found.append(added)
    return tuple(found)


def referral_notes(request: Mapping[str, Any]) -> tuple[AddedNote, ...]:
    """The notes added to a referral ServiceRequest after it was made, as it lists them
    (each added last: oldest first), each saying who and when: every status change's "why,
    or what the facility said" (:func:`referral_with_status`) and the EHR's users' notes.
    The notes it was made with (:func:`referral_service_request`: why the patient was not
    informed, the step's note) name neither; its step 6 finding shows them. An annotation
    without text (not ours) is left out: it says nothing, and the case must still open."""
    notes = request.get("note")
    found = []
    for note in notes if isinstance(notes, list) else []:
        added = _added_note(note) if isinstance(note, Mapping) and _annotated(note) else None
        if added is not None:
            found.append(added)
    return tuple(found)


def _added_note(note: Mapping[str, Any]) -> AddedNote | None:
    """An annotation as a note added by someone (None: it has no text)."""
    text, time = note.get("text"), note.get("time")
    if not isinstance(text, str):
        return None
    by = note.get("authorReference")
    by = by if isinstance(by, Mapping) else {}
    named = (by.get("reference"), by.get("display"), note.get("authorString"))
    author = next((name for name in named if isinstance(name, str) and name), None)
    return AddedNote(text, author, time if isinstance(time, str) else None)


def _components_by_code(raw: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The components by their code of finding-component; a component coded only with
    another system's code the guide writes beside ours (LOINC 11778-8 for the expected
    delivery date) is found under ours, and one coded with both is found once."""
    system = t.code_system_url("finding-component")
    loinc = _loinc_expected_delivery_date()
    others = {(loinc["system"], loinc["code"]): "expected-delivery-date"}
    result: dict[str, list[Mapping[str, Any]]] = {}
    for component in raw:
        codes = set()
        for coding in component.get("code", {}).get("coding", []):
            if coding.get("system") == system:
                codes.add(str(coding.get("code")))
            elif (ours := others.get((coding.get("system"), coding.get("code")))) is not None:
                codes.add(ours)
        for code in sorted(codes):
            result.setdefault(code, []).append(component)
    return result


def _names_known_children(
    focus: Sequence[str], children: Mapping[str, Child], withdrawn_children: Collection[str]
) -> None:
    """A step 1's ``focus`` names only known children (``children``) and withdrawn ones."""
    unknown = [ref for ref in focus if ref not in children and ref not in withdrawn_children]
    if unknown:
        raise _MalformedError(
            f"focus names {len(unknown)} RelatedPerson(s) that are not children of the "
            "patient's chart as read (not held, or not ours)"
        )


_Components = Mapping[str, list[Mapping[str, Any]]]


def _values(components: _Components, code: str, value: str, kind: type) -> list[Any]:
    """The ``value`` (``valueString`` …) of each component of ``code``: every one must have
    it, of the Python type ``kind``."""
    found = [c.get(value) for c in components.get(code, [])]
    if not all(isinstance(v, kind) for v in found):
        raise _MalformedError(f"a component {code} has no {value}")
    return found


def _codes(components: _Components, code: str, kind: type[_E]) -> list[_E]:
    """The protocol's code in the ``valueCodeableConcept`` of each component of ``code``."""
    where = f"component {code}"
    return [
        _coded(_codings(c.get("valueCodeableConcept")), kind, where)
        for c in components.get(code, [])
    ]


def _strings(components: _Components, code: str) -> list[str]:
    return _values(components, code, "valueString", str)


def _booleans(components: _Components, code: str) -> list[bool]:
    return _values(components, code, "valueBoolean", bool)


def _factor(component: Mapping[str, Any]) -> Factor:
    """A factor: the catalogue's code when the concept has one (whatever stands before it),
    else the hospital's own (``system|code``, as :func:`_factor_component` writes it). Its
    kind is the factor-kind extension's; a catalogue factor without it is of the kind the
    catalogue gives it (the profile requires the extension: a protective factor must not be
    read as a risk)."""
    concept = component.get("valueCodeableConcept") or {}
    codings = [c for c in _codings(concept) if c.get("code")]
    catalogue = t.code_system_url("factor")
    ours = [c for c in codings if c.get("system") == catalogue]
    if not codings:
        raise _MalformedError("a component factor has no code")
    coding = (ours or codings)[0]
    code, system = str(coding["code"]), coding.get("system")
    if system and system != catalogue:
        code = f"{system}|{code}"
    kinds = _extension_codings(component, "factor-kind")
    if kinds:
        kind = _coded(kinds, FactorKind, "extension factor-kind of a component factor")
    else:
        listed = {f.code: f.kind for f in t.factors()}.get(code)
        if listed is None:
            raise _MalformedError("a component factor of the hospital's own has no factor-kind")
        kind = FactorKind(listed)
    return Factor(code, kind, concept.get("text"))


def _children_heard(components: _Components) -> tuple[HeardChild, ...]:
    """Each child-consent component, with the child's own say (child-say) when recorded."""
    says = dict(
        zip(
            map(_child_of, components.get("child-say", [])),
            _strings(components, "child-say"),
            strict=True,
        )
    )
    consents = _booleans(components, "child-consent")
    return tuple(
        HeardChild(child_ref=_child_of(c), consent_given=consent, own_say=says.get(_child_of(c)))
        for c, consent in zip(components.get("child-consent", []), consents, strict=True)
    )


def _child_of(component: Mapping[str, Any]) -> str:
    found = [
        (value or {}).get("reference")
        for value in _extension_values(component, "concerned-child", "valueReference")
    ]
    if len(found) != 1 or not isinstance(found[0], str) or not found[0]:
        raise _MalformedError("a component about a child does not name one child")
    return found[0]


def _dates(components: _Components, code: str) -> list[date]:
    where = f"a component {code}'s valueDateTime"
    return [_day(c.get("valueDateTime"), where) for c in components.get(code, [])]


def _key_person(component: Mapping[str, Any]) -> KeyPerson:
    concept = component.get("valueCodeableConcept") or {}
    role = _coded(_codings(concept), KeyPersonRole, "component key-person")
    return KeyPerson(role, concept.get("text"))


def _agreed_action(component: Mapping[str, Any]) -> AgreedAction:
    dues = _extension_values(component, "follow-up-date", "valueDate")
    if len(dues) > 1:
        raise _MalformedError("a component agreed-action has several follow-up dates")
    text = component.get("valueString")
    if not isinstance(text, str):
        raise _MalformedError("a component agreed-action has no valueString")
    due = _day(dues[0], "extension follow-up-date") if dues else None
    return AgreedAction(text, due)


def _contact(components: _Components) -> FacilityContact | None:
    day = next(iter(_dates(components, "contact-date")), None)
    if day is None:
        return None
    channels = _codes(components, "contact-channel", ContactChannel)
    if not channels:
        raise _MalformedError("a contact-date without its component contact-channel")
    return FacilityContact(
        on=day, person=next(iter(_strings(components, "contact-person")), ""), channel=channels[0]
    )


@_reads
def closure_from_flag(flag: Mapping[str, Any]) -> CaseClosure | None:
    """Why a concern Flag was closed (None: it is open, or was closed without a reason)."""
    concepts = _extension_values(flag, "concern-close-reason", "valueCodeableConcept")
    if not concepts:
        return None
    if len(concepts) > 1 or not isinstance(concepts[0], dict):
        raise _MalformedError("extension concern-close-reason is not one valueCodeableConcept")
    where = "extension concern-close-reason"
    return CaseClosure(_coded(_codings(concepts[0]), CloseReason, where), concepts[0].get("text"))
