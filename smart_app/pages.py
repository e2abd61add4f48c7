"""The screens' one Jinja environment: autoescaped, and strict about a value a template
names but the page did not pass (a typo is an error, never an empty field). Its filters
``day`` and ``moment`` write dates as every screen does (``smart_app.dates``)."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from smart_app.assets import asset_url
from smart_app.dates import shown_age, shown_date, shown_moment

TEMPLATES = Environment(
    loader=PackageLoader("smart_app", "templates"),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.globals["asset_url"] = asset_url
TEMPLATES.filters["day"] = shown_date
TEMPLATES.filters["moment"] = shown_moment
TEMPLATES.filters["age"] = shown_age  # months, language: "5 maanden", "3 jaar"
