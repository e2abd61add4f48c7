"""service.fhir.mapping: the seed 001 case mapped to FHIR, every resource valid."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from service.fhir import mapping, terminology
from service.fhir.client import Resource
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
)
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
            child_refs=refs,
            identifier=mapping.identifier("referral"),
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
        mapping.provenance(
            targets=[_uuid(i) for i in range(1, 4)], author=NURSE, recorded=NOW, resource_id="p1"
        )
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
    assert mapping.child_from_related_person({**resource, "relationship": []}) is None


def test_child_with_ssin_is_valid(fhir_validator: ProfileValidator) -> None:
    child = Child("c1", "Noah", date(2022, 10, 3), ChildRelationship.CHILD, LivesWith.PERMANENTLY)
    resource = mapping.child_related_person(
        child, patient_ref=PATIENT, identifier=mapping.identifier("child"), ssin="22100312345"
    )
    assert fhir_validator.validate(resource) == []
    assert resource["identifier"][1]["system"].endswith("/NamingSystem/ssin")


@pytest.mark.parametrize("expected_date", [None, date(2027, 4, 15)])
def test_expecting_child(fhir_validator: ProfileValidator, expected_date: date | None) -> None:
    resource = mapping.expecting_observation(
        ExpectedChild(PregnancyOf.PARTNER, expected_date),
        patient_ref=PATIENT,
        encounter_ref=None,
        performer=NURSE,
        recorded_at=NOW,
        identifier=mapping.identifier("finding"),
    )
    assert fhir_validator.validate(resource) == []
    assert ("component" in resource) is (expected_date is not None)


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
    """A referral for a patient who cares for no child but expects one names the expected
    child's Observation as who it is about, and validates against the profile; before,
    it said ``"supportingInfo": []`` (no valid FHIR: an empty array; the profile wants
    one at least). A case with children names only them."""
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
        "expecting_ref": "Observation/preg-1",
    }
    unborn = mapping.referral_service_request(referral, child_refs={}, **common)
    assert unborn["supportingInfo"] == [{"reference": "Observation/preg-1"}]
    assert fhir_validator.validate(unborn) == []
    children = mapping.referral_service_request(
        referral, child_refs={"c1": "RelatedPerson/c1"}, **common
    )
    assert children["supportingInfo"] == [{"reference": "RelatedPerson/c1"}]
    nobody = mapping.referral_service_request(
        referral, child_refs={}, **{**common, "expecting_ref": None}
    )
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
        referral = mapping.referral_service_request(
            finding,
            patient_ref=PATIENT,
            encounter_ref=None,
            performer_ref="Organization/police",
            reason_refs=["Observation/s4"],
            child_refs={"c1": "RelatedPerson/c1"},
            identifier=mapping.identifier("referral"),
        )
        assert fhir_validator.validate(referral) == []
        assert referral["note"] == [{"text": finding.not_informed_reason}]


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


def _referral() -> Resource:
    """A step 6 referral to the VK, as the casework writes it."""
    return mapping.referral_service_request(
        _casework_findings()[-1],  # type: ignore[arg-type] # the step 6 finding
        patient_ref=PATIENT,
        encounter_ref=None,
        performer_ref=VK,
        reason_refs=["Observation/s4"],
        child_refs={"c1": "RelatedPerson/c1"},
        identifier=mapping.identifier("referral"),
    )


def test_a_referral_status_change_keeps_earlier_notes(fhir_validator: ProfileValidator) -> None:
    referral = _referral()
    later = NOW.replace(day=20)
    updated = mapping.referral_with_status(
        referral, ReferralStatus.ON_HOLD, author=NURSE, at=later, note="VK waits for the family"
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
        mapping.referral_with_status(referral, ReferralStatus.ACTIVE, author=NURSE, at=later)[
            "note"
        ]
        == referral["note"]
    )


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
    updated = mapping.referral_with_status(as_read, ReferralStatus.ON_HOLD, author=NURSE, at=NOW)
    assert updated["meta"] == expected


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
        {**flag, "period": {}},
        {**flag, "resourceType": "Observation"},
    ]
    assert [mapping.open_concern_of(other) for other in not_ours] == [None] * len(not_ours)
