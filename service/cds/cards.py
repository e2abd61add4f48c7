"""A CDS Hooks 2.0 card from the rules' advice, in the user's language.

Wording comes from the ``cds`` message catalogue (Dutch first), overridden per tenant
and language by ``HookSettings.card_wording``. The summary stays under the 140
characters CDS Hooks allows ("<140-character"); the detail is GitHub-flavoured markdown.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from service.cds.rules import Advice
from service.cds.vocabulary import Vocabulary
from service.i18n import Language, translate
from service.tenant_config import CardText, HookSettings, is_web_url

#: CDS Hooks 2.0: a card's summary is a "<140-character" sentence, so at most 139.
SUMMARY_LIMIT = 140


def uuid7() -> uuid.UUID:
    """A UUID version 7 (RFC 9562): the Unix time in milliseconds, then 74 random bits.

    Each card is stored by its uuid for the monitoring (``service.cds.issued``). Random
    (version 4) uuids landed on a random page of that unique index: one page more for
    each write to commit, the more so as the table grows. Time-ordered ones go to its end:
    with 30,000 cards stored, writing a call's rows went from about 28 to 22 µs. The time
    they show is the time the card is returned anyway.
    """
    milliseconds = (time.time_ns() // 1_000_000) & ((1 << 48) - 1)
    value = (milliseconds << 80) | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # the RFC's variant, 0b10
    return uuid.UUID(int=value)


@dataclass(frozen=True)
class CardTarget:
    """Where the card's SMART link leads and what it tells the app about this hook call."""

    launch_url: str
    hook: str
    hook_instance: str


class CardBook:
    """The cards of one hospital configuration, each face worded once.

    A card's face — its texts, source, link label and override reasons — depends only on
    the advice and the language, and a configuration yields a handful of distinct advices.
    Wording them on every hook call (catalogue look-ups, formatting, the guide's displays)
    cost more than the rules; each face is built on first use and kept as long as the
    configuration version it belongs to (``service.cds.configured``).
    """

    MAX_FACES = 512  # advices × languages; a bound, not a tuning knob

    def __init__(self, hooks: HookSettings, vocabulary: Vocabulary) -> None:
        self._hooks = hooks
        self._vocabulary = vocabulary
        self._faces: dict[tuple[Advice, Language], _Face] = {}

    def card(self, advice: Advice, language: Language, target: CardTarget) -> dict[str, Any]:
        """A new card (its own ``uuid``) for this call. Its parts are shared with other
        cards of the same face: serialise it, never change it."""
        face = self._faces.get((advice, language))
        if face is None:
            if len(self._faces) >= self.MAX_FACES:
                self._faces.clear()
            face = self._faces[(advice, language)] = self._face(advice, language)
        link = {
            "label": face.link_label,
            "url": target.launch_url,
            "type": "smart",
            "appContext": _app_context(advice, target),
        }
        return {
            "uuid": str(uuid7()),
            **face.fields,
            "indicator": advice.indicator,
            "links": [link],
        }

    def _face(self, advice: Advice, language: Language) -> _Face:
        summary, detail = _texts(advice, language, self._hooks)
        source = {"label": translate(language, "cds.source.label")}
        reasons = [
            _override_reason(code, language, self._vocabulary)
            for code in self._hooks.override_reasons
        ]
        fields: dict[str, Any] = {"summary": _fit(summary), "detail": detail, "source": source}
        # CDS Hooks 2.0: a JSON element SHALL NOT be empty: an optional one the hospital's
        # settings leave empty (no override reasons, no source URL) is left out
        if reasons:
            fields["overrideReasons"] = reasons
        # CDS Hooks 2.0: source.url is an absolute URL the EHR loads in the user's browser.
        # A URL saved before the setting was checked (``HookSettings.source_url``), relative
        # or ``javascript:``, is left out: the card keeps its label, without the link
        if is_web_url(self._hooks.source_url):
            source["url"] = self._hooks.source_url
        return _Face(fields, translate(language, "cds.link.label"))


@dataclass(frozen=True)
class _Face:
    """What cards of one advice and language share: their fields but the uuid, indicator
    and link, and the link's label."""

    fields: dict[str, Any]
    link_label: str


def _texts(advice: Advice, language: Language, hooks: HookSettings) -> tuple[str, str]:
    wording = hooks.card_wording.get(language, {})

    def text(name: CardText, message_id: str, **values: object) -> str:
        own = wording.get(name, "")
        # a blank wording would leave the card without its (required) summary
        return own.format(**values) if own.strip() else translate(language, message_id, **values)

    if not advice.patient_data:
        return (
            translate(language, "cds.generic.summary"),
            translate(language, "cds.generic.detail"),
        )
    if advice.indicator == "warning":
        # The open concern first, and reasons that do not fit the summary said as a count:
        # cut at the limit, the last one was lost mid-word, the open concern with it, in
        # Dutch and French (found by review). The detail names them all.
        ordered = sorted(advice.reasons, key=lambda reason: reason != "open-concern")
        shorts = [translate(language, f"cds.reason.short.{r}") for r in ordered]
        summaries = (
            text("warning_summary", "cds.warning.summary", reasons=_listed(shorts, shown, language))
            for shown in range(len(shorts), 0, -1)
        )
        summary = next((s for s in summaries if len(s) < SUMMARY_LIMIT), "")
        summary = summary or text("warning_summary", "cds.warning.summary", reasons=shorts[0])
        long = "; ".join(translate(language, f"cds.reason.long.{r}") for r in advice.reasons)
        detail = text("warning_detail", "cds.warning.detail", reasons=long)
    else:
        summary = text("info_summary", "cds.info.summary")
        detail = text("info_detail", "cds.info.detail")
    if advice.known_children:
        detail += "\n\n" + translate(language, "cds.children.known", count=advice.known_children)
    return summary, detail


def _listed(reasons: list[str], shown: int, language: Language) -> str:
    """The first ``shown`` of ``reasons``, and how many more there are."""
    listed = ", ".join(reasons[:shown])
    hidden = len(reasons) - shown
    return f"{listed} {translate(language, 'cds.reason.more', count=hidden)}" if hidden else listed


def _fit(summary: str) -> str:
    if len(summary) < SUMMARY_LIMIT:
        return summary
    return summary[: SUMMARY_LIMIT - 2].rstrip(" ,;:") + "…"


def _app_context(advice: Advice, target: CardTarget) -> str:
    """A compact JSON string (CDS Hooks' appContext is a string) the app reads at launch."""
    context = {
        "hook": target.hook,
        "hookInstance": target.hook_instance,
        "indicator": advice.indicator,
        "reasons": advice.reasons,
    }
    return orjson.dumps(context).decode()


def _override_reason(code: str, language: Language, vocabulary: Vocabulary) -> dict[str, str]:
    """A Coding of the guide's cds-override-reason CodeSystem with the guide's display in
    the card's language (the EHR echoes the chosen one back in its feedback)."""
    return dict(vocabulary.override_reasons[language][code])
