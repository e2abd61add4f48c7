"""The protocol's casework fields of steps 4-6, closing a case and the referral's status."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from service.protocol import (
    AgreedAction,
    CaseClosure,
    CloseReason,
    Consultation,
    ContactChannel,
    ErrorCode,
    FacilityContact,
    InvalidFindingError,
    KeyPerson,
    KeyPersonRole,
    MissingInformationError,
    ProgressAssessment,
    ReferralStatus,
    Step,
    Step4Decision,
    Step5Progress,
    TeamDecision,
    apply,
    check_closure,
    check_referral_status,
)
from tests.unit.test_protocol import (
    SOCIAL_WORKER,
    TODAY,
    at,
    case_of,
    step1,
    step2,
    step4,
    step6,
)


def follow_up(t: int, days: int | None, progress: ProgressAssessment) -> Step5Progress:
    return Step5Progress(
        recorded_by=SOCIAL_WORKER,
        recorded_at=at(t),
        progress=progress,
        agreed_actions=(AgreedAction("daily call with the grandmother", TODAY),),
        next_follow_up=None if days is None else TODAY + timedelta(days=days),
        note="the patient kept the agreements",
    )


def test_step_4_records_key_persons_explanation_and_team() -> None:
    finding = Step4Decision(
        recorded_by=SOCIAL_WORKER,
        recorded_at=at(3),
        decision=TeamDecision.CONCERNING_WILLING,
        consultations=frozenset({Consultation.EXPERT}),
        discussed_with_patient=True,
        key_persons=(KeyPerson(KeyPersonRole.PARTNER), KeyPerson(KeyPersonRole.OTHER, "aunt")),
        patient_explanation="The patient says the bruises come from a fall.",
        team_members=("dr. Janssens (paediatrician)", "social nurse"),
    )
    case = apply(case_of(step1(), step2()), finding)
    assert case.next_steps == {Step.STEP_5}
    assert case.findings[-1] == finding


def test_a_key_person_other_than_partner_or_grandparent_says_who() -> None:
    assert KeyPerson(KeyPersonRole.GRANDPARENT).text is None
    with pytest.raises(MissingInformationError) as raised:
        KeyPerson(KeyPersonRole.OTHER)
    assert raised.value.code is ErrorCode.KEY_PERSON_TEXT_REQUIRED


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        (ProgressAssessment.IMPROVING, {Step.STEP_3, Step.STEP_5}),
        (ProgressAssessment.NOT_RESTORED, {Step.STEP_5, Step.STEP_6}),
    ],
)
def test_a_next_follow_up_keeps_step_5_open(
    progress: ProgressAssessment, expected: set[Step]
) -> None:
    willing = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_WILLING))
    case = apply(willing, follow_up(4, 14, progress))
    assert case.next_steps == expected
    assert case.has_open_concern


def test_follow_ups_are_recorded_one_after_the_other_until_the_last() -> None:
    willing = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_WILLING))
    case = apply(willing, follow_up(4, 7, ProgressAssessment.IMPROVING))
    case = apply(case, follow_up(5, 7, ProgressAssessment.IMPROVING))
    case = apply(case, follow_up(6, None, ProgressAssessment.IMPROVING))
    assert case.next_steps == {Step.STEP_3}
    assert [f.step for f in case.findings[-3:]] == [Step.STEP_5] * 3


def test_follow_up_dates_are_not_in_the_past() -> None:
    with pytest.raises(InvalidFindingError) as raised:
        Step5Progress(
            recorded_by=SOCIAL_WORKER,
            recorded_at=at(4),
            progress=ProgressAssessment.IMPROVING,
            agreed_actions=(AgreedAction("x", TODAY - timedelta(days=1)),),
        )
    assert raised.value.code is ErrorCode.FOLLOW_UP_IN_PAST
    with pytest.raises(MissingInformationError):
        AgreedAction(" ")


def test_step_6_records_the_contact_with_the_facility() -> None:
    contact = FacilityContact(TODAY, "An Peeters (VK Gent)", ContactChannel.PHONE)
    unwilling = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING))
    referral = replace(
        step6(t=5),
        follow_up_actions=("the hospital's social nurse calls the patient in a week",),
        contact=contact,
    )
    assert apply(unwilling, referral).findings[-1] == referral
    with pytest.raises(MissingInformationError):
        FacilityContact(TODAY, "", ContactChannel.LETTER)


def test_a_case_is_closed_with_a_reason() -> None:
    assert CaseClosure(CloseReason.REFERRED).text is None
    assert CaseClosure(CloseReason.OTHER, "moved abroad").text == "moved abroad"
    with pytest.raises(MissingInformationError):
        CaseClosure(CloseReason.OTHER, "  ")


def test_only_a_referred_case_is_closed_as_referred() -> None:
    safe = case_of(step1(), step2(), step4(TeamDecision.SAFE))
    check_closure(safe, CaseClosure(CloseReason.SAFETY_RESTORED))
    with pytest.raises(InvalidFindingError):
        check_closure(safe, CaseClosure(CloseReason.REFERRED))
    referred = apply(case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING)), step6())
    check_closure(referred, CaseClosure(CloseReason.REFERRED))


@pytest.mark.parametrize("current", list(ReferralStatus))
@pytest.mark.parametrize("new", list(ReferralStatus))
def test_only_an_unfinished_referral_changes_status(
    current: ReferralStatus, new: ReferralStatus
) -> None:
    finished = current in (ReferralStatus.COMPLETED, ReferralStatus.REVOKED)
    if finished and new is not current:
        with pytest.raises(InvalidFindingError):
            check_referral_status(current, new)
    else:
        check_referral_status(current, new)
