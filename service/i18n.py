"""Message catalogues: Dutch (nl-BE) first, French and English.

Catalogues are gettext ``.po`` files under ``service/locales/<lang>/``, one file per
domain (``cds.po``, ``app.po``, …), read once at start-up — no compile step. A message
missing in French or English falls back to Dutch, and a message missing in Dutch is a
bug that ``tests/unit/test_i18n.py`` catches.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from babel.messages.pofile import read_po

Language = Literal["nl", "fr", "en"]
LANGUAGES: tuple[Language, ...] = get_args(Language)
DEFAULT_LANGUAGE: Language = "nl"
LOCALES = Path(__file__).parent / "locales"


class Catalogue:
    """All messages of one language, from every domain's ``.po`` file."""

    def __init__(self, language: Language, directory: Path = LOCALES) -> None:
        self.language = language
        self.messages: dict[str, str] = {}
        for po_file in sorted((directory / language).glob("*.po")):
            with po_file.open("rb") as handle:
                for message in read_po(handle, locale=language if language != "nl" else "nl_BE"):
                    if message.id and message.string and isinstance(message.id, str):
                        self.messages[message.id] = str(message.string)


@lru_cache(maxsize=len(LANGUAGES))
def catalogue(language: Language) -> Catalogue:
    return Catalogue(language)


def negotiate(candidates: Iterable[str | None]) -> Language:
    """The first supported language among e.g. a request field and Accept-Language tags;
    within one candidate, by preference (``q``, RFC 9110 12.4.2), ``q=0`` meaning "not
    acceptable" (12.5.4). In the order written, an English card went to a nurse whose
    browser ranked French first (found by review)."""
    for candidate in candidates:
        if not candidate:
            continue
        for tag in _by_preference(candidate.replace(" ", "")):
            primary = tag.split("-")[0].split("_")[0].lower()
            if primary in LANGUAGES:
                return primary
    return DEFAULT_LANGUAGE


def _by_preference(header: str) -> list[str]:
    """The language ranges of ``header``, the preferred first (the order written among
    equals), without the not acceptable ones and those with a malformed weight."""
    if ";" not in header:  # the common case: no weights, the order written
        return header.split(",")
    weighed = []
    for place, part in enumerate(header.split(",")):
        tag, *parameters = part.split(";")
        weight = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.lower() == "q":
                weight = _weight(value)
        if weight > 0:
            weighed.append((-weight, place, tag))
    return [tag for _, _, tag in sorted(weighed)]


def _weight(value: str) -> float:
    """RFC 9110 12.4.2: 0 to 1, three decimals at most; anything else is not acceptable."""
    try:
        weight = float(value)
    except ValueError:
        return 0.0
    return weight if 0 <= weight <= 1 and len(value) <= 5 else 0.0


def translate(language: Language, message_id: str, **values: object) -> str:
    """The message in ``language`` (falling back to Dutch), with ``{name}`` values filled in."""
    text = catalogue(language).messages.get(message_id) or catalogue("nl").messages.get(message_id)
    if text is None:
        raise KeyError(f"message '{message_id}' is missing from the Dutch catalogue")
    return text.format(**values) if values else text
