"""The Kindreflex card rules, from FHIR JSON to the card, without I/O.

Codes are taken from the built guide (never typed here), so the tests also prove that
the rules read the guide's trigger ValueSets and its open-concern and step codes.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.cds.cards import SUMMARY_LIMIT, CardBook, CardTarget, uuid7
from service.cds.configured import ConfiguredHooks
from service.cds.rules import GENERIC, Advice, advise, local_trigger_codes
from service.cds.situation import situation_of
from service.cds.vocabulary import Code, Vocabulary
from service.fhir import terminology
from service.i18n import Language, translate
from service.protocol import HagueTrigger
from service.tenancy import TenantContext
from service.tenant_config import HookSettings, LocalTriggerCode, TenantConfiguration
from tests.support.any_json import ANY_JSON, paths, replaced
from tests.support.prefetch import (
    ENCOUNTER_ID,
    FULL_PREFETCH,
    VOCABULARY,
    a_code_of,
    bundle,
    concern_flag,
    condition,
    prefetch,
    step_1_finding,
)

TODAY = date(2026, 11, 23)


def advice_for(
    data: dict[str, Any], hooks: HookSettings | None = None, vocabulary: Vocabulary = VOCABULARY
) -> Advice | None:
    return advise(situation_of(data, ENCOUNTER_ID), hooks or HookSettings(), vocabulary, TODAY)


# --- who gets a card ---------------------------------------------------------------------


def test_a_17_year_old_gets_no_card_and_turns_adult_on_the_18th_birthday() -> None:
    assert advice_for(prefetch(birth_date="2008-11-24")) is None  # 18 tomorrow
    eighteen_today = advice_for(prefetch(birth_date="2008-11-23"))
    assert eighteen_today is not None
    assert eighteen_today.indicator == "info"


def test_the_adult_age_is_the_hospitals_setting() -> None:
    sixteen = prefetch(birth_date="2010-01-01")
    assert advice_for(sixteen) is None
    assert advice_for(sixteen, HookSettings(adult_age=16)) is not None


@pytest.mark.parametrize(
    "birth_date", ["2008", "2008-11", None, "not-a-date", "2008-02-30", "2026-11-24", "9999-12-31"]
)
def test_with_doubt_about_the_age_the_card_is_shown(birth_date: str | None) -> None:
    # "2008" may be an 18-year-old: the earliest possible birth date counts
    assert advice_for(prefetch(birth_date=birth_date)) is not None


@pytest.mark.parametrize("language", ["nl", "fr", "en"])
def test_a_card_shown_in_doubt_about_the_age_does_not_say_the_patient_is_adult(
    language: Language,
) -> None:
    """A birth date missing, partial or in the future shows the card (the doubt favours the
    child), whose detail said "Deze patiënt is volwassen" all the same (review)."""
    advice = advice_for(prefetch(birth_date=None))
    assert advice is not None

    detail = render(advice, language)["detail"]

    assert not any(claim in detail for claim in ("volwassen", "adulte", "adult"))


def test_no_patient_data_gives_the_generic_card() -> None:
    assert advise(situation_of({}, ENCOUNTER_ID), HookSettings(), VOCABULARY, TODAY) is GENERIC
    assert (
        advise(situation_of({"patient": None}, None), HookSettings(), VOCABULARY, TODAY) == GENERIC
    )


def test_step_1_recorded_for_this_encounter_means_no_card() -> None:
    assert advice_for(prefetch(findings=(step_1_finding(),))) is None


@pytest.mark.parametrize("status", ["amended", "corrected"])
def test_a_step_1_amended_or_corrected_is_recorded_too(status: str) -> None:
    assert advice_for(prefetch(findings=(step_1_finding(status=status),))) is None


def test_a_step_1_of_another_visit_does_not_count() -> None:
    finding = step_1_finding(encounter="an-earlier-visit")
    assert advice_for(prefetch(findings=(finding,))) is not None


@pytest.mark.parametrize(
    "status", ["entered-in-error", "cancelled", "registered", "preliminary", "unknown"]
)
def test_a_step_1_in_error_or_not_final_does_not_count(status: str) -> None:
    """An interim step 1 (an EHR form not yet signed: ``preliminary``) is no step 1 done:
    with that doubt the card is shown, as with doubt about the age."""
    assert advice_for(prefetch(findings=(step_1_finding(status=status),))) is not None


def test_once_per_encounter_can_be_switched_off() -> None:
    data = prefetch(findings=(step_1_finding(),))
    assert advice_for(data, HookSettings(once_per_encounter=False)) is not None


# --- why a card warns --------------------------------------------------------------------


@pytest.mark.parametrize("trigger", list(HagueTrigger))
def test_each_hague_trigger_as_encounter_reason_warns_and_says_why(trigger: HagueTrigger) -> None:
    advice = advice_for(prefetch(reasons=(a_code_of(trigger),)))
    assert advice is not None
    assert advice.indicator == "warning"
    assert advice.triggers == (trigger,)
    assert advice.reasons == (trigger.value,)


@pytest.mark.parametrize("trigger", list(HagueTrigger))
def test_each_hague_trigger_as_encounter_condition_warns(trigger: HagueTrigger) -> None:
    advice = advice_for(prefetch(conditions=(condition(a_code_of(trigger)),)))
    assert advice is not None
    assert advice.triggers == (trigger,)


def test_a_refuted_or_erroneous_condition_is_no_trigger() -> None:
    code = a_code_of(HagueTrigger.SUBSTANCE_ABUSE)
    conditions = (condition(code, "refuted"), condition(code, "entered-in-error"))
    advice = advice_for(prefetch(conditions=conditions))
    assert advice is not None
    assert advice.indicator == "info"


def _on_encounter_of(status: Any, flags: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """A visit with a trigger as its reason and another as its condition, the encounter's
    status ``status``."""
    data = prefetch(
        reasons=(a_code_of(HagueTrigger.DOMESTIC_VIOLENCE),),
        conditions=(condition(a_code_of(HagueTrigger.SUBSTANCE_ABUSE)),),
        flags=flags,
    )
    data["encounter"]["status"] = status
    return data


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled"])
def test_an_encounter_entered_in_error_or_cancelled_gives_no_trigger(status: str) -> None:
    """Found by review: the rules never read Encounter.status, and a trigger on an
    encounter recorded in error, or cancelled before it began (no presentation: the
    patient was not seen), made a warning card naming it. The adult still gets the card
    that prompts the Kindreflex, and their open concern still warns."""
    advice = advice_for(_on_encounter_of(status))
    assert advice is not None
    assert (advice.indicator, advice.triggers, advice.patient_data) == ("info", (), True)
    concern = advice_for(_on_encounter_of(status, flags=(concern_flag(),)))
    assert concern is not None
    assert (concern.indicator, concern.reasons) == ("warning", ("open-concern",))


@pytest.mark.parametrize(
    "status", ["planned", "arrived", "triaged", "in-progress", "finished", "unknown", None, 7]
)
def test_an_encounter_of_any_other_status_or_none_gives_its_triggers(status: Any) -> None:
    advice = advice_for(_on_encounter_of(status))
    assert advice is not None
    assert advice.triggers == (HagueTrigger.DOMESTIC_VIOLENCE, HagueTrigger.SUBSTANCE_ABUSE)


def test_a_code_outside_the_trigger_value_sets_does_not_warn() -> None:
    advice = advice_for(prefetch(reasons=(Code("http://snomed.info/sct", "0000000"),)))
    assert advice is not None
    assert advice.indicator == "info"


def test_a_hospitals_local_trigger_code_warns() -> None:
    local = Code("https://hospital.example/codes/triage", "INTOX-3")
    hooks = HookSettings(
        local_trigger_codes=[
            LocalTriggerCode(
                trigger=HagueTrigger.SUBSTANCE_ABUSE, system=local.system, code=local.code
            )
        ]
    )
    vocabulary = VOCABULARY.with_local_codes(local_trigger_codes(hooks))
    advice = advice_for(prefetch(reasons=(local,)), hooks, vocabulary)
    assert advice is not None
    assert advice.triggers == (HagueTrigger.SUBSTANCE_ABUSE,)
    assert advice_for(prefetch(reasons=(local,))) == Advice(indicator="info")


def test_an_open_concern_from_an_earlier_visit_warns_a_closed_one_does_not() -> None:
    open_concern = advice_for(prefetch(flags=(concern_flag(),)))
    assert open_concern is not None
    assert open_concern.indicator == "warning"
    assert open_concern.reasons == ("open-concern",)
    closed = advice_for(prefetch(flags=(concern_flag(status="inactive"),)))
    assert closed == Advice(indicator="info")


def test_all_reasons_together_in_protocol_order_and_known_children_counted() -> None:
    data = prefetch(
        reasons=tuple(a_code_of(t) for t in reversed(list(HagueTrigger))),
        flags=(concern_flag(),),
        children=2,
    )
    advice = advice_for(data)
    assert advice is not None
    assert advice.reasons == (*(t.value for t in HagueTrigger), "open-concern")
    assert advice.known_children == 2


def paged(search: dict[str, Any]) -> dict[str, Any]:
    """The search as the first page of several."""
    return search | {"link": [{"relation": "next", "url": "https://ehr.example/fhir?page=2"}]}


FAILED = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}


@pytest.mark.parametrize(
    "unread",
    [
        {"flags": paged(bundle())},
        {"flags": FAILED},
        {"flags": "not a Bundle"},
        {"conditions": paged(bundle())},
        {"encounter": FAILED},
    ],
)
def test_no_reason_found_where_a_source_was_not_read_in_full_gives_the_generic_card(
    unread: dict[str, Any],
) -> None:
    """ "No warning" would claim there is no open concern and no trigger: nothing is claimed."""
    assert advice_for(prefetch() | unread) == GENERIC
    for key in ("flags", "encounter", "conditions"):  # missing altogether: the same
        assert advice_for({k: v for k, v in prefetch().items() if k != key}) == GENERIC


def test_a_reason_found_warns_though_another_source_was_not_read_in_full() -> None:
    found = advice_for(prefetch(flags=(concern_flag(),)) | {"conditions": FAILED})
    assert found is not None
    assert found.reasons == ("open-concern",)
    on_the_first_page = advice_for(
        prefetch(reasons=(a_code_of(HagueTrigger.SUBSTANCE_ABUSE),)) | {"flags": paged(bundle())}
    )
    assert on_the_first_page is not None
    assert on_the_first_page.reasons == ("substance-abuse",)


def test_sources_read_in_full_a_null_or_a_last_page_give_the_plain_card() -> None:
    """CDS Hooks: a null prefetch is "no data"; a last page links back, not on."""
    last_page = bundle() | {"link": [{"relation": "previous", "url": "https://ehr.example/p1"}]}
    assert advice_for(prefetch() | {"flags": None, "conditions": last_page}) == Advice("info")


def test_without_an_encounter_only_the_flags_must_be_read_in_full() -> None:
    """patient-view has no encounter: its reasons and conditions are not asked for."""
    data = {"patient": prefetch()["patient"], "flags": bundle()}
    assert advise(situation_of(data, None), HookSettings(), VOCABULARY, TODAY) == Advice("info")
    unread = data | {"flags": paged(bundle())}
    assert advise(situation_of(unread, None), HookSettings(), VOCABULARY, TODAY) == GENERIC


#: the prefetch itself is a dict of dicts or nulls (schemas.HookRequest)
PATHS = paths(FULL_PREFETCH)[1:]


@settings(max_examples=300, deadline=None, derandomize=True)  # the same examples every run
@given(where=st.sampled_from(PATHS), data=st.data())
def test_any_field_of_the_prefetch_with_a_wrong_type_is_treated_as_absent(
    where: tuple[Any, ...], data: st.DataObject
) -> None:
    """The EHR's JSON is not trusted: whatever stands anywhere, the rules answer, never raise."""
    value = data.draw(
        ANY_JSON.filter(lambda v: v is None or isinstance(v, dict)) if len(where) == 1 else ANY_JSON
    )
    advice = advice_for(replaced(FULL_PREFETCH, where, value))
    assert advice is None or advice.indicator in ("info", "warning")


# --- the card ----------------------------------------------------------------------------

TARGET = CardTarget("https://kindreflex.example/t/az/launch", "encounter-start", "abc")


def render(advice: Advice, language: Language = "nl", hooks: HookSettings | None = None) -> Any:
    return CardBook(hooks or HookSettings(), VOCABULARY).card(advice, language, TARGET)


def test_the_info_card_is_dutch_with_a_smart_link_and_override_reasons() -> None:
    result = render(Advice(indicator="info"))
    assert result["summary"] == translate("nl", "cds.info.summary")
    assert result["summary"].startswith("Doe de Kindreflex")
    assert result["indicator"] == "info"
    assert result["source"]["label"] == "Kindreflex"
    (link,) = result["links"]
    assert link["type"] == "smart"
    assert link["url"] == TARGET.launch_url
    assert json.loads(link["appContext"]) == {
        "hook": "encounter-start",
        "hookInstance": "abc",
        "indicator": "info",
        "reasons": [],
    }
    assert [r["code"] for r in result["overrideReasons"]] == HookSettings().override_reasons
    assert result["overrideReasons"][0]["display"] == "Patiënt niet aanspreekbaar"
    override_system = terminology.code_system("cds-override-reason")
    for coding in result["overrideReasons"]:  # a Coding without its system would fail here
        assert coding == terminology.coding("cds-override-reason", coding["code"])
        assert coding["system"] == override_system.url


def test_no_card_field_is_empty_whatever_the_hospital_leaves_blank() -> None:
    """CDS Hooks 2.0: JSON elements SHALL NOT be empty (an empty card list excepted)."""
    blank = {"info_summary": " ", "info_detail": ""}
    hooks = HookSettings(override_reasons=[], source_url="", card_wording={"nl": blank})
    result = render(Advice(indicator="info"), "nl", hooks)
    assert "overrideReasons" not in result
    assert result["source"] == {"label": "Kindreflex"}
    assert result["summary"] == translate("nl", "cds.info.summary")
    assert result["detail"] == translate("nl", "cds.info.detail")


def test_the_configurable_override_reasons_are_the_codes_of_the_guide() -> None:
    every = sorted(terminology.code_system("cds-override-reason").codes)
    assert HookSettings(override_reasons=every).override_reasons == every
    with pytest.raises(ValidationError, match="unknown override reason"):
        HookSettings(override_reasons=["tired"])


@pytest.mark.parametrize(
    ("language", "word"), [("nl", "verwacht"), ("fr", "attendu"), ("en", "expects")]
)
def test_the_no_children_override_reason_says_no_child_is_expected_either(
    language: Language, word: str
) -> None:
    """Seeds 001 and 003, step 1: ask whether the patient "zorg draagt voor kinderen of een
    kind verwacht". Offered on every card, "Geen kinderen of zorg voor kinderen" dismissed
    the card of a pregnant patient in one click, counted as "no children" (found by review)."""
    assert "no-children" in HookSettings().override_reasons
    assert word in terminology.display("cds-override-reason", "no-children", language)


@pytest.mark.parametrize("language", ["nl", "fr", "en"])
def test_the_warning_card_names_every_reason_within_140_characters(language: Language) -> None:
    advice = Advice(indicator="warning", triggers=tuple(HagueTrigger), open_concern=True)
    result = render(advice, language)
    assert len(result["summary"]) < SUMMARY_LIMIT
    # the open concern first, whole: cut at the limit it was lost in Dutch and French
    assert translate(language, "cds.reason.short.open-concern") in result["summary"]
    assert "…" not in result["summary"]
    for reason in advice.reasons:
        assert translate(language, f"cds.reason.long.{reason}") in result["detail"]
    assert json.loads(result["links"][0]["appContext"])["reasons"] == list(advice.reasons)


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_a_summary_of_140_characters_or_more_says_its_last_reasons_as_a_count(
    extra: int,
) -> None:
    """CDS Hooks 2.0 asks for a "<140-character" summary: 140 itself is one too many. The
    reasons that do not fit give way to a count; none is cut mid-word."""
    advice = Advice(indicator="warning", triggers=tuple(HagueTrigger), open_concern=True)
    first = ["open-concern", *(t.value for t in HagueTrigger)]
    reasons = ", ".join(translate("en", f"cds.reason.short.{r}") for r in first)
    padding = "x" * (SUMMARY_LIMIT - 1 - len(reasons) - len(": ") + extra)  # 139 + extra
    hooks = HookSettings(card_wording={"en": {"warning_summary": padding + ": {reasons}"}})
    summary = render(advice, "en", hooks)["summary"]
    assert len(summary) < SUMMARY_LIMIT
    assert summary.endswith("(+1)" if extra else reasons)
    assert "open concern, domestic violence" in summary


def test_a_hospitals_summary_too_long_for_one_reason_is_cut_below_140() -> None:
    advice = Advice(indicator="warning", triggers=(HagueTrigger.SELF_HARM_PSYCHIATRIC,))
    hooks = HookSettings(card_wording={"en": {"warning_summary": "x" * 88 + ": {reasons}"}})
    summary = render(advice, "en", hooks)["summary"]
    assert len(summary) == SUMMARY_LIMIT - 1
    assert summary.endswith("…")


@pytest.mark.parametrize("language", ["nl", "fr", "en"])
def test_the_short_reason_of_the_third_trigger_names_psychiatric_problems(
    language: Language,
) -> None:
    """The Hague Protocol's third group includes serious psychiatric problems (a psychosis
    warns as well): the card's summary must not read as self-harm only."""
    advice = Advice(indicator="warning", triggers=(HagueTrigger.SELF_HARM_PSYCHIATRIC,))
    assert "psychiatri" in render(advice, language)["summary"]


def test_french_and_english_cards() -> None:
    assert render(Advice(indicator="info"), "fr")["summary"].startswith("Faites le Kindreflex")
    assert render(Advice(indicator="info"), "en")["summary"].startswith("Do the Kindreflex")
    assert render(Advice(indicator="info"), "en")["overrideReasons"][1]["display"] == (
        "Kindreflex already done"
    )


def test_the_hospitals_own_wording_replaces_the_catalogue_per_language() -> None:
    hooks = HookSettings(card_wording={"nl": {"warning_summary": "Kindreflex nodig ({reasons})"}})
    advice = Advice(indicator="warning", triggers=(HagueTrigger.DOMESTIC_VIOLENCE,))
    assert render(advice, "nl", hooks)["summary"] == "Kindreflex nodig (huiselijk geweld)"
    assert render(advice, "fr", hooks)["summary"].startswith("Faites le Kindreflex")


def test_card_uuids_are_rfc_9562_version_7_unique_and_ordered_by_time() -> None:
    before = time.time_ns() // 1_000_000
    uuids = [uuid7() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert {(u.version, u.variant) for u in uuids} == {(7, uuid.RFC_4122)}
    assert all(before <= u.int >> 80 <= after for u in uuids)  # 48 bits of Unix milliseconds
    assert len(set(uuids)) == len(uuids)
    in_text_order = [u.int >> 80 for u in sorted(uuids, key=str)]
    assert in_text_order == sorted(in_text_order)  # as stored, a later card sorts after


def test_every_card_of_a_book_is_new_while_its_wording_is_built_once() -> None:
    book = CardBook(HookSettings(), VOCABULARY)
    advice = Advice(indicator="warning", triggers=(HagueTrigger.DOMESTIC_VIOLENCE,))
    other_call = CardTarget(TARGET.launch_url, "patient-view", "def")
    first, second = book.card(advice, "nl", TARGET), book.card(advice, "nl", other_call)
    assert first["uuid"] != second["uuid"]
    assert uuid.UUID(first["uuid"]).version == 7
    assert json.loads(first["links"][0]["appContext"])["hookInstance"] == "abc"
    assert json.loads(second["links"][0]["appContext"])["hook"] == "patient-view"
    assert first["summary"] is second["summary"]  # worded once for this advice and language
    assert book.card(advice, "fr", TARGET)["summary"].startswith("Faites le Kindreflex")
    assert book.card(Advice(indicator="info"), "nl", TARGET)["indicator"] == "info"


def test_configured_hooks_follow_the_hospitals_configuration_version() -> None:
    local = LocalTriggerCode(
        trigger=HagueTrigger.SELF_HARM_PSYCHIATRIC, system="urn:local", code="zelfmoordpoging"
    )
    config = TenantConfiguration(name="AZ")
    configured = ConfiguredHooks()
    first = configured.of(TenantContext(1, "az", 1, config))
    assert configured.of(TenantContext(1, "az", 1, config)) is first
    changed = config.model_copy(update={"hooks": HookSettings(local_trigger_codes=[local])})
    second = configured.of(TenantContext(1, "az", 2, changed))
    assert second is not first
    assert second.vocabulary.triggers_of(frozenset({Code("urn:local", "zelfmoordpoging")})) == (
        HagueTrigger.SELF_HARM_PSYCHIATRIC,
    )
    assert not first.vocabulary.triggers_of(frozenset({Code("urn:local", "zelfmoordpoging")}))
    assert configured.of(TenantContext(2, "other", 1, config)) is not second


def test_card_wording_with_an_unknown_placeholder_or_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        HookSettings(card_wording={"nl": {"info_summary": "Hallo {patient}"}})
    with pytest.raises(ValueError, match="100 characters"):
        HookSettings(card_wording={"nl": {"info_summary": "x" * 101}})
    with pytest.raises(ValueError, match="unknown override reason"):
        HookSettings(override_reasons=["because"])


def test_known_children_and_the_generic_card() -> None:
    with_children = render(Advice(indicator="info", known_children=2))
    assert translate("nl", "cds.children.known", count=2) in with_children["detail"]
    generic = render(GENERIC)
    assert generic["summary"] == translate("nl", "cds.generic.summary")
    assert generic["indicator"] == "info"
