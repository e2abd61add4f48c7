"""Prefetch a CDS hook call carries, built from the guide's codes (never typed in a test):
for the card rules' tests, the hook endpoints' tests and the CDS benchmark."""

from __future__ import annotations

from typing import Any

from service.cds.vocabulary import Code, guide_vocabulary
from service.protocol import HagueTrigger

#: The encounter of the hook calls built here (the prefetch's and the context's).
ENCOUNTER_ID = "enc-1"
#: The built guide's codes, the ones the rules read.
VOCABULARY = guide_vocabulary()


def a_code_of(trigger: HagueTrigger) -> Code:
    """One code of the guide's ValueSet for ``trigger``, the same one every run."""
    return sorted(VOCABULARY.triggers[trigger], key=lambda c: (c.system, c.code))[0]


def coding(code: Code) -> dict[str, Any]:
    """A CodeableConcept of one coding."""
    return {"coding": [{"system": code.system, "code": code.code}]}


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    """A searchset Bundle matching ``resources``, as a prefetch query answers."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def prefetch(
    birth_date: str | None = "1990-05-01",
    reasons: tuple[Code, ...] = (),
    conditions: tuple[dict[str, Any], ...] = (),
    flags: tuple[dict[str, Any], ...] = (),
    findings: tuple[dict[str, Any], ...] = (),
    children: int = 0,
) -> dict[str, Any]:
    """The prefetch of an adult's visit (encounter ENCOUNTER_ID), with what is given."""
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "p1"}
    if birth_date is not None:
        patient["birthDate"] = birth_date
    return {
        "patient": patient,
        "encounter": {
            "resourceType": "Encounter",
            "id": ENCOUNTER_ID,
            "status": "arrived",
            "reasonCode": [coding(code) for code in reasons],
        },
        "conditions": bundle(*conditions),
        "flags": bundle(*flags),
        "findings": bundle(*findings),
        "relatedPersons": bundle(
            *(
                {
                    "resourceType": "RelatedPerson",
                    "patient": {"reference": "Patient/p1"},
                    "relationship": [{"coding": [{"code": "CHILD"}]}],
                }
                for _ in range(children)
            ),
            # a partner is a RelatedPerson too, but not a child
            {"resourceType": "RelatedPerson", "relationship": [{"coding": [{"code": "SPS"}]}]},
        ),
    }


def condition(code: Code, verification: str | None = None) -> dict[str, Any]:
    """A Condition of this encounter, with its verification status if given."""
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "code": coding(code),
        "encounter": {"reference": f"Encounter/{ENCOUNTER_ID}"},
    }
    if verification:
        resource["verificationStatus"] = {"coding": [{"code": verification}]}
    return resource


def concern_flag(status: str = "active") -> dict[str, Any]:
    """The guide's open-concern Flag."""
    return {"resourceType": "Flag", "status": status, "code": coding(VOCABULARY.concern_flag)}


def step_1_finding(encounter: str = ENCOUNTER_ID, status: str = "final") -> dict[str, Any]:
    """The Observation that step 1 was done in ``encounter``."""
    return {
        "resourceType": "Observation",
        "status": status,
        "code": coding(VOCABULARY.step_1),
        "encounter": {"reference": f"Encounter/{encounter}"},
    }


#: Every kind of prefetch resource at once: for tests that spoil any one of its fields.
FULL_PREFETCH = prefetch(
    reasons=(a_code_of(HagueTrigger.DOMESTIC_VIOLENCE),),
    conditions=(condition(a_code_of(HagueTrigger.SUBSTANCE_ABUSE), "confirmed"),),
    flags=(concern_flag(),),
    findings=(step_1_finding(encounter="other"),),
    children=2,
)
