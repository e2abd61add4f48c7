"""Property-based tests of the Kindreflex protocol engine (hypothesis).

Random sequences of moves - valid and invalid, in and out of order, with and without
author and time zone - are applied to a case. Refused moves raise a ProtocolError and
leave the case unchanged; the properties are checked on what was accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from service.protocol import (
    ACUTE_DANGER_TARGETS,
    Child,
    ChildRelationship,
    Consultation,
    ExpectedChild,
    Factor,
    FactorKind,
    Finding,
    HeardChild,
    KindreflexCase,
    LivesWith,
    PregnancyOf,
    ProgressAssessment,
    ProtocolError,
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
    apply,
)

BRUSSELS = ZoneInfo("Europe/Brussels")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=BRUSSELS)
AUTHORS = ["Practitioner/nurse-1", "https://ehr.example.be/fhir/Practitioner/sw-1"]
CHILDREN = [
    Child("c1", "Lotte", date(2015, 4, 1), ChildRelationship.CHILD, LivesWith.PERMANENTLY),
    Child("c2", "Wout", date(2024, 11, 30), ChildRelationship.STEPCHILD, LivesWith.PART_TIME),
    Child("c3", "Mila", date(2027, 1, 1), ChildRelationship.FOSTER_CHILD, LivesWith.NOT),
]
REFS = ["c1", "c2", "c3", "ghost"]


T = TypeVar("T")
#: A finding waiting for its time: calling it constructs (and validates) the finding.
Draft = Callable[[datetime], Finding]
#: The accepted moves of a run: the case before the move, and the finding.
Accepted = list[tuple[KindreflexCase, Finding]]


def mostly(valid: st.SearchStrategy[T], invalid: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Valid values nine times out of ten, so that runs get deep into the protocol."""
    return st.tuples(st.integers(0, 9), valid, invalid).map(
        lambda drawn: drawn[2] if drawn[0] == 0 else drawn[1]
    )


def subsets(values: list[T]) -> st.SearchStrategy[frozenset[T]]:
    return st.frozensets(st.sampled_from(values))


texts = mostly(
    st.sampled_from(["partner shouts at the children", "mother is exhausted"]),
    st.sampled_from(["", "  "]),
)
# usually one or two children; now and then none, or one born in the future
children = mostly(
    st.lists(st.sampled_from(CHILDREN[:2]), min_size=1, max_size=2, unique=True),
    st.lists(st.sampled_from(CHILDREN), max_size=3),
).map(tuple)
focus = mostly(
    st.lists(st.sampled_from(REFS[:2]), max_size=2, unique=True),
    st.lists(st.sampled_from(REFS), max_size=2, unique=True),
).map(tuple)


def drafts(
    make: Callable[..., Finding], **fields: st.SearchStrategy[Any]
) -> st.SearchStrategy[Draft]:
    """Random fields of one kind of finding, plus an author (rarely blank) and a note."""
    common = {
        "recorded_by": mostly(st.sampled_from(AUTHORS), st.sampled_from(["", " "])),
        "note": st.none() | texts,
    }
    return st.fixed_dictionaries({**common, **fields}).map(
        lambda kwargs: lambda at: make(recorded_at=at, **kwargs)
    )


DRAFTS: dict[Step, st.SearchStrategy[Draft]] = {
    Step.STEP_1: drafts(
        Step1Finding,
        children=children,
        expecting=st.none()
        | st.builds(
            ExpectedChild, st.sampled_from(PregnancyOf), st.none() | st.just(date(2026, 9, 1))
        ),
    ),
    Step.STEP_2: drafts(
        Step2Finding,
        focus=focus,
        assessment=st.sampled_from(SafetyAssessment),
        reasons=mostly(st.lists(texts, min_size=1, max_size=2), st.just([])).map(tuple),
        consultations=subsets(list(Consultation)),
        acute_danger=st.booleans(),
    ),
    Step.STEP_3: drafts(
        Step3Support,
        focus=focus,
        actions=mostly(
            st.frozensets(st.sampled_from(SupportAction), min_size=1), st.just(frozenset())
        ),
        services=subsets([ReferralTarget.CAW, ReferralTarget.KIND_EN_GEZIN, ReferralTarget.VK]),
    ),
    Step.STEP_4: drafts(
        Step4Decision,
        focus=focus,
        decision=st.sampled_from(TeamDecision),
        factors=st.lists(
            st.builds(
                Factor, st.sampled_from(["isolation", "insight"]), st.sampled_from(FactorKind)
            ),
            max_size=2,
        ).map(tuple),
        consultations=mostly(
            st.frozensets(st.sampled_from(Consultation), min_size=1), st.just(frozenset())
        ),
        discussed_with_patient=mostly(st.just(True), st.just(False)),
        children_heard=st.lists(
            st.builds(HeardChild, st.sampled_from(REFS), st.booleans()), max_size=1
        ).map(tuple),
    ),
    Step.STEP_5: drafts(
        Step5Progress,
        focus=focus,
        progress=st.sampled_from(ProgressAssessment),
        actions=subsets(list(SafetyAction)),
        services=subsets([ReferralTarget.CLB, ReferralTarget.OCJ]),
    ),
    Step.STEP_6: drafts(
        Step6Referral,
        focus=focus,
        target=st.sampled_from(
            [
                ReferralTarget.VK,
                ReferralTarget.OCJ,
                ReferralTarget.PARKET,
                ReferralTarget.POLICE,
                ReferralTarget.CAW,
            ]
        ),
        with_cooperation=st.booleans(),
        patient_informed=st.booleans(),
        not_informed_reason=st.none() | texts,
    ),
}
ALL_STEPS = st.sampled_from(list(Step))


@st.composite
def runs(draw: st.DrawFn) -> tuple[KindreflexCase, Accepted]:
    """Apply up to 25 random moves; return the final case and each accepted move."""
    case = KindreflexCase.open("Patient/p1", "Encounter/e1")
    accepted: Accepted = []
    minute = 0
    for _ in range(draw(st.integers(3, 25))):
        # mostly follow the route (to get deep), sometimes try any step
        on_route = sorted(case.next_steps)
        if on_route and draw(st.integers(0, 3)) > 0:
            step = draw(st.sampled_from(on_route))
        else:
            step = draw(ALL_STEPS)
        minute += draw(st.integers(-5, 60))
        when = T0 + timedelta(minutes=minute)
        if draw(st.integers(0, 30)) == 0:
            when = when.replace(tzinfo=None)  # a time without time zone
        draft = draw(DRAFTS[step])
        try:
            finding = draft(when)
            before = case
            case = apply(case, finding)
        except ProtocolError:
            continue
        accepted.append((before, finding))
    return case, accepted


def check_step_6_is_never_reached_without_step_4_or_acute_danger(
    case: KindreflexCase, accepted: Accepted
) -> None:
    for index, (_, finding) in enumerate(accepted):
        if isinstance(finding, Step6Referral):
            earlier = [f for _, f in accepted[:index]]
            assert any(
                isinstance(f, Step4Decision) or (isinstance(f, Step2Finding) and f.acute_danger)
                for f in earlier
            )


def check_parket_and_police_only_follow_an_acute_danger_finding(
    case: KindreflexCase, accepted: Accepted
) -> None:
    for before, finding in accepted:
        if isinstance(finding, Step6Referral) and finding.target in ACUTE_DANGER_TARGETS:
            assert before.acute_danger
            # the latest finding that says whether the danger is acute: an acute step 2, or
            # the team's steps 3-5 (step 1, a step 2 without acute danger, the support a
            # nurse records after her step 2 and earlier referrals do not revise it)
            route = [
                f
                for at, f in enumerate(before.findings)
                if isinstance(f, Step4Decision | Step5Progress)
                or (isinstance(f, Step3Support) and not _follows_a_triage(before.findings[:at]))
                or (isinstance(f, Step2Finding) and f.acute_danger)
            ]
            last = route[-1]
            assert (isinstance(last, Step2Finding) and last.acute_danger) or (
                isinstance(last, Step4Decision) and last.decision is TeamDecision.ACUTE_DANGER
            )


def _follows_a_triage(earlier: tuple[Finding, ...]) -> bool:
    """Whether a step 3 after ``earlier`` is a nurse's support after her step 2: the latest
    finding of steps 2, 4, 5 or 6 before it is a step 2."""
    routing = [f for f in earlier if not isinstance(f, Step1Finding | Step3Support)]
    return bool(routing) and isinstance(routing[-1], Step2Finding)


def check_every_move_follows_the_route(case: KindreflexCase, accepted: Accepted) -> None:
    for before, finding in accepted:
        # acute danger interrupts the route: a nurse's step 2, or the team's step 4 once the
        # social service follows the concern (a step 4, 5 or 6 before)
        team_acute = (
            isinstance(finding, Step4Decision)
            and finding.decision is TeamDecision.ACUTE_DANGER
            and any(
                isinstance(f, Step4Decision | Step5Progress | Step6Referral)
                for f in before.findings
            )
        )
        acute_interrupt = team_acute or (isinstance(finding, Step2Finding) and finding.acute_danger)
        assert finding.step in before.next_steps or finding.step is Step.STEP_1 or acute_interrupt
        if finding.step is Step.STEP_4 and not team_acute:
            # a niet-pluis or unclear step 2 the team has not decided on: since the latest
            # step 4, and with acute danger only while its own route (step 4 or 6) is ahead
            # (the work on an older plan does not decide on a nurse's new worries)
            worries = _undecided_worries(before.findings)
            assert worries is not None
            if worries.acute_danger:
                after = before.findings[before.findings.index(worries) + 1 :]
                assert not any(isinstance(f, Step5Progress | Step6Referral) for f in after)


def _undecided_worries(findings: tuple[Finding, ...]) -> Step2Finding | None:
    """The latest niet-pluis or unclear step 2 after the latest step 4, if any."""
    for finding in reversed(findings):
        if isinstance(finding, Step4Decision):
            return None
        if (
            isinstance(finding, Step2Finding)
            and finding.assessment is not SafetyAssessment.NO_CONCERN
        ):
            return finding
    return None


def check_a_nurses_worries_wait_for_the_team(case: KindreflexCase, accepted: Accepted) -> None:
    """A niet-pluis or unclear without acute danger leads to step 4 (seed 003, step 2), and
    nothing but a step 4 takes it off the route."""
    worries = _undecided_worries(case.findings)
    if worries is not None and not worries.acute_danger:
        assert Step.STEP_4 in case.next_steps


def check_every_decision_records_its_author_and_time(
    case: KindreflexCase, accepted: Accepted
) -> None:
    for finding in case.findings:
        assert finding.recorded_by.strip()
        assert finding.recorded_at.utcoffset() is not None
    times = [f.recorded_at for f in case.findings]
    assert times == sorted(times)


def check_the_state_is_rebuilt_from_its_recorded_findings(
    case: KindreflexCase, accepted: Accepted
) -> None:
    assert case.findings == tuple(f for _, f in accepted)
    again = KindreflexCase.replay(case.patient_ref, case.encounter_ref, case.findings)
    assert again == case
    assert again.next_steps == case.next_steps
    assert again.acute_danger == case.acute_danger


def check_a_concern_stays_open_until_the_route_returns_to_support(
    case: KindreflexCase, accepted: Accepted
) -> None:
    if case.current_step in (Step.STEP_4, Step.STEP_5, Step.STEP_6):
        # a case resting at steps 4-6 always has something still to do there
        assert case.has_open_concern or case.next_steps == {Step.STEP_3}
    if case.next_steps <= {Step.STEP_2, Step.STEP_3}:
        assert not case.has_open_concern


# No shrinking: a failure prints the run as generated. Shrinking these long runs of
# composite findings takes minutes, which would only delay the report of a broken rule.
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same runs every time: a failure is the change's, not luck's
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(runs())
def test_any_sequence_of_moves_keeps_the_protocol_rules(
    run: tuple[KindreflexCase, Accepted],
) -> None:
    """Each check is one property; they share the generated runs to keep the suite fast."""
    case, accepted = run
    check_step_6_is_never_reached_without_step_4_or_acute_danger(case, accepted)
    check_parket_and_police_only_follow_an_acute_danger_finding(case, accepted)
    check_every_move_follows_the_route(case, accepted)
    check_a_nurses_worries_wait_for_the_team(case, accepted)
    check_every_decision_records_its_author_and_time(case, accepted)
    check_the_state_is_rebuilt_from_its_recorded_findings(case, accepted)
    check_a_concern_stays_open_until_the_route_returns_to_support(case, accepted)
