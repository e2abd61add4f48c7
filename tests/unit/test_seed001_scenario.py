"""The worked case of the Kindreflex workshop (seed 001) as an executable scenario.

The workshop follows one family through three episodes ("Oefening: En dan?" and two
"Vervolg oefening: extra info"). Each episode is placed after the slides of the step it
exercises; that placement is what tells us the branch the workshop intends:

* Episode 1 sits between the step 2 slides and the step 3 slides. A single mother is
  exhausted ("is op"), cannot organise the day, has depressive thoughts and money
  troubles; a boy of 3 is not toilet-trained, a girl of 8 has school problems. The
  exercise asks "what is the impact of the situation on the children?" - the question
  of step 3 ("bespreek de impact van de situatie op de kinderen") - and the slides that
  follow are about supporting a vulnerable parent ("every parent wants the best for
  their child ... wanting the best does not mean always managing it") and arranging
  practical and social support (CAW, OCMW, mutuality, Huis van het Kind, Opvoedingslijn).
  The mother talks openly and nothing points at an unsafe home yet. So step 2 is
  *no concern* and the case goes to **step 3**: support the patient as a parent.
  (Had the workshop meant niet-pluis, episode 2 would not need "extra info" to reach
  step 4.)
* Episode 2 ("extra info", several conversations later) sits in the step 4 slides and
  asks to fill in the table of risk and protective factors and to name the worries to
  the client: a new partner who is irritated by the children, no lunch packed for
  school, children often absent (consult the CLB), children often left home alone, the
  mother torn between her children and the partner she does not want to lose. Support
  (step 3) keeps asking about the children, so the new worries are gauged again at
  step 2 (*niet-pluis*, with these reasons) and lead to **step 4**. The step 5 slides
  follow, and episode 3 says the worries "were already discussed in earlier
  conversations" and that the mother "took no steps" - steps were agreed with her. So
  the team decides *concerning, patient willing* and the case goes to **step 5**.
* Episode 3 ("extra info") sits in the step 6 slides: bruises on the client, no steps
  towards help for the children, persistent worry of the school and the CLB, and the
  client says she stops the counselling. Safety is *not restored* (step 5), so the case
  goes to **step 6**; the role play is telling the mother that you will report. She no
  longer cooperates and there is no acute danger to the children, so the referral goes
  to the **VK**, without cooperation, with the patient informed (not the parket).

The children's ages are taken on the date of each episode. Breaking any branch rule of
``service/protocol.py`` makes one of the assertions below fail.
"""

from __future__ import annotations

import pytest

from service.protocol import (
    AdviceKind,
    Consultation,
    ErrorCode,
    HagueTrigger,
    InvalidFindingError,
    KindreflexCase,
    ProgressAssessment,
    ReferralTarget,
    Step,
    Step4Decision,
    Step5Progress,
    Step6Referral,
    StepOrderError,
    TeamDecision,
    advice,
    apply,
    kind_en_gezin_advised,
)
from tests.support.workshop import (
    BOY,
    EPISODE_1,
    EPISODE_2,
    EPISODE_3,
    GIRL,
    SOCIAL_WORKER,
    episode_1,
    episode_2,
    episode_3,
)


def test_the_workshop_case_takes_the_branches_the_workshop_intends() -> None:
    case = episode_3(episode_2(episode_1()))

    assert [f.step for f in case.findings] == [
        Step.STEP_1,
        Step.STEP_2,
        Step.STEP_3,
        Step.STEP_2,
        Step.STEP_4,
        Step.STEP_5,
        Step.STEP_6,
    ]
    referral = case.findings[-1]
    assert isinstance(referral, Step6Referral)
    assert referral.target is ReferralTarget.VK
    assert not referral.with_cooperation
    assert referral.patient_informed
    assert case.has_open_concern
    assert case.next_steps == {Step.STEP_3, Step.STEP_5, Step.STEP_6}
    assert KindreflexCase.replay(case.patient_ref, case.encounter_ref, case.findings) == case


def test_episode_1_cannot_jump_to_a_team_decision() -> None:
    case = episode_1()
    decision = Step4Decision(
        recorded_by=SOCIAL_WORKER,
        recorded_at=EPISODE_2,
        decision=TeamDecision.CONCERNING_WILLING,
        consultations=frozenset({Consultation.COLLEAGUE}),
        discussed_with_patient=True,
    )
    with pytest.raises(StepOrderError) as error:
        apply(case, decision)
    assert error.value.code is ErrorCode.STEP_OUT_OF_ORDER


def test_episode_1_advice_boy_of_3_is_past_kind_en_gezin() -> None:
    """Kind & Gezin's start conversation runs until the third birthday: Noah is 3."""
    case = episode_1()
    assert kind_en_gezin_advised(case, EPISODE_1.date()) is None


def test_episode_2_advises_the_clb_and_the_childrens_consent() -> None:
    case = episode_2(episode_1())
    kinds = {(a.kind, a.step): a.child_refs for a in advice(case, EPISODE_2.date())}
    assert kinds[(AdviceKind.CLB, Step.STEP_4)] == (BOY.ref, GIRL.ref)
    assert kinds[(AdviceKind.CHILD_CONSENT, Step.STEP_4)] == (BOY.ref, GIRL.ref)


def test_episode_3_cannot_refer_before_recording_that_safety_is_not_restored() -> None:
    case = episode_2(episode_1())
    referral = Step6Referral(
        recorded_by=SOCIAL_WORKER,
        recorded_at=EPISODE_3,
        target=ReferralTarget.VK,
        with_cooperation=False,
        patient_informed=True,
    )
    with pytest.raises(StepOrderError):
        apply(case, referral)


def test_episode_3_the_ocj_only_without_cooperation() -> None:
    """The workshop reports to the VK; the OCJ fits too, as she no longer cooperates."""
    case = episode_3(episode_2(episode_1()))
    progress = case.findings[-2]
    before_referral = KindreflexCase.replay(
        case.patient_ref, case.encounter_ref, case.findings[:-1]
    )
    assert isinstance(progress, Step5Progress)
    ocj = Step6Referral(
        recorded_by=SOCIAL_WORKER,
        recorded_at=EPISODE_3.replace(hour=13),
        target=ReferralTarget.OCJ,
        with_cooperation=False,
        patient_informed=True,
    )
    assert apply(before_referral, ocj).current_step is Step.STEP_6
    with pytest.raises(InvalidFindingError) as error:
        Step6Referral(
            recorded_by=SOCIAL_WORKER,
            recorded_at=EPISODE_3.replace(hour=13),
            target=ReferralTarget.OCJ,
            with_cooperation=True,
            patient_informed=True,
        )
    assert error.value.code is ErrorCode.OCJ_WITHOUT_COOPERATION_ONLY


def test_episode_3_is_not_a_case_for_the_parket() -> None:
    """Bruises on the mother are a Hague trigger (domestic violence), not acute danger."""
    assert HagueTrigger.DOMESTIC_VIOLENCE.value == "domestic-violence"
    case = episode_2(episode_1())
    case = apply(
        case,
        Step5Progress(
            recorded_by=SOCIAL_WORKER,
            recorded_at=EPISODE_3,
            progress=ProgressAssessment.NOT_RESTORED,
        ),
    )
    parket = Step6Referral(
        recorded_by=SOCIAL_WORKER,
        recorded_at=EPISODE_3,
        target=ReferralTarget.PARKET,
        with_cooperation=False,
        patient_informed=True,
    )
    with pytest.raises(InvalidFindingError) as error:
        apply(case, parket)
    assert error.value.code is ErrorCode.ACUTE_DANGER_REQUIRED
