"""Browser-facing security primitives of the app: page headers and token comparison.

Pure functions (no request, no database), so that they are unit-tested on their own;
``smart_app.session`` applies them to a launched session.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

#: frame-ancestors for pages without data or actions (error pages before we know the EHR):
#: any EHR may frame them, so that the nurse reads the message instead of a blank frame.
ANY_FRAME = ("*",)


def content_security_policy(frame_origins: Sequence[str]) -> str:
    """Same-origin resources only, no inline script or style; framing by the given origins."""
    ancestors = " ".join(frame_origins) if frame_origins else "'none'"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; "
        f"frame-ancestors {ancestors}"
    )


def page_headers(frame_origins: Sequence[str]) -> dict[str, str]:
    """Headers for every page of the app. Pages may carry patient data: never cached."""
    return {
        "Content-Security-Policy": content_security_policy(frame_origins),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def tokens_match(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented secret with the expected one."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def digest(secret: str) -> str:
    """What we store instead of a bearer secret (session cookie, state): its SHA-256."""
    return hashlib.sha256(secret.encode()).hexdigest()


def iframe_cookie(name: str, value: str, max_age: int) -> str:
    """A ``Set-Cookie`` value for a cookie that must work inside the EHR's iframe.

    ``SameSite=None`` (a third-party context) needs ``Secure``, which browsers honour on
    http://localhost too; ``Partitioned`` (CHIPS) keeps it in the EHR site's partition, so
    browsers that block third-party cookies still send it. Written by hand because the
    standard library only knows ``Partitioned`` from Python 3.14 on.
    """
    if not _COOKIE_TOKEN.fullmatch(name) or not _COOKIE_VALUE.fullmatch(value):
        raise ValueError(f"unsafe cookie name or value for {name!r}")
    return (
        f"{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=None; Partitioned"
    )


_COOKIE_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_\-]*")
