"""The FHIR transactions of the social service's saves (``service.casework``): the seed 001
case's team decision and its referral to the VK, and closing the case. Every resource is
checked against the guide's profiles (``tests/support/validator.py``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service import audit
from service.casework import (
    CaseRecord,
    NoReferralError,
    Referral,
    _findings,
    _recorded,
    _with_pregnancies_named,
    close_transaction,
    referral_transaction,
    step_transaction,
)
from service.fhir import mapping, terminology
from service.partners import load_default_directory
from service.protocol import (
    CaseClosure,
    CloseReason,
    ExpectedChild,
    Finding,
    InvalidFindingError,
    KindreflexCase,
    PregnancyOf,
    ReferralStatus,
    ReferralTarget,
    Step,
    Step1Finding,
    Step4Decision,
    Step6Referral,
    TeamDecision,
)
from service.social import Step4Input, Step6Input
from tests.support.findings import at, child, step1, step2, step4
from tests.support.partners import vk_organization
from tests.support.validator import validate_bundle_entries
from tests.support.workshop import BOY, EPISODE_2, EPISODE_3, NURSE, SOCIAL_WORKER, WORKSHOP_FACTORS

CHILDREN = {BOY.ref: "RelatedPerson/boy", "girl": "RelatedPerson/girl"}


def _flag_as_read() -> dict[str, Any]:
    flag = mapping.concern_flag(
        patient_ref="Patient/mother",
        author=NURSE,
        flagged_at=EPISODE_2,
        identifier=mapping.identifier("concern", "concern-1"),
        last_step=Step.STEP_2,
        triggers=["domestic-violence"],
    )
    return {**flag, "id": "flag-1", "meta": {**flag["meta"], "versionId": "3"}}


def _record(reason_ref: str | None = None) -> CaseRecord:
    return CaseRecord(
        patient_ref="Patient/mother",
        encounter_ref="Encounter/episode-2",
        child_refs=CHILDREN,
        flag=_flag_as_read(),
        reason_ref=reason_ref,
    )


def _problems(bundle: dict[str, Any]) -> dict[str, list[str]]:
    """The profile validator's issues per bundle entry, entries without issues left out."""
    return {entry: issues for entry, issues in validate_bundle_entries(bundle).items() if issues}


def _entries(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def _extension_code(resource: dict[str, Any], extension_id: str) -> str:
    url = terminology.extension_url(extension_id)
    (code,) = [e["valueCoding"]["code"] for e in resource["extension"] if e["url"] == url]
    return str(code)


def _team_decision() -> Step4Decision:
    return Step4Input.model_validate(
        {
            "decision": "concerning-unwilling",
            "factors": WORKSHOP_FACTORS,
            "consultations": ["colleague", "clb"],
            "discussed_with_patient": True,
        }
    ).finding(SOCIAL_WORKER, EPISODE_2 + timedelta(hours=2))


def test_the_team_decision_is_one_conforming_transaction() -> None:
    decision = _team_decision()

    bundle = step_transaction(
        _record(),
        decision,
        finding_identifier="f-4",
        actor=SOCIAL_WORKER,
        now=EPISODE_2 + timedelta(hours=2),
    ).bundle

    assert _problems(bundle) == {}
    (observation,) = _entries(bundle, "Observation")
    assert observation["request"]["method"] == "POST"
    assert observation["request"]["ifNoneExist"].endswith("%7Cf-4")
    assert len(observation["resource"]["component"]) >= len(WORKSHOP_FACTORS)
    (flag,) = _entries(bundle, "Flag")
    assert flag["request"] == {"method": "PUT", "url": "Flag/flag-1", "ifMatch": 'W/"3"'}
    assert _extension_code(flag["resource"], "concern-last-step") == "step-4"
    assert _extension_code(flag["resource"], "concern-trigger") == "domestic-violence"
    assert flag["resource"]["status"] == "active"
    (provenance,) = _entries(bundle, "Provenance")
    assert provenance["resource"]["agent"][0]["who"]["reference"] == SOCIAL_WORKER
    targets = {t["reference"] for t in provenance["resource"]["target"]}
    assert targets == {observation["fullUrl"], "Flag/flag-1"}
    assert len(_entries(bundle, "AuditEvent")) == 1


def test_a_flag_written_with_an_encounter_loses_it_and_the_finding_keeps_the_visit() -> None:
    """R4's Flag.encounter means "only relevant during the encounter": an EHR honouring it
    would hide the concern at the next presentation. A Flag an earlier version wrote with
    one loses it at its next update; the finding still names the visit that raised it."""
    as_read = _record()
    record = replace(
        as_read, flag={**as_read.flag, "encounter": {"reference": "Encounter/episode-2"}}
    )
    decision = _team_decision()

    bundle = step_transaction(
        record,
        decision,
        finding_identifier="f-4",
        actor=SOCIAL_WORKER,
        now=EPISODE_2 + timedelta(hours=2),
    ).bundle

    assert _problems(bundle) == {}
    (flag,) = _entries(bundle, "Flag")
    assert "encounter" not in flag["resource"]
    (observation,) = _entries(bundle, "Observation")
    assert observation["resource"]["encounter"] == {"reference": "Encounter/episode-2"}


def test_the_referral_to_the_vk_is_a_conforming_service_request() -> None:
    directory = load_default_directory()
    body = Step6Input(
        partner_id="vk-oost-vlaanderen",
        with_cooperation=False,
        patient_informed=True,
        follow_up_actions=["Tell the CLB who takes the next step."],
    )
    referral = body.finding(SOCIAL_WORKER, EPISODE_3, directory)

    bundle = step_transaction(
        _record(reason_ref="Observation/step-4"),
        referral,
        finding_identifier="f-6",
        referral=Referral(
            "referral-1", vk_organization(), tuple(CHILDREN.values()), acute_danger=False
        ),
        actor=SOCIAL_WORKER,
        now=EPISODE_3,
    ).bundle

    assert _problems(bundle) == {}
    (request,) = _entries(bundle, "ServiceRequest")
    service_request = request["resource"]
    (organization,) = _entries(bundle, "Organization")
    assert organization["request"]["ifNoneExist"].endswith("%7Cvk-oost-vlaanderen")
    assert service_request["performer"] == [{"reference": organization["fullUrl"]}]
    assert service_request["reasonReference"] == [{"reference": "Observation/step-4"}]
    assert {r["reference"] for r in service_request["supportingInfo"]} == set(CHILDREN.values())
    assert service_request["requester"] == {"reference": SOCIAL_WORKER}
    assert service_request["priority"] == "routine"  # said, not left to R4's default
    (observation,) = _entries(bundle, "Observation")
    assert observation["resource"]["basedOn"] == [{"reference": request["fullUrl"]}]
    (flag,) = _entries(bundle, "Flag")
    assert _extension_code(flag["resource"], "concern-last-step") == "step-6"


def test_closing_makes_the_flag_inactive_and_keeps_its_history() -> None:
    closed_at = EPISODE_3 + timedelta(days=30)

    closure = CaseClosure(CloseReason.SAFETY_RESTORED, "support through the CAW")

    bundle = close_transaction(
        _record(), author=SOCIAL_WORKER, actor=SOCIAL_WORKER, closed_at=closed_at, closure=closure
    ).bundle

    assert _problems(bundle) == {}
    (flag,) = _entries(bundle, "Flag")
    assert flag["request"]["ifMatch"] == 'W/"3"'
    assert flag["resource"]["status"] == "inactive"
    assert flag["resource"]["period"] == {
        "start": EPISODE_2.isoformat(),
        "end": closed_at.isoformat(),
    }
    assert _extension_code(flag["resource"], "concern-last-step") == "step-2"
    assert mapping.closure_from_flag(flag["resource"]) == closure


def test_a_case_write_names_the_author_as_the_ehr_does_and_the_actor_as_the_audit_does() -> None:
    """An EHR may send ``fhirUser`` relative to its FHIR base: the Provenance keeps it so (a
    reference on the server it is written to), the AuditEvent names the user absolutely, as
    the local trail does (``audit.actor_url``)."""
    closure = CaseClosure(CloseReason.SAFETY_RESTORED, None)
    absolute = "https://ehr.example.be/fhir/Practitioner/sw-1"

    bundle = close_transaction(
        _record(), author="Practitioner/sw-1", actor=absolute, closed_at=EPISODE_3, closure=closure
    ).bundle

    (provenance,) = _entries(bundle, "Provenance")
    (event,) = _entries(bundle, "AuditEvent")
    assert provenance["resource"]["agent"][0]["who"] == {"reference": "Practitioner/sw-1"}
    assert event["resource"]["agent"][0]["who"] == {"reference": absolute}


def test_a_closing_writes_its_moments_to_the_millisecond_that_its_witness_asks() -> None:
    """A server that keeps a moment to the millisecond (HAPI's) gave back another
    ``recorded`` than a microsecond one sent: the witness missed the applied closing, which
    was sent again and refused as changed meanwhile."""
    closed_at = datetime(2026, 12, 3, 10, 13, 49, 16845, tzinfo=UTC)
    closure = CaseClosure(CloseReason.SAFETY_RESTORED, None)

    plan = close_transaction(
        _record(), author=SOCIAL_WORKER, actor=SOCIAL_WORKER, closed_at=closed_at, closure=closure
    )

    written = "2026-12-03T10:13:49.016+00:00"
    recorded = "2026-12-03T10:13:49.016%2B00:00"  # the witness's query, its + encoded
    (provenance,) = _entries(plan.bundle, "Provenance")
    (event,) = _entries(plan.bundle, "AuditEvent")
    (flag,) = _entries(plan.bundle, "Flag")
    assert provenance["resource"]["recorded"] == event["resource"]["recorded"] == written
    assert flag["resource"]["period"]["end"] == written
    assert plan.witness == f"Provenance?target=Flag/flag-1&recorded={recorded}"


@pytest.mark.parametrize(
    ("fhir_user", "named"),
    [
        ("Practitioner/5", "https://ehr-a.example/fhir/Practitioner/5"),
        ("/Practitioner/5", "https://ehr-a.example/fhir/Practitioner/5"),
        ("https://ehr-b.example/fhir/Practitioner/5", "https://ehr-b.example/fhir/Practitioner/5"),
    ],
)
def test_the_audit_names_a_user_by_an_absolute_url(fhir_user: str, named: str) -> None:
    assert audit.actor_url(fhir_user, "https://ehr-a.example/fhir/") == named


def _referral_as_read(status: str) -> dict[str, Any]:
    """The step 6 referral to the VK as the FHIR server returns it (id and version)."""
    finding = Step6Referral(
        recorded_by=SOCIAL_WORKER,
        recorded_at=EPISODE_3,
        target=ReferralTarget.VK,
        with_cooperation=False,
        patient_informed=True,
    )
    request = mapping.referral_service_request(
        finding,
        patient_ref="Patient/mother",
        encounter_ref="Encounter/episode-3",
        performer_ref="Organization/vk",
        reason_refs=["Observation/decision"],
        about=tuple(CHILDREN.values()),
        identifier=mapping.identifier("referral", "referral-1"),
        acute_danger=False,
        status=status,
    )
    return {**request, "id": "referral-1", "meta": {**request["meta"], "versionId": "2"}}


def test_a_referral_status_change_is_an_if_match_update_signed_by_the_social_worker() -> None:
    later = EPISODE_3 + timedelta(days=9)

    plan = referral_transaction(
        _record(),
        _referral_as_read("active"),
        ReferralStatus.ON_HOLD,
        author=SOCIAL_WORKER,
        author_name="Lien",
        actor=SOCIAL_WORKER,
        note="The VK waits for the family.",
        now=later,
    )

    assert _problems(plan.bundle) == {}
    (request,) = _entries(plan.bundle, "ServiceRequest")
    assert request["request"] == {
        "method": "PUT",
        "url": "ServiceRequest/referral-1",
        "ifMatch": 'W/"2"',
    }
    assert request["resource"]["status"] == "on-hold"
    assert request["resource"]["note"][-1]["text"] == "The VK waits for the family."
    assert _entries(plan.bundle, "Flag") == []  # the concern itself does not change
    (provenance,) = _entries(plan.bundle, "Provenance")
    assert provenance["resource"]["target"] == [{"reference": "ServiceRequest/referral-1"}]
    assert "ServiceRequest/referral-1" in plan.written


def test_a_finished_referral_does_not_change_again() -> None:
    with pytest.raises(InvalidFindingError):
        referral_transaction(
            _record(),
            _referral_as_read("revoked"),
            ReferralStatus.ACTIVE,
            author=SOCIAL_WORKER,
            author_name="Lien",
            actor=SOCIAL_WORKER,
            note=None,
            now=EPISODE_3,
        )


@pytest.mark.parametrize("status", ["draft", "unknown", "entered-in-error"])
def test_a_referral_someone_else_gave_another_status_is_refused_with_a_reason(status: str) -> None:
    """Not a 500 (found by review: ReferralStatus(...) raised a ValueError nobody caught)."""
    with pytest.raises(NoReferralError, match=f"'{status}'"):
        referral_transaction(
            _record(),
            _referral_as_read(status),
            ReferralStatus.ACTIVE,
            author=SOCIAL_WORKER,
            author_name="Lien",
            actor=SOCIAL_WORKER,
            note=None,
            now=EPISODE_3,
        )


def test_a_triage_saved_at_one_instant_replays_whatever_order_the_server_returns() -> None:
    """The nurse's save records steps 1 and 2 at one instant, and a search without _sort
    may return step 2 first. Before, the replay then started at the step 1 and lost the
    step 2: the team's step 4 was refused as out of order and the case page said the FHIR
    server refused to read the case."""
    lotte = child("RelatedPerson/c1")
    triage = step1(0, (lotte,))
    gauged = replace(step2(), recorded_at=triage.recorded_at)
    decision = step4(TeamDecision.CONCERNING_WILLING, t=5)
    recorded: tuple[Finding, ...] = (triage, gauged, decision)
    step_1, step_2, step_4 = (
        {
            **mapping.finding_observation(
                finding,
                patient_ref="Patient/p1",
                encounter_ref="Encounter/e1",
                child_refs={lotte.ref: lotte.ref},
                identifier=mapping.identifier("finding", f"f{n}"),
            ),
            "id": f"o{n}",
        }
        for n, finding in enumerate(recorded)
    )
    for returned in ([step_1, step_2, step_4], [step_2, step_1, step_4]):
        findings = _findings(
            _recorded(returned, {lotte.ref: lotte}, ()), (gauged.recorded_at, None)
        )
        case = KindreflexCase.replay("Patient/p1", "Encounter/e1", [f for _, f in findings])
        assert [finding.step for finding in case.findings] == [
            Step.STEP_1,
            Step.STEP_2,
            Step.STEP_4,
        ]
        assert case.next_steps == {Step.STEP_5}


def test_a_concern_raised_at_a_microsecond_keeps_its_start_once_its_flag_is_written_again() -> None:
    """An earlier release wrote the Flag's start and the step 1 it was raised with to the
    microsecond. A save since writes the start again, to the millisecond: the step 1 then
    lay after it, and the case started at the patient's previous concern, whose findings
    were replayed into this one (review of the millisecond change)."""
    lotte = child("RelatedPerson/c1")
    previous: list[Finding] = [step1(0, (lotte,)), step2(1)]
    previous.append(step4(TeamDecision.CONCERNING_WILLING, 3))
    raised = at(60 * 24 * 40) + timedelta(microseconds=123456)
    today: list[Finding] = [replace(step1(0, (lotte,)), recorded_at=raised)]
    today.append(replace(step2(1), recorded_at=raised))
    recorded = [(f"o{n}", finding) for n, finding in enumerate([*previous, *today], 1)]
    flag = _flag_as_read()
    flag["period"] = {"start": raised.isoformat()}  # as the earlier release wrote it
    record = CaseRecord("Patient/p1", "Encounter/e1", {lotte.ref: lotte.ref}, flag)
    decision = replace(
        step4(TeamDecision.CONCERNING_WILLING), recorded_at=raised + timedelta(hours=1)
    )

    plan = step_transaction(
        record, decision, finding_identifier="f", actor=SOCIAL_WORKER, now=decision.recorded_at
    )

    (written,) = _entries(plan.bundle, "Flag")
    start = datetime.fromisoformat(written["resource"]["period"]["start"])
    assert start == raised.replace(microsecond=123000)  # to the millisecond, before the step 1
    after = _findings(recorded, mapping.flag_period(written["resource"]))
    assert [id_ for id_, _ in after] == ["o4", "o5"]


def _as_read(resource: dict[str, Any], id_: str) -> dict[str, Any]:
    return {**resource, "id": id_}


def test_an_old_step_1_names_the_one_pregnancy_its_save_wrote_and_never_a_guess() -> None:
    """A step 1 saved before 2026-12-04 has no ``hasMember``: read so, a pregnancy-only case
    could not be opened (found by review). It names the pregnancy of its own save (same
    patient, encounter, author, moment); one of another author or moment is not its, and
    two of the same save leave it naming none."""
    at = EPISODE_2 + timedelta(microseconds=123456)
    expecting = ExpectedChild(PregnancyOf.PATIENT)

    def pregnancy(id_: str, *, by: str = NURSE, moment: datetime = at) -> dict[str, Any]:
        written = mapping.expecting_observation(
            expecting, patient_ref="Patient/p", encounter_ref="Encounter/e", performer=by,
            recorded_at=moment, identifier=mapping.identifier("finding"),
        )  # fmt: skip
        return _as_read(written, id_)

    step_1 = mapping.finding_observation(
        Step1Finding(recorded_by=NURSE, recorded_at=at, expecting=expecting),
        patient_ref="Patient/p", encounter_ref="Encounter/e", child_refs={},
        identifier=mapping.identifier("finding"), expecting_ref="Observation/x",
    )  # fmt: skip
    old = _as_read({k: v for k, v in step_1.items() if k != "hasMember"}, "s1")
    utc = at.astimezone(UTC)  # the server's notation of the same moment
    others = [pregnancy("by-another", by=SOCIAL_WORKER), pregnancy("later", moment=at + _SECOND)]
    (named, *_) = _with_pregnancies_named([old, pregnancy("ours", moment=utc), *others])
    assert mapping.expected_child_reference(named) == "Observation/ours"
    (unnamed, *_) = _with_pregnancies_named([old, pregnancy("one"), pregnancy("two"), *others])
    assert mapping.expected_child_reference(unnamed) is None
    (alone, *_) = _with_pregnancies_named([old, *others])
    assert mapping.expected_child_reference(alone) is None


_SECOND = timedelta(seconds=1)
