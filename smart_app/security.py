"""Browser-facing security primitives of the app: page headers and token comparison.

Pure functions (no request, no database; a left-out frame origin is logged), so that they
are unit-tested on their own; ``smart_app.session`` applies them to a launched session.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
from collections.abc import Sequence

from service.tenant_config import is_frame_origin

log = logging.getLogger(__name__)

#: frame-ancestors for pages without data or actions (error pages before we know the EHR):
#: any EHR may frame them, so that the nurse reads the message instead of a blank frame.
ANY_FRAME = ("*",)


@functools.lru_cache(maxsize=256)
def _framing_origin(origin: str) -> bool:
    """Whether ``origin`` goes into ``frame-ancestors``. A save refuses a malformed one, but
    one stored before that check still loads: put in the header, a Unicode domain made every
    page of the hospital a 500 (a header is Latin-1) and ``;`` added directives. It is left
    out instead (that EHR cannot frame the app until an admin corrects it, the other pages
    work) and logged once per process: the cache remembers the verdict."""
    if origin in ANY_FRAME or is_frame_origin(origin):
        return True
    log.warning("frame origin %r left out of frame-ancestors: not an ASCII origin", origin)
    return False


def content_security_policy(frame_origins: Sequence[str]) -> str:
    """Same-origin resources only, no inline script or style; framing by the given origins."""
    usable = [origin for origin in frame_origins if _framing_origin(origin)]
    ancestors = " ".join(usable) if usable else "'none'"
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


def form_token(key: bytes, scope: str, nonce: str) -> str:
    """The hidden field of a form that has no session yet (the admin's sign-in): an HMAC,
    with the app's key, of the random ``nonce`` its short-lived cookie holds. The form is
    taken when the field is this HMAC of the cookie the browser sent (:func:`tokens_match`):
    a site that can plant a cookie (another port of localhost, no ``__Host-`` on http)
    still cannot write the field that goes with it. ``scope``: what the token is for (the
    hospital's sign-in), so that a form of one is no form of another."""
    message = f"{scope}\n{nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


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
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_\-.]*")
