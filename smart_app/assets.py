"""The screens' stylesheets, scripts and icon, with the content's version in their URLs.

A page links each file as ``…/nurse.js?v=<version>``, the version being the start of the
file's SHA-256 (``asset_url``, a template global). A browser may keep such a URL for a
year (``immutable``): an upgrade that changes the file changes its URL, so no nurse runs
yesterday's script against today's form, and the hospital's workstations do not ask for
the files again on every page. A request without the current version (a page rendered
before the upgrade, a typed URL) gets the current file with ``no-cache``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from starlette.responses import Response

_DIR = Path(__file__).parent / "static"
_MEDIA_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}
_FOR_A_YEAR = "public, max-age=31536000, immutable"
#: /favicon.ico names no version: an icon a day old harms no one, and one request a day
#: per workstation is no load
_FOR_A_DAY = "public, max-age=86400"
ICON = "favicon.svg"


@dataclass(frozen=True)
class Asset:
    content: bytes
    media_type: str
    version: str


@cache
def _asset(name: str) -> Asset:
    """Read once per process: the files only change with the installed version."""
    content = (_DIR / name).read_bytes()
    version = hashlib.sha256(content).hexdigest()[:12]
    return Asset(content, _MEDIA_TYPES[Path(name).suffix], version)


def asset_url(base: str, name: str) -> str:
    """Where a page links ``name``, served by the route at ``base``."""
    return f"{base}/{name}?v={_asset(name).version}"


def asset_response(name: str, version: str | None, served: Collection[str]) -> Response:
    """The file ``name`` if this route serves it (``served``), else 404."""
    if name not in served:
        return Response("no such file", status_code=404, media_type="text/plain")
    asset = _asset(name)
    return _response(asset, _FOR_A_YEAR if version == asset.version else "no-cache")


def icon_response() -> Response:
    """The app's icon, where a browser asks for it unlinked (``/favicon.ico``: a JSON
    answer opened in a tab, an old bookmark): each such request was a 404 in the log."""
    return _response(_asset(ICON), _FOR_A_DAY)


def _response(asset: Asset, cache_control: str) -> Response:
    headers = {"Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"}
    return Response(asset.content, media_type=asset.media_type, headers=headers)
