"""Protocol findings for the protocol's tests, one builder a step, recorded minutes apart
from T0 by the nurse (steps 1-3) and the social worker (steps 4-6)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from service.protocol import (
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
    ProgressAssessment,
    ReferralTarget,
    SafetyAction,
    SafetyAssessment,
    Step1Finding,
    Step2Finding,
    Step3Support,
    Step4Decision,
    Step5Progress,
    Step6Referral,
    SupportAction,
    TeamDecision,
)

BRUSSELS = ZoneInfo("Europe/Brussels")
#: The moment the first finding is recorded; the others follow minutes after it (``at``).
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=BRUSSELS)
TODAY = T0.date()
#: Who records the findings: the nurse steps 1 to 3, the social worker steps 4 to 6.
NURSE = "https://ehr.example.be/fhir/Practitioner/nurse-1"
SOCIAL_WORKER = "https://ehr.example.be/fhir/Practitioner/sw-1"


def at(minutes: int) -> datetime:
    """When a finding is recorded: ``minutes`` after T0."""
    return T0 + timedelta(minutes=minutes)


def child(ref: str = "c1", born: date = date(2018, 5, 1), name: str = "Lotte") -> Child:
    """A child of the patient who lives with them."""
    return Child(ref, name, born, ChildRelationship.NATURAL_CHILD, LivesWith.PERMANENTLY)


def step1(
    t: int = 0,
    children: tuple[Child, ...] = (child(),),
    expecting: ExpectedChild | None = None,
) -> Step1Finding:
    """The nurse's step 1 at minute ``t``: the patient has these children."""
    return Step1Finding(
        recorded_by=NURSE, recorded_at=at(t), children=children, expecting=expecting
    )


def step2(
    t: int = 1,
    assessment: SafetyAssessment = SafetyAssessment.NIET_PLUIS,
    reasons: tuple[str, ...] = ("bruises on the patient's arms",),
    acute: bool = False,
    focus: tuple[str, ...] = (),
) -> Step2Finding:
    """The nurse's step 2 at minute ``t``: niet-pluis with a reason, by default."""
    return Step2Finding(
        recorded_by=NURSE,
        recorded_at=at(t),
        assessment=assessment,
        reasons=reasons,
        acute_danger=acute,
        focus=focus,
    )


def step3(t: int = 2) -> Step3Support:
    """The nurse's step 3 at minute ``t``: the impact on the children discussed."""
    return Step3Support(
        recorded_by=NURSE,
        recorded_at=at(t),
        actions=frozenset({SupportAction.DISCUSS_IMPACT}),
    )


def step4(
    decision: TeamDecision,
    t: int = 3,
    consultations: frozenset[Consultation] = frozenset({Consultation.COLLEAGUE}),
    discussed: bool = True,
    heard: tuple[HeardChild, ...] = (),
) -> Step4Decision:
    """The team's ``decision`` at step 4, minute ``t``, with one risk factor."""
    return Step4Decision(
        recorded_by=SOCIAL_WORKER,
        recorded_at=at(t),
        decision=decision,
        factors=(Factor("parental-depression", FactorKind.RISK),),
        consultations=consultations,
        discussed_with_patient=discussed,
        children_heard=heard,
    )


def step5(progress: ProgressAssessment, t: int = 4) -> Step5Progress:
    """The social worker's step 5 at minute ``t``."""
    return Step5Progress(
        recorded_by=SOCIAL_WORKER,
        recorded_at=at(t),
        progress=progress,
        actions=frozenset({SafetyAction.WORK_WITH_FAMILY}),
    )


def step6(
    target: ReferralTarget = ReferralTarget.VK,
    t: int = 5,
    cooperation: bool = False,
    informed: bool = True,
    reason: str | None = None,
) -> Step6Referral:
    """The social worker's referral at step 6, minute ``t`` (to the VK by default)."""
    return Step6Referral(
        recorded_by=SOCIAL_WORKER,
        recorded_at=at(t),
        target=target,
        with_cooperation=cooperation,
        patient_informed=informed,
        not_informed_reason=reason,
    )


def case_of(*findings: Finding) -> KindreflexCase:
    """The case of one patient and encounter, these findings replayed in order."""
    return KindreflexCase.replay("Patient/p1", "Encounter/e1", findings)
