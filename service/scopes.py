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


#: The types of the patient's record the app writes, by interaction (``service.fhir.mapping``,
#: the audit): what a wildcard write it asks for (``patient/*.c``) is for.
_PATIENT_WRITES = {
    "c": ("Observation", "RelatedPerson", "Flag", "ServiceRequest", "Provenance", "AuditEvent"),
    "u": ("RelatedPerson", "Flag", "ServiceRequest"),
}
#: The user's whole access: the patient's record and the partner directory's Organizations.
_USER_WRITES = {"c": (*_PATIENT_WRITES["c"], "Organization"), "u": _PATIENT_WRITES["u"]}


def writes_not_granted(requested: str, granted: str) -> list[str]:
    """The writes (create, update) the registration's ``requested`` scopes ask for that the
    ``granted`` ones do not cover, each as a v2 scope (``patient/Flag.u``), in order.

    SMART lets the server grant less than asked. A save it may not write would wait for a
    sign-in that never brings the right, while the nurse reads "delivery follows" (found
    by review). A read not granted is not checked: the screens say when they cannot read.
    A grant covers a need of its own context or, for the user's whole access, ``user``
    (a patient's Flag is among the Flags the user may update).

    A wildcard asked for needs each type the app writes, granted by a wildcard or type by
    type: SMART 2 says the scopes granted "may differ from the scopes requested … often
    true when dealing with wildcard FHIR Resource scope requests", and an EHR that grants
    ``patient/Observation.c`` … for ``patient/*.c`` was refused (found by review). Named as
    the wildcard when none of its types is granted."""
    grants = [g for g in map(_letters, granted.split()) if g is not None]

    def covered(context: str, resource: str, letter: str) -> bool:
        return any(
            g[0] in (context, "user") and g[1] in ("*", resource) and letter in g[2] for g in grants
        )

    missing = []
    for need in map(_letters, requested.split()):
        if need is None:
            continue
        context, resource, letters = need
        for letter in sorted(letters & set("cu")):
            types = _written(context, letter) if resource == "*" else (resource,)
            lacking = [t for t in types if not covered(context, t, letter)]
            if resource == "*" and lacking and len(lacking) == len(types):
                missing.append(f"{context}/*.{letter}")
            else:
                missing += [f"{context}/{t}.{letter}" for t in lacking]
    return missing


def _written(context: str, letter: str) -> tuple[str, ...]:
    return (_PATIENT_WRITES if context == "patient" else _USER_WRITES)[letter]


def _letters(scope: str) -> tuple[str, str, set[str]] | None:
    """A resource scope's context, type and v2 letters; None for another scope."""
    match = _ANY_SCOPE.match(scope)
    if match is None:
        return None
    context, resource, permissions = match.group(1, 2, 3)
    return context, resource, set(_V1_LETTERS.get(permissions, permissions))
