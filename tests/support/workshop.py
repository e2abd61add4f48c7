"""The worked case of the Kindreflex workshop (seed 001): one family through three
episodes, each the protocol steps the workshop intends (why those steps: the docstring of
``tests/unit/test_seed001_scenario.py``)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from service.protocol import (
    Child,
    ChildRelationship,
    Consultation,
    Factor,
    FactorKind,
    KindreflexCase,
    LivesWith,
    ProgressAssessment,
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
#: The nurse at triage and the hospital's social worker who follow the family.
NURSE = "https://ehr.example.be/fhir/Practitioner/nurse-an"
SOCIAL_WORKER = "https://ehr.example.be/fhir/Practitioner/social-worker-lien"

#: The mother's two children, who live with her.
BOY = Child(
    "child-boy",
    "Noah",
    date(2022, 10, 3),  # 3 years old at episode 1
    ChildRelationship.NATURAL_CHILD,
    LivesWith.PERMANENTLY,
)
GIRL = Child(
    "child-girl",
    "Emma",
    date(2017, 9, 12),  # 8 years old at episode 1
    ChildRelationship.NATURAL_CHILD,
    LivesWith.PERMANENTLY,
)

#: When the three episodes take place.
EPISODE_1 = datetime(2026, 1, 12, 10, 15, tzinfo=BRUSSELS)
EPISODE_2 = datetime(2026, 3, 9, 14, 0, tzinfo=BRUSSELS)
EPISODE_3 = datetime(2026, 5, 18, 11, 30, tzinfo=BRUSSELS)


def risk(code: str, text: str) -> Factor:
    """A risk factor of the catalogue."""
    return Factor(code, FactorKind.RISK, text)


def protective(code: str, text: str) -> Factor:
    """A protective factor of the catalogue."""
    return Factor(code, FactorKind.PROTECTIVE, text)


def episode_1() -> KindreflexCase:
    """A single mother, depressed and struggling financially; a boy of 3, a girl of 8."""
    case = KindreflexCase.open("Patient/mother", "Encounter/episode-1")

    case = apply(
        case,
        Step1Finding(
            recorded_by=NURSE,
            recorded_at=EPISODE_1,
            children=(BOY, GIRL),
            note="Single mother; the children live with her.",
        ),
    )
    assert case.next_steps == {Step.STEP_2}

    case = apply(
        case,
        Step2Finding(
            recorded_by=NURSE,
            recorded_at=EPISODE_1.replace(minute=25),
            assessment=SafetyAssessment.NO_CONCERN,
            who_helps="Nobody yet; she manages alone.",
            consultations=frozenset({Consultation.COLLEAGUE}),
            note=(
                "Exhausted, cannot organise the day, depressive thoughts, money troubles. "
                "Boy not yet toilet-trained, girl has school problems. Talks openly."
            ),
        ),
    )
    assert case.next_steps == {Step.STEP_3}
    assert not case.has_open_concern

    case = apply(
        case,
        Step3Support(
            recorded_by=NURSE,
            recorded_at=EPISODE_1.replace(minute=40),
            actions=frozenset(
                {
                    SupportAction.DISCUSS_IMPACT,
                    SupportAction.STRENGTHEN_RESILIENCE,
                    SupportAction.INVOLVE_NETWORK,
                    SupportAction.INVOLVE_SERVICE,
                    SupportAction.ASK_REGULARLY,
                }
            ),
            services=frozenset(
                {ReferralTarget.CAW, ReferralTarget.OCMW, ReferralTarget.OPVOEDINGSLIJN}
            ),
            note="Practical and financial support; Opvoedingslijn for toilet training.",
        ),
    )
    assert case.next_steps == {Step.STEP_2, Step.STEP_3}
    assert not case.has_open_concern
    return case


def episode_2(case: KindreflexCase) -> KindreflexCase:
    """A new partner irritated by the children; no lunch, absences, left home alone."""
    step2 = Step2Finding(
        recorded_by=NURSE,
        recorded_at=EPISODE_2,
        encounter_ref="Encounter/episode-2",
        assessment=SafetyAssessment.NIET_PLUIS,
        reasons=(
            "New partner is irritated by the children.",
            "No lunch packed for school; the children are often absent.",
            "The children are often left home alone.",
            "Mother is torn between the children and her new partner.",
        ),
        consultations=frozenset({Consultation.COLLEAGUE}),
    )
    case = apply(case, step2)
    assert case.next_steps == {Step.STEP_4}
    assert case.has_open_concern

    decision = Step4Decision(
        recorded_by=SOCIAL_WORKER,
        recorded_at=EPISODE_2.replace(hour=16),
        encounter_ref="Encounter/episode-2",
        decision=TeamDecision.CONCERNING_WILLING,
        factors=(
            risk("parental-mental-illness", "Depressive thoughts."),
            risk("high-stress", "Cannot organise the day."),
            risk("financial-problems", "Money troubles."),
            risk("partner-hostile-to-children", "New partner irritated by the children."),
            risk("basic-needs-unmet", "No lunch packed for school."),
            risk("school-absence", "Children often absent from school."),
            risk("children-left-alone", "Children often left home alone."),
            risk("child-development-concerns", "Boy of 3 not toilet-trained; girl school."),
            protective("asks-for-help", "Mother talks openly about her difficulties."),
            protective("professional-involvement", "School and CLB are involved."),
            protective("supportive-network", "No longer alone since the new partner."),
        ),
        consultations=frozenset({Consultation.COLLEAGUE, Consultation.CLB}),
        discussed_with_patient=True,
        note="Worries named concretely; mother agrees to work on the situation.",
    )
    case = apply(case, decision)
    assert case.next_steps == {Step.STEP_5}
    assert case.has_open_concern
    return case


def episode_3(case: KindreflexCase) -> KindreflexCase:
    """Bruises on the mother; no steps taken for the children; she stops care."""
    progress = Step5Progress(
        recorded_by=SOCIAL_WORKER,
        recorded_at=EPISODE_3,
        encounter_ref="Encounter/episode-3",
        progress=ProgressAssessment.NOT_RESTORED,
        actions=frozenset(
            {
                SafetyAction.WORK_WITH_FAMILY,
                SafetyAction.HELP_FOR_CHILDREN,
                SafetyAction.REVISIT_PARENTHOOD,
            }
        ),
        services=frozenset({ReferralTarget.CLB}),
        note=(
            "Bruises on the patient. No steps towards help for the children. School and "
            "CLB remain worried. Patient says she stops the counselling."
        ),
    )
    case = apply(case, progress)
    assert case.next_steps == {Step.STEP_6}
    assert not case.acute_danger

    referral = Step6Referral(
        recorded_by=SOCIAL_WORKER,
        recorded_at=EPISODE_3.replace(hour=13),
        encounter_ref="Encounter/episode-3",
        target=ReferralTarget.VK,
        with_cooperation=False,
        patient_informed=True,
        focus=(BOY.ref, GIRL.ref),
        follow_up_actions=("Tell the CLB who takes the next step.",),
    )
    return apply(case, referral)


#: The factors the workshop names in the second episode (seed 001), as the form sends them.
WORKSHOP_FACTORS = [
    {"code": "parental-mental-illness", "text": "Depressive thoughts."},
    {"code": "high-stress", "text": "Cannot organise the day."},
    {"code": "financial-problems", "text": "Money troubles."},
    {"code": "partner-hostile-to-children", "text": "New partner irritated by the children."},
    {"code": "basic-needs-unmet", "text": "No lunch packed for school."},
    {"code": "school-absence", "text": "Children often absent from school."},
    {"code": "children-left-alone", "text": "Children often left home alone."},
    {"code": "asks-for-help", "text": "Mother talks openly about her difficulties."},
    {"code": "professional-involvement", "text": "School and CLB are involved."},
]
