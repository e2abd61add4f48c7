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


#: Resources the app creates (children, findings, referral and its partner, open concern,
#: and in every write its provenance and audit event).
WRITTEN_RESOURCES = (
    "RelatedPerson",
    "Observation",
    "ServiceRequest",
    "Organization",
    "Flag",
    "Provenance",
    "AuditEvent",
)
#: Resources the app updates (a child recorded before, a referral's status, the concern),
#: always with ``If-Match`` on the version read: a delivery reads them too (the version the
#: user saw, for a merge or an undo).
UPDATED_RESOURCES = ("RelatedPerson", "ServiceRequest", "Flag")
#: Resources a delivery searches: for an earlier save of the same (a merge over it), and
#: for the witness that tells whether an earlier attempt landed.
SEARCHED_AT_DELIVERY = ("Observation", "RelatedPerson", "Flag", "Provenance")
#: What a save needs at delivery (``service.outbox``), by interaction: what a wildcard
#: asked for (``user/*.c``) is for.
_USER_NEEDS = {
    "c": WRITTEN_RESOURCES,
    "u": UPDATED_RESOURCES,
    "r": UPDATED_RESOURCES,
    "s": SEARCHED_AT_DELIVERY,
}
#: The same of the patient's record: the partner directory's Organizations are outside it.
_PATIENT_NEEDS = {
    letter: tuple(t for t in types if t != "Organization") for letter, types in _USER_NEEDS.items()
}
#: Rights the app asks for (``tenant_config.DEFAULT_SCOPES``) and uses only where the
#: session's token grants them (:func:`is_granted`), as v2 scopes: no save needs them, so they
#: are never a reason to refuse a launch or a refresh, nor missing from a registration
#: (:func:`save_rights_not_granted` leaves them out). The update of a partner's
#: Organization: a referral lays the partner directory's entry over it when granted, else
#: creates it once and leaves it as it is (``casework.updates_facilities``). Organizations
#: are master data that many EHRs let no app update: were the right required, such an
#: EHR's every launch would be refused.
OPTIONAL_RIGHTS = frozenset({"user/Organization.u"})


def save_rights_not_granted(requested: str, granted: str) -> list[str]:
    """The rights a save needs at delivery that the registration's ``requested`` scopes ask
    for and the ``granted`` ones do not cover, each as a v2 scope (``patient/Flag.u``), in
    order: every create and update asked for, and the reads and searches of the types a
    delivery reads (:data:`_PATIENT_NEEDS`).

    SMART lets the server grant less than asked. A save it may not make would wait for a
    sign-in that never brings the right, while the nurse reads "delivery follows" (found
    by review); so would one whose delivery may not read the child's record it updates
    (found by review). Other reads are not checked: the screens say when they cannot read.
    A grant covers a need of its own context or, for the user's whole access, ``user``
    (a patient's Flag is among the Flags the user may update). The :data:`OPTIONAL_RIGHTS`
    are no need: left out.

    A wildcard asked for needs each type, granted by a wildcard or type by type: SMART 2
    says the scopes granted "may differ from the scopes requested … often true when
    dealing with wildcard FHIR Resource scope requests", and an EHR that grants
    ``patient/Observation.c`` … for ``patient/*.c`` was refused (found by review). Named as
    the wildcard when none of its types is granted."""
    grants = _grants(granted)
    missing = []
    for need in map(_letters, requested.split()):
        if need is None:
            continue
        context, resource, letters = need
        for letter in [letter for letter in "curs" if letter in letters]:
            types = _needed(context, letter, resource)
            lacking = [t for t in types if not _covers(grants, context, t, letter)]
            if resource == "*" and lacking and len(lacking) == len(types):
                missing.append(f"{context}/*.{letter}")
            else:
                missing += [f"{context}/{t}.{letter}" for t in lacking]
    return missing


def is_granted(granted: str, context: str, resource: str, letters: str) -> bool:
    """Whether the ``granted`` scopes (a session's, as its token response named them) cover
    ``resource`` in ``context`` with each of ``letters`` (v2 letters; v1 scopes and
    wildcards read as :func:`save_rights_not_granted` reads them): whether the app may use
    one of the :data:`OPTIONAL_RIGHTS`, which no launch checked."""
    given = _grants(granted)
    return all(_covers(given, context, resource, letter) for letter in letters)


def _grants(granted: str) -> list[tuple[str, str, set[str]]]:
    return [g for g in map(_letters, granted.split()) if g is not None]


def _covers(
    grants: list[tuple[str, str, set[str]]], context: str, resource: str, letter: str
) -> bool:
    """A grant of the need's own context or, for the user's whole access, ``user``."""
    return any(
        g[0] in (context, "user") and g[1] in ("*", resource) and letter in g[2] for g in grants
    )


def _needed(context: str, letter: str, resource: str) -> tuple[str, ...]:
    """The types a scope asked for with ``letter`` on ``resource`` must be granted for."""
    needs = (_PATIENT_NEEDS if context == "patient" else _USER_NEEDS)[letter]
    if resource != "*":
        needs = (resource,) if letter in "cu" or resource in needs else ()
    return tuple(t for t in needs if f"{context}/{t}.{letter}" not in OPTIONAL_RIGHTS)


def _letters(scope: str) -> tuple[str, str, set[str]] | None:
    """A resource scope's context, type and v2 letters; None for another scope."""
    match = _ANY_SCOPE.match(scope)
    if match is None:
        return None
    context, resource, permissions = match.group(1, 2, 3)
    return context, resource, set(_V1_LETTERS.get(permissions, permissions))
