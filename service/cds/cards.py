"""A CDS Hooks 2.0 card from the rules' advice, in the user's language.

Wording comes from the ``cds`` message catalogue (Dutch first), overridden per tenant
and language by ``HookSettings.card_wording``. The summary stays within the 140
characters CDS Hooks allows; the detail is GitHub-flavoured markdown.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from service.cds.rules import Advice
from service.cds.vocabulary import Vocabulary
from service.i18n import Language, translate
from service.tenant_config import CardText, HookSettings

SUMMARY_LIMIT = 140


@dataclass(frozen=True)
class CardTarget:
    """Where the card's SMART link leads and what it tells the app about this hook call."""

    launch_url: str
    hook: str
    hook_instance: str


def card(
    advice: Advice,
    *,
    language: Language,
    hooks: HookSettings,
    vocabulary: Vocabulary,
    target: CardTarget,
) -> dict[str, Any]:
    summary, detail = _texts(advice, language, hooks)
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _fit(summary),
        "detail": detail,
        "indicator": advice.indicator,
        "source": {"label": translate(language, "cds.source.label"), "url": hooks.source_url},
        "links": [
            {
                "label": translate(language, "cds.link.label"),
                "url": target.launch_url,
                "type": "smart",
                "appContext": _app_context(advice, target),
            }
        ],
        "overrideReasons": [
            _override_reason(code, language, vocabulary) for code in hooks.override_reasons
        ],
    }


def _texts(advice: Advice, language: Language, hooks: HookSettings) -> tuple[str, str]:
    wording = hooks.card_wording.get(language, {})

    def text(name: CardText, message_id: str, **values: object) -> str:
        own = wording.get(name)
        return (
            own.format(**values) if own is not None else translate(language, message_id, **values)
        )

    if not advice.patient_data:
        return (
            translate(language, "cds.generic.summary"),
            translate(language, "cds.generic.detail"),
        )
    if advice.indicator == "warning":
        short = ", ".join(translate(language, f"cds.reason.short.{r}") for r in advice.reasons)
        long = "; ".join(translate(language, f"cds.reason.long.{r}") for r in advice.reasons)
        summary = text("warning_summary", "cds.warning.summary", reasons=short)
        detail = text("warning_detail", "cds.warning.detail", reasons=long)
    else:
        summary = text("info_summary", "cds.info.summary")
        detail = text("info_detail", "cds.info.detail")
    if advice.known_children:
        detail += "\n\n" + translate(language, "cds.children.known", count=advice.known_children)
    return summary, detail


def _fit(summary: str) -> str:
    if len(summary) <= SUMMARY_LIMIT:
        return summary
    return summary[: SUMMARY_LIMIT - 1].rstrip(" ,;:") + "…"


def _app_context(advice: Advice, target: CardTarget) -> str:
    """A compact JSON string (CDS Hooks' appContext is a string) the app reads at launch."""
    return json.dumps(
        {
            "hook": target.hook,
            "hookInstance": target.hook_instance,
            "indicator": advice.indicator,
            "reasons": list(advice.reasons),
        },
        separators=(",", ":"),
    )


def _override_reason(code: str, language: Language, vocabulary: Vocabulary) -> dict[str, str]:
    """A Coding of the guide's cds-override-reason CodeSystem with the guide's display in
    the card's language (the EHR echoes the chosen one back in its feedback)."""
    return dict(vocabulary.override_reasons[language][code])
