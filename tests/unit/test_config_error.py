"""Every refusal of our own configuration validators carries a code that the admin
screen can say in Dutch, French and English, with all its parameters, and the place it
names inside the value checked; the English text of the API stays what it was."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from sandbox.keys import SigningKey
from service.config_error import ConfigValueError
from service.i18n import LANGUAGES, catalogue
from service.partners import parse_directory
from service.tenant_config import (
    SUBMITTED,
    CdsIssuer,
    EhrRegistration,
    HookSettings,
    PlanSettings,
    jwk_set,
)
from tests.support.partners import MINIMAL_DIRECTORY, with_entry


def _raised(check: Callable[[], object]) -> ConfigValueError:
    """The ConfigValueError that ``check`` raises, itself or inside pydantic's error."""
    try:
        check()
    except ValidationError as error:
        (issue,) = error.errors(include_url=False)
        own = issue["ctx"]["error"]
    except ConfigValueError as error:
        own = error
    else:
        pytest.fail("nothing was refused")
    assert isinstance(own, ConfigValueError)
    return own


def _wording(name: str, text: str) -> Callable[[], object]:
    return lambda: HookSettings(card_wording={"nl": {name: text}})


def _directory(data: Any) -> Callable[[], object]:
    return lambda: parse_directory(data, source="partners")


_ENCRYPTING = {"keys": [{**SigningKey.generate("k", "ES384").public_jwk(), "use": "enc"}]}
_REGISTRATION = {"id": "ehr", "name": "EPD", "fhir_base_url": "https://ehr.example.be/fhir"}

CASES: dict[str, tuple[Callable[[], object], str, tuple[str | int, ...]]] = {
    "jwks not a set": (lambda: jwk_set([]), "jwks-not-a-set", ()),
    "jwks without a key": (lambda: jwk_set({"keys": []}), "jwks-no-usable-key", ()),
    "jwks of a key for encryption only": (
        lambda: CdsIssuer.model_validate({"iss": "x", "jwks": _ENCRYPTING}, context=SUBMITTED),
        "jwks-no-usable-key",
        (),
    ),
    "client id too long": (
        lambda: EhrRegistration.model_validate(
            {**_REGISTRATION, "client_id": "k" * 256}, context=SUBMITTED
        ),
        "too-long",
        (),
    ),
    "override reason": (
        lambda: HookSettings(override_reasons=["not-now", "geen-tijd"]),
        "unknown-override-reasons",
        (),
    ),
    "warning placeholder": (
        _wording("warning_summary", "{kinderen}"),
        "card-placeholder",
        ("nl", "warning_summary"),
    ),
    "info placeholder": (
        _wording("info_summary", "{reasons}"),
        "card-no-placeholder",
        ("nl", "info_summary"),
    ),
    "nested placeholder": (
        _wording("warning_summary", "{reasons:>{width}}"),
        "card-nested-placeholder",
        ("nl", "warning_summary"),
    ),
    "lone brace": (_wording("warning_detail", "50 {"), "card-format", ("nl", "warning_detail")),
    "long summary": (
        _wording("warning_summary", "x" * 101),
        "card-summary-too-long",
        ("nl", "warning_summary"),
    ),
    "plan choice": (
        lambda: PlanSettings.model_validate({"choices": {"lives-with/hond": {}}}),
        "unknown-plan-choice",
        (),
    ),
    "fhir base with user-info": (
        lambda: EhrRegistration.model_validate(
            {
                "id": "ehr",
                "name": "EPD",
                "client_id": "k",
                "fhir_base_url": "https://k:pw@ehr.example.be/fhir",
            },
            context=SUBMITTED,
        ),
        "fhir-base-url-userinfo",
        (),
    ),
    "card source url": (
        lambda: HookSettings.model_validate({"source_url": "kindreflex.be"}, context=SUBMITTED),
        "source-url",
        (),
    ),
    "directory not a mapping": (_directory([]), "directory-not-mapping", ()),
    "top-level field": (_directory({**MINIMAL_DIRECTORY, "extra": 1}), "unknown-fields", ()),
    "no entries": (_directory({"region": "x", "entries": []}), "no-entries", ("entries",)),
    "no region": (_directory({"entries": MINIMAL_DIRECTORY["entries"]}), "missing", ("region",)),
    "entry not a mapping": (
        _directory({"region": "x", "entries": ["vk"]}),
        "partner-not-mapping",
        ("entries", 0),
    ),
    "entry field": (_directory(with_entry(fax="09")), "unknown-fields", ("entries", 0)),
    "empty name": (_directory(with_entry(name="")), "empty-text", ("entries", 0, "name")),
    "id": (_directory(with_entry(id="VK Test")), "partner-id", ("entries", 0, "id")),
    "long id": (_directory(with_entry(id="v" * 65)), "too-long", ("entries", 0, "id")),
    "type": (_directory(with_entry(type="vkk")), "not-allowed", ("entries", 0, "type")),
    "website": (_directory(with_entry(website="www.x.be")), "website", ("entries", 0, "website")),
    "email": (_directory(with_entry(email="nobody")), "email", ("entries", 0, "email")),
    "phones": (_directory(with_entry(phones="09")), "phones-not-list", ("entries", 0, "phones")),
    "phone not a mapping": (
        _directory(with_entry(phones=["09 216 73 30"])),
        "phone-not-mapping",
        ("entries", 0, "phones", 0),
    ),
    "phone field": (
        _directory(with_entry(phones=[{"number": "09 216 73 30", "fax": "x"}])),
        "unknown-fields",
        ("entries", 0, "phones", 0),
    ),
    "phone number not text": (
        _directory(with_entry(phones=[{"number": 92167330}])),
        "phone-not-text",
        ("entries", 0, "phones", 0, "number"),
    ),
    "phone number": (
        _directory(with_entry(phones=[{"number": "09 216 73"}])),
        "phone-not-belgian",
        ("entries", 0, "phones", 0, "number"),
    ),
    "id twice": (
        _directory(
            {
                **MINIMAL_DIRECTORY,
                "entries": [MINIMAL_DIRECTORY["entries"][0], MINIMAL_DIRECTORY["entries"][0]],
            }
        ),
        "id-twice",
        ("entries", 1, "id"),
    ),
}


@pytest.mark.parametrize(("check", "code", "loc"), CASES.values(), ids=CASES.keys())
def test_each_refusal_has_a_code_the_screen_says_in_every_language(
    check: Callable[[], object], code: str, loc: tuple[str | int, ...]
) -> None:
    refused = _raised(check)
    assert (refused.code, refused.loc) == (code, loc)
    message_id = f"admin.problem.{code}"
    for language in LANGUAGES:
        message = catalogue(language).messages[message_id]
        assert set(re.findall(r"\{(\w+)\}", message)) <= set(refused.params), language


def test_the_english_text_stays_the_apis() -> None:
    """The code is added to the error; its text is the sentence the API always gave."""
    assert str(_raised(_wording("info_summary", "{reasons}"))) == (
        "card_wording.nl.info_summary: no placeholder may be used (unknown placeholder {reasons})"
    )
    assert str(_raised(_directory(with_entry(website="www.x.be")))) == (
        "partners: entry 1 ('vk-test'): website must start with https:// or http://"
    )
