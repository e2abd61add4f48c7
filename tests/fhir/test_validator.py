"""What each validation layer enforces (so an upgrade of @medplum/core that changes it shows).

@medplum/core 4.5 evaluates our FHIRPath invariants, cardinalities and slice counts, but
not required bindings, closed slicing, the content of slices, or our extensions' values:
tests.support.validator adds those checks in Python.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from service.fhir import mapping
from tests.support.validator import FHIR_PROFILES_DIR, Issue, ProfileValidator

INVALID = FHIR_PROFILES_DIR / "examples" / "invalid"
RESOURCES = FHIR_PROFILES_DIR / "fsh-generated" / "resources"


def _case(name: str) -> dict[str, Any]:
    data: dict[str, dict[str, Any]] = json.loads((INVALID / f"{name}.json").read_text())
    return data["resource"]


def _errors(issues: list[Issue], source: str) -> list[str]:
    return [i.message for i in issues if i.source == source and i.severity == "error"]


def test_medplum_evaluates_our_invariants(fhir_validator: ProfileValidator) -> None:
    issues = fhir_validator.issues(_case("step2-niet-pluis-without-reason"))
    assert any("kr-s2-1" in m for m in _errors(issues, "medplum"))


@pytest.mark.parametrize(
    ("example", "element", "partial", "invariant"),
    [
        ("Observation-Step2Example", "effectiveDateTime", "2026-03-14", "kr-moment-1"),
        ("Observation-Step1Example", "effectiveDateTime", "2026-03", "kr-moment-1"),
        ("Observation-ExpectingChildPartner", "effectiveDateTime", "2026", "kr-moment-1"),
        ("RelatedPerson-ChildEmma", "birthDate", "2019-07", "kr-child-2"),
        ("Flag-OpenConcernExample", "period", {"start": "2026-03-14"}, "kr-flag-3"),
    ],
)
def test_a_partial_date_the_services_readers_refuse_is_refused_by_the_guide_too(
    fhir_validator: ProfileValidator, example: str, element: str, partial: Any, invariant: str
) -> None:
    """A FHIR date or dateTime may be a year, a month or a day alone: valid against the
    guide, such a resource made the nurse's chart or the case unreadable (found by review).
    The guide now says what the readers need (``service.fhir.mapping``)."""
    resource = json.loads((RESOURCES / f"{example}.json").read_text())
    assert _errors(fhir_validator.issues(resource), "medplum") == []
    resource[element] = partial

    assert any(invariant in m for m in _errors(fhir_validator.issues(resource), "medplum"))


def _component_value(code: str, value: str) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        (component,) = (
            c for c in resource["component"] if any(x["code"] == code for x in c["code"]["coding"])
        )
        component["valueDateTime"] = value

    return change


def _follow_up_date(value: str) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        dates = [e for c in resource["component"] for e in c.get("extension", [])]
        (follow_up,) = (e for e in dates if e["url"].endswith("/follow-up-date"))
        follow_up["valueDate"] = value

    return change


@pytest.mark.parametrize(
    ("example", "change", "invariant", "reader"),
    [
        (
            "Observation-Step5Example",
            _component_value("next-follow-up", "2026-06"),
            "kr-day-1",
            mapping.finding_from_observation,
        ),
        (
            "Observation-Step5Example",
            _follow_up_date("2026-05"),
            "kr-day-2",
            mapping.finding_from_observation,
        ),
        (
            "Observation-Step6Example",
            _component_value("contact-date", "2026"),
            "kr-day-1",
            mapping.finding_from_observation,
        ),
        (
            "Observation-ExpectingChildPartner",
            _component_value("expected-delivery-date", "2027-04"),
            "kr-day-1",
            mapping.expected_child_from_observation,
        ),
        (
            "ServiceRequest-ReferralExample",
            lambda referral: referral.update(authoredOn="2026-05-18"),
            "kr-ref-3",
            partial(mapping.moment, element="authoredOn"),
        ),
    ],
)
def test_a_partial_date_inside_a_finding_or_referral_is_refused_by_the_guide_too(
    fhir_validator: ProfileValidator,
    example: str,
    change: Callable[[dict[str, Any]], None],
    invariant: str,
    reader: Callable[[dict[str, Any]], object],
) -> None:
    """The dates the service reads as days within a finding (follow-up, contact with the
    facility, expected delivery) and the referral's moment: a month or a year alone, or a
    referral of a day, was valid against the guide and made the case unreadable (found by
    review)."""
    resource = json.loads((RESOURCES / f"{example}.json").read_text())
    assert _errors(fhir_validator.issues(resource), "medplum") == []
    reader(resource)
    change(resource)

    assert any(invariant in m for m in _errors(fhir_validator.issues(resource), "medplum"))
    with pytest.raises(mapping.UnreadableResourceError):
        reader(resource)


def test_medplum_checks_cardinality_and_slice_counts(fhir_validator: ProfileValidator) -> None:
    assert _errors(fhir_validator.issues(_case("child-without-birthdate")), "medplum")
    issues = fhir_validator.issues(_case("step6-without-patient-informed"))
    assert any("patientInformed" in m for m in _errors(issues, "medplum"))


def test_required_bindings_are_enforced_by_the_python_layer(
    fhir_validator: ProfileValidator,
) -> None:
    issues = fhir_validator.issues(_case("step2-unknown-assessment"))
    assert _errors(issues, "medplum") == []
    assert _errors(issues, "bindings")


def test_core_required_bindings_too(fhir_validator: ProfileValidator) -> None:
    issues = fhir_validator.issues(_case("finding-bogus-status"))
    assert _errors(issues, "medplum") == []
    assert any("observation-status" in m for m in _errors(issues, "bindings"))


def test_closed_slicing_and_slice_content_by_the_python_layer(
    fhir_validator: ProfileValidator,
) -> None:
    issues = fhir_validator.issues(_case("step2-component-of-step3"))
    assert _errors(issues, "medplum") == []
    assert _errors(issues, "slices")
    issues = fhir_validator.issues(_case("step2-reason-not-text"))
    assert any("not allowed" in m for m in _errors(issues, "slices"))


def test_extension_values_by_the_python_layer(fhir_validator: ProfileValidator) -> None:
    issues = fhir_validator.issues(_case("step4-factor-kind-unknown"))
    assert _errors(issues, "medplum") == []
    assert _errors(issues, "extensions")


def test_a_resource_without_profile_is_checked_against_fhir(
    fhir_validator: ProfileValidator,
) -> None:
    assert fhir_validator.validate({"resourceType": "Patient", "gender": "male"}) == []
    assert fhir_validator.validate({"resourceType": "Patient", "bogus": 1})
    assert fhir_validator.validate({"no": "resourceType"})


def test_unknown_profile_of_ours_is_an_error(fhir_validator: ProfileValidator) -> None:
    resource = {
        "resourceType": "Observation",
        "meta": {"profile": ["https://kindreflex-ed.be/fhir/StructureDefinition/nope"]},
    }
    assert any("Unknown profile" in m for m in fhir_validator.validate(resource))


def test_our_invariants_hold_whatever_codings_an_ehr_adds(
    fhir_validator: ProfileValidator,
) -> None:
    """An EHR may add a translation to a code. The invariants compared ``coding.code`` with
    ``=``, which with two codings is empty: a valid niet-pluis failed kr-s2-1, and 'other'
    without a text passed kr-flag-2 (found by a review of the guide)."""
    translation = {"system": "http://snomed.info/sct", "code": "74964007"}
    step2 = _generated("Observation-Step2Example")
    for component in step2["component"]:
        component["code"]["coding"].append(translation)
    assert fhir_validator.validate(step2) == []

    closed = _generated("Flag-ClosedConcernExample")
    (reason,) = [e for e in closed["extension"] if e["url"].endswith("concern-close-reason")]
    other = {"system": reason["valueCodeableConcept"]["coding"][0]["system"], "code": "other"}
    reason["valueCodeableConcept"] = {"coding": [other, translation]}
    assert any("kr-flag-2" in m for m in _errors(fhir_validator.issues(closed), "medplum"))


def _generated(name: str) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads(
        (FHIR_PROFILES_DIR / "fsh-generated" / "resources" / f"{name}.json").read_text()
    )
    return resource
