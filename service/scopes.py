"""SMART scopes as sets of rights: what a grant covers of what was asked (v1 and v2 syntax).

Pure: the launch compares the EHR's grant with the registration's request
(``smart_app.launch``), and the configuration refuses a request that could not write
what the app saves (``service.tenant_config``).
"""

from __future__ import annotations

import re

#: A resource scope in either syntax: SMART v2 (``cruds`` letters) or v1 (``read``,
#: ``write``, ``*``), with v2's query restriction (not enforced here: it narrows a type).
_ANY_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.(read|write|\*|[cruds]+)(\?.*)?$")
_V1_LETTERS = {"read": "rs", "write": "cud", "*": "cruds"}


def writes_not_granted(requested: str, granted: str) -> list[str]:
    """The writes (create, update) the registration's ``requested`` scopes ask for that the
    ``granted`` ones do not cover, each as a v2 scope (``patient/Flag.u``), in order.

    SMART lets the server grant less than asked. A save it may not write would wait for a
    sign-in that never brings the right, while the nurse reads "delivery follows" (found
    by review). A read not granted is not checked: the screens say when they cannot read.
    A grant covers a need of its own context or, for the user's whole access, ``user``
    (a patient's Flag is among the Flags the user may update)."""
    grants = [_letters(scope) for scope in granted.split()]
    missing = []
    for scope in requested.split():
        need = _letters(scope)
        if need is None:
            continue
        context, resource, letters = need
        for letter in letters & set("cu"):
            if not any(
                g is not None
                and g[0] in (context, "user")
                and g[1] in ("*", resource)
                and letter in g[2]
                for g in grants
            ):
                missing.append(f"{context}/{resource}.{letter}")
    return missing


def _letters(scope: str) -> tuple[str, str, set[str]] | None:
    """A resource scope's context, type and v2 letters; None for another scope."""
    match = _ANY_SCOPE.match(scope)
    if match is None:
        return None
    context, resource, permissions = match.group(1, 2, 3)
    return context, resource, set(_V1_LETTERS.get(permissions, permissions))
