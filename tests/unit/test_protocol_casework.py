"""The protocol's casework fields of steps 4-6, closing a case and the referral's status."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest

from service.casework import closable
from service.protocol import (
    AgreedAction,
    CaseClosure,
    CloseReason,
    Consultation,
    ContactChannel,
    ErrorCode,
    ExpectedChild,
    FacilityContact,
    InvalidFindingError,
    KeyPerson,
    KeyPersonRole,
    KindreflexCase,
    MissingInformationError,
    PregnancyOf,
    ProgressAssessment,
    ProtocolError,
    ReferralStatus,
    ReferralTarget,
    SafetyAssessment,
    Step,
    Step1Finding,
    Step4Decision,
    Step5Progress,
    Step6Referral,
    TeamDecision,
    apply,
    check_closure,
    check_plausible_dates,
    check_referral_status,
    earliest_contact,
    kind_en_gezin_advised,
    latest_follow_up,
    referral_subjects,
    reopens_after_referral_change,
    team_decisions_open,
)
from tests.support.findings import (
    SOCIAL_WORKER,
    TODAY,
    at,
    case_of,
    child,
    step1,
    step2,
    step3,
    step4,
    step5,
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


def test_a_nurses_new_niet_pluis_waits_for_the_team_through_the_older_plan() -> None:
    """The social service follows the family at step 5; at the next visit the nurse has a
    new niet-pluis, and the app tells her the social service will assess it (step 4). The
    social worker then recorded the older plan's follow-up, "improving": step 4 was gone,
    and the case could be closed as safe without a team decision on the new worries; a
    referral on the older plan did the same. Seed 003, step 2: "Heb je een
    niet-pluisgevoel, of voel je onduidelijkheid? Ga naar STAP 4." (found by review)"""
    case = case_of(
        step1(),
        step2(),
        step4(TeamDecision.CONCERNING_WILLING),
        follow_up(4, 14, ProgressAssessment.IMPROVING),  # step 5 goes on
        step1(t=10),  # the patient's next visit
        step2(t=11, reasons=("new bruises on the child",)),
    )
    assert case.next_steps == {Step.STEP_4, Step.STEP_5}
    improving = apply(case, follow_up(12, None, ProgressAssessment.IMPROVING))
    assert improving.next_steps == {Step.STEP_3, Step.STEP_4}
    assert not closable(improving)
    supported = apply(improving, step3(t=13))  # the support the plan leads to
    assert supported.next_steps == {Step.STEP_2, Step.STEP_3, Step.STEP_4}
    not_restored = apply(case, follow_up(12, None, ProgressAssessment.NOT_RESTORED))
    referred = apply(not_restored, step6(t=13))
    assert Step.STEP_4 in referred.next_steps
    assert not closable(referred)
    decided = apply(improving, step4(TeamDecision.SAFE, t=13))  # only a step 4 decides
    assert decided.next_steps == {Step.STEP_3}
    assert closable(decided)


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


def _planned(next_follow_up: date | None, action_on: date | None = None) -> Step5Progress:
    return Step5Progress(
        recorded_by=SOCIAL_WORKER,
        recorded_at=at(4),
        progress=ProgressAssessment.IMPROVING,
        agreed_actions=() if action_on is None else (AgreedAction("call", action_on),),
        next_follow_up=next_follow_up,
    )


def test_a_follow_up_is_planned_at_most_a_year_ahead() -> None:
    # Before, a year typed wrong (2062 for 2026) was planned and put on the worklist.
    a_year = date(2027, 3, 2)  # TODAY is 2 March 2026
    assert latest_follow_up(TODAY) == a_year
    check_plausible_dates(_planned(a_year, a_year))
    for finding in (
        _planned(a_year + timedelta(days=1)),
        _planned(TODAY, a_year + timedelta(days=1)),  # an agreed action's date too
        _planned(date(2062, 3, 2)),
    ):
        with pytest.raises(InvalidFindingError) as raised:
            check_plausible_dates(finding)
        assert raised.value.code is ErrorCode.FOLLOW_UP_TOO_FAR_AHEAD
        assert "more than a year ahead" in raised.value.message


def _contacted(on: date) -> Step6Referral:
    return replace(step6(t=5), contact=FacilityContact(on, "An Peeters", ContactChannel.PHONE))


def test_a_facility_contact_lies_at_most_a_year_back() -> None:
    # Before, a year typed wrong (2002 for 2026) told the facility of a contact 24 years ago.
    a_year = date(2025, 3, 2)
    assert earliest_contact(TODAY) == a_year
    check_plausible_dates(_contacted(a_year))
    check_plausible_dates(step6(t=5))  # no contact: nothing to check
    for on in (a_year - timedelta(days=1), date(2002, 3, 2)):
        with pytest.raises(InvalidFindingError) as raised:
            check_plausible_dates(_contacted(on))
        assert raised.value.code is ErrorCode.CONTACT_TOO_LONG_AGO


def test_a_year_from_29_february_is_28_february() -> None:
    assert latest_follow_up(date(2028, 2, 29)) == date(2029, 2, 28)
    assert earliest_contact(date(2028, 2, 29)) == date(2027, 2, 28)


def test_findings_recorded_with_dates_out_of_these_bounds_still_replay() -> None:
    # The bounds refuse a new finding; one recorded before them keeps its case readable.
    willing = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_WILLING))
    assert apply(willing, _planned(date(2062, 3, 2))).current_step is Step.STEP_5
    unwilling = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING))
    assert apply(unwilling, _contacted(date(2002, 3, 2))).current_step is Step.STEP_6


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
    check_closure(safe, CaseClosure(CloseReason.SAFETY_RESTORED), [])
    with pytest.raises(InvalidFindingError):
        check_closure(safe, CaseClosure(CloseReason.REFERRED), [])
    referred = apply(case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING)), step6())
    check_closure(referred, CaseClosure(CloseReason.REFERRED), [ReferralStatus.ACTIVE])
    check_closure(referred, CaseClosure(CloseReason.REFERRED), [ReferralStatus.COMPLETED])


def test_a_case_whose_referral_was_withdrawn_in_the_ehr_is_not_closed_as_referred() -> None:
    """The EHR marked the only referral entered in error: its step 6 finding stays, but no
    referral stands on the record, and "referred" would say a facility took the case over
    (found by review: the summary said "no referral" and the closing passed)."""
    referred = apply(case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING)), step6())
    with pytest.raises(InvalidFindingError) as refused:
        check_closure(referred, CaseClosure(CloseReason.REFERRED), [])
    assert refused.value.code is ErrorCode.NO_REFERRAL_STANDS
    check_closure(referred, CaseClosure(CloseReason.OTHER, "the referral was a mistake"), [])


def test_a_case_whose_every_referral_was_revoked_is_not_closed_as_referred() -> None:
    """No facility took the family over: "referred" would leave nobody following it."""
    referred = apply(case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING)), step6())
    revoked = [ReferralStatus.REVOKED]
    with pytest.raises(InvalidFindingError) as refused:
        check_closure(referred, CaseClosure(CloseReason.REFERRED), revoked)
    assert refused.value.code is ErrorCode.REFERRALS_REVOKED
    check_closure(referred, CaseClosure(CloseReason.REFERRED), [*revoked, ReferralStatus.ACTIVE])
    check_closure(referred, CaseClosure(CloseReason.OTHER, "the VK declined"), revoked)


def test_only_the_last_referral_revoked_reopens_a_case_closed_as_referred() -> None:
    """Closed as "referred" with no referral standing is the state closing refuses: the
    change that leads there reopens the case. A referral still standing (a completed one:
    the facility did its part), another close reason or an open case: no change."""
    referred = CaseClosure(CloseReason.REFERRED)
    revoked = ReferralStatus.REVOKED
    assert reopens_after_referral_change(referred, [revoked])
    assert reopens_after_referral_change(referred, [revoked, revoked])
    assert not reopens_after_referral_change(referred, [revoked, ReferralStatus.ACTIVE])
    assert not reopens_after_referral_change(referred, [revoked, ReferralStatus.COMPLETED])
    assert not reopens_after_referral_change(referred, [ReferralStatus.ON_HOLD])
    assert not reopens_after_referral_change(referred, [])  # nothing changed of ours
    assert not reopens_after_referral_change(CaseClosure(CloseReason.SAFETY_RESTORED), [revoked])
    assert not reopens_after_referral_change(CaseClosure(CloseReason.OTHER, "moved"), [revoked])
    assert not reopens_after_referral_change(None, [revoked])


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
        check_referral_status(current, new, "the VK declined")


@pytest.mark.parametrize("note", [None, "", "  "])
def test_a_referral_is_revoked_only_with_its_reason(note: str | None) -> None:
    """Revoking withdraws the referral for good: the record says why; a pause or the
    facility's completion keeps the note optional."""
    with pytest.raises(MissingInformationError) as refused:
        check_referral_status(ReferralStatus.ACTIVE, ReferralStatus.REVOKED, note)
    assert refused.value.code is ErrorCode.REVOCATION_REASON_REQUIRED
    check_referral_status(ReferralStatus.ON_HOLD, ReferralStatus.REVOKED, "family moved away")
    check_referral_status(ReferralStatus.ACTIVE, ReferralStatus.ON_HOLD, note)
    check_referral_status(ReferralStatus.ACTIVE, ReferralStatus.COMPLETED, note)


LOTTE = child("c1", date(2018, 5, 1), "Lotte")
TOM = child("c2", date(2001, 1, 1), "Tom")  # 25 on the day of the referral


def _referred(step_1: Step1Finding, focus: tuple[str, ...] = ()) -> KindreflexCase:
    return case_of(
        step_1, step2(), step4(TeamDecision.CONCERNING_UNWILLING), replace(step6(), focus=focus)
    )


def _subjects(case: KindreflexCase) -> tuple[tuple[str, ...], ExpectedChild | None]:
    referral = case.findings[-1]
    assert isinstance(referral, Step6Referral)
    children, expecting = referral_subjects(case, referral)
    return tuple(c.name for c in children), expecting


def test_a_referral_about_all_children_is_about_the_minors_not_a_grown_up_child() -> None:
    """Before, "all children" handed the patient's grown-up son to the VK with his sister:
    the Kindreflex concerns minors (seed 000)."""
    assert _subjects(_referred(step1(children=(LOTTE, TOM)))) == (("Lotte",), None)


def test_a_referral_about_all_children_names_the_expected_child_beside_the_born_ones() -> None:
    """Before, the unborn child was named only when no child was born (seed 002: the
    children's well-being from pregnancy on)."""
    pregnancy = ExpectedChild(PregnancyOf.PATIENT, TODAY + timedelta(days=90))
    step_1 = step1(children=(LOTTE, TOM), expecting=pregnancy)
    assert _subjects(_referred(step_1)) == (("Lotte",), pregnancy)


def test_a_referral_after_the_birth_does_not_name_the_newborn_as_still_expected() -> None:
    """The concern was raised during the pregnancy (due 20 March); at the visit of 2 May the
    nurse lists the baby, born 18 March, and no pregnancy any more. The case kept the
    expected child as well: the referral told the VK of the newborn and of an unborn child
    due in March, and step 3 advised Kind & Gezin "also for the expected child". Seeds 000
    and 001, step 1: the children "of een kind verwacht"; a step 1 refuses an expected date
    more than a month past (found by review). A step 1 that leaves the baby out keeps the
    expected child: it is then the only record of that baby."""
    due = TODAY + timedelta(days=18)
    baby = child("c2", born=TODAY + timedelta(days=16), name="Noor")
    two_months = 60 * 24 * 61
    raised = (
        step1(expecting=ExpectedChild(PregnancyOf.PATIENT, due)),
        step2(),
        step4(TeamDecision.CONCERNING_UNWILLING),
    )
    worried = step2(t=two_months + 1, reasons=("still worried",))
    born = case_of(*raised, step1(t=two_months, children=(child(), baby)), worried)
    children, expecting = referral_subjects(born, step6(t=two_months + 2))
    assert ({c.ref for c in children}, expecting) == ({"c1", "c2"}, None)
    advised = kind_en_gezin_advised(born, born.findings[-1].recorded_on)
    assert advised is not None
    assert (advised.child_refs, advised.includes_expected_child) == (("c2",), False)

    left_out = case_of(*raised, step1(t=two_months), worried)
    assert left_out.expecting == ExpectedChild(PregnancyOf.PATIENT, due)


def test_a_referral_naming_a_child_is_about_that_child_whatever_their_age() -> None:
    assert _subjects(_referred(step1(children=(LOTTE, TOM)), focus=("c2",))) == (("Tom",), None)


def test_a_referral_when_every_child_came_of_age_during_the_case_is_about_all_of_them() -> None:
    """Nobody left to name would be a referral about no one: the concern's children
    stay whom it is about."""
    step_1 = step1(children=(replace(LOTTE, birth_date=date(2008, 3, 3)),))  # 18 the next day
    later = replace(step6(), recorded_at=at(0) + timedelta(days=2))
    case = case_of(step_1, step2(), step4(TeamDecision.CONCERNING_UNWILLING), later)
    assert _subjects(case) == (("Lotte",), None)


def test_acute_danger_found_after_the_team_decided_leads_to_the_parket() -> None:
    """Seed 002: "Er is acuut gevaar: betrek het parket en/of de politie", at any moment.
    Before, once the team had decided (here "concerning, unwilling" and a referral to the
    VK, or a step 5), the social service could not record the acute danger (step 4 was
    out of order) and so never reach the parket or the police."""
    unwilling = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING), step6())
    assert team_decisions_open(unwilling, TODAY) == (TeamDecision.ACUTE_DANGER,)
    with pytest.raises(ProtocolError) as refused:
        apply(unwilling, step6(ReferralTarget.POLICE, t=6))
    assert refused.value.code is ErrorCode.ACUTE_DANGER_REQUIRED
    acute = apply(unwilling, step4(TeamDecision.ACUTE_DANGER, t=6))
    assert acute.acute_danger
    apply(acute, step6(ReferralTarget.PARKET, t=7))

    willing = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_WILLING))
    following = apply(willing, follow_up(4, 14, ProgressAssessment.IMPROVING))
    assert apply(following, step4(TeamDecision.ACUTE_DANGER, t=5)).next_steps == {Step.STEP_6}


def test_new_acute_danger_after_an_acute_route_without_step_4_leads_to_the_parket() -> None:
    """The nurse found acute danger (step 2) and the social worker called the police
    straight away (step 6), then worked on safety with the facility (step 5), which ends
    the acute danger. A new incident puts the child in acute danger again: the social
    worker could not record it (no step 4 had been recorded, so no team "acute danger"
    was offered) and the parket and the police were refused for good. Seed 002: "Er is
    acuut gevaar: betrek het PARKET en/of POLITIE"; seed 003, step 4: "... of acuut
    gevaar? Ga naar STAP 6": neither asks for an earlier team decision (found by review)."""
    case = case_of(
        step1(),
        step2(acute=True),
        step6(ReferralTarget.POLICE, t=3),
        step5(ProgressAssessment.NOT_RESTORED, t=4),
    )
    assert not case.acute_danger
    assert team_decisions_open(case, TODAY) == (TeamDecision.ACUTE_DANGER,)
    escalated = apply(case, step4(TeamDecision.ACUTE_DANGER, t=5))
    assert apply(escalated, step6(ReferralTarget.PARKET, t=6)).current_step is Step.STEP_6


def test_out_of_its_route_the_team_records_acute_danger_only() -> None:
    """Another decision still waits for a nurse's new concern (a step 2); before the team
    decided, step 4 follows the route as always."""
    unwilling = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING), step6())
    with pytest.raises(ProtocolError) as refused:
        apply(unwilling, step4(TeamDecision.SAFE, t=6))
    assert refused.value.code is ErrorCode.STEP_OUT_OF_ORDER
    assert team_decisions_open(case_of(step1(), step2()), TODAY) == tuple(TeamDecision)
    no_concern = step2(assessment=SafetyAssessment.NO_CONCERN, reasons=())
    assert team_decisions_open(case_of(step1(), no_concern), TODAY) == ()
