"""The screens' one Jinja environment: autoescaped, and strict about a value a template
names but the page did not pass (a typo is an error, never an empty field). Its filters
``day`` and ``moment`` write dates as every screen does (``smart_app.dates``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context
from markupsafe import Markup

from service.fhir import terminology
from service.i18n import negotiate, translate
from service.protocol import ReferralTarget
from smart_app.assets import asset_url
from smart_app.dates import shown_age, shown_date, shown_moment

TEMPLATES = Environment(
    loader=PackageLoader("smart_app", "templates"),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class FieldMessage(Protocol):
    """An error of a refused form: its sentence, and the id of the field it concerns ("":
    none, then it is in the page's error summary only)."""

    @property
    def field(self) -> str: ...

    @property
    def message(self) -> str: ...


def messages_by_field(errors: Iterable[FieldMessage]) -> dict[str, Markup]:
    """Each field's messages, one per line in the order given (``error_for`` of
    ``_fields.html``): a field with two problems showed only the last beside it."""
    said: dict[str, list[str]] = {}
    for error in errors:
        if error.field:
            said.setdefault(error.field, []).append(error.message)
    return {field: Markup("<br>").join(messages) for field, messages in said.items()}


@pass_context
def partner_kind(context: Context, kind: ReferralTarget) -> str:
    """What kind of service a partner of the directory is, in the page's language: its name
    is the directory's, often Dutch only ("Politie", "Opvoedingslijn"), which told a French
    or English reader nothing of whom to call (found by review)."""
    return terminology.display("partner-type", kind, negotiate([context.get("lang")]))


@pass_context
def colon(context: Context) -> str:
    """The colon between a label and its value as the page's language writes it (``lang``):
    ": " in Dutch and English, a non-breaking space before it in French."""
    return translate(negotiate([context.get("lang")]), "colon")


TEMPLATES.globals["asset_url"] = asset_url
TEMPLATES.globals["colon"] = colon
TEMPLATES.globals["partner_kind"] = partner_kind
TEMPLATES.filters["day"] = shown_date
TEMPLATES.filters["moment"] = shown_moment
TEMPLATES.filters["age"] = shown_age  # months, language: "5 maanden", "3 jaar"
