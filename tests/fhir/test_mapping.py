"""service.fhir.mapping: the seed 001 case mapped to FHIR, every resource valid."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from service.admin.partners_io import organization
from service.fhir import mapping, terminology
from service.fhir.client import FhirUnreadable, Resource
from service.protocol import (
    AgreedAction,
    CaseClosure,
    Child,
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
    KindreflexCase,
    LivesWith,
    PregnancyOf,
    ProgressAssessment,
    ReferralStatus,
    ReferralTarget,
    SafetyAssessment,
    Step,
    Step1Finding,
    Step2Finding,
    Step4Decision,
    Step5Progress,
    Step6Referral,
    TeamDecision,
    referral_subjects,
)
from service.tenant_config import default_partners
from tests.support.validator import ProfileValidator
from tests.support.workshop import episode_1, episode_2, episode_3

BRUSSELS = ZoneInfo("Europe/Brussels")
NOW = datetime(2026, 5, 18, 13, 5, tzinfo=BRUSSELS)
NURSE = "https://ehr.example.be/fhir/Practitioner/nurse-an"
PATIENT = "Patient/mother"
VK = "Organization/vk-oost-vlaanderen"


def _uuid(n: int) -> str:
    return f"urn:uuid:00000000-0000-4000-8000-{n:012d}"


def _child_refs(children: tuple[Child, ...]) -> dict[str, str]:
    return {child.ref: _uuid(i + 1) for i, child in enumerate(children)}


def test_seed_001_case_maps_to_valid_resources(fhir_validator: ProfileValidator) -> None:
    case = episode_3(episode_2(episode_1()))
    refs = _child_refs(case.children)
    written: list[dict[str, object]] = []
    for child in case.children:
        written.append(
            mapping.child_related_person(
                child, patient_ref=PATIENT, identifier=mapping.identifier("child")
            )
        )
    finding_refs: dict[Step, str] = {}
    for n, finding in enumerate(case.findings, start=100):
        referral_ref = _uuid(99) if finding.step is Step.STEP_6 else None
        resource = mapping.finding_observation(
            finding,
            patient_ref=PATIENT,
            encounter_ref=case.encounter_ref,
            child_refs=refs,
            identifier=mapping.identifier("finding"),
            referral_ref=referral_ref,
            plan_version="kindreflex-generic-2021",
        )
        finding_refs[finding.step] = _uuid(n)
        written.append(resource)
    referral = case.findings[-1]
    assert isinstance(referral, Step6Referral)
    written.append(
        mapping.referral_service_request(
            referral,
            patient_ref=PATIENT,
            encounter_ref=case.encounter_ref,
            performer_ref=VK,
            reason_refs=[finding_refs[Step.STEP_5]],
            about=[refs[child.ref] for child in referral_subjects(case, referral)[0]],
            identifier=mapping.identifier("referral"),
            acute_danger=case.acute_danger,
        )
    )
    written.append(
        mapping.concern_flag(
            patient_ref=PATIENT,
            author=NURSE,
            flagged_at=NOW,
            identifier=mapping.identifier("concern"),
            last_step=Step.STEP_6,
        )
    )
    written.append(
        mapping.provenance(targets=[_uuid(i) for i in range(1, 4)], author=NURSE, recorded=NOW)
    )
    assert len(written) == 2 + 7 + 3
    for resource in written:
        assert fhir_validator.validate(resource) == [], resource


def test_finding_codes_and_references() -> None:
    case = episode_2(episode_1())
    refs = _child_refs(case.children)
    step4 = case.findings[-1]
    assert isinstance(step4, Step4Decision)
    resource = mapping.finding_observation(
        step4,
        patient_ref=PATIENT,
        encounter_ref=case.encounter_ref,
        child_refs=refs,
        identifier={"system": terminology.identifier_system("finding"), "value": "x"},
    )
    assert resource["meta"]["profile"] == [terminology.profile_url("kindreflex-step4-finding")]
    assert resource["code"]["coding"][0]["code"] == "step-4"
    assert resource["valueCodeableConcept"]["coding"][0]["code"] == "concerning-willing"
    assert resource["encounter"] == {"reference": "Encounter/episode-2"}  # the finding's own
    assert resource["performer"] == [{"reference": step4.recorded_by}]
    kinds = {
        c["valueCodeableConcept"]["coding"][0]["code"]: c["extension"][0]["valueCoding"]["code"]
        for c in resource["component"]
        if c["code"]["coding"][0]["code"] == "factor"
    }
    assert kinds["asks-for-help"] == "protective"
    assert kinds["school-absence"] == "risk"


def test_child_round_trip() -> None:
    child = Child(
        "c1",
        "Emma Peeters",
        date(2017, 9, 12),
        ChildRelationship.NIECE_OR_NEPHEW,
        LivesWith.PART_TIME,
    )
    resource = mapping.child_related_person(
        child, patient_ref=PATIENT, identifier=mapping.identifier("child", "u-1")
    )
    assert resource["name"] == [{"text": "Emma Peeters"}]
    back = mapping.child_from_related_person({**resource, "id": "rp1"})
    assert back == dataclasses.replace(child, ref="RelatedPerson/rp1")
    without_id = mapping.child_from_related_person(resource)
    assert without_id is not None
    assert without_id.ref == "u-1"
    assert mapping.child_from_related_person({"resourceType": "Patient"}) is None


@pytest.mark.parametrize("name", ["Noor De Smet", "Lotte van den Berg", "PEETERS Emma", "Mila"])
def test_a_childs_name_is_written_as_typed_without_a_guessed_family_name(name: str) -> None:
    """The name was split on its last space: "Noor De Smet" became given Noor De, family
    Smet in the EHR's own name fields (Flemish surnames often have a particle)."""
    child = Child("c1", name, date(2017, 9, 12), ChildRelationship.NATURAL_CHILD, LivesWith.NOT)
    resource = mapping.child_related_person(
        child, patient_ref=PATIENT, identifier=mapping.identifier("child")
    )
    assert resource["name"] == [{"text": name}]
    back = mapping.child_from_related_person({**resource, "id": "rp1"})
    assert back is not None
    assert back.name == name


def _child_as_read(**elements: object) -> Resource:
    """Emma's RelatedPerson as the FHIR server returns it, ``elements`` changed by the EHR."""
    child = Child(
        "c1", "Emma Peeters", date(2017, 9, 12), ChildRelationship.CHILD, LivesWith.PERMANENTLY
    )
    resource = mapping.child_related_person(
        child, patient_ref=PATIENT, identifier=mapping.identifier("child", "u-1")
    )
    return {**resource, "id": "rp1", "meta": {**resource["meta"], "versionId": "2"}, **elements}


@pytest.mark.parametrize(
    ("elements", "problem"),
    [
        ({"birthDate": "2017-09"}, "birthDate is not a full date"),  # valid FHIR, no day
        ({"birthDate": "2017"}, "birthDate is not a full date"),
        ({"birthDate": "2017-02-30"}, "birthDate is not a date of the calendar"),
        (
            {"relationship": [{"coding": [{"system": "urn:ehr", "code": "stepchild"}]}]},
            "relationship has no code of ValueSet child-relationship",
        ),
        ({"relationship": []}, "relationship has no code of ValueSet child-relationship"),
        ({"name": [{"use": "old", "text": "Emma Janssens"}]}, "name has no name to show"),
    ],
    ids=["year-month", "year", "30-february", "relationship-of-the-ehr", "no-relationship",
         "only-an-old-name"],
)  # fmt: skip
def test_a_child_of_ours_the_ehr_changed_is_unreadable_not_dropped(
    elements: dict[str, object], problem: str
) -> None:
    """A child of ours the readers could not read was None, as if it were no child: left
    off the nurse's list and out of the case, so that a referral naming all the children
    did not name it (found by review). It is one of ours (profile, identifier, lives-with):
    it cannot be read, and the error names it."""
    with pytest.raises(mapping.UnreadableResourceError) as unreadable:
        mapping.child_from_related_person(_child_as_read(**elements))
    assert isinstance(unreadable.value, FhirUnreadable)  # the screens' "not FHIR" handling
    assert unreadable.value.resource == "RelatedPerson/rp1"
    assert problem in unreadable.value.problem
    assert "2017" not in str(unreadable.value)  # the element is named, not its value


def test_a_lives_with_coding_of_the_ehrs_beside_ours_is_read_and_without_ours_unreadable() -> None:
    lives_with = terminology.extension_url("lives-with")
    ehr_first = {"url": lives_with, "valueCoding": {"system": "urn:ehr", "code": "home"}}
    ours = _child_as_read()
    read = mapping.child_from_related_person({**ours, "extension": [ehr_first, *ours["extension"]]})
    assert read is not None
    assert read.lives_with is LivesWith.PERMANENTLY
    with pytest.raises(mapping.UnreadableResourceError, match="extension lives-with"):
        mapping.child_from_related_person({**ours, "extension": [ehr_first]})


def test_a_withdrawn_child_and_the_ehrs_own_relatives_are_no_children() -> None:
    """R4 RelatedPerson has no entered-in-error status: an EHR withdraws one entered by
    mistake with ``active`` false. It was still read as a child (found by review): shown to
    the nurse, in the case, on a referral. A withdrawn child is left out, readable or not."""
    assert mapping.child_from_related_person(_child_as_read(active=False)) is None
    assert mapping.child_from_related_person(_child_as_read(active=False, birthDate="2017")) is None
    assert mapping.child_from_related_person(_child_as_read(active=True)) is not None
    assert mapping.withdrawn(_child_as_read(active=False))
    assert mapping.withdrawn({"resourceType": "Observation", "status": "entered-in-error"})
    assert not mapping.withdrawn(_child_as_read())
    grandmother = {
        "resourceType": "RelatedPerson",
        "id": "rp9",
        "patient": {"reference": PATIENT},
        "relationship": [{"coding": [{"system": "urn:ehr", "code": "grandmother"}]}],
        "name": [{"text": "Oma"}],
        "birthDate": "1950",
    }
    assert mapping.child_from_related_person(grandmother) is None  # the EHR's, not ours


@pytest.mark.parametrize(
    ("names", "shown"),
    [
        (
            [
                {"use": "old", "family": "Janssens", "given": ["Sofie"],
                 "period": {"end": "2019-06-01"}},
                {"use": "official", "family": "Peeters", "given": ["Sofie"]},
            ],
            "Sofie Peeters",
        ),
        ([{"use": "nickname", "text": "Fie"}, {"text": "Sofie Peeters"}], "Sofie Peeters"),
        ([{"use": "usual", "text": "Sofie P."}, {"use": "official", "text": "Sofie Peeters"}],
         "Sofie Peeters"),
        ([{"use": "official", "text": "Sofie Janssens", "period": {"end": "2019-06-01"}},
          {"use": "usual", "text": "Sofie Peeters"}], "Sofie Peeters"),
        ([{"use": "official", "text": "Sofie Peeters", "period": {"end": "2030-01-01"}}],
         "Sofie Peeters"),  # the only one: it may still be current
        ([{"use": "official"}, {"use": "usual", "text": "Sofie Peeters"}], "Sofie Peeters"),
        ([{"use": "old", "text": "Sofie Janssens"}], None),
        ("Sofie", None),
        ([], None),
    ],
    ids=["old-first", "nickname-first", "usual-first", "ended-official", "ends-later",
         "empty-official", "only-old", "not-a-list", "none"],
)  # fmt: skip
def test_the_name_shown_is_the_current_official_one_not_the_first(
    names: object, shown: str | None
) -> None:
    """The banner and the worklist showed a person's first name whatever its use: a patient
    whose EHR keeps her name before her marriage first (use old) was shown by that name, a
    wrong-patient risk (found by review)."""
    patient = {"resourceType": "Patient", "name": names, "birthDate": "1990-04"}
    assert mapping.display_name(patient) == shown
    assert mapping.patient_identity(patient).name == shown


def test_a_child_an_ehr_recorded_with_its_ssin_is_valid(fhir_validator: ProfileValidator) -> None:
    """No screen asks a child's national number, so the service writes none; an EHR may
    record one in the guide's identifier:ssin slice, and the child is still valid."""
    child = Child("c1", "Noah", date(2022, 10, 3), ChildRelationship.CHILD, LivesWith.PERMANENTLY)
    resource = mapping.child_related_person(
        child, patient_ref=PATIENT, identifier=mapping.identifier("child")
    )
    ssin = terminology.element_pattern("kindreflex-child", "RelatedPerson.identifier:ssin.system")
    assert str(ssin).endswith("/NamingSystem/ssin")
    resource["identifier"].append({"system": ssin, "value": "22100312345"})
    assert fhir_validator.validate(resource) == []


def _expecting(expected: ExpectedChild) -> dict[str, Any]:
    """The expected child's Observation as the nurse's save writes it."""
    return mapping.expecting_observation(
        expected,
        patient_ref=PATIENT,
        encounter_ref=None,
        performer=NURSE,
        recorded_at=NOW,
        identifier=mapping.identifier("finding"),
    )


@pytest.mark.parametrize("expected_date", [None, date(2027, 4, 15)])
def test_expecting_child(fhir_validator: ProfileValidator, expected_date: date | None) -> None:
    resource = _expecting(ExpectedChild(PregnancyOf.PARTNER, expected_date))
    assert fhir_validator.validate(resource) == []
    assert ("component" in resource) is (expected_date is not None)


LOINC_DELIVERY_DATE = {
    "system": "http://loinc.org",
    "code": "11778-8",
    "display": "Delivery date Estimated",
}


@pytest.mark.parametrize("kept", ["both", "ours", "loinc"])
def test_the_expected_delivery_date_is_coded_with_loinc_beside_ours_and_read_by_either(
    fhir_validator: ProfileValidator, kept: str
) -> None:
    """The due date carries LOINC 11778-8 beside the guide's code, so that a reader who
    knows LOINC and not this guide finds it (before: the guide's code only). It is read
    back by either coding: Observations written before have only ours, and an EHR may
    keep only LOINC's."""
    due = date(2027, 4, 15)
    written = _expecting(ExpectedChild(PregnancyOf.PATIENT, due))
    (component,) = written["component"]
    ours = terminology.coding("finding-component", "expected-delivery-date")
    assert component["code"]["coding"] == [ours, LOINC_DELIVERY_DATE]
    assert fhir_validator.validate(written) == []

    codings = {"both": [ours, LOINC_DELIVERY_DATE], "ours": [ours], "loinc": [LOINC_DELIVERY_DATE]}
    as_read = {**written, "component": [{**component, "code": {"coding": codings[kept]}}]}
    if kept != "loinc":  # the profile finds the component by the guide's code
        assert fhir_validator.validate(as_read) == []
    assert mapping.expected_child_from_observation(as_read) == ExpectedChild(
        PregnancyOf.PATIENT, due
    )


def _expecting_only_triage() -> tuple[Step1Finding, Step2Finding]:
    """A pregnant patient who cares for no child, and the nurse's niet-pluis about it."""
    step1 = Step1Finding(
        recorded_by=NURSE,
        recorded_at=NOW,
        expecting=ExpectedChild(PregnancyOf.PATIENT, date(2026, 9, 1)),
    )
    step2 = Step2Finding(
        recorded_by=NURSE,
        recorded_at=NOW,
        assessment=SafetyAssessment.NIET_PLUIS,
        reasons=("Drinks daily during the pregnancy.",),
    )
    return step1, step2


def test_an_expected_child_is_read_back_with_its_step_1_and_the_case_goes_on(
    fhir_validator: ProfileValidator,
) -> None:
    """The step 1 of a pregnant patient without children names the pregnancy's Observation
    (hasMember); read back with it, the step 1 still expects the child, so the replayed
    case goes on to step 2 and its niet-pluis opens a concern. Before, the pregnancy was
    lost on the way back: "no children, nothing expected", and the step 2 was refused."""
    step1, step2 = _expecting_only_triage()
    assert step1.expecting is not None
    pregnancy = mapping.expecting_observation(
        step1.expecting,
        patient_ref=PATIENT,
        encounter_ref="Encounter/e1",
        performer=NURSE,
        recorded_at=NOW,
        identifier=mapping.identifier("finding"),
    )
    observations = [
        mapping.finding_observation(
            finding,
            patient_ref=PATIENT,
            encounter_ref=None,
            child_refs={},
            identifier=mapping.identifier("finding"),
            expecting_ref=_uuid(7),
        )
        for finding in (step1, step2)
    ]
    assert observations[0]["hasMember"] == [{"reference": _uuid(7)}]
    assert "hasMember" not in observations[1]
    for resource in (pregnancy, *observations):
        assert fhir_validator.validate(resource) == [], resource
    # as the server holds them: the transaction's urn:uuid resolved to the Observation's id
    stored = {**pregnancy, "id": "preg-1"}
    step1_stored = {**observations[0], "hasMember": [{"reference": "Observation/preg-1"}]}
    read = mapping.expected_child_from_observation(stored)
    assert read is not None
    assert read == step1.expecting
    assert mapping.expected_child_reference(step1_stored) == "Observation/preg-1"
    back = [
        mapping.finding_from_observation(resource, expecting={"Observation/preg-1": read})
        for resource in (step1_stored, observations[1])
    ]
    assert back == [step1, step2]
    case = KindreflexCase.replay(PATIENT, "Encounter/e1", [f for f in back if f is not None])
    assert case.expecting == step1.expecting
    assert case.has_open_concern
    # a retracted pregnancy records nothing
    retracted = {**stored, "status": "entered-in-error"}
    assert mapping.expected_child_from_observation(retracted) is None
    assert mapping.expected_child_from_observation(observations[0]) is None


def test_a_step_1_with_an_expected_child_needs_the_reference_of_its_observation() -> None:
    step1, _ = _expecting_only_triage()
    with pytest.raises(ValueError, match="expected child"):
        mapping.finding_observation(
            step1,
            patient_ref=PATIENT,
            encounter_ref=None,
            child_refs={},
            identifier=mapping.identifier("finding"),
        )


def test_a_referral_about_an_expected_child_names_its_observation(
    fhir_validator: ProfileValidator,
) -> None:
    """A referral about an expected child names the expected child's Observation, alone or
    beside the children, and validates against the profile; before, a case with no child
    said ``"supportingInfo": []`` (no valid FHIR: an empty array; the profile wants one at
    least). With nobody to name there is no ``supportingInfo`` at all."""
    referral = Step6Referral(
        recorded_by=NURSE,
        recorded_at=NOW,
        target=ReferralTarget.VK,
        with_cooperation=True,
        patient_informed=True,
    )
    common: dict[str, Any] = {
        "patient_ref": PATIENT,
        "encounter_ref": None,
        "performer_ref": VK,
        "reason_refs": ["Observation/s4"],
        "identifier": mapping.identifier("referral"),
        "acute_danger": False,
    }
    for about in (["Observation/preg-1"], ["RelatedPerson/c1", "Observation/preg-1"]):
        request = mapping.referral_service_request(referral, about=about, **common)
        assert request["supportingInfo"] == [{"reference": r} for r in about]
        assert fhir_validator.validate(request) == []
    nobody = mapping.referral_service_request(referral, about=[], **common)
    assert "supportingInfo" not in nobody  # never an empty array


def _findings() -> list[Finding]:
    return [
        Step2Finding(
            recorded_by=NURSE,
            recorded_at=NOW,
            assessment=SafetyAssessment.UNCLEAR,
            reasons=("Presented after partner violence; children at home with the partner",),
            acute_danger=True,
            triggers=frozenset({HagueTrigger.DOMESTIC_VIOLENCE}),
        ),
        Step4Decision(
            recorded_by=NURSE,
            recorded_at=NOW,
            decision=TeamDecision.ACUTE_DANGER,
            factors=(
                Factor("http://snomed.info/sct|706893006", FactorKind.RISK, "hospital code"),
                Factor("unknown-local", FactorKind.RISK),
            ),
            children_heard=(HeardChild("c1", consent_given=True),),
        ),
        Step2Finding(
            recorded_by=NURSE,
            recorded_at=NOW,
            assessment=SafetyAssessment.NO_CONCERN,
            consultations=frozenset({Consultation.CLB, Consultation.EXPERT}),
        ),
        *_casework_findings(),
    ]


def _casework_findings() -> list[Finding]:
    """Steps 4-6 with every casework field (key persons, follow-ups, the contact); the
    step 6 is the police after acute danger, the patient not informed first."""
    return [
        Step4Decision(
            recorded_by=NURSE,
            recorded_at=NOW,
            decision=TeamDecision.CONCERNING_WILLING,
            consultations=frozenset({Consultation.COLLEAGUE}),
            discussed_with_patient=True,
            key_persons=(
                KeyPerson(KeyPersonRole.PARTNER),
                KeyPerson(KeyPersonRole.OTHER, "neighbour who picks the children up"),
            ),
            patient_explanation="She says her partner is tired and does not mean it.",
            children_heard=(
                HeardChild("c1", consent_given=True, own_say="Wants mum to get help."),
            ),
            team_members=("social worker ED", "dr. Janssens, paediatrician"),
        ),
        Step5Progress(
            recorded_by=NURSE,
            recorded_at=NOW,
            progress=ProgressAssessment.IMPROVING,
            agreed_actions=(
                AgreedAction("appointment at the CAW", date(2026, 5, 25)),
                AgreedAction("the grandmother takes the children on Wednesdays"),
            ),
            next_follow_up=date(2026, 6, 1),
            note="Progress: the patient kept the first appointment.",
        ),
        Step6Referral(
            recorded_by=NURSE,
            recorded_at=NOW,
            target=ReferralTarget.POLICE,
            with_cooperation=False,
            patient_informed=False,
            not_informed_reason="Informing her first would put the children at risk.",
            follow_up_actions=("the social nurse calls the patient tomorrow",),
            contact=FacilityContact(date(2026, 5, 18), "inspector De Smet", ContactChannel.PHONE),
        ),
    ]


@pytest.mark.parametrize("finding", _findings(), ids=lambda f: type(f).__name__)
def test_acute_danger_and_hospital_codes_map_to_valid_resources(
    fhir_validator: ProfileValidator, finding: Finding
) -> None:
    resource = mapping.finding_observation(
        finding,
        patient_ref=PATIENT,
        encounter_ref="Encounter/e",
        child_refs={"c1": "RelatedPerson/c1"},
        identifier=mapping.identifier("finding"),
    )
    assert fhir_validator.validate(resource) == []
    if isinstance(finding, Step6Referral):
        referral = _referral_to_the_police(finding, acute_danger=True)
        assert fhir_validator.validate(referral) == []
        assert referral["note"] == [{"text": finding.not_informed_reason}]
        assert referral["priority"] == "stat"


def test_closed_concern_and_update_provenance(fhir_validator: ProfileValidator) -> None:
    flag = mapping.concern_flag(
        patient_ref=PATIENT,
        author=NURSE,
        flagged_at=NOW,
        identifier=mapping.identifier("concern"),
        last_step=Step.STEP_3,
        triggers=[HagueTrigger.SUBSTANCE_ABUSE],
        closed_at=NOW.replace(hour=18),
        closure=CaseClosure(CloseReason.OTHER, "moved abroad"),
    )
    assert flag["status"] == "inactive"
    assert fhir_validator.validate(flag) == []
    assert mapping.closure_from_flag(flag) == CaseClosure(CloseReason.OTHER, "moved abroad")
    prov = mapping.provenance(targets=["Flag/1"], author=NURSE, recorded=NOW, update=True)
    assert fhir_validator.validate(prov) == []
    assert prov["activity"]["coding"][0]["code"] == "UPDATE"


def test_naive_times_and_unknown_children_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        mapping.provenance(targets=["Flag/1"], author=NURSE, recorded=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="no RelatedPerson"):
        mapping.finding_observation(
            _findings()[1],
            patient_ref=PATIENT,
            encounter_ref=None,
            child_refs={},
            identifier=mapping.identifier("finding"),
        )


def test_findings_round_trip_through_fhir() -> None:
    """finding_from_observation(finding_observation(f)) == f for the whole seed 001 case."""
    case = episode_3(episode_2(episode_1()))
    identity = {child.ref: child.ref for child in case.children}
    children = {child.ref: child for child in case.children}
    for finding in [*case.findings, *_findings()]:
        resource = mapping.finding_observation(
            finding,
            patient_ref=PATIENT,
            encounter_ref=None,
            child_refs={**identity, "c1": "c1"},
            identifier=mapping.identifier("finding"),
        )
        assert mapping.finding_from_observation(resource, children=children) == finding


def test_finding_from_other_observations_is_none() -> None:
    expecting = mapping.expecting_observation(
        ExpectedChild(PregnancyOf.PATIENT),
        patient_ref=PATIENT,
        encounter_ref=None,
        performer=NURSE,
        recorded_at=NOW,
        identifier=mapping.identifier("finding"),
    )
    assert mapping.finding_from_observation(expecting) is None
    assert mapping.finding_from_observation({"resourceType": "Flag"}) is None


def test_a_closed_concern_needs_its_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        mapping.concern_flag(
            patient_ref=PATIENT,
            author=NURSE,
            flagged_at=NOW,
            identifier=mapping.identifier("concern"),
            closed_at=NOW,
        )


# ---- reading back what another writer (the EHR) changed ---------------------------------

#: Where the guide's code systems live: a concept with a coding of ours gets a translation.
_OURS = terminology.code_system_url("kindreflex-step").rsplit("/", 1)[0]
_TRANSLATION = {"system": "http://snomed.info/sct", "code": "225444004", "display": "concern"}


def _translated_first(concept: object) -> None:
    """An EHR's translation put before our coding of ``concept`` (in place)."""
    if isinstance(concept, dict) and any(
        str(c.get("system", "")).startswith(_OURS) for c in concept.get("coding", [])
    ):
        concept["coding"].insert(0, dict(_TRANSLATION))


class _AsNamed(dict[str, str]):
    """Child refs that name each child's RelatedPerson by the child's own ref."""

    def __missing__(self, ref: str) -> str:
        return ref


def _observation_as_read(finding: Finding) -> Resource:
    resource = mapping.finding_observation(
        finding,
        patient_ref=PATIENT,
        encounter_ref=None,
        child_refs=_AsNamed(),
        identifier=mapping.identifier("finding"),
    )
    return {**resource, "id": "o1", "meta": {**resource["meta"], "versionId": "3"}}


@pytest.mark.parametrize(
    "finding",
    [*_findings(), *episode_3(episode_2(episode_1())).findings[1:]],
    ids=lambda f: type(f).__name__,
)
def test_a_finding_is_read_by_the_code_system_of_each_value_whatever_codings_precede(
    finding: Finding,
) -> None:
    """The readers took a concept's first coding: an EHR that codes our findings too (a
    SNOMED translation put first) gave "'225444004' is not a valid SafetyAssessment", a 500
    on the social worker's case page, or a catalogue factor read as a hospital's own
    (found by review). Each value is the code of the guide's code system for it."""
    resource = _observation_as_read(finding)
    _translated_first(resource.get("valueCodeableConcept"))
    for component in resource.get("component", []):
        _translated_first(component.get("valueCodeableConcept"))
    assert mapping.finding_from_observation(resource) == finding


def _component(resource: Resource, code: str) -> dict[str, Any]:
    return next(c for c in resource["component"] if c["code"]["coding"][0]["code"] == code)


def _without(element: str) -> Callable[[Resource], None]:
    return lambda resource: resource.pop(element)


def _component_without(code: str, element: str) -> Callable[[Resource], None]:
    return lambda resource: _component(resource, code).pop(element)


def _set(element: str, value: object) -> Callable[[Resource], None]:
    return lambda resource: resource.__setitem__(element, value)


def _step2_value(*codes: str) -> Callable[[Resource], None]:
    system = terminology.code_system_url("safety-assessment")
    concept = {"coding": [_TRANSLATION, *({"system": system, "code": c} for c in codes)]}
    return _set("valueCodeableConcept", concept)


def _effective_period(resource: Resource) -> None:
    resource["effectivePeriod"] = {"start": resource.pop("effectiveDateTime")}


def _follow_up_date(value: object) -> Callable[[Resource], None]:
    def change(resource: Resource) -> None:
        _component(resource, "agreed-action")["extension"][0] = {
            "url": terminology.extension_url("follow-up-date"),
            "valueString": value,
        }

    return change


def _drop_component(code: str) -> Callable[[Resource], None]:
    def change(resource: Resource) -> None:
        resource["component"] = [
            c for c in resource["component"] if c is not _component(resource, code)
        ]

    return change


_STEP2, _HOSPITAL_FACTORS, _STEP2_CONSULTED = _findings()[:3]
_STEP4, _STEP5, _STEP6 = _casework_findings()


@pytest.mark.parametrize(
    ("finding", "change", "problem"),
    [
        (_STEP2, _without("valueCodeableConcept"),
         "valueCodeableConcept has no code of CodeSystem safety-assessment"),
        (_STEP2, _step2_value(),
         "valueCodeableConcept has no code of CodeSystem safety-assessment"),
        (_STEP2, _step2_value("worried"), "a code that is not in CodeSystem safety-assessment"),
        (_STEP2, _step2_value("unclear", "niet-pluis"), "several codes of CodeSystem"),
        (_STEP2, _effective_period, "effectiveDateTime is not a dateTime with a time"),
        (_STEP2, _set("effectiveDateTime", "2026-05"), "effectiveDateTime is not a dateTime"),
        (_STEP2, _set("effectiveDateTime", "2026-05-18"), "effectiveDateTime is not a dateTime"),
        (_STEP2, _set("effectiveDateTime", "2026-05-18T10:00:00"), "with a time and a time zone"),
        (_STEP2, _component_without("reason", "valueString"),
         "a component reason has no valueString"),
        (_STEP2, _component_without("urgency", "valueBoolean"),
         "a component urgency has no valueBoolean"),
        (_STEP2_CONSULTED, _component_without("consultation", "valueCodeableConcept"),
         "component consultation has no code of CodeSystem consultation-type"),
        (_HOSPITAL_FACTORS, _component_without("factor", "extension"),
         "a component factor of the hospital's own has no factor-kind"),
        (_STEP4, _component_without("child-say", "valueString"),
         "a component child-say has no valueString"),
        (_STEP4, _component_without("child-consent", "extension"),
         "a component about a child does not name one child"),
        (_STEP4, _component_without("key-person", "valueCodeableConcept"),
         "component key-person has no code of CodeSystem key-person-role"),
        (_STEP5, _follow_up_date("2026-05-25"), "extension follow-up-date is not a full date"),
        (_STEP5, _component_without("agreed-action", "valueString"),
         "a component agreed-action has no valueString"),
        (_STEP5, lambda r: _component(r, "next-follow-up").__setitem__("valueDateTime", "2026-06"),
         "a component next-follow-up's valueDateTime is not a full date"),
        (_STEP6, _drop_component("contact-channel"),
         "a contact-date without its component contact-channel"),
        (_STEP6, _component_without("with-cooperation", "valueBoolean"),
         "a component with-cooperation has no valueBoolean"),
    ],
    ids=["no-value", "no-code-of-ours", "unknown-code", "two-codes", "effective-period",
         "partial-effective", "effective-day", "effective-without-zone", "reason-without-text",
         "urgency-without-boolean", "consultation-without-value", "hospital-factor-without-kind",
         "child-say-without-text", "consent-without-child", "key-person-without-role",
         "follow-up-date-not-a-date", "agreed-action-without-text", "partial-next-follow-up",
         "contact-without-channel", "cooperation-without-boolean"],
)  # fmt: skip
def test_a_finding_not_as_its_profile_says_is_unreadable_and_named(
    finding: Finding, change: Callable[[Resource], None], problem: str
) -> None:
    """What the EHR changed so that a finding of ours no longer says what its profile
    requires crashed the readers (ValueError, KeyError: a 500 on the case page) or was
    read in part (a reason without its text left out). One error names the Observation
    and what is wrong with it (found by review)."""
    resource = _observation_as_read(finding)
    change(resource)
    with pytest.raises(mapping.UnreadableResourceError) as unreadable:
        mapping.finding_from_observation(resource)
    assert unreadable.value.resource == "Observation/o1"
    assert problem in unreadable.value.problem
    assert str(unreadable.value).startswith("Observation/o1 cannot be read: ")


def test_a_finding_the_protocol_refuses_to_build_is_unreadable_and_named() -> None:
    """The EHR removed the reasons of an "unclear" step 2: each element is as its profile
    says, but the protocol refuses such a finding. Its error passed the reader as it was
    and the case page said the FHIR server refused to read the case, the API a 422 as if
    the social worker's input broke a rule (found by review). The Observation is named with
    the rule, not the protocol's message."""
    resource = _observation_as_read(_STEP2)
    _drop_component("reason")(resource)
    with pytest.raises(mapping.UnreadableResourceError) as unreadable:
        mapping.finding_from_observation(resource)
    assert unreadable.value.resource == "Observation/o1"
    assert unreadable.value.problem == "breaks the Kindreflex protocol's rule reasons-required"


def test_a_note_the_ehr_added_is_not_the_recorders_signed_or_not() -> None:
    """Every note of the Observation was joined into the finding's: a note the EHR's user
    added was shown and sent as the nurse's or the social worker's (found by review). The
    recorder's is the first written with the finding (no author, no time); others are
    added notes. A plain one after hers made the finding, and the case, unreadable: it is
    an added note by someone unnamed."""
    resource = _observation_as_read(dataclasses.replace(_STEP4, note="Hers."))
    theirs = {"authorReference": {"reference": "Practitioner/dr"}, "time": "2026-05-19",
              "text": "The EHR's."}  # fmt: skip
    resource["note"].insert(0, theirs)
    read = mapping.finding_from_observation(resource)
    assert read is not None
    assert read.note == "Hers."
    assert mapping.added_notes(resource) == (
        mapping.AddedNote("The EHR's.", "Practitioner/dr", "2026-05-19"),
    )
    resource["note"].append({"text": "Unsigned."})
    read = mapping.finding_from_observation(resource)
    assert read is not None
    assert read.note == "Hers."
    assert mapping.added_notes(resource)[-1] == mapping.AddedNote("Unsigned.", None, None)


def test_a_catalogue_factor_without_its_kind_is_of_the_kind_the_catalogue_gives() -> None:
    """A protective factor whose factor-kind extension the EHR dropped was read as a risk."""
    decision = Step4Decision(
        recorded_by=NURSE,
        recorded_at=NOW,
        decision=TeamDecision.SAFE,
        consultations=frozenset({Consultation.COLLEAGUE}),
        factors=(Factor("supportive-network", FactorKind.PROTECTIVE),),
    )
    resource = _observation_as_read(decision)
    _component(resource, "factor").pop("extension")
    read = mapping.finding_from_observation(resource)
    assert isinstance(read, Step4Decision)
    assert read.factors == decision.factors


def _step1(*focus: str) -> Resource:
    """A step 1 naming the RelatedPersons ``focus``, as read."""
    children = tuple(
        Child(ref, f"Kind {n}", date(2019, 1, n + 1), ChildRelationship.CHILD,
              LivesWith.PERMANENTLY)
        for n, ref in enumerate(focus)
    )  # fmt: skip
    finding = Step1Finding(recorded_by=NURSE, recorded_at=NOW, children=children)
    resource = mapping.finding_observation(
        finding,
        patient_ref=PATIENT,
        encounter_ref="Encounter/e",
        child_refs={ref: ref for ref in focus},
        identifier=mapping.identifier("finding"),
    )
    return {**resource, "id": "s1"}


def test_a_step_1_naming_a_child_not_read_is_unreadable_and_a_withdrawn_one_is_left_out() -> None:
    """A step 1 read back kept only the children it was given (``if r in known``): one that
    could not be read was left out of the case, and so of a referral naming all the
    children (found by review). A child the EHR withdrew (active false) is left out: it
    is no child any more."""
    emma = mapping.child_from_related_person(_child_as_read())
    assert emma is not None
    step1 = _step1(emma.ref, "RelatedPerson/rp2")
    with pytest.raises(mapping.UnreadableResourceError) as unreadable:
        mapping.finding_from_observation(step1, children={emma.ref: emma})
    assert unreadable.value.resource == "Observation/s1"
    assert "focus names 1 RelatedPerson(s)" in unreadable.value.problem
    read = mapping.finding_from_observation(
        step1, children={emma.ref: emma}, withdrawn_children={"RelatedPerson/rp2"}
    )
    assert isinstance(read, Step1Finding)
    assert read.children == (emma,)
    # without children to check against (a save's own bundle), it names none
    assert mapping.finding_from_observation(step1) == Step1Finding(
        recorded_by=NURSE, recorded_at=NOW, encounter_ref="Encounter/e"
    )


def _closed_flag(**over: object) -> Resource:
    flag = mapping.concern_flag(
        patient_ref=PATIENT,
        author=NURSE,
        flagged_at=NOW,
        identifier=mapping.identifier("concern"),
        closed_at=NOW.replace(hour=18),
        closure=CaseClosure(CloseReason.OTHER, "moved abroad"),
    )
    return {**flag, "id": "f1", **over}


def test_a_close_reason_is_read_by_its_code_system_and_an_unknown_one_is_named() -> None:
    flag = _closed_flag()
    (reason,) = flag["extension"]
    reason["valueCodeableConcept"]["coding"].insert(0, {"system": "urn:ehr", "code": "X"})
    assert mapping.closure_from_flag(flag) == CaseClosure(CloseReason.OTHER, "moved abroad")
    reason["valueCodeableConcept"]["coding"][1]["code"] = "emigrated"
    with pytest.raises(mapping.UnreadableResourceError) as unreadable:
        mapping.closure_from_flag(flag)
    assert str(unreadable.value) == (
        "Flag/f1 cannot be read: extension concern-close-reason has a code that is not in "
        "CodeSystem case-close-reason"
    )
    with pytest.raises(mapping.UnreadableResourceError, match="not one valueCodeableConcept"):
        mapping.closure_from_flag(_closed_flag(extension=[{"url": reason["url"]}]))


def _referral() -> Resource:
    """A step 6 referral (to the police, after acute danger), as the casework writes it."""
    return mapping.referral_service_request(
        _casework_findings()[-1],  # type: ignore[arg-type] # the step 6 finding
        patient_ref=PATIENT,
        encounter_ref=None,
        performer_ref=VK,
        reason_refs=["Observation/s4"],
        about=["RelatedPerson/c1"],
        identifier=mapping.identifier("referral"),
        acute_danger=True,
    )


def _referral_to_the_police(finding: Step6Referral, *, acute_danger: bool) -> dict[str, Any]:
    """The ServiceRequest of ``finding``, to the police, following the team's step 4."""
    return mapping.referral_service_request(
        finding,
        patient_ref=PATIENT,
        encounter_ref=None,
        performer_ref="Organization/police",
        reason_refs=["Observation/s4"],
        about=["RelatedPerson/c1"],
        identifier=mapping.identifier("referral"),
        acute_danger=acute_danger,
    )


@pytest.mark.parametrize(("acute_danger", "priority"), [(True, "stat"), (False, "routine")])
def test_a_referral_says_its_priority_stat_after_acute_danger_else_routine(
    fhir_validator: ProfileValidator, acute_danger: bool, priority: str
) -> None:
    """R4 reads a ServiceRequest without priority as normal: a referral made because a
    child is in acute danger must say stat (actioned immediately), and one that is not says
    routine rather than leaving it to the reader."""
    step_6 = _casework_findings()[-1]
    assert isinstance(step_6, Step6Referral)
    referral = _referral_to_the_police(step_6, acute_danger=acute_danger)
    vk = {**referral, "performerType": terminology.codeable_concept("partner-type", "vk")}

    assert vk["priority"] == priority
    assert fhir_validator.validate(vk) == []
    assert mapping.referral_priority(vk) == priority


@pytest.mark.parametrize(("target", "priority"), [("vk", "routine"), ("police", "stat")])
def test_a_referral_written_without_priority_is_read_and_updated_with_one(
    fhir_validator: ProfileValidator, target: str, priority: str
) -> None:
    """Referrals written before the service wrote a priority are on the hospitals' servers:
    read as routine (R4's meaning of a missing priority), one to the parket or the police
    (allowed only with acute danger) as stat; a status update writes that priority, which
    the profile now requires."""
    written = {k: v for k, v in _referral().items() if k != "priority"}
    old = {**written, "performerType": terminology.codeable_concept("partner-type", target)}

    assert mapping.referral_priority(old) == priority
    updated = mapping.referral_with_status(
        old, ReferralStatus.ON_HOLD, author=NURSE, author_name="An Nurse", at=NOW
    )
    assert updated["priority"] == priority
    assert fhir_validator.validate(updated) == []


def test_a_referral_status_change_keeps_earlier_notes(fhir_validator: ProfileValidator) -> None:
    referral = _referral()
    later = NOW.replace(day=20)
    updated = mapping.referral_with_status(
        referral,
        ReferralStatus.ON_HOLD,
        author=NURSE,
        author_name="An Nurse",
        at=later,
        note="VK waits for the family",
    )
    assert updated["status"] == "on-hold"
    assert updated["note"][:-1] == referral["note"]
    assert updated["note"][-1] == {
        "authorReference": {"reference": NURSE},
        "time": later.isoformat(),
        "text": "VK waits for the family",
    }
    assert fhir_validator.validate(updated) == []
    assert (
        mapping.referral_with_status(
            referral, ReferralStatus.ACTIVE, author=NURSE, author_name="An Nurse", at=later
        )["note"]
        == referral["note"]
    )


def test_a_referral_status_note_by_a_practitioner_role_user_names_her_by_her_name(
    fhir_validator: ProfileValidator,
) -> None:
    """A social worker launched with fhirUser PractitionerRole/… (the launch admits her as
    an author) changed a referral's status with a note: the note named her in
    authorReference, which R4 4.0.1 restricts to Practitioner | Patient | RelatedPerson |
    Organization. A server that checks reference targets refused the update (the outbox
    marked it failed for good); one that does not stored invalid R4 (found by review). The
    note names her by her name (authorString); the Provenance still names her role. (The
    validator does not check reference targets: the test says what is written.)"""
    referral = {**_referral(), "id": "r1", "meta": {"versionId": "1"}}
    updated = mapping.referral_with_status(
        referral,
        ReferralStatus.ON_HOLD,
        author="https://ehr.example.be/fhir/PractitionerRole/sw-role-1",
        author_name="Sofie Claes",
        at=NOW,
        note="VK waits for the family",
    )
    assert updated["note"][-1] == {
        "authorString": "Sofie Claes",
        "time": NOW.isoformat(),
        "text": "VK waits for the family",
    }
    assert fhir_validator.validate(updated) == []


def test_an_update_keeps_the_servers_meta_but_what_the_server_manages() -> None:
    """Our update of a resource the server holds: its tags and security labels stay, its
    profiles stay with ours added once, versionId and lastUpdated are not sent back."""
    ours = terminology.profile_url("kindreflex-referral")
    tag = {"system": "https://ehr.example.org/tags", "code": "reviewed-by-gp"}
    security = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
    stored = {
        "versionId": "7",
        "lastUpdated": "2026-05-18T13:05:00+02:00",
        "profile": ["https://ehr.example.org/StructureDefinition/request", ours],
        "tag": [tag],
        "security": [security],
    }
    expected = {
        "profile": ["https://ehr.example.org/StructureDefinition/request", ours],
        "tag": [tag],
        "security": [security],
    }
    assert mapping.meta_on_update(stored, {"profile": [ours]}) == expected
    assert mapping.meta_on_update({"versionId": "1", "tag": [tag]}, {"profile": [ours]}) == {
        "tag": [tag],
        "profile": [ours],
    }
    referral = _referral()
    as_read = {**referral, "id": "r1", "meta": stored}
    updated = mapping.referral_with_status(
        as_read, ReferralStatus.ON_HOLD, author=NURSE, author_name="An Nurse", at=NOW
    )
    assert updated["meta"] == expected


def test_a_referral_status_update_drops_the_servers_narrative_of_the_old_status() -> None:
    """The EHR's server stored the referral with a narrative generated from its data (status
    active). The update changed the status to revoked and sent that narrative back, still
    'generated' (R4: entirely generated from the content): the text people read said a
    revoked referral to the VK was active (found by review). An update that changes the
    referral leaves the narrative out (R4 makes it optional; the server may generate it
    anew); one that changes nothing (the same status, no note) keeps it."""
    narrative = {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Referral: status active</p></div>',
    }
    as_read = {**_referral(), "id": "r1", "meta": {"versionId": "1"}, "text": narrative}

    def updated(status: ReferralStatus) -> Resource:
        return mapping.referral_with_status(
            as_read, status, author=NURSE, author_name="An Nurse", at=NOW
        )

    assert updated(ReferralStatus.REVOKED)["status"] == "revoked"
    assert "text" not in updated(ReferralStatus.REVOKED)
    assert updated(ReferralStatus.ACTIVE)["text"] == narrative


@pytest.mark.parametrize(
    "period",
    [{"start": "2026-05"}, {"start": "2026-05-18"}, {"start": "2026-05-18T13:05:00"}, {}],
    ids=["year-month", "day", "no-time-zone", "no-start"],
)
def test_an_open_concern_whose_start_is_no_moment_is_unreadable_and_named(
    period: dict[str, str],
) -> None:
    """A partial period.start (valid FHIR) crashed the nurse's page (datetime.fromisoformat),
    and a day alone was a datetime without a zone that no other could be compared with
    (found by review). Only a dateTime with its time zone is a concern's start."""
    flag = mapping.concern_flag(
        patient_ref=PATIENT, author=NURSE, flagged_at=NOW, identifier=mapping.identifier("concern")
    )
    garbled = {**flag, "id": "f1", "period": period}
    with pytest.raises(mapping.UnreadableResourceError) as unreadable:
        mapping.open_concern_of(garbled)
    assert str(unreadable.value) == (
        "Flag/f1 cannot be read: period.start is not a dateTime with a time and a time zone"
    )
    with pytest.raises(mapping.UnreadableResourceError, match=r"^Flag/f1 cannot be read"):
        mapping.flag_period(garbled)
    assert mapping.flag_period(flag) == (NOW, None)
    utc = {**flag, "period": {"start": "2026-05-18T11:05:00.1234567Z"}}  # as servers write it
    assert mapping.flag_period(utc)[0] == NOW.replace(microsecond=123456)


def test_an_open_concern_is_read_back_from_its_flag_and_any_other_flag_is_not_one() -> None:
    identifier = mapping.identifier("concern")
    flag = mapping.concern_flag(
        patient_ref=PATIENT,
        author=NURSE,
        flagged_at=NOW,
        identifier=identifier,
        last_step=Step.STEP_4,
        triggers=[HagueTrigger.SUBSTANCE_ABUSE, HagueTrigger.DOMESTIC_VIOLENCE],
    )
    assert mapping.open_concern_of(flag) == mapping.OpenConcern(
        identifier=identifier["value"],
        flagged_at=NOW,
        flagged_by=NURSE,
        last_step=Step.STEP_4,
        triggers=tuple(sorted({HagueTrigger.SUBSTANCE_ABUSE, HagueTrigger.DOMESTIC_VIOLENCE})),
    )
    without_step = {k: v for k, v in flag.items() if k != "extension"}
    handed_off = mapping.open_concern_of(without_step)  # no last step: raised at step 2
    assert handed_off is not None
    assert handed_off.last_step is Step.STEP_2
    not_ours = [
        {**flag, "status": "inactive"},
        {**flag, "code": {"coding": [{"system": "http://loinc.org", "code": "x"}]}},
        {**flag, "identifier": [{"system": "urn:other", "value": "1"}]},
        {**flag, "status": "inactive", "period": {"start": "2026-05"}},
        {**flag, "resourceType": "Observation"},
    ]
    assert [mapping.open_concern_of(other) for other in not_ours] == [None] * len(not_ours)


def _top_must_support(profile_id: str) -> list[str]:
    """The must-support elements of a profile at the resource's top level, slices included
    (``RelatedPerson.gender``, ``RelatedPerson.identifier:ssin``), by element id."""
    sd = terminology.guide().structure_definition(profile_id)
    top = re.compile(rf"{sd['type']}\.[a-zA-Z]+(\[x\])?(:[a-zA-Z]+)?")
    return [
        str(e["id"])
        for e in sd["snapshot"]["element"]
        if e.get("mustSupport") and top.fullmatch(str(e["id"]))
    ]


def _populated(resource: Resource, profile_id: str, element_id: str) -> bool:
    """Whether ``resource`` has the element; a slice of identifier by its system, of
    extension by its url."""
    path, _, slice_name = element_id.partition(":")
    name = path.split(".", 1)[1].removesuffix("[x]")
    values = [v for k, v in resource.items() if k == name or (k.startswith(name) and "[x]" in path)]
    if not slice_name:
        return bool(values)
    sd = terminology.guide().structure_definition(profile_id)
    elements = {str(e["id"]): e for e in sd["snapshot"]["element"]}
    if name == "identifier":
        system = elements[f"{element_id}.system"]["fixedUri"]
        return any(i.get("system") == system for i in resource.get("identifier", []))
    url = elements[element_id]["type"][0]["profile"][0]
    return any(e.get("url") == url for e in resource.get("extension", []))


def test_what_the_service_writes_populates_every_must_support_element() -> None:
    """Must-support says the service populates the element when it knows it: a child as
    the triage writes it (the nurse types name, birth date, relationship, living
    situation) and a directory partner with every field the directory has (its KBO/BCE
    number, a phone) leave no must-support element empty. Before, the child's gender and
    national number and the partner's NIHDI number were must-support though no screen or
    directory ever gives them: a receiver was told to expect what never comes."""
    child = mapping.child_related_person(
        Child(
            "c1", "Noor De Smet", date(2019, 3, 4), ChildRelationship.CHILD, LivesWith.PERMANENTLY
        ),
        patient_ref=PATIENT,
        identifier=mapping.identifier("child"),
    )
    (vk,) = [e for e in default_partners().entries if e.id == "vk-oost-vlaanderen"]
    partner = organization(vk.model_copy(update={"cbe": "0123456749"}))
    assert partner.get("telecom")  # the directory gives the VK's phone
    for resource, profile in (
        (child, "kindreflex-child"),
        (partner, "kindreflex-partner-organization"),
    ):
        elements = _top_must_support(profile)
        assert elements, profile
        assert [e for e in elements if not _populated(resource, profile, e)] == [], profile
