"""Codes, displays and canonical URLs of the Kindreflex guide, read from the built guide.

The single source of truth is the FSH in ``fhir_profiles/input/fsh``; SUSHI builds it into
``fhir_profiles/fsh-generated/resources/*.json`` (committed). This module reads those JSON
files once (on first use) and offers typed access. Python never types a canonical URL or a
display: it names CodeSystems, ValueSets and profiles by their *id* (e.g.
``"safety-assessment"``) and asks this module for the rest.

Quick reference::

    from service.fhir import terminology as t

    t.code_system_url("team-decision")            # canonical URL of a CodeSystem
    t.coding("team-decision", "safe", "fr")       # {"system", "code", "display"} in French
    t.display("kindreflex-step", "step-2", "en")  # one display
    t.profile_url("kindreflex-step2-finding")     # canonical URL of a profile
    t.extension_url("lives-with")                 # canonical URL of an extension
    t.identifier_system("finding")                # business identifier system
    t.hague_triggers([("http://snomed.info/sct", "706893006")])  # {"domestic-violence"}
    t.factors()                                   # the risk/protective factor catalogue

``guide()`` returns the loaded :class:`Guide`; ``load_guide(directory)`` loads another
directory (a hospital's extended build, or a test's copy). The default directory is the
repository's built guide, or ``Settings.guide_dir`` when the caller passes it to
:func:`configure`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_GUIDE_DIR",
    "PROTOCOL_ENUM_CODE_SYSTEMS",
    "CodeSystemInfo",
    "Concept",
    "Factor",
    "Guide",
    "GuideError",
    "IdentifierKind",
    "Lang",
    "ValueSetInfo",
    "code_differences",
    "code_system",
    "code_system_url",
    "codeable_concept",
    "coding",
    "configure",
    "display",
    "element_pattern",
    "extension_url",
    "factors",
    "guide",
    "hague_triggers",
    "identifier_system",
    "load_guide",
    "profile_url",
    "value_set",
    "value_set_coding",
    "value_set_url",
]

#: The built guide inside the repository (the container image copies it and may set
#: ``KINDREFLEX_GUIDE_DIR``, read by ``service.settings``).
DEFAULT_GUIDE_DIR: Final = (
    Path(__file__).resolve().parents[2] / "fhir_profiles" / "fsh-generated" / "resources"
)

Lang = Literal["nl", "fr", "en"]
#: The kinds of business identifiers (NamingSystem ``sid-<kind>`` of the guide).
IdentifierKind = Literal["child", "finding", "referral", "concern", "partner"]

_USAGE_CONTEXT_TYPE = "http://terminology.hl7.org/CodeSystem/usage-context-type"

#: Which guide CodeSystem (by id) holds the codes of each protocol enum, by enum class
#: name in ``service.protocol``. ``ChildRelationship`` holds v3 RoleCode codes: its codes
#: are checked against the ValueSet ``child-relationship`` instead.
PROTOCOL_ENUM_CODE_SYSTEMS: Final[Mapping[str, str]] = {
    "Step": "kindreflex-step",
    "LivesWith": "lives-with",
    "PregnancyOf": "pregnancy-of",
    "SafetyAssessment": "safety-assessment",
    "TeamDecision": "team-decision",
    "ProgressAssessment": "safety-progress",
    "SupportAction": "support-action",
    "SafetyAction": "safety-action",
    "HagueTrigger": "hague-trigger",
    "Consultation": "consultation-type",
    "ReferralTarget": "partner-type",
    "FactorKind": "factor-kind",
    "KeyPersonRole": "key-person-role",
    "ContactChannel": "contact-channel",
    "CloseReason": "case-close-reason",
}
#: Protocol enums whose codes belong to a ValueSet of the guide (codes of another system).
PROTOCOL_ENUM_VALUE_SETS: Final[Mapping[str, str]] = {
    "ChildRelationship": "child-relationship",
    "ReferralStatus": "referral-status",  # FHIR request-status codes
}


class GuideError(LookupError):
    """The built guide lacks something the caller asked for (or is not built)."""


@dataclass(frozen=True)
class Concept:
    """One code of a CodeSystem, with its displays per language and its properties."""

    system: str
    code: str
    display: str
    definition: str | None
    designations: Mapping[str, str]
    properties: Mapping[str, str] = field(default_factory=dict)

    def display_in(self, lang: Lang = "nl") -> str:
        """The display in ``lang`` (nl: the CodeSystem's display; fr/en: designations)."""
        if lang == "nl":
            return self.display
        for language, value in self.designations.items():
            if language == lang or language.startswith(f"{lang}-"):
                return value
        return self.display


@dataclass(frozen=True)
class CodeSystemInfo:
    id: str
    url: str
    name: str
    title: str
    description: str
    concepts: Mapping[str, Concept]

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(self.concepts)

    def concept(self, code: str) -> Concept:
        try:
            return self.concepts[code]
        except KeyError:
            raise GuideError(f"code {code!r} is not in CodeSystem {self.id}") from None


@dataclass(frozen=True)
class ValueSetInfo:
    """A ValueSet, expanded from its compose when every system is known.

    ``complete`` is False when the compose includes a whole system the guide does not
    hold (then ``members`` lists only the enumerated codes).
    """

    id: str
    url: str
    name: str
    title: str
    description: str
    members: frozenset[tuple[str, str]]
    displays: Mapping[tuple[str, str], str]
    focus: str | None
    complete: bool

    def contains(self, system: str | None, code: str) -> bool:
        if system is None:
            return any(c == code for _, c in self.members)
        return (system, code) in self.members

    @property
    def systems(self) -> frozenset[str]:
        return frozenset(s for s, _ in self.members)


@dataclass(frozen=True)
class Factor:
    """An entry of the risk and protective factor catalogue."""

    code: str
    kind: str  # a code of CodeSystem factor-kind: "risk" or "protective"
    concept: Concept

    def display_in(self, lang: Lang = "nl") -> str:
        return self.concept.display_in(lang)


def _properties(raw: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """A concept's property values by property code; of a ``valueCoding`` (a code of
    another code system, as the factor's ``kind``), its code."""
    result: dict[str, str] = {}
    for prop in raw:
        for key, value in prop.items():
            if key == "valueCoding":
                code = value.get("code", "") if isinstance(value, dict) else ""
                result[str(prop["code"])] = str(code)
            elif key.startswith("value"):
                result[str(prop["code"])] = str(value)
    return result


def _concepts(system: str, raw: Iterable[Mapping[str, Any]]) -> dict[str, Concept]:
    result: dict[str, Concept] = {}
    for item in raw:
        designations = {
            str(d["language"]): str(d["value"])
            for d in item.get("designation", [])
            if "language" in d
        }
        result[str(item["code"])] = Concept(
            system=system,
            code=str(item["code"]),
            display=str(item.get("display", item["code"])),
            definition=item.get("definition"),
            designations=designations,
            properties=_properties(item.get("property", [])),
        )
        result.update(_concepts(system, item.get("concept", [])))
    return result


class Guide:
    """The built Kindreflex guide: CodeSystems, ValueSets, profiles, extensions, naming systems."""

    def __init__(self, resources: Iterable[Mapping[str, Any]], *, source: str = "") -> None:
        self.source = source
        self.code_systems: dict[str, CodeSystemInfo] = {}
        self.structure_definitions: dict[str, Mapping[str, Any]] = {}
        self.naming_systems: dict[str, Mapping[str, Any]] = {}
        raw_value_sets: list[Mapping[str, Any]] = []
        self.examples: dict[str, Mapping[str, Any]] = {}
        for resource in resources:
            rtype = resource.get("resourceType")
            rid = str(resource.get("id", ""))
            if rtype == "CodeSystem":
                url = str(resource["url"])
                self.code_systems[rid] = CodeSystemInfo(
                    id=rid,
                    url=url,
                    name=str(resource.get("name", rid)),
                    title=str(resource.get("title", rid)),
                    description=str(resource.get("description", "")),
                    concepts=_concepts(url, resource.get("concept", [])),
                )
            elif rtype == "ValueSet":
                raw_value_sets.append(resource)
            elif rtype == "StructureDefinition":
                self.structure_definitions[rid] = resource
            elif rtype == "NamingSystem":
                self.naming_systems[rid] = resource
            elif rtype:
                self.examples[f"{rtype}/{rid}"] = resource
        self._cs_by_url = {cs.url: cs for cs in self.code_systems.values()}
        self.value_sets: dict[str, ValueSetInfo] = {
            str(vs["id"]): self._expand(vs) for vs in raw_value_sets
        }
        self._vs_by_url = {vs.url: vs for vs in self.value_sets.values()}
        if not self.code_systems:
            raise GuideError(
                f"no CodeSystem in {source or 'the guide'}: run fhir_profiles/build.sh"
            )

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: Path) -> Guide:
        if not directory.is_dir():
            raise GuideError(
                f"the built guide is missing: {directory} (run fhir_profiles/build.sh)"
            )
        resources = [
            json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(directory.glob("*.json"))
        ]
        return cls(resources, source=str(directory))

    def _expand(self, vs: Mapping[str, Any]) -> ValueSetInfo:
        members: set[tuple[str, str]] = set()
        displays: dict[tuple[str, str], str] = {}
        complete = True
        compose = vs.get("compose", {})
        for include in compose.get("include", []):
            system = str(include.get("system", ""))
            if include.get("concept"):
                for c in include["concept"]:
                    key = (system, str(c["code"]))
                    members.add(key)
                    known = self._cs_by_url.get(system)
                    if known is not None and key[1] in known.concepts:
                        displays[key] = known.concepts[key[1]].display
                    elif "display" in c:
                        displays[key] = str(c["display"])
            elif system in self._cs_by_url:
                for code, concept in self._cs_by_url[system].concepts.items():
                    members.add((system, code))
                    displays[(system, code)] = concept.display
            else:
                complete = False
        for exclude in compose.get("exclude", []):
            system = str(exclude.get("system", ""))
            for c in exclude.get("concept", []):
                members.discard((system, str(c["code"])))
                displays.pop((system, str(c["code"])), None)
        focus = None
        for ctx in vs.get("useContext", []):
            if ctx.get("code", {}).get("code") == "focus":
                codings = ctx.get("valueCodeableConcept", {}).get("coding", [])
                if codings:
                    focus = str(codings[0]["code"])
        return ValueSetInfo(
            id=str(vs["id"]),
            url=str(vs["url"]),
            name=str(vs.get("name", vs["id"])),
            title=str(vs.get("title", vs["id"])),
            description=str(vs.get("description", "")),
            members=frozenset(members),
            displays=displays,
            focus=focus,
            complete=complete,
        )

    # -- lookups -------------------------------------------------------------------------
    def code_system(self, cs_id: str) -> CodeSystemInfo:
        try:
            return self.code_systems[cs_id]
        except KeyError:
            raise GuideError(f"no CodeSystem {cs_id!r} in the guide") from None

    def code_system_by_url(self, url: str) -> CodeSystemInfo | None:
        return self._cs_by_url.get(url)

    def value_set(self, vs_id: str) -> ValueSetInfo:
        try:
            return self.value_sets[vs_id]
        except KeyError:
            raise GuideError(f"no ValueSet {vs_id!r} in the guide") from None

    def value_set_by_url(self, url: str) -> ValueSetInfo | None:
        return self._vs_by_url.get(url.split("|")[0])

    def structure_definition(self, sd_id: str) -> Mapping[str, Any]:
        try:
            return self.structure_definitions[sd_id]
        except KeyError:
            raise GuideError(f"no StructureDefinition {sd_id!r} in the guide") from None

    def profile_url(self, profile_id: str) -> str:
        sd = self.structure_definition(profile_id)
        if sd.get("type") == "Extension":
            raise GuideError(f"{profile_id!r} is an extension: use extension_url()")
        return str(sd["url"])

    def extension_url(self, extension_id: str) -> str:
        sd = self.structure_definition(extension_id)
        if sd.get("type") != "Extension":
            raise GuideError(f"{extension_id!r} is not an extension")
        return str(sd["url"])

    def element_pattern(self, profile_id: str, element_id: str) -> Any:
        """The fixed or pattern value of an element of a profile's snapshot (e.g. the
        category every finding carries), so Python never retypes a code of another system.
        """
        for element in self.structure_definition(profile_id)["snapshot"]["element"]:
            if element["id"] == element_id:
                for key, value in element.items():
                    if key.startswith(("fixed", "pattern")):
                        return value
                raise GuideError(f"{profile_id} {element_id} has no fixed or pattern value")
        raise GuideError(f"{profile_id} has no element {element_id}")

    @property
    def profiles(self) -> dict[str, str]:
        """Profile id → canonical URL (not extensions)."""
        return {
            i: str(sd["url"])
            for i, sd in self.structure_definitions.items()
            if sd["type"] != "Extension"
        }

    @property
    def extensions(self) -> dict[str, str]:
        """Extension id → canonical URL."""
        return {
            i: str(sd["url"])
            for i, sd in self.structure_definitions.items()
            if sd["type"] == "Extension"
        }

    def identifier_system(self, kind: str) -> str:
        ns = self.naming_systems.get(f"sid-{kind}")
        if ns is None:
            raise GuideError(f"no NamingSystem sid-{kind} in the guide")
        for unique in ns.get("uniqueId", []):
            if unique.get("type") == "uri":
                return str(unique["value"])
        raise GuideError(f"NamingSystem sid-{kind} has no uri")

    def display(self, cs_id: str, code: str, lang: Lang = "nl") -> str:
        return self.code_system(cs_id).concept(code).display_in(lang)

    def coding(self, cs_id: str, code: str, lang: Lang = "nl") -> dict[str, str]:
        concept = self.code_system(cs_id).concept(code)
        return {"system": concept.system, "code": concept.code, "display": concept.display_in(lang)}

    def codeable_concept(
        self, cs_id: str, code: str, lang: Lang = "nl", text: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = {"coding": [self.coding(cs_id, code, lang)]}
        if text:
            result["text"] = text
        return result

    def value_set_coding(self, vs_id: str, code: str) -> dict[str, str]:
        """A coding of a ValueSet member given only its code (e.g. a v3 RoleCode)."""
        vs = self.value_set(vs_id)
        for system, member in sorted(vs.members):
            if member == code:
                coding = {"system": system, "code": code}
                if (system, code) in vs.displays:
                    coding["display"] = vs.displays[(system, code)]
                return coding
        raise GuideError(f"code {code!r} is not in ValueSet {vs_id}")

    def hague_trigger_value_sets(self) -> dict[str, ValueSetInfo]:
        """Trigger group code → its ValueSet of clinical codes (by useContext focus)."""
        groups = self.code_system("hague-trigger").codes
        return {vs.focus: vs for vs in self.value_sets.values() if vs.focus in groups and vs.focus}

    def hague_triggers(self, codings: Iterable[tuple[str, str]]) -> frozenset[str]:
        """The trigger groups whose ValueSet holds any of these (system, code) pairs."""
        pairs = set(codings)
        return frozenset(
            group for group, vs in self.hague_trigger_value_sets().items() if pairs & vs.members
        )

    def factors(self, kind: str | None = None) -> tuple[Factor, ...]:
        """The factor catalogue (CodeSystem factor), optionally only "risk" or "protective"."""
        result = []
        for code, concept in self.code_system("factor").concepts.items():
            factor_kind = concept.properties.get("kind", "")
            if kind is None or factor_kind == kind:
                result.append(Factor(code=code, kind=factor_kind, concept=concept))
        return tuple(result)


# -- the process-wide guide ----------------------------------------------------------------
_lock = threading.Lock()
_guide: Guide | None = None
_directory: Path = DEFAULT_GUIDE_DIR


def configure(directory: Path | None) -> None:
    """Use another built guide directory (``Settings.guide_dir``); None: the default."""
    global _guide, _directory
    with _lock:
        _directory = directory or DEFAULT_GUIDE_DIR
        _guide = None


def load_guide(directory: Path) -> Guide:
    """Load a built guide directory (without touching the process-wide guide)."""
    return Guide.load(directory)


def guide() -> Guide:
    """The process-wide guide, loaded once on first use."""
    global _guide
    if _guide is None:
        with _lock:
            if _guide is None:
                _guide = Guide.load(_directory)
    return _guide


def code_system(cs_id: str) -> CodeSystemInfo:
    return guide().code_system(cs_id)


def code_system_url(cs_id: str) -> str:
    return guide().code_system(cs_id).url


def value_set(vs_id: str) -> ValueSetInfo:
    return guide().value_set(vs_id)


def value_set_url(vs_id: str) -> str:
    return guide().value_set(vs_id).url


def profile_url(profile_id: str) -> str:
    return guide().profile_url(profile_id)


def extension_url(extension_id: str) -> str:
    return guide().extension_url(extension_id)


def identifier_system(kind: IdentifierKind | str) -> str:
    return guide().identifier_system(kind)


def display(cs_id: str, code: str | StrEnum, lang: Lang = "nl") -> str:
    return guide().display(cs_id, str(code), lang)


def coding(cs_id: str, code: str | StrEnum, lang: Lang = "nl") -> dict[str, str]:
    return guide().coding(cs_id, str(code), lang)


def codeable_concept(
    cs_id: str, code: str | StrEnum, lang: Lang = "nl", text: str | None = None
) -> dict[str, Any]:
    return guide().codeable_concept(cs_id, str(code), lang, text)


def hague_triggers(codings: Iterable[tuple[str, str]]) -> frozenset[str]:
    return guide().hague_triggers(codings)


def element_pattern(profile_id: str, element_id: str) -> Any:
    return guide().element_pattern(profile_id, element_id)


def value_set_coding(vs_id: str, code: str | StrEnum) -> dict[str, str]:
    return guide().value_set_coding(vs_id, str(code))


def factors(kind: str | None = None) -> tuple[Factor, ...]:
    return guide().factors(kind)


def code_differences(codes: Iterable[str], cs_or_vs_id: str) -> tuple[set[str], set[str]]:
    """Compare a set of codes (e.g. a protocol enum's values) with a CodeSystem of the guide
    (or, when no CodeSystem has that id, a ValueSet's codes).

    Returns ``(missing_in_guide, missing_in_codes)``; both empty when they agree.
    """
    ours = {str(code) for code in codes}
    g = guide()
    if cs_or_vs_id in g.code_systems:
        theirs = set(g.code_systems[cs_or_vs_id].codes)
    else:
        theirs = {code for _, code in g.value_set(cs_or_vs_id).members}
    return ours - theirs, theirs - ours
