"""The step 4-6 request bodies of the social service (``service.social``): the seed 001
case through them, and every refusal with its reason (catalogue, directory, protocol)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from service.fhir import terminology
from service.partners import load_default_directory
from service.protocol import (
    MAX_CHILDREN,
    AgreedAction,
    Consultation,
    ContactChannel,
    FacilityContact,
    FactorKind,
    HeardChild,
    KeyPerson,
    KeyPersonRole,
    KindreflexCase,
    MissingInformationError,
    ProgressAssessment,
    ProtocolError,
    ReferralTarget,
    SafetyAssessment,
    Step,
    Step2Finding,
    StepOrderError,
    TeamDecision,
    apply,
)
from service.social import MAX_FACTORS, CatalogueError, Step4Input, Step5Input, Step6Input
from tests.support.workshop import (
    BOY,
    EPISODE_2,
    EPISODE_3,
    GIRL,
    NURSE,
    SOCIAL_WORKER,
    WORKSHOP_FACTORS,
    episode_1,
)

DIRECTORY = load_default_directory()


def _handed_off() -> KindreflexCase:
    """Episode 1, then the nurse's niet-pluis of episode 2: the case waits for step 4."""
    niet_pluis = Step2Finding(
        recorded_by=NURSE,
        recorded_at=EPISODE_2,
        assessment=SafetyAssessment.NIET_PLUIS,
        reasons=("New partner is irritated by the children.", "Often left home alone."),
    )
    return apply(episode_1(), niet_pluis)


def _step4(**changes: object) -> Step4Input:
    body: dict[str, object] = {
        "decision": "concerning-unwilling",
        "factors": WORKSHOP_FACTORS,
        "consultations": ["colleague", "clb"],
        "discussed_with_patient": True,
        "children_heard": [{"child_ref": GIRL.ref, "consent_given": True}],
        "note": "Worries named; the mother stops the counselling.",
    }
    return Step4Input.model_validate(body | changes)


def test_the_workshop_case_goes_from_the_team_decision_to_the_vk() -> None:
    decision = _step4().finding(SOCIAL_WORKER, EPISODE_2 + timedelta(hours=2))

    assert decision.decision is TeamDecision.CONCERNING_UNWILLING
    assert decision.consultations == {Consultation.COLLEAGUE, Consultation.CLB}
    assert [f.code for f in decision.risk_factors][:2] == ["parental-mental-illness", "high-stress"]
    assert {f.kind for f in decision.protective_factors} == {FactorKind.PROTECTIVE}
    assert len(decision.protective_factors) == 2
    case = apply(_handed_off(), decision)
    assert case.next_steps == {Step.STEP_6}

    referral_body = Step6Input.model_validate(
        {
            "partner_id": "vk-oost-vlaanderen",
            "with_cooperation": False,
            "patient_informed": True,
            "focus": [BOY.ref, GIRL.ref],
            "follow_up_actions": ["Tell the CLB who takes the next step.", "  "],
        }
    )
    referral = referral_body.finding(SOCIAL_WORKER, EPISODE_3, DIRECTORY)
    case = apply(case, referral)

    assert referral.target is ReferralTarget.VK
    assert referral.follow_up_actions == ("Tell the CLB who takes the next step.",)
    assert referral_body.partner(DIRECTORY).phones[0].number == "09 216 73 30"
    assert case.current_step is Step.STEP_6


def test_step_5_input_follows_the_willing_branch() -> None:
    willing = _step4(decision="concerning-willing").finding(SOCIAL_WORKER, EPISODE_2)
    case = apply(_handed_off(), willing)
    progress = Step5Input.model_validate(
        {
            "progress": "not-restored",
            "actions": ["work-with-family", "help-for-children"],
            "services": ["clb"],
            "note": "Bruises on the patient; she stops the counselling.",
        }
    ).finding(SOCIAL_WORKER, EPISODE_3)

    assert progress.progress is ProgressAssessment.NOT_RESTORED
    assert apply(case, progress).next_steps == {Step.STEP_6}


def test_a_factor_outside_the_catalogue_is_refused_with_the_way_out() -> None:
    body = _step4(factors=[{"code": "bad-vibes", "text": "?"}])
    with pytest.raises(CatalogueError, match="'bad-vibes' is not a factor of the catalogue"):
        body.finding(SOCIAL_WORKER, EPISODE_2)


@pytest.mark.parametrize("partner_id", ["vrij-clb-zuid-oost-vlaanderen", "no-such-partner"])
def test_step_6_goes_only_to_a_mandated_entry_of_the_directory(partner_id: str) -> None:
    body = Step6Input(partner_id=partner_id, with_cooperation=True, patient_informed=True)
    with pytest.raises(CatalogueError) as refused:
        body.finding(SOCIAL_WORKER, EPISODE_3, DIRECTORY)
    assert "vk-oost-vlaanderen, ocj-oost-vlaanderen, parket, politie" in str(refused.value)


def test_the_protocol_decides_what_may_be_recorded() -> None:
    with pytest.raises(MissingInformationError):  # worries not named to the patient
        _step4(discussed_with_patient=False).finding(SOCIAL_WORKER, EPISODE_2)
    ocj = Step6Input(partner_id="ocj-oost-vlaanderen", with_cooperation=True, patient_informed=True)
    with pytest.raises(ProtocolError, match="OCJ"):
        ocj.finding(SOCIAL_WORKER, EPISODE_3, DIRECTORY)
    police = Step6Input(partner_id="politie", with_cooperation=False, patient_informed=True)
    decided = apply(_handed_off(), _step4().finding(SOCIAL_WORKER, EPISODE_2))
    with pytest.raises(ProtocolError, match="acute danger"):
        apply(decided, police.finding(SOCIAL_WORKER, EPISODE_3, DIRECTORY))
    progress = Step5Input(progress=ProgressAssessment.IMPROVING, note="Better.")
    with pytest.raises(StepOrderError):  # step 5 follows a willing decision, not this one
        apply(decided, progress.finding(SOCIAL_WORKER, EPISODE_3))


def test_a_body_with_unknown_or_wrong_fields_is_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        _step4(decison="safe")
    with pytest.raises(ValidationError, match="decision"):
        _step4(decision="fine")
    with pytest.raises(ValidationError, match="services"):
        Step5Input.model_validate({"progress": "improving", "services": ["nobody"]})


def test_the_casework_fields_reach_the_findings() -> None:
    decision = _step4(
        key_persons=[{"role": "partner"}, {"role": "other", "text": "neighbour"}],
        patient_explanation="She says the children are fine alone for an hour.",
        team_members=["social worker ED", "  ", "dr. Janssens"],
        children_heard=[{"child_ref": GIRL.ref, "consent_given": True, "own_say": "Wants help."}],
    ).finding(SOCIAL_WORKER, EPISODE_2)
    assert decision.children_heard == (HeardChild(GIRL.ref, True, "Wants help."),)
    assert decision.key_persons == (
        KeyPerson(KeyPersonRole.PARTNER),
        KeyPerson(KeyPersonRole.OTHER, "neighbour"),
    )
    assert decision.patient_explanation == "She says the children are fine alone for an hour."
    assert decision.team_members == ("social worker ED", "dr. Janssens")

    day = EPISODE_3.date()
    progress = Step5Input.model_validate(
        {
            "progress": "improving",
            "agreed_actions": [{"text": "CAW appointment", "follow_up_on": str(day)}],
            "next_follow_up": str(day + timedelta(days=14)),
        }
    ).finding(SOCIAL_WORKER, EPISODE_3)
    assert progress.agreed_actions == (AgreedAction("CAW appointment", day),)
    assert progress.next_follow_up == day + timedelta(days=14)

    referral = Step6Input.model_validate(
        {
            "partner_id": "vk-oost-vlaanderen",
            "with_cooperation": True,
            "patient_informed": True,
            "contact": {"on": str(day), "person": "An (VK)", "channel": "letter"},
        }
    ).finding(SOCIAL_WORKER, EPISODE_3, DIRECTORY)
    assert referral.contact == FacilityContact(day, "An (VK)", ContactChannel.LETTER)


def test_bad_casework_fields_are_refused_with_their_reason() -> None:
    with pytest.raises(ValidationError, match="role"):
        _step4(key_persons=[{"role": "uncle"}])
    with pytest.raises(MissingInformationError):
        _step4(key_persons=[{"role": "other"}]).finding(SOCIAL_WORKER, EPISODE_2)
    with pytest.raises(ValidationError, match="channel"):
        Step6Input.model_validate(
            {
                "partner_id": "vk-oost-vlaanderen",
                "with_cooperation": True,
                "patient_informed": True,
                "contact": {"on": "2026-05-18", "person": "An", "channel": "pigeon"},
            }
        )
    with pytest.raises(ValidationError, match="next_follow_up"):
        Step5Input.model_validate({"progress": "improving", "next_follow_up": "soon"})


def test_a_factor_or_a_child_given_twice_is_refused() -> None:
    twice = [*WORKSHOP_FACTORS, {"code": "high-stress", "text": "Again, otherwise."}]
    with pytest.raises(ValidationError) as factors:
        _step4(factors=twice)
    (problem,) = factors.value.errors()
    assert problem["loc"] == ("factors",)
    assert "the factor 'high-stress' is given twice; give each factor once" in problem["msg"]

    heard = [{"child_ref": GIRL.ref, "consent_given": given} for given in (True, False)]
    with pytest.raises(ValidationError) as children:
        _step4(children_heard=heard)
    (problem,) = children.value.errors()
    assert problem["loc"] == ("children_heard",)
    assert f"the child '{GIRL.ref}' is given twice" in problem["msg"]


@pytest.mark.parametrize("code", ["x" * 65, "High-Stress", "high stress", "-", "vk\n", ""])
def test_a_code_longer_than_64_characters_or_of_another_shape_is_refused(code: str) -> None:
    with pytest.raises(ValidationError, match=r"factors\.0\.code"):
        _step4(factors=[{"code": code}])
    with pytest.raises(ValidationError, match="partner_id"):
        Step6Input(partner_id=code, with_cooperation=True, patient_informed=True)


def test_a_code_of_64_characters_is_looked_up() -> None:
    longest = "x" * 64
    with pytest.raises(CatalogueError, match=f"'{longest}' is not a factor"):
        _step4(factors=[{"code": longest}]).finding(SOCIAL_WORKER, EPISODE_2)
    referral = Step6Input(partner_id=longest, with_cooperation=True, patient_informed=True)
    with pytest.raises(CatalogueError, match=f"'{longest}' is not a VK"):
        referral.finding(SOCIAL_WORKER, EPISODE_3, DIRECTORY)


def test_a_child_in_focus_twice_is_refused_in_every_step() -> None:
    focus = [GIRL.ref, BOY.ref, GIRL.ref]
    for step in (
        lambda: _step4(focus=focus),
        lambda: Step5Input.model_validate({"progress": "improving", "focus": focus}),
        lambda: Step6Input.model_validate(
            {"partner_id": "vk", "with_cooperation": True, "patient_informed": True}
            | {"focus": focus}
        ),
    ):
        with pytest.raises(ValidationError) as refused:
            step()
        (problem,) = refused.value.errors()
        assert problem["loc"] == ("focus",)
        assert f"the child '{GIRL.ref}' is given twice; give each child once" in problem["msg"]
    with pytest.raises(ValidationError, match=r"focus\.0"):
        _step4(focus=["Patient/" + "1" * 200])


def test_every_factor_of_the_catalogue_once_is_the_longest_list() -> None:
    """MAX_FACTORS is the catalogue's size: each factor once is taken, one more refused."""
    catalogue = [{"code": factor.code} for factor in terminology.factors()]
    assert len(catalogue) == MAX_FACTORS
    assert len(_step4(factors=catalogue).finding(SOCIAL_WORKER, EPISODE_2).factors) == MAX_FACTORS
    with pytest.raises(ValidationError) as refused:
        _step4(factors=[*catalogue, {"code": "one-more"}])
    (problem,) = refused.value.errors()
    assert (problem["loc"], problem["type"]) == (("factors",), "too_long")


def test_no_more_children_than_a_case_holds() -> None:
    """A case names at most MAX_CHILDREN children (the triage screen's rows): so many are
    taken in the focus and among those heard, one more is refused."""
    refs = [f"Patient/child-{number}" for number in range(MAX_CHILDREN + 1)]
    heard = [{"child_ref": ref, "consent_given": True} for ref in refs]
    taken = _step4(focus=refs[:MAX_CHILDREN], children_heard=heard[:MAX_CHILDREN])
    assert (len(taken.focus), len(taken.children_heard)) == (MAX_CHILDREN, MAX_CHILDREN)
    for field, items in (("focus", refs), ("children_heard", heard)):
        with pytest.raises(ValidationError) as refused:
            _step4(**{field: items})
        (problem,) = refused.value.errors()
        assert (problem["loc"], problem["type"]) == ((field,), "too_long")
