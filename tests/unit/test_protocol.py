"""Unit tests of the Kindreflex protocol engine: every branch and every domain error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError
from datetime import UTC, date, datetime, timedelta

import pytest

from service.protocol import (
    ACUTE_DANGER_TARGETS,
    MANDATED_FACILITIES,
    Advice,
    AdviceKind,
    AgreedAction,
    CaseClosure,
    Child,
    CloseReason,
    Consultation,
    ContactChannel,
    ErrorCode,
    ExpectedChild,
    FacilityContact,
    Factor,
    FactorKind,
    Finding,
    HagueTrigger,
    HeardChild,
    InvalidFindingError,
    KeyPerson,
    KeyPersonRole,
    KindreflexCase,
    LivesWith,
    MissingInformationError,
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
    StepOrderError,
    SupportAction,
    TeamDecision,
    advice,
    age_in_months,
    apply,
    check_closure,
    check_not_informed_reason,
    check_plausible_dates,
    check_referral_status,
    child_consent_advice,
    clb_children,
    kind_en_gezin_advised,
)
from tests.support.findings import (
    NURSE,
    SOCIAL_WORKER,
    T0,
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

S1, S2, S3, S4, S5, S6 = Step


def at_step4() -> KindreflexCase:
    return case_of(step1(), step2())


def at_acute_step2() -> KindreflexCase:
    return case_of(step1(), step2(acute=True))


# --- code values ----------------------------------------------------------------------


def test_code_values_are_the_agreed_ones() -> None:
    assert [s.value for s in Step] == [f"step-{n}" for n in range(1, 7)]
    assert {v.value for v in SafetyAssessment} == {"no-concern", "niet-pluis", "unclear"}
    assert {v.value for v in TeamDecision} == {
        "safe",
        "concerning-willing",
        "concerning-unwilling",
        "acute-danger",
    }
    assert {v.value for v in ProgressAssessment} == {"improving", "not-restored"}
    assert {v.value for v in LivesWith} == {"permanently", "part-time", "not"}
    assert {v.value for v in SupportAction} == {
        "ask-regularly",
        "discuss-impact",
        "strengthen-resilience",
        "involve-children",
        "involve-network",
        "involve-service",
        "kind-en-gezin-start",
    }
    assert {v.value for v in SafetyAction} == {
        "create-safe-situation",
        "work-with-family",
        "help-for-children",
        "anonymous-consultation",
        "revisit-parenthood",
        "involve-service",
    }
    assert {v.value for v in HagueTrigger} == {
        "domestic-violence",
        "substance-abuse",
        "self-harm-psychiatric",
    }
    # "clb" is requested in docs/codes-requested.md
    assert {v.value for v in Consultation} == {
        "colleague",
        "expert",
        "vk-anonymous",
        "ocj-anonymous",
        "clb",
    }
    assert {v.value for v in ReferralTarget} == {
        "vk",
        "ocj",
        "parket",
        "police",
        "kind-en-gezin",
        "clb",
        "caw",
        "cgg",
        "ckg",
        "ocmw",
        "huis-van-het-kind",
        "opvoedingslijn",
        "rtj",
        "fara",
        "echo",
        "car",
        "fiola",
        "gp",
        "mutuality",
    }
    assert {v.value for v in PregnancyOf} == {"patient", "partner"}
    assert {v.value for v in FactorKind} == {"risk", "protective"}
    assert {ReferralTarget.VK, ReferralTarget.OCJ} == MANDATED_FACILITIES
    assert {ReferralTarget.PARKET, ReferralTarget.POLICE} == ACUTE_DANGER_TARGETS


def test_steps_have_numbers_and_headings() -> None:
    assert [s.number for s in Step] == [1, 2, 3, 4, 5, 6]
    assert S4.heading == "Check for concern and willingness"


# --- opening and step 1 ---------------------------------------------------------------


def test_a_new_case_starts_at_step_1() -> None:
    case = KindreflexCase.open("Patient/p1", "Encounter/e1")
    assert case.next_steps == {S1}
    assert case.current_step is None
    assert not case.is_closed
    assert not case.has_open_concern


def test_a_case_needs_a_patient_and_an_encounter() -> None:
    with pytest.raises(MissingInformationError) as error:
        KindreflexCase.open(" ", "Encounter/e1")
    assert error.value.code is ErrorCode.VALUE_REQUIRED
    with pytest.raises(MissingInformationError):
        KindreflexCase.open("Patient/p1", "")


def test_step_1_with_children_leads_to_step_2() -> None:
    case = case_of(step1(children=(child("c1"), child("c2", date(2023, 1, 1), "Wout"))))
    assert case.next_steps == {S2}
    assert [c.ref for c in case.children] == ["c1", "c2"]
    assert case.current_step is S1
    assert case.child("c2") is not None
    assert case.child("nope") is None


def test_step_1_with_only_an_expected_child_leads_to_step_2() -> None:
    expecting = ExpectedChild(PregnancyOf.PARTNER, date(2026, 8, 1))
    case = case_of(step1(children=(), expecting=expecting))
    assert case.next_steps == {S2}
    assert case.expecting == expecting


def test_step_1_without_children_closes_the_case() -> None:
    case = case_of(step1(children=()))
    assert case.is_closed
    assert case.next_steps == frozenset()
    with pytest.raises(StepOrderError) as error:
        apply(case, step2())
    assert error.value.code is ErrorCode.STEP_OUT_OF_ORDER
    assert "no minor children" in error.value.message


def test_a_closed_case_reopens_when_step_1_finds_a_child() -> None:
    case = case_of(step1(children=()), step1(t=1, children=(child(),)))
    assert case.next_steps == {S2}


def test_step_1_again_updates_the_children_and_keeps_the_concern_open() -> None:
    case = at_step4()
    newborn = child("c9", TODAY, "Mila")
    updated = apply(case, step1(t=2, children=(*case.children, newborn)))
    assert updated.next_steps == {S4, S2}
    assert updated.child("c9") == newborn
    assert updated.has_open_concern


def test_grown_up_children_only_end_the_kindreflex_at_step_1() -> None:
    """The Kindreflex concerns minors (seed 000): a 70-year-old's grown children stay in
    the record (a genogram) but leave nothing to gauge, so no step 2 and no concern."""
    eighteen_today = child("c1", date(2008, 3, 2), "Bram")  # TODAY is 2 March 2026
    case = case_of(step1(children=(eighteen_today, child("c2", date(1990, 1, 1), "Jan"))))
    assert case.is_closed
    assert case.child("c1") == eighteen_today
    for refused in (step2(), step2(acute=True)):
        with pytest.raises(StepOrderError):
            apply(case, refused)
    almost = child("c3", date(2008, 3, 3), "Lien")  # 18 tomorrow: still a minor
    assert case_of(step1(children=(almost,))).next_steps == {S2}


def test_acute_danger_needs_a_child_at_step_1() -> None:
    """Acute danger does not wait for the route, but the route must have a child: after
    "no children" it would open a concern (and allow the parket) about nobody."""
    with pytest.raises(StepOrderError):
        apply(case_of(step1(children=())), step2(t=1, acute=True))
    expecting = ExpectedChild(PregnancyOf.PATIENT)
    unborn = case_of(step1(children=(), expecting=expecting))
    assert apply(unborn, step2(t=1, acute=True)).next_steps == {S4, S6}


def test_a_later_no_children_does_not_take_the_child_off_an_open_concern() -> None:
    """At a later visit the patient says there are no children (or the child lives
    elsewhere now): the social service's concern about the child goes on, the team may
    still decide about that child, and the nurse has nothing to gauge herself."""
    case = at_step4()
    later = apply(case, step1(t=2, children=()))
    assert later.next_steps == {S4}
    assert later.child("c1") == child()
    heard = HeardChild("c1", consent_given=True)
    assert apply(later, step4(TeamDecision.SAFE, t=3, heard=(heard,))).current_step is S4
    renamed = apply(case, step1(t=2, children=(child(name="Lotte V."), child("c2"))))
    assert [c.name for c in renamed.children] == ["Lotte V.", "Lotte"]  # the new step's own


def test_a_step_1_without_children_leaves_nothing_open_but_a_concern() -> None:
    corrected = case_of(step1(), step1(t=1, children=()))
    assert corrected.is_closed
    supported = case_of(step1(), step2(assessment=SafetyAssessment.NO_CONCERN, reasons=()), step3())
    assert apply(supported, step1(t=10, children=())).is_closed


# --- the next contact: the Kindreflex again (seed 000: "bij elke cliënt") ------------------


@pytest.mark.parametrize(
    ("route", "still_open"),
    [
        ((step4(TeamDecision.SAFE),), set()),
        ((step4(TeamDecision.CONCERNING_WILLING),), {S5}),
        ((step4(TeamDecision.CONCERNING_UNWILLING), step6()), {S5, S6}),
        ((step4(TeamDecision.CONCERNING_WILLING), step5(ProgressAssessment.IMPROVING)), set()),
    ],
)
@pytest.mark.parametrize("assessment", list(SafetyAssessment))
def test_the_next_visit_records_steps_1_and_2_again_without_closing_the_concern(
    route: tuple[Finding, ...], still_open: set[Step], assessment: SafetyAssessment
) -> None:
    earlier = case_of(step1(), step2(), *route)
    reasons = () if assessment is SafetyAssessment.NO_CONCERN else ("new bruises",)
    again = apply(apply(earlier, step1(t=10)), step2(t=11, assessment=assessment, reasons=reasons))
    own = {S3} if assessment is SafetyAssessment.NO_CONCERN else {S4}
    assert again.next_steps == own | still_open
    assert again.has_open_concern == bool((own | still_open) & {S4, S5, S6})
    if assessment is SafetyAssessment.NO_CONCERN:  # and the support she then records
        supported = apply(again, step3(t=12))
        assert supported.next_steps == {S3, S2} | still_open
        assert supported.has_open_concern == bool(still_open)
        assert apply(supported, step3(t=13)).next_steps == supported.next_steps


def test_the_support_the_teams_route_leads_to_ends_the_concern() -> None:
    """Step 3 after a referral, a "safe" decision or progress "improving": no steps 4-6 remain."""
    for route in (
        (step4(TeamDecision.SAFE),),
        (step4(TeamDecision.CONCERNING_WILLING), step5(ProgressAssessment.IMPROVING)),
        (step4(TeamDecision.ACUTE_DANGER), step6(ReferralTarget.PARKET)),
    ):
        supported = apply(case_of(step1(), step2(), *route), step3(t=10))
        assert supported.next_steps == {S3, S2}
        assert not supported.has_open_concern
        assert not supported.acute_danger


def test_an_acute_danger_the_team_found_stays_through_the_next_visit() -> None:
    earlier = case_of(step1(), step2(), step4(TeamDecision.ACUTE_DANGER))
    again = apply(apply(earlier, step1(t=10)), step2(11, SafetyAssessment.NO_CONCERN, ()))
    assert again.acute_danger
    assert apply(again, step6(ReferralTarget.PARKET, t=12)).current_step is S6
    supported = apply(again, step3(t=12))  # the nurse's support does not lift it either
    assert supported.acute_danger
    assert apply(supported, step6(ReferralTarget.PARKET, t=13)).current_step is S6


def test_a_child_born_today_is_fine_but_not_tomorrow() -> None:
    step1(children=(child(born=TODAY),))
    with pytest.raises(InvalidFindingError) as error:
        step1(children=(child(born=TODAY + timedelta(days=1)),))
    assert error.value.code is ErrorCode.CHILD_BORN_IN_FUTURE
    assert "future" in error.value.message


def test_a_child_cannot_be_listed_twice() -> None:
    with pytest.raises(InvalidFindingError) as error:
        step1(children=(child("c1"), child("c1")))
    assert error.value.code is ErrorCode.DUPLICATE_CHILD


def test_a_child_needs_a_name_and_a_reference() -> None:
    with pytest.raises(MissingInformationError) as error:
        child(name="  ")
    assert error.value.code is ErrorCode.VALUE_REQUIRED
    with pytest.raises(MissingInformationError):
        child(ref="")


# --- author and time ------------------------------------------------------------------


def test_every_finding_needs_an_author() -> None:
    with pytest.raises(MissingInformationError) as error:
        Step1Finding(recorded_by=" ", recorded_at=T0)
    assert error.value.code is ErrorCode.AUTHOR_REQUIRED


def test_every_finding_needs_a_timezone_aware_time() -> None:
    with pytest.raises(InvalidFindingError) as error:
        Step1Finding(recorded_by=NURSE, recorded_at=datetime(2026, 3, 2, 9, 0))
    assert error.value.code is ErrorCode.TIMEZONE_REQUIRED
    Step1Finding(recorded_by=NURSE, recorded_at=datetime(2026, 3, 2, 8, 0, tzinfo=UTC))


def test_findings_are_recorded_in_time_order() -> None:
    case = case_of(step1(t=10))
    with pytest.raises(StepOrderError) as error:
        apply(case, step2(t=5))
    assert error.value.code is ErrorCode.TIME_OUT_OF_ORDER
    # same instant in another zone is fine
    same_instant = Step2Finding(
        recorded_by=NURSE,
        recorded_at=at(10).astimezone(UTC),
        assessment=SafetyAssessment.NO_CONCERN,
    )
    assert apply(case, same_instant).next_steps == {S3}


def test_findings_are_immutable() -> None:
    finding = step1()
    with pytest.raises(FrozenInstanceError):
        finding.recorded_by = "someone else"  # type: ignore[misc]


# --- step 2 ---------------------------------------------------------------------------


def test_step_2_no_concern_leads_to_step_3() -> None:
    case = case_of(step1(), step2(assessment=SafetyAssessment.NO_CONCERN, reasons=()))
    assert case.next_steps == {S3}
    assert not case.has_open_concern


@pytest.mark.parametrize("assessment", [SafetyAssessment.NIET_PLUIS, SafetyAssessment.UNCLEAR])
def test_step_2_niet_pluis_or_unclear_leads_to_step_4(assessment: SafetyAssessment) -> None:
    case = case_of(step1(), step2(assessment=assessment))
    assert case.next_steps == {S4}
    assert case.has_open_concern
    assert not case.acute_danger


@pytest.mark.parametrize("assessment", [SafetyAssessment.NIET_PLUIS, SafetyAssessment.UNCLEAR])
@pytest.mark.parametrize("reasons", [(), ("",), ("  ", "\n")])
def test_niet_pluis_or_unclear_needs_reasons(
    assessment: SafetyAssessment, reasons: tuple[str, ...]
) -> None:
    with pytest.raises(MissingInformationError) as error:
        step2(assessment=assessment, reasons=reasons)
    assert error.value.code is ErrorCode.REASONS_REQUIRED
    assert "reasons" in error.value.message


def test_step_2_acute_danger_leads_to_step_4_or_6() -> None:
    case = at_acute_step2()
    assert case.next_steps == {S4, S6}
    assert case.acute_danger


def test_acute_danger_cannot_go_with_no_concern() -> None:
    with pytest.raises(InvalidFindingError) as error:
        step2(assessment=SafetyAssessment.NO_CONCERN, acute=True)
    assert error.value.code is ErrorCode.ACUTE_DANGER_NEEDS_CONCERN


def test_acute_danger_does_not_wait_for_the_route() -> None:
    # during step 5 (restore safety) the situation turns acutely dangerous
    case = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_WILLING))
    assert case.next_steps == {S5}
    case = apply(case, step2(t=4, acute=True))
    assert case.next_steps == {S4, S6}
    case = apply(case, step6(ReferralTarget.POLICE, t=5))
    assert case.current_step is S6


def test_acute_danger_still_needs_step_1_first() -> None:
    case = KindreflexCase.open("Patient/p1", "Encounter/e1")
    with pytest.raises(StepOrderError):
        apply(case, step2(acute=True))


def test_a_step_2_without_acute_danger_cannot_interrupt_step_4() -> None:
    with pytest.raises(StepOrderError) as error:
        apply(at_step4(), step2(t=2))
    assert error.value.code is ErrorCode.STEP_OUT_OF_ORDER


# --- step 3 ---------------------------------------------------------------------------


def test_step_3_keeps_supporting_or_gauges_safety_again() -> None:
    case = case_of(step1(), step2(assessment=SafetyAssessment.NO_CONCERN, reasons=()), step3())
    assert case.next_steps == {S2, S3}
    case = apply(case, step3(t=3))
    assert case.next_steps == {S2, S3}
    case = apply(case, step2(t=4))
    assert case.next_steps == {S4}


def test_step_3_must_say_how_the_patient_was_supported() -> None:
    with pytest.raises(MissingInformationError) as error:
        Step3Support(recorded_by=NURSE, recorded_at=T0)
    assert error.value.code is ErrorCode.SUPPORT_REQUIRED
    with_note = Step3Support(recorded_by=NURSE, recorded_at=T0, note="talked about bedtime")
    assert with_note.actions == frozenset()


@pytest.mark.parametrize("service", sorted(MANDATED_FACILITIES | ACUTE_DANGER_TARGETS))
def test_mandated_facilities_are_not_support_services(service: ReferralTarget) -> None:
    with pytest.raises(InvalidFindingError) as error:
        Step3Support(
            recorded_by=NURSE,
            recorded_at=T0,
            actions=frozenset({SupportAction.INVOLVE_SERVICE}),
            services=frozenset({service}),
        )
    assert error.value.code is ErrorCode.NOT_A_SUPPORT_SERVICE
    with pytest.raises(InvalidFindingError):
        Step5Progress(
            recorded_by=NURSE,
            recorded_at=T0,
            progress=ProgressAssessment.IMPROVING,
            services=frozenset({service}),
        )


def test_step_3_may_involve_support_services() -> None:
    support = Step3Support(
        recorded_by=NURSE,
        recorded_at=at(2),
        actions=frozenset({SupportAction.KIND_EN_GEZIN_START}),
        services=frozenset({ReferralTarget.KIND_EN_GEZIN, ReferralTarget.CAW}),
    )
    toddler = child(born=TODAY - timedelta(days=400))
    no_concern = step2(assessment=SafetyAssessment.NO_CONCERN, reasons=())
    case = case_of(step1(children=(toddler,)), no_concern, support)
    assert case.current_step is S3


# --- step 4 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (TeamDecision.SAFE, {S3}),
        (TeamDecision.CONCERNING_WILLING, {S5}),
        (TeamDecision.CONCERNING_UNWILLING, {S6}),
        (TeamDecision.ACUTE_DANGER, {S6}),
    ],
)
def test_step_4_branches(decision: TeamDecision, expected: set[Step]) -> None:
    case = apply(at_step4(), step4(decision))
    assert case.next_steps == expected
    assert case.acute_danger is (decision is TeamDecision.ACUTE_DANGER)


def test_step_4_needs_step_2_first() -> None:
    case = case_of(step1())
    with pytest.raises(StepOrderError) as error:
        apply(case, step4(TeamDecision.SAFE))
    assert error.value.code is ErrorCode.STEP_OUT_OF_ORDER
    assert "step 2" in error.value.message


def test_step_4_is_not_reached_after_no_concern() -> None:
    case = case_of(step1(), step2(assessment=SafetyAssessment.NO_CONCERN, reasons=()))
    with pytest.raises(StepOrderError):
        apply(case, step4(TeamDecision.SAFE))


def test_step_4_decision_needs_a_team_discussion() -> None:
    with pytest.raises(MissingInformationError) as error:
        step4(TeamDecision.SAFE, consultations=frozenset())
    assert error.value.code is ErrorCode.TEAM_DISCUSSION_REQUIRED


def test_acute_danger_does_not_wait_for_a_team_discussion() -> None:
    decision = step4(TeamDecision.ACUTE_DANGER, consultations=frozenset(), discussed=False)
    assert apply(at_step4(), decision).next_steps == {S6}


@pytest.mark.parametrize(
    "decision", [TeamDecision.CONCERNING_WILLING, TeamDecision.CONCERNING_UNWILLING]
)
def test_willingness_needs_the_worries_discussed_with_the_patient(
    decision: TeamDecision,
) -> None:
    with pytest.raises(MissingInformationError) as error:
        step4(decision, discussed=False)
    assert error.value.code is ErrorCode.CONCERNS_NOT_DISCUSSED


def test_a_safe_decision_need_not_be_discussed_with_the_patient() -> None:
    assert apply(at_step4(), step4(TeamDecision.SAFE, discussed=False)).next_steps == {S3}


def test_a_child_is_heard_only_with_consent() -> None:
    with pytest.raises(MissingInformationError) as error:
        step4(TeamDecision.SAFE, heard=(HeardChild("c1", consent_given=False),))
    assert error.value.code is ErrorCode.CHILD_CONSENT_REQUIRED
    heard = step4(TeamDecision.SAFE, heard=(HeardChild("c1", consent_given=True),))
    assert apply(at_step4(), heard).current_step is S4


def test_a_heard_child_must_be_a_known_child() -> None:
    heard = step4(TeamDecision.SAFE, heard=(HeardChild("stranger", consent_given=True),))
    with pytest.raises(InvalidFindingError) as error:
        apply(at_step4(), heard)
    assert error.value.code is ErrorCode.UNKNOWN_CHILD


def test_the_focus_of_a_finding_must_name_known_children() -> None:
    case = case_of(step1())
    assert apply(case, step2(focus=("c1",))).current_step is S2
    with pytest.raises(InvalidFindingError) as error:
        apply(case, step2(focus=("c2",)))
    assert error.value.code is ErrorCode.UNKNOWN_CHILD


def test_step_4_separates_risk_and_protective_factors() -> None:
    decision = Step4Decision(
        recorded_by=SOCIAL_WORKER,
        recorded_at=at(3),
        decision=TeamDecision.CONCERNING_WILLING,
        factors=(
            Factor("parental-depression", FactorKind.RISK),
            Factor("supportive-grandmother", FactorKind.PROTECTIVE, "visits daily"),
        ),
        consultations=frozenset({Consultation.EXPERT}),
        discussed_with_patient=True,
    )
    assert [f.code for f in decision.risk_factors] == ["parental-depression"]
    assert [f.code for f in decision.protective_factors] == ["supportive-grandmother"]


def test_a_factor_needs_a_code() -> None:
    with pytest.raises(MissingInformationError):
        Factor(" ", FactorKind.RISK)


# --- step 5 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("progress", "expected"),
    [(ProgressAssessment.IMPROVING, {S3}), (ProgressAssessment.NOT_RESTORED, {S6})],
)
def test_step_5_branches(progress: ProgressAssessment, expected: set[Step]) -> None:
    case = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_WILLING), step5(progress))
    assert case.next_steps == expected


def test_step_5_needs_a_concerning_but_willing_decision() -> None:
    for decision in (
        TeamDecision.SAFE,
        TeamDecision.CONCERNING_UNWILLING,
        TeamDecision.ACUTE_DANGER,
    ):
        case = case_of(step1(), step2(), step4(decision))
        with pytest.raises(StepOrderError):
            apply(case, step5(ProgressAssessment.IMPROVING))


# --- step 6 ---------------------------------------------------------------------------


def unwilling() -> KindreflexCase:
    return case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING))


@pytest.mark.parametrize("cooperation", [True, False])
def test_step_6_vk_with_or_without_cooperation(cooperation: bool) -> None:
    case = apply(unwilling(), step6(ReferralTarget.VK, cooperation=cooperation))
    assert case.current_step is S6
    assert case.next_steps == {S3, S5, S6}
    assert case.has_open_concern


def test_step_6_ocj_only_without_cooperation() -> None:
    assert apply(unwilling(), step6(ReferralTarget.OCJ)).current_step is S6
    with pytest.raises(InvalidFindingError) as error:
        step6(ReferralTarget.OCJ, cooperation=True)
    assert error.value.code is ErrorCode.OCJ_WITHOUT_COOPERATION_ONLY


@pytest.mark.parametrize("target", [ReferralTarget.PARKET, ReferralTarget.POLICE])
def test_parket_and_police_only_with_acute_danger(target: ReferralTarget) -> None:
    with pytest.raises(InvalidFindingError) as error:
        apply(unwilling(), step6(target))
    assert error.value.code is ErrorCode.ACUTE_DANGER_REQUIRED
    acute = case_of(step1(), step2(), step4(TeamDecision.ACUTE_DANGER))
    assert apply(acute, step6(target)).current_step is S6
    assert apply(at_acute_step2(), step6(target, t=2)).current_step is S6


def test_parket_is_refused_after_step_5_not_restored() -> None:
    case = case_of(
        step1(),
        step2(),
        step4(TeamDecision.CONCERNING_WILLING),
        step5(ProgressAssessment.NOT_RESTORED),
    )
    with pytest.raises(InvalidFindingError) as error:
        apply(case, step6(ReferralTarget.PARKET, t=6))
    assert error.value.code is ErrorCode.ACUTE_DANGER_REQUIRED
    assert apply(case, step6(ReferralTarget.VK, t=6)).current_step is S6


@pytest.mark.parametrize(
    "target",
    [t for t in ReferralTarget if t not in MANDATED_FACILITIES | ACUTE_DANGER_TARGETS],
)
def test_step_6_only_involves_mandated_facilities(target: ReferralTarget) -> None:
    with pytest.raises(InvalidFindingError) as error:
        step6(target)
    assert error.value.code is ErrorCode.NOT_A_MANDATED_FACILITY


@pytest.mark.parametrize("target", [ReferralTarget.VK, ReferralTarget.OCJ])
def test_a_referral_needs_the_patient_informed(target: ReferralTarget) -> None:
    with pytest.raises(MissingInformationError) as error:
        apply(unwilling(), step6(target, informed=False, reason="mother was not reachable"))
    assert error.value.code is ErrorCode.PATIENT_NOT_INFORMED
    assert "Inform the patient" in error.value.message


def test_with_acute_danger_the_patient_may_be_informed_afterwards_with_a_reason() -> None:
    acute = at_acute_step2()
    with pytest.raises(MissingInformationError) as error:
        apply(acute, step6(ReferralTarget.POLICE, t=2, informed=False))
    assert error.value.code is ErrorCode.NOT_INFORMED_REASON_REQUIRED
    referral = step6(
        ReferralTarget.POLICE,
        t=2,
        informed=False,
        reason="the partner is aggressive and present; telling now endangers the children",
    )
    assert apply(acute, referral).current_step is S6
    # the VK may also be involved in acute danger before the patient is informed
    vk = step6(ReferralTarget.VK, t=2, informed=False, reason="patient is intoxicated")
    assert apply(acute, vk).current_step is S6


def test_a_second_referral_keeps_the_acute_danger() -> None:
    case = apply(at_acute_step2(), step6(ReferralTarget.POLICE, t=2))
    case = apply(case, step6(ReferralTarget.PARKET, t=3))
    case = apply(case, step6(ReferralTarget.VK, t=4))
    assert case.acute_danger
    assert [f.step for f in case.findings].count(S6) == 3


def test_after_step_6_safety_is_restored_with_the_facility() -> None:
    case = apply(unwilling(), step6())
    case = apply(case, step5(ProgressAssessment.IMPROVING, t=6))
    assert case.next_steps == {S3}
    assert not case.has_open_concern


def test_step_6_cannot_be_reached_from_step_2_without_acute_danger() -> None:
    with pytest.raises(StepOrderError):
        apply(at_step4(), step6(t=2))
    case = case_of(step1(), step2(assessment=SafetyAssessment.NO_CONCERN, reasons=()))
    with pytest.raises(StepOrderError):
        apply(case, step6(t=2))


def test_step_6_cannot_follow_a_willing_decision_directly() -> None:
    case = case_of(step1(), step2(), step4(TeamDecision.CONCERNING_WILLING))
    with pytest.raises(StepOrderError):
        apply(case, step6())


# --- replay ---------------------------------------------------------------------------


def test_replay_rebuilds_an_equal_state() -> None:
    case = case_of(
        step1(),
        step2(),
        step4(TeamDecision.CONCERNING_WILLING),
        step5(ProgressAssessment.NOT_RESTORED),
        step6(t=6),
    )
    again = KindreflexCase.replay(case.patient_ref, case.encounter_ref, case.findings)
    assert again == case
    assert case.record(step3(t=7)) == apply(case, step3(t=7))


def test_replay_revalidates_every_move() -> None:
    with pytest.raises(StepOrderError):
        KindreflexCase.replay("Patient/p1", "Encounter/e1", [step1(), step6(t=1)])


# --- every error code is reachable ----------------------------------------------------


ERROR_EXAMPLES: dict[ErrorCode, Callable[[], object]] = {
    ErrorCode.STEP_OUT_OF_ORDER: lambda: apply(case_of(step1()), step4(TeamDecision.SAFE)),
    ErrorCode.TIME_OUT_OF_ORDER: lambda: apply(case_of(step1(t=5)), step2(t=1)),
    ErrorCode.AUTHOR_REQUIRED: lambda: Step1Finding(recorded_by="", recorded_at=T0),
    ErrorCode.TIMEZONE_REQUIRED: lambda: Step1Finding(
        recorded_by=NURSE,
        recorded_at=datetime(2026, 1, 1),
    ),
    ErrorCode.VALUE_REQUIRED: lambda: child(name=""),
    ErrorCode.CHILD_BORN_IN_FUTURE: lambda: step1(children=(child(born=date(2030, 1, 1)),)),
    ErrorCode.DUPLICATE_CHILD: lambda: step1(children=(child(), child())),
    ErrorCode.EXPECTED_DATE_IMPLAUSIBLE: lambda: step1(
        expecting=ExpectedChild(PregnancyOf.PATIENT, date(2000, 1, 1))
    ),
    ErrorCode.UNKNOWN_CHILD: lambda: apply(case_of(step1()), step2(focus=("x",))),
    ErrorCode.REASONS_REQUIRED: lambda: step2(reasons=()),
    ErrorCode.ACUTE_DANGER_NEEDS_CONCERN: lambda: step2(
        assessment=SafetyAssessment.NO_CONCERN, acute=True
    ),
    ErrorCode.SUPPORT_REQUIRED: lambda: Step3Support(recorded_by=NURSE, recorded_at=T0),
    ErrorCode.KIND_EN_GEZIN_OUT_OF_AGE: lambda: apply(
        case_of(step1(), step2(assessment=SafetyAssessment.NO_CONCERN, reasons=())),
        Step3Support(
            recorded_by=NURSE,
            recorded_at=at(2),
            actions=frozenset({SupportAction.KIND_EN_GEZIN_START}),
        ),
    ),
    ErrorCode.NOT_A_SUPPORT_SERVICE: lambda: Step3Support(
        recorded_by=NURSE,
        recorded_at=T0,
        actions=frozenset({SupportAction.INVOLVE_SERVICE}),
        services=frozenset({ReferralTarget.VK}),
    ),
    ErrorCode.TEAM_DISCUSSION_REQUIRED: lambda: step4(TeamDecision.SAFE, consultations=frozenset()),
    ErrorCode.CONCERNS_NOT_DISCUSSED: lambda: step4(
        TeamDecision.CONCERNING_WILLING, discussed=False
    ),
    ErrorCode.CHILD_CONSENT_REQUIRED: lambda: step4(
        TeamDecision.SAFE, heard=(HeardChild("c1", consent_given=False),)
    ),
    ErrorCode.NOT_A_MANDATED_FACILITY: lambda: step6(ReferralTarget.CAW),
    ErrorCode.OCJ_WITHOUT_COOPERATION_ONLY: lambda: step6(ReferralTarget.OCJ, cooperation=True),
    ErrorCode.ACUTE_DANGER_REQUIRED: lambda: apply(unwilling(), step6(ReferralTarget.PARKET)),
    ErrorCode.PATIENT_NOT_INFORMED: lambda: apply(unwilling(), step6(informed=False)),
    ErrorCode.NOT_INFORMED_REASON_REQUIRED: lambda: apply(
        at_acute_step2(), step6(ReferralTarget.POLICE, t=2, informed=False)
    ),
    ErrorCode.REASON_WITHOUT_NOT_INFORMED: lambda: check_not_informed_reason(
        step6(informed=True, reason="would take the children away")
    ),
    ErrorCode.KEY_PERSON_TEXT_REQUIRED: lambda: KeyPerson(KeyPersonRole.OTHER, " "),
    ErrorCode.EXPLANATION_WITHOUT_DISCUSSION: lambda: Step4Decision(
        recorded_by=SOCIAL_WORKER,
        recorded_at=T0,
        decision=TeamDecision.SAFE,
        consultations=frozenset({Consultation.COLLEAGUE}),
        patient_explanation="says the bruises come from sport",
    ),
    ErrorCode.FOLLOW_UP_IN_PAST: lambda: Step5Progress(
        recorded_by=SOCIAL_WORKER,
        recorded_at=T0,
        progress=ProgressAssessment.IMPROVING,
        next_follow_up=TODAY - timedelta(days=1),
    ),
    ErrorCode.CONTACT_IN_FUTURE: lambda: Step6Referral(
        recorded_by=SOCIAL_WORKER,
        recorded_at=T0,
        target=ReferralTarget.VK,
        with_cooperation=True,
        patient_informed=True,
        contact=FacilityContact(TODAY + timedelta(days=1), "An Peeters", ContactChannel.PHONE),
    ),
    ErrorCode.FOLLOW_UP_TOO_FAR_AHEAD: lambda: check_plausible_dates(
        Step5Progress(
            recorded_by=SOCIAL_WORKER,
            recorded_at=T0,
            progress=ProgressAssessment.IMPROVING,
            next_follow_up=date(2062, 3, 2),  # 2062 typed for 2026
        )
    ),
    ErrorCode.CONTACT_TOO_LONG_AGO: lambda: check_plausible_dates(
        Step6Referral(
            recorded_by=SOCIAL_WORKER,
            recorded_at=T0,
            target=ReferralTarget.VK,
            with_cooperation=True,
            patient_informed=True,
            contact=FacilityContact(date(2002, 3, 2), "An Peeters", ContactChannel.PHONE),
        )
    ),
    ErrorCode.CLOSE_REASON_TEXT_REQUIRED: lambda: CaseClosure(CloseReason.OTHER),
    ErrorCode.REFERRAL_STATUS_FINAL: lambda: check_referral_status(
        ReferralStatus.COMPLETED, ReferralStatus.ACTIVE
    ),
    ErrorCode.REVOCATION_REASON_REQUIRED: lambda: check_referral_status(
        ReferralStatus.ACTIVE, ReferralStatus.REVOKED, " "
    ),
    ErrorCode.NOT_REFERRED: lambda: check_closure(
        case_of(step1(), step2(), step4(TeamDecision.SAFE)), CaseClosure(CloseReason.REFERRED), []
    ),
    ErrorCode.NO_REFERRAL_STANDS: lambda: check_closure(
        case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING), step6()),
        CaseClosure(CloseReason.REFERRED),
        [],
    ),
    ErrorCode.REFERRALS_REVOKED: lambda: check_closure(
        case_of(step1(), step2(), step4(TeamDecision.CONCERNING_UNWILLING), step6()),
        CaseClosure(CloseReason.REFERRED),
        [ReferralStatus.REVOKED],
    ),
}


def test_every_error_code_has_an_example() -> None:
    assert set(ERROR_EXAMPLES) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_error_code_is_raised_with_a_readable_message(code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as raised:
        ERROR_EXAMPLES[code]()
    error = raised.value
    assert error.code is code
    assert error.message.endswith(".")
    assert error.message[0].isupper()
    assert str(error) == f"{error.message} [{code.value}]"


# --- derived advice -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("born", "on", "months"),
    [
        (date(2020, 1, 15), date(2020, 1, 15), 0),
        (date(2020, 1, 15), date(2020, 2, 14), 0),
        (date(2020, 1, 15), date(2020, 2, 15), 1),
        (date(2020, 1, 15), date(2023, 1, 14), 35),
        (date(2020, 1, 15), date(2023, 1, 15), 36),
        (date(2020, 2, 29), date(2021, 2, 28), 11),
        (date(2020, 2, 29), date(2021, 3, 1), 12),
        (date(2026, 9, 1), date(2026, 3, 2), -5),
        (date(2026, 12, 1), date(2026, 3, 1), -9),
    ],
)
def test_age_in_months(born: date, on: date, months: int) -> None:
    assert age_in_months(born, on) == months


def _with_children(*children: Child, expecting: ExpectedChild | None = None) -> KindreflexCase:
    return case_of(step1(children=children, expecting=expecting))


def test_kind_en_gezin_for_children_until_their_third_birthday() -> None:
    young = child("young", date(2023, 3, 3))  # 35 months on 2026-03-02
    three = child("three", date(2023, 3, 2))  # 36 months: third birthday
    case = _with_children(young, three)
    kg = kind_en_gezin_advised(case, TODAY)
    assert kg == Advice(AdviceKind.KIND_EN_GEZIN_START, S3, ("young",), False)


def test_kind_en_gezin_for_an_expected_child() -> None:
    case = _with_children(expecting=ExpectedChild(PregnancyOf.PATIENT))
    kg = kind_en_gezin_advised(case, TODAY)
    assert kg is not None
    assert kg.includes_expected_child
    assert kg.child_refs == ()
    born_then = _with_children(expecting=ExpectedChild(PregnancyOf.PATIENT, date(2026, 4, 1)))
    assert kind_en_gezin_advised(born_then, date(2029, 3, 31)) is not None
    assert kind_en_gezin_advised(born_then, date(2029, 4, 1)) is None  # three years later


def test_kind_en_gezin_from_nine_months_before_the_expected_date() -> None:
    """Seed 002: "bij kinderen van -9m tot 3jaar" (TODAY is 2 March 2026)."""
    expected = _with_children(expecting=ExpectedChild(PregnancyOf.PATIENT, date(2026, 12, 2)))
    assert kind_en_gezin_advised(expected, TODAY) is not None  # nine months ahead
    assert kind_en_gezin_advised(expected, date(2026, 2, 1)) is None  # ten months ahead


def test_an_expected_date_lies_within_a_pregnancy() -> None:
    for plausible in (TODAY + timedelta(days=301), TODAY - timedelta(days=31)):
        step1(children=(), expecting=ExpectedChild(PregnancyOf.PATIENT, plausible))
    for implausible in (date(2000, 1, 1), date(9999, 1, 1), TODAY + timedelta(days=302)):
        with pytest.raises(InvalidFindingError) as error:
            step1(children=(), expecting=ExpectedChild(PregnancyOf.PATIENT, implausible))
        assert error.value.code is ErrorCode.EXPECTED_DATE_IMPLAUSIBLE


def test_no_kind_en_gezin_for_older_children() -> None:
    assert kind_en_gezin_advised(_with_children(child(born=date(2015, 1, 1))), TODAY) is None


@pytest.mark.parametrize("expected", [date(2026, 12, 3), date(2026, 12, 28)])
def test_kind_en_gezin_not_yet_more_than_nine_months_before_the_expected_date(
    expected: date,
) -> None:
    """A day past nine months ahead is not "-9 months" (completed months, rounded towards
    zero before birth, counted it as -9); both dates are within what step 1 accepts."""
    case = _with_children(expecting=ExpectedChild(PregnancyOf.PATIENT, expected))
    assert kind_en_gezin_advised(case, TODAY) is None


def test_a_kind_en_gezin_start_is_recorded_only_for_a_child_of_that_age() -> None:
    """Seed 002: "Verwijs door naar Kind & Gezin (bij kinderen van -9m tot 3jaar)"."""
    start = Step3Support(
        recorded_by=NURSE, recorded_at=at(2), actions=frozenset({SupportAction.KIND_EN_GEZIN_START})
    )
    no_concern = step2(assessment=SafetyAssessment.NO_CONCERN, reasons=())
    with pytest.raises(InvalidFindingError) as error:
        case_of(step1(children=(child(born=date(2016, 1, 1)),)), no_concern, start)
    assert error.value.code is ErrorCode.KIND_EN_GEZIN_OUT_OF_AGE
    expecting = ExpectedChild(PregnancyOf.PARTNER)
    assert case_of(step1(expecting=expecting), no_concern, start).current_step is S3


def test_consent_advice_notes_children_from_12() -> None:
    case = _with_children(
        child("eleven", date(2014, 3, 3)),
        child("twelve", date(2014, 3, 2)),
        child("adult", date(2008, 3, 2), "Bram"),
    )
    advice_by_ref = {a.child_ref: a for a in child_consent_advice(case, TODAY)}
    assert set(advice_by_ref) == {"eleven", "twelve"}
    assert not advice_by_ref["eleven"].decides_largely_themselves
    assert advice_by_ref["twelve"].decides_largely_themselves


def test_clb_for_children_from_two_and_a_half_to_18() -> None:
    case = _with_children(
        child("toddler", date(2023, 9, 3)),  # 29 months
        child("kleuter", date(2023, 9, 2)),  # 30 months
        child("teen", date(2008, 3, 3)),  # 17
        child("adult", date(2008, 3, 2)),  # 18
    )
    assert [c.ref for c in clb_children(case, TODAY)] == ["kleuter", "teen"]


def test_advice_follows_the_position_of_the_case() -> None:
    baby = child("baby", date(2025, 6, 1))
    pupil = child("pupil", date(2017, 6, 1))

    def kinds(case: KindreflexCase) -> set[tuple[AdviceKind, Step]]:
        return {(a.kind, a.step) for a in advice(case, TODAY)}

    at_step1 = case_of(step1(children=(baby, pupil)))
    assert kinds(at_step1) == set()
    support = apply(at_step1, step2(assessment=SafetyAssessment.NO_CONCERN, reasons=()))
    assert kinds(support) == {(AdviceKind.KIND_EN_GEZIN_START, S3)}
    concern = apply(at_step1, step2())
    assert kinds(concern) == {(AdviceKind.CHILD_CONSENT, S4), (AdviceKind.CLB, S4)}
    willing = apply(concern, step4(TeamDecision.CONCERNING_WILLING))
    assert kinds(willing) == {(AdviceKind.CHILD_CONSENT, S4), (AdviceKind.CLB, S4)}
    restoring = apply(willing, step5(ProgressAssessment.NOT_RESTORED))
    assert kinds(restoring) == {(AdviceKind.CLB, S5)}


#: 00:30 on 4 December in Brussels, as a FHIR server that keeps moments in UTC returns it:
#: still 3 December there.
JUST_AFTER_MIDNIGHT_IN_UTC = datetime(2026, 12, 3, 23, 30, tzinfo=UTC)


def test_the_day_of_a_finding_is_the_belgian_day_whatever_offset_it_comes_back_with() -> None:
    """A call to the facility 'today', a child born 'today', a follow-up 'today' recorded at
    00:30 in Brussels are of 4 December, also when the server gives the moment in UTC: the
    case replays, and a follow-up on the 3rd is in the past."""
    today = date(2026, 12, 4)
    referral = Step6Referral(
        recorded_by=SOCIAL_WORKER,
        recorded_at=JUST_AFTER_MIDNIGHT_IN_UTC,
        target=ReferralTarget.VK,
        with_cooperation=True,
        patient_informed=True,
        contact=FacilityContact(today, "An Peeters", ContactChannel.PHONE),
    )
    newborn = Step1Finding(
        recorded_by=NURSE,
        recorded_at=JUST_AFTER_MIDNIGHT_IN_UTC,
        children=(child(born=today),),
    )
    progress = Step5Progress(
        recorded_by=SOCIAL_WORKER,
        recorded_at=JUST_AFTER_MIDNIGHT_IN_UTC,
        progress=ProgressAssessment.IMPROVING,
        next_follow_up=today,
    )

    assert referral.recorded_on == newborn.recorded_on == progress.recorded_on == today
    with pytest.raises(InvalidFindingError) as refused:
        Step5Progress(
            recorded_by=SOCIAL_WORKER,
            recorded_at=JUST_AFTER_MIDNIGHT_IN_UTC,
            progress=ProgressAssessment.IMPROVING,
            next_follow_up=today - timedelta(days=1),
        )
    assert refused.value.code is ErrorCode.FOLLOW_UP_IN_PAST


def test_the_first_check_of_step_5_is_its_earliest_date_while_step_5_goes_on() -> None:
    """The worklist's follow-up: an agreed action's check counts (found by review: only
    the next follow-up did), but only while a next follow-up keeps step 5 open; else a
    date no step could clear was shown overdue for good (found by review)."""

    def progress(next_follow_up: date | None, *checks: date) -> Step5Progress:
        return Step5Progress(
            recorded_by=SOCIAL_WORKER,
            recorded_at=T0,
            progress=ProgressAssessment.IMPROVING,
            agreed_actions=tuple(AgreedAction("Huisbezoek", on) for on in checks),
            next_follow_up=next_follow_up,
        )

    week, fortnight = TODAY + timedelta(days=7), TODAY + timedelta(days=14)
    assert progress(fortnight, week).first_check == week
    assert progress(week, fortnight).first_check == week
    assert progress(fortnight).first_check == fortnight
    assert progress(None, week).first_check is None
