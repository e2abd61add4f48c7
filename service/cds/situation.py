"""What a hook request tells about the patient, read from FHIR R4 JSON (prefetch or fetched).

Pure and defensive: the JSON comes from the EHR, so a field of the wrong type is treated
as absent rather than trusted or allowed to raise. Only the facts the card rules use are
kept; nothing here is logged or stored.

It reads every hook call's prefetch, where the EHR waits: plain loops, not generator
expressions, which cost a third more on this path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from service.cds.vocabulary import Code
from service.protocol import ChildRelationship

#: The prefetch keys of our discovery document; the fetch fallback asks for the same.
PATIENT = "patient"
ENCOUNTER = "encounter"
CONDITIONS = "conditions"
RELATED_PERSONS = "relatedPersons"
FLAGS = "flags"
FINDINGS = "findings"
PREFETCH_KEYS = (PATIENT, ENCOUNTER, CONDITIONS, RELATED_PERSONS, FLAGS, FINDINGS)

_HISTORY = re.compile(r"/_history/[^/]+$")
_FHIR_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
#: An Observation's statuses that record a result (FHIR R4 observation-status): not one
#: only ``registered``, an interim ``preliminary`` (an EHR form not yet signed), one of
#: ``unknown`` status, nor one retracted. With doubt whether step 1 was done, the card is
#: shown: an "already done" override costs the nurse one click, a Kindreflex not done a
#: child unseen.
_RECORDED_STATUSES = frozenset({"final", "amended", "corrected"})
_VOID_VERIFICATION = frozenset({"entered-in-error", "refuted"})
#: An Encounter's statuses (FHIR R4 encounter-status, a required binding) that are no
#: presentation: ``entered-in-error`` ("this instance should not have been part of this
#: patient's medical record"), and ``cancelled`` ("the Encounter has ended before it has
#: begun": the patient was not seen). Neither its reasons nor the conditions recorded for
#: it are a trigger; the patient's open concern still warns, and an adult still gets the
#: card that prompts the Kindreflex.
_NO_PRESENTATION = frozenset({"entered-in-error", "cancelled"})
_CHILD_CODES = frozenset(r.value for r in ChildRelationship)


@dataclass(frozen=True)
class Situation:
    """The facts the rules weigh. ``birth_date`` is the earliest date a partial FHIR date
    allows (``1990`` → 1990-01-01): with doubt about the age, the card is shown.
    ``warning_sources_read``: whether everything a warning's reasons come from (the
    encounter, its conditions, the patient's Flags) was read in full, so that finding no
    reason means there is none."""

    birth_date: date | None
    presentation_codes: frozenset[Code]
    active_flag_codes: frozenset[Code]
    encounter_finding_codes: frozenset[Code]
    known_children: int
    warning_sources_read: bool


def answered_in_full(value: Any) -> bool:
    """Whether a prefetch value answers its query completely: a resource, a search Bundle
    without a next page, or ``null`` (CDS Hooks: no data). Not a client's OperationOutcome
    for a failed query, not one page of several (a patient's Flags are all of their
    Flags, whatever their code: the open concern may be on the next page), not a Bundle
    whose own OperationOutcome says the search failed in part (an error in an entry of
    search mode ``outcome``), not anything else."""
    if value is None:
        return True
    kind = value.get("resourceType") if isinstance(value, dict) else None
    if not isinstance(kind, str) or kind == "OperationOutcome":
        return False
    if kind != "Bundle":
        return True
    for link in _list(value.get("link")):
        if isinstance(link, dict) and link.get("relation") == "next":
            return False
    for entry in _list(value.get("entry")):
        if isinstance(entry, dict) and _failed(entry.get("resource")):
            return False
    return True


def _failed(value: Any) -> bool:
    """Whether ``value``, an entry of a search Bundle, is an OperationOutcome reporting an
    error (a server's warning, an unknown parameter ignored say, is not)."""
    if not isinstance(value, dict) or value.get("resourceType") != "OperationOutcome":
        return False
    issues = _list(value.get("issue"))
    for issue in issues:
        if isinstance(issue, dict) and issue.get("severity") in ("error", "fatal"):
            return True
    return not issues


def of_this_context(
    prefetch: Mapping[str, Any], patient_id: str, encounter_id: str | None
) -> dict[str, Any]:
    """The prefetch values about this hook's patient and encounter. A value naming another
    patient or encounter (an EHR's cache, a chart switched meanwhile) is left out, as if
    not prefetched: CDS Hooks has prefetched data equivalent to what the template asks and
    the service check it. Read as sent, another patient's open concern became a warning
    card about this one, and a child's record hid an adult's card."""
    return {
        key: value
        for key, value in prefetch.items()
        if value is None or _about(key, value, patient_id, encounter_id)
    }


#: How each prefetch key's resources name the context: (element, the context's patient or
#: encounter it names). ``id``: the resource read by id. The findings' encounter is left
#: to the rules, which count only those of the context's encounter.
_CONTEXT_ELEMENTS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    PATIENT: ("Patient", (("id", "Patient"),)),
    ENCOUNTER: ("Encounter", (("id", "Encounter"), ("subject", "Patient"))),
    CONDITIONS: ("Condition", (("subject", "Patient"), ("encounter", "Encounter"))),
    RELATED_PERSONS: ("RelatedPerson", (("patient", "Patient"),)),
    FLAGS: ("Flag", (("subject", "Patient"),)),
    FINDINGS: ("Observation", (("subject", "Patient"),)),
}


def _about(key: str, value: Any, patient_id: str, encounter_id: str | None) -> bool:
    if key not in _CONTEXT_ELEMENTS:
        return True  # not a key of ours: never read
    resource_type, elements = _CONTEXT_ELEMENTS[key]
    ids = {"Patient": patient_id, "Encounter": encounter_id}
    for resource in _resources(value, resource_type):
        for element, target in elements:
            if not _names(resource, element, target, ids[target]):
                return False
    return True


def _names(resource: dict[str, Any], element: str, target: str, target_id: str | None) -> bool:
    """Whether ``resource``'s ``element`` names the context's ``target``, or no one (a
    reference left out names no one else; the resource read by id must be that one)."""
    if element == "id":
        return target_id is not None and resource.get("id") == target_id
    value = resource.get(element)
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        return True  # left out, or an identifier only: names no one we can tell
    return target_id is not None and _refers_to(value, target, target_id)


def situation_of(data: Mapping[str, Any], encounter_id: str | None) -> Situation | None:
    """The situation from prefetch-shaped data; ``None`` when the patient is unknown."""
    patient = _single(data.get(PATIENT), "Patient")
    if patient is None:
        return None
    encounter = _single(data.get(ENCOUNTER), "Encounter")
    sources = (FLAGS,) if encounter_id is None else (FLAGS, ENCOUNTER, CONDITIONS)
    return Situation(
        warning_sources_read=all(key in data and answered_in_full(data[key]) for key in sources),
        birth_date=_earliest_date(patient.get("birthDate")),
        presentation_codes=_presentation_codes(encounter, data.get(CONDITIONS)),
        active_flag_codes=frozenset(
            code
            for flag in _resources(data.get(FLAGS), "Flag")
            if flag.get("status") == "active"
            for code in _codes(flag.get("code"))
        ),
        encounter_finding_codes=frozenset(
            code
            for observation in _resources(data.get(FINDINGS), "Observation")
            if _text(observation.get("status")) in _RECORDED_STATUSES
            and encounter_id is not None
            and _refers_to(observation.get("encounter"), "Encounter", encounter_id)
            for code in _codes(observation.get("code"))
        ),
        known_children=len(
            [
                person
                for person in _resources(data.get(RELATED_PERSONS), "RelatedPerson")
                if person.get("active") is not False and _is_child(person)
            ]
        ),
    )


def _presentation_codes(encounter: dict[str, Any] | None, conditions: Any) -> frozenset[Code]:
    """Codes of the encounter's reasons and of the conditions recorded for it; none for an
    encounter that is no presentation (``_NO_PRESENTATION``). A trigger on an encounter
    entered in error or cancelled made a warning card naming it (found by review)."""
    codes: set[Code] = set()
    if encounter is not None and _text(encounter.get("status")) in _NO_PRESENTATION:
        return frozenset()
    if encounter is not None:
        for reason in _list(encounter.get("reasonCode")):
            codes.update(_codes(reason))
    for condition in _resources(conditions, "Condition"):
        # verificationStatus has a required binding in R4: the code alone is unambiguous
        if not _has_code(condition.get("verificationStatus"), _VOID_VERIFICATION):
            codes.update(_codes(condition.get("code")))
    return frozenset(codes)


def _is_child(person: dict[str, Any]) -> bool:
    # The child codes are v3 RoleCode codes (the guide's child-relationship ValueSet); EHRs
    # often omit the system on relationship codings, so the code alone is compared.
    for relationship in _list(person.get("relationship")):
        if _has_code(relationship, _CHILD_CODES):
            return True
    return False


def _resources(value: Any, resource_type: str) -> list[dict[str, Any]]:
    """The resources of ``resource_type`` in a resource or a search Bundle."""
    if not isinstance(value, dict):
        return []
    kind = value.get("resourceType")
    if kind == resource_type:
        return [value]
    found: list[dict[str, Any]] = []
    if kind == "Bundle":
        for entry in _list(value.get("entry")):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") == resource_type:
                found.append(resource)
    return found


def _single(value: Any, resource_type: str) -> dict[str, Any] | None:
    resources = _resources(value, resource_type)
    return resources[0] if resources else None


def _codes(concept: Any) -> Iterator[Code]:
    if not isinstance(concept, dict):
        return
    for coding in _list(concept.get("coding")):
        if isinstance(coding, dict):
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str):
                yield Code(system, code)


def _has_code(concept: Any, codes: frozenset[str]) -> bool:
    """Whether a coding of the CodeableConcept has one of ``codes`` (whatever its system)."""
    if not isinstance(concept, dict):
        return False
    for coding in _list(concept.get("coding")):
        if isinstance(coding, dict) and _text(coding.get("code")) in codes:
            return True
    return False


def _refers_to(reference: Any, resource_type: str, resource_id: str) -> bool:
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return False
    target: str = reference["reference"]
    if "/_history/" in target:  # Patient/p1/_history/3 is Patient/p1
        target = _HISTORY.sub("", target)
    named = f"{resource_type}/{resource_id}"
    return target == named or target.endswith("/" + named)


def _earliest_date(value: Any) -> date | None:
    match = _FHIR_DATE.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    year, month, day = match.groups()
    try:
        return date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    """A JSON string, else None (a list or an object cannot be looked up in a set)."""
    return value if isinstance(value, str) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
