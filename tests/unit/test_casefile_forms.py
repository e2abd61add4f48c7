"""The case page's forms as the API's bodies (``smart_app.casefile``): what a social worker
typed next to a choice reaches the finding or is refused, never dropped."""

from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from service.protocol import ProgressAssessment, TeamDecision, apply
from service.social import Step4Input, Step5Input
from smart_app.casefile import _about_when_made, _referral_decision, step4_body, step5_body
from tests.support.findings import case_of, child, step1, step2, step4, step5, step6

GIRL = "RelatedPerson/girl"


def test_text_typed_next_to_an_unticked_choice_of_step_4_is_kept() -> None:
    # Before, the specifics of a factor, a child's own say and the other key person were
    # dropped without a word when their box was not ticked; the page said "saved".
    body = step4_body(
        {
            "decision": ["concerning-willing"],
            "factor": ["high-stress"],
            "factor_text_high-stress": ["Cannot organise the day."],
            "factor_text_children-left-alone": ["Often home alone after school."],
            "factor_text_asks-for-help": [" "],
            "child_say_" + GIRL: ["I want to stay with mum."],
            "child_consent_" + GIRL: ["on"],
            "key_person_other": ["neighbour"],
        }
    )

    assert body["factors"] == [
        {"code": "high-stress", "text": "Cannot organise the day."},
        {"code": "children-left-alone", "text": "Often home alone after school."},
    ]
    assert body["children_heard"] == [
        {"child_ref": GIRL, "consent_given": True, "own_say": "I want to stay with mum."}
    ]
    assert body["key_persons"] == [{"role": "other", "text": "neighbour"}]
    step = Step4Input.model_validate(body)
    assert [h.own_say for h in step.children_heard] == ["I want to stay with mum."]


def test_a_ticked_choice_with_its_text_is_listed_once() -> None:
    body = step4_body(
        {
            "decision": ["safe"],
            "factor": ["high-stress"],
            "factor_text_high-stress": ["Cannot organise the day."],
            "child_heard": [GIRL],
            "child_say_" + GIRL: ["Fine."],
            "key_person": ["partner", "other"],
            "key_person_other": ["aunt"],
        }
    )

    assert [f["code"] for f in body["factors"]] == ["high-stress"]
    assert [h["child_ref"] for h in body["children_heard"]] == [GIRL]
    assert body["key_persons"] == [{"role": "partner"}, {"role": "other", "text": "aunt"}]


def test_a_follow_up_date_without_its_agreed_action_is_refused_not_dropped() -> None:
    body = step5_body({"progress": ["improving"], "action_on_1": ["2099-01-05"]})

    with pytest.raises(ValidationError) as refused:
        Step5Input.model_validate(body)
    assert refused.value.errors()[0]["loc"][:2] == ("agreed_actions", 0)


def test_the_printed_referral_gives_the_team_decision_it_follows_from_never_an_older_one() -> None:
    """The sheet read to the police after the team's "safe" and then a nurse's acute
    danger said "Teambeslissing: veilig" (the latest step 4, whatever the referral followed
    from). It now gives the step 4 the referral follows from: its reason, or the decision
    before a step 5 "not restored"; none after a step 2's acute danger."""
    safe = step4(TeamDecision.SAFE, t=3)
    acute = step2(t=11, acute=True)
    assert _referral_decision([step1(), step2(), safe, step1(t=10), acute]) is None
    unwilling = step4(TeamDecision.CONCERNING_UNWILLING, t=3)
    assert _referral_decision([step1(), step2(), unwilling]) is unwilling
    willing = step4(TeamDecision.CONCERNING_WILLING, t=3)
    not_restored = step5(ProgressAssessment.NOT_RESTORED)
    assert _referral_decision([step1(), step2(), safe, willing, not_restored]) is willing


def test_the_printed_referral_names_whom_it_was_about_when_it_was_made() -> None:
    """A child a later step 1 added (a newborn at the next visit) was printed on the
    referral, though the ServiceRequest sent to the facility does not name them."""
    lotte, noor = child("c1", name="Lotte"), child("c2", date(2026, 2, 1), "Noor")
    referred = case_of(step1(children=(lotte,)), step2(), step4(TeamDecision.CONCERNING_UNWILLING))
    referral = step6()
    later = apply(apply(referred, referral), step1(t=10, children=(lotte, noor)))
    assert {c.name for c in later.children} == {"Lotte", "Noor"}
    assert _about_when_made(later, referral) == ((lotte,), None)
