"""The screens' one Jinja environment: autoescaped, and strict about a value a template
names but the page did not pass (a typo is an error, never an empty field)."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from smart_app.assets import asset_url

TEMPLATES = Environment(
    loader=PackageLoader("smart_app", "templates"),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.globals["asset_url"] = asset_url
