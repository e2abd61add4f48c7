"""Every message exists in Dutch; French and English cover the same ids and placeholders."""

from __future__ import annotations

import re

import pytest

from service.fhir import terminology
from service.fhir.mapping import REQUEST_STATUSES
from service.i18n import LANGUAGES, Language, catalogue, negotiate, translate
from service.protocol import ReferralStatus, SafetyAssessment
from smart_app.dates import shown_days_open

PLACEHOLDER = re.compile(r"\{(\w+)\}")


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "nl"])
def test_translations_cover_the_dutch_catalogue_with_the_same_placeholders(language: str) -> None:
    dutch = catalogue("nl").messages
    other = catalogue(language).messages
    assert set(other) == set(dutch), "message ids differ from the Dutch catalogue"
    for message_id, text in dutch.items():
        assert set(PLACEHOLDER.findall(other[message_id])) == set(PLACEHOLDER.findall(text)), (
            message_id
        )


def test_a_message_falls_back_to_dutch_and_a_missing_one_is_an_error() -> None:
    assert translate("fr", "app.saved.open-again") == "Rouvrir Kindreflex"
    with pytest.raises(KeyError, match="missing from the Dutch catalogue"):
        translate("nl", "no.such.message")


def test_language_negotiation_prefers_the_first_supported_tag() -> None:
    assert negotiate([None, "de-DE,fr-BE;q=0.9,nl;q=0.8"]) == "fr"
    assert negotiate(["en_GB"]) == "en"
    assert negotiate(["de"]) == "nl"


@pytest.mark.parametrize("language", ["fr", "en"])
def test_the_product_is_named_kindreflex_in_every_language(language: Language) -> None:
    """The French and English screens said "Réflexe enfant" / "Child reflex" where the
    cards say "Kindreflex": a proper name, not translated."""
    assert translate(language, "product.name") == "Kindreflex"
    translated = re.compile(r"r[ée]flexe enfant|child reflex", re.IGNORECASE)
    named = [i for i, text in catalogue(language).messages.items() if translated.search(text)]
    assert named == []


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_nurses_no_concern_choice_reads_as_the_social_service_sees_it(
    language: Language,
) -> None:
    """The nurse chose "Geen zorgen" and the case history showed the guide's "Geen twijfels
    over de thuissituatie" (the protocol's words, seed 003): one choice, two wordings. The
    nurse's option now uses the protocol's words, as the social worker reads them."""
    guide = terminology.display("safety-assessment", SafetyAssessment.NO_CONCERN, language)
    assert translate(language, "app.assessment.no-concern") == guide


#: The messages that send the nurse to the no-concern choice, quoting it.
_NAMING_NO_CONCERN = (
    "app.step3.only-with-no-concern",
    "app.error.assessment-required",
    "app.error.concern-without-children",
    "app.protocol.acute-danger-needs-concern",
    "app.triage.open-concern",
)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("message_id", _NAMING_NO_CONCERN)
def test_a_message_naming_the_no_concern_choice_quotes_it_as_the_page_shows_it(
    language: Language, message_id: str
) -> None:
    """When the option became the protocol's words, hints and errors still told the nurse
    to choose 'geen zorgen', an option she could not find on the page."""
    choice = translate(language, "app.assessment.no-concern").casefold()
    assert choice in translate(language, message_id).casefold()


@pytest.mark.parametrize(
    ("language", "days", "closed", "said"),
    [
        ("nl", 0, False, "0 dagen open"),
        ("nl", 1, False, "1 dag open"),
        ("nl", 2, False, "2 dagen open"),
        ("fr", 0, False, "ouvert depuis 0 jour"),
        ("fr", 1, False, "ouvert depuis 1 jour"),
        ("fr", 2, False, "ouvert depuis 2 jours"),
        ("en", 0, False, "open for 0 days"),
        ("en", 1, False, "open for 1 day"),
        ("nl", 1, True, "was 1 dag open"),
        ("nl", 10, True, "was 10 dagen open"),
        ("fr", 0, True, "a été ouvert 0 jour"),
        ("fr", 10, True, "a été ouvert 10 jours"),
        ("en", 1, True, "was open for 1 day"),
        ("en", 10, True, "was open for 10 days"),
    ],
)
def test_how_long_a_concern_is_or_was_open_is_said_as_the_language_does(
    language: Language, days: int, closed: bool, said: str
) -> None:
    """The case page said "1 dagen open" and "ouvert depuis 0 jours", and a closed case
    "(10 dagen open)", as if it were open still (both found by review)."""
    assert shown_days_open(days, language, closed=closed) == said


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("en;q=0.2, fr;q=0.9", "fr"),  # by weight, not in the order written
        ("en;q=0, fr", "fr"),  # q=0: not acceptable
        ("en;q=0", "nl"),  # nothing acceptable: the default
        ("en-GB;q=0.8, fr;q=0.8", "en"),  # equals: in the order written
        ("en;q=2, fr;q=0.1", "fr"),  # a weight out of range is no weight
        ("en;q=high, fr;q=0.1", "fr"),
        ("de, en;Q=0.5, fr;q=0.4", "en"),
    ],
)
def test_accept_language_is_read_by_preference(header: str, language: str) -> None:
    assert negotiate([header]) == language


def test_a_request_that_accepts_none_of_ours_leaves_it_to_the_next_candidate() -> None:
    """The registration's default language comes after the browser's Accept-Language."""
    assert negotiate(["en;q=0, de", "fr"]) == "fr"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_r4_request_status_a_referral_may_have_is_named(language: Language) -> None:
    """The case page names the latest referral's status, whichever R4 request-status the EHR
    set (a draft was a 500: no label)."""
    assert set(REQUEST_STATUSES) >= {s.value for s in ReferralStatus}
    for status in REQUEST_STATUSES:
        assert translate(language, f"casefile.referral-status.{status}")
