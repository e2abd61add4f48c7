"""service.fhir.terminology reads the built guide; the protocol's codes agree with it."""

from __future__ import annotations

import enum
import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service import protocol
from service.fhir import mapping
from service.fhir import terminology as t
from tests.support.validator import ProfileValidator

OUR_BASE = "https://kindreflex-ed.be/fhir"
V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


def test_every_kindreflex_code_has_dutch_french_and_english_displays() -> None:
    for cs in t.guide().code_systems.values():
        assert cs.url == f"{OUR_BASE}/CodeSystem/{cs.id}"
        assert cs.concepts, cs.id
        for concept in cs.concepts.values():
            assert concept.display_in("nl") == concept.display
            assert concept.display_in("fr") != concept.display or cs.id == "partner-type", (
                cs.id,
                concept.code,
            )
            assert concept.display_in("en"), (cs.id, concept.code)
            assert {lang.split("-")[0] for lang in concept.designations} == {"fr", "en"}


def test_agreed_codes() -> None:
    assert t.code_system("kindreflex-step").codes == {f"step-{n}" for n in range(1, 7)}
    assert t.code_system("safety-assessment").codes == {"no-concern", "niet-pluis", "unclear"}
    assert t.code_system("team-decision").codes == {
        "safe",
        "concerning-willing",
        "concerning-unwilling",
        "acute-danger",
    }
    assert t.code_system("hague-trigger").codes == {
        "domestic-violence",
        "substance-abuse",
        "self-harm-psychiatric",
    }


def test_lookups() -> None:
    assert t.coding("team-decision", "safe", "fr") == {
        "system": f"{OUR_BASE}/CodeSystem/team-decision",
        "code": "safe",
        "display": "La situation à la maison est sûre",
    }
    assert t.display("kindreflex-step", protocol.Step.STEP_2, "en").startswith("Step 2")
    assert t.profile_url("kindreflex-child") == f"{OUR_BASE}/StructureDefinition/kindreflex-child"
    assert t.extension_url("lives-with") == f"{OUR_BASE}/StructureDefinition/lives-with"
    assert t.identifier_system("finding") == f"{OUR_BASE}/sid/finding"
    with pytest.raises(t.GuideError):
        t.extension_url("kindreflex-child")
    with pytest.raises(t.GuideError):
        t.coding("team-decision", "maybe")


def test_hague_trigger_value_sets_hold_published_clinical_codes() -> None:
    value_sets = t.guide().hague_trigger_value_sets()
    assert set(value_sets) == t.code_system("hague-trigger").codes
    for group, vs in value_sets.items():
        assert "http://snomed.info/sct" in vs.systems, group
        assert "http://hl7.org/fhir/sid/icd-10-cm" in vs.systems, group
        assert "build.fhir.org" in vs.description or "hl7.org" in vs.description, group
        assert "extend" in vs.description
    snomed_ipv = ("http://snomed.info/sct", "706893006")
    icd_alcohol = ("http://hl7.org/fhir/sid/icd-10-cm", "F10.120")
    assert t.hague_triggers([snomed_ipv]) == {"domestic-violence"}
    assert t.hague_triggers([snomed_ipv, icd_alcohol]) == {"domestic-violence", "substance-abuse"}
    assert t.hague_triggers([("http://snomed.info/sct", "38341003")]) == set()


def test_factor_catalogue() -> None:
    risk = {f.code for f in t.factors("risk")}
    protective = {f.code for f in t.factors("protective")}
    assert {"parental-mental-illness", "addiction", "domestic-violence", "isolation"} <= risk
    assert {"supportive-network", "asks-for-help"} <= protective
    assert not risk & protective
    assert {f.kind for f in t.factors()} == t.code_system("factor-kind").codes


def test_each_concept_property_has_the_type_its_code_system_declares() -> None:
    """R4 ``CodeSystem.property.type``: ``code`` is a code of the same code system,
    ``Coding`` one of another. The factor's ``kind`` (risk, protective: codes of
    CodeSystem factor-kind) was declared ``code``, which says they are factors."""
    for path in sorted(t.DEFAULT_GUIDE_DIR.glob("CodeSystem-*.json")):
        cs = json.loads(path.read_text())
        declared = {p["code"]: p["type"] for p in cs.get("property", [])}
        for concept in cs.get("concept", []):
            for prop in concept.get("property", []):
                kind = declared[prop["code"]]
                (value_key,) = (key for key in prop if key.startswith("value"))
                assert value_key == f"value{kind[0].upper()}{kind[1:]}", (cs["id"], prop)
                codes = {c["code"] for c in cs["concept"]}
                if kind == "code":
                    assert prop["valueCode"] in codes, (cs["id"], prop)
                if kind == "Coding":
                    system = prop["valueCoding"]["system"]
                    assert system != cs["url"], (cs["id"], prop)
                    assert (
                        prop["valueCoding"]["code"] in t.code_system(system.rsplit("/", 1)[1]).codes
                    )


def test_a_hospitals_guide_may_give_a_property_as_a_code_or_a_coding() -> None:
    """An older guide, or a hospital's, writes the factor's kind as ``valueCode``; one whose
    ``valueCoding`` is not an object reads as no kind, not as an error loading the guide."""
    read = t._properties
    assert read([{"code": "kind", "valueCode": "risk"}]) == {"kind": "risk"}
    assert read([{"code": "kind", "valueCoding": {"code": "protective"}}]) == {"kind": "protective"}
    assert read([{"code": "kind", "valueCoding": "risk"}]) == {"kind": ""}


# -- the protocol's enums and the guide agree, both ways ---------------------------------
def _enum_pairs() -> list[tuple[str, str]]:
    return [
        *t.PROTOCOL_ENUM_CODE_SYSTEMS.items(),
        *t.PROTOCOL_ENUM_VALUE_SETS.items(),
    ]


@pytest.mark.parametrize(("enum_name", "guide_id"), _enum_pairs())
def test_protocol_enum_agrees_with_the_guide(enum_name: str, guide_id: str) -> None:
    enum_cls = getattr(protocol, enum_name)
    missing_in_guide, missing_in_enum = t.code_differences(
        (member.value for member in enum_cls), guide_id
    )
    assert missing_in_guide == set(), f"{enum_name} codes not in the guide's {guide_id}"
    assert missing_in_enum == set(), f"the guide's {guide_id} codes not in {enum_name}"


def test_every_protocol_code_enum_is_checked() -> None:
    """A new StrEnum of codes in the protocol must be added to the mapping above."""
    not_codes = {"ErrorCode", "AdviceKind"}  # messages and screen hints, not FHIR codes
    enums = {
        name
        for name, value in vars(protocol).items()
        if isinstance(value, type)
        and issubclass(value, enum.Enum)
        and value.__module__ == protocol.__name__
    }
    assert enums - not_codes == {name for name, _ in _enum_pairs()}


def test_divergence_is_detected(tmp_path: Path) -> None:
    """The agreement check fails when the enum or the guide changes on one side only."""

    class Widened(enum.StrEnum):
        SAFE = "safe"
        CONCERNING_WILLING = "concerning-willing"
        CONCERNING_UNWILLING = "concerning-unwilling"
        ACUTE_DANGER = "acute-danger"
        UNKNOWN = "unknown"

    missing_in_guide, missing_in_enum = t.code_differences(
        (m.value for m in Widened), "team-decision"
    )
    assert missing_in_guide == {"unknown"}
    assert missing_in_enum == set()

    # the guide loses a code: a copy of the built guide without "unclear"
    copy = tmp_path / "resources"
    shutil.copytree(t.DEFAULT_GUIDE_DIR, copy)
    path = copy / "CodeSystem-safety-assessment.json"
    cs = json.loads(path.read_text())
    cs["concept"] = [c for c in cs["concept"] if c["code"] != "unclear"]
    path.write_text(json.dumps(cs))
    t.configure(copy)
    try:
        missing_in_guide, _ = t.code_differences(
            (m.value for m in protocol.SafetyAssessment), "safety-assessment"
        )
        assert missing_in_guide == {"unclear"}
    finally:
        t.configure(None)
    assert t.code_differences(
        (m.value for m in protocol.SafetyAssessment), "safety-assessment"
    ) == (
        set(),
        set(),
    )


def test_the_child_invariant_names_exactly_the_child_relationships_of_the_value_set() -> None:
    """kr-child-1 spells the ValueSet's codes out (FHIRPath without a terminology server):
    a code added to one and not the other would let a child be refused or a non-child in."""
    profile = json.loads(
        (t.DEFAULT_GUIDE_DIR / "StructureDefinition-kindreflex-child.json").read_text()
    )
    (invariant,) = [
        c for e in profile["snapshot"]["element"] for c in e.get("constraint", [])
        if c["key"] == "kr-child-1"
    ]  # fmt: skip
    named = set(re.findall(r"code = '([A-Z]+)'", invariant["expression"]))
    members = t.value_set("child-relationship").members
    assert {(V3_ROLE_CODE, code) for code in named} == set(members)
    assert named == {r.value for r in protocol.ChildRelationship}


def test_a_value_set_listing_english_displays_says_it_is_in_english() -> None:
    """A ValueSet that lists concepts of another code system with their displays (SNOMED
    CT, ICD-10-CM, HL7 v3 and FHIR codes, all English) declares the language of those
    displays. Declared nl-BE, as the guide's own ValueSets are, a validator checks
    "Victim of intimate partner abuse" as a Dutch display of SNOMED CT 706893006 (and finds
    none), and a reader takes it for the Dutch term."""
    resources = Path(t.DEFAULT_GUIDE_DIR)
    listing = []
    for path in sorted(resources.glob("ValueSet-*.json")):
        vs = json.loads(path.read_text(encoding="utf-8"))
        foreign = [
            include["system"]
            for include in vs.get("compose", {}).get("include", [])
            if not str(include.get("system", "")).startswith(f"{OUR_BASE}/")
            and any("display" in concept for concept in include.get("concept", []))
        ]
        if foreign:
            listing.append(vs["id"])
            assert vs.get("language") == "en", (vs["id"], vs.get("language"), foreign)
    assert {"hague-trigger-domestic-violence", "child-relationship"} <= set(listing)


def test_provenance_author_role_codes_the_agent_type_the_service_writes(
    fhir_validator: ProfileValidator,
) -> None:
    """The ValueSet provenance-author-role is bound to kindreflex-provenance's agent.type,
    the element whose code the service writes (mapping.provenance: type author, no role),
    extensibly: an author agent uses its code, another participant may have another type.
    Before, no element was bound to it (only a short text named it). What the service
    writes is valid; a second agent of another type (an enterer) is too."""
    guide = t.guide()
    profile = guide.structure_definitions["kindreflex-provenance"]
    elements = {e["id"]: e for e in profile["snapshot"]["element"]}
    binding = elements["Provenance.agent.type"]["binding"]
    assert binding["valueSet"] == t.value_set_url("provenance-author-role")
    assert binding["strength"] == "extensible"
    assert elements["Provenance.agent.role"]["binding"]["valueSet"] != binding["valueSet"]

    written = mapping.provenance(
        targets=["Flag/1"],
        author="Practitioner/kr-nurse-1",
        recorded=datetime(2026, 3, 9, tzinfo=UTC),
    )
    value_set = guide.value_set_by_url(binding["valueSet"])
    assert value_set is not None
    members = value_set.members
    for agent in written["agent"]:
        assert "role" not in agent
        assert {(c["system"], c["code"]) for c in agent["type"]["coding"]} <= members
    assert fhir_validator.validate(written) == []
    enterer = {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "enterer",
                }
            ]
        },
        "who": {"reference": "Device/ehr"},
    }
    assert fhir_validator.validate({**written, "agent": [*written["agent"], enterer]}) == []
