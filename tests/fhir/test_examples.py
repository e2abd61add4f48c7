"""Every example of the guide validates; every invalid example is rejected as expected."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.fhir import mapping
from service.fhir.client import search_query
from service.outbox import TransactionBuilder
from tests.support.validator import FHIR_PROFILES_DIR, ProfileValidator

RESOURCES = FHIR_PROFILES_DIR / "fsh-generated" / "resources"
INVALID = FHIR_PROFILES_DIR / "examples" / "invalid"
DEFINITIONAL = ("CodeSystem", "ValueSet", "StructureDefinition", "NamingSystem")
_NOW = datetime(2026, 3, 9, 16, 1, tzinfo=UTC)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _examples() -> list[Path]:
    return sorted(
        p
        for p in RESOURCES.glob("*.json")
        if not p.name.startswith(DEFINITIONAL) and not p.name.startswith("Bundle-")
    )


def _bundle() -> dict[str, Any]:
    return _load(RESOURCES / "Bundle-Seed001Bundle.json")


def test_there_is_a_valid_example_per_profile() -> None:
    profiled = {_load(p)["meta"]["profile"][0] for p in _examples()}
    profiles = {
        sd["url"]
        for p in RESOURCES.glob("StructureDefinition-*.json")
        if (sd := _load(p))["type"] != "Extension" and not sd.get("abstract")
    }
    assert profiles - profiled == set()


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.stem)
def test_valid_example(fhir_validator: ProfileValidator, path: Path) -> None:
    assert fhir_validator.validate(_load(path)) == []


@pytest.mark.parametrize("path", sorted(INVALID.glob("*.json")), ids=lambda p: p.stem)
def test_invalid_example_is_rejected(fhir_validator: ProfileValidator, path: Path) -> None:
    case = _load(path)
    errors = fhir_validator.validate(case["resource"])
    assert errors, f"{path.name} should be invalid: {case['description']}"
    for expected in case["expected"]:
        assert any(expected in message for message in errors), (expected, errors)


def test_there_are_invalid_examples() -> None:
    assert len(list(INVALID.glob("*.json"))) >= 20


def test_seed_001_bundle_entries_each_validate(fhir_validator: ProfileValidator) -> None:
    results = fhir_validator.validate_bundle_entries(_bundle())
    assert len(results) == 17
    assert {url: errors for url, errors in results.items() if errors} == {}


def test_seed_001_bundle_is_an_idempotent_transaction() -> None:
    bundle = _bundle()
    assert bundle["type"] == "transaction"
    full_urls = {entry["fullUrl"] for entry in bundle["entry"]}
    for entry in bundle["entry"]:
        resource, request = entry["resource"], entry["request"]
        assert resource["meta"]["profile"], entry["fullUrl"]
        if resource["resourceType"] == "Provenance":
            continue  # no identifier in R4: see the test below
        ours = [i for i in resource["identifier"] if "kindreflex-ed.be" in i["system"]]
        assert request["method"] == "POST"
        by_identifier = {"identifier": f"{ours[0]['system']}|{ours[0]['value']}"}
        if resource["resourceType"] == "RelatedPerson":  # a child: only the patient's own
            by_identifier["patient"] = resource["patient"]["reference"]
        assert request["ifNoneExist"] == search_query(by_identifier)
        # every urn:uuid reference points into the bundle
        text = json.dumps(resource)
        for piece in text.split('"reference": "')[1:]:
            reference = piece.split('"', 1)[0]
            if reference.startswith("urn:uuid:"):
                assert reference in full_urls, reference


def test_seed_001_bundle_tells_the_three_episodes() -> None:
    resources = [entry["resource"] for entry in _bundle()["entry"]]
    steps = sorted(
        r["code"]["coding"][0]["code"] for r in resources if r["resourceType"] == "Observation"
    )
    assert steps == ["step-1", "step-2", "step-2", "step-3", "step-4", "step-5", "step-6"]
    children = {r["name"][0]["given"][0] for r in resources if r["resourceType"] == "RelatedPerson"}
    assert children == {"Noah", "Emma"}
    encounters = {r["encounter"]["reference"] for r in resources if "encounter" in r}
    assert len(encounters) == 3
    referral = next(r for r in resources if r["resourceType"] == "ServiceRequest")
    assert referral["performerType"]["coding"][0]["code"] == "vk"


def test_seed_001_provenances_are_written_as_the_service_writes_them() -> None:
    """The seed Bundle shows what the service does: each save's Provenance is a plain
    create in the save's transaction (``TransactionBuilder.add``: R4 Provenance has no
    identifier to create it conditionally on), and each names its own save's author: a
    step finding or a referral is a target only of a Provenance by the user who recorded
    it. Before, the example PUT each Provenance on an id the service never assigns, and
    made the social worker the author of the nurse's step 2 and of the Flag she raised."""
    tx = TransactionBuilder()
    tx.add(mapping.provenance(targets=["Flag/1"], author="Practitioner/x", recorded=_NOW))
    (service_entry,) = tx.bundle()["entry"]
    entries = [e for e in _bundle()["entry"] if e["resource"]["resourceType"] == "Provenance"]
    by_url = {e["fullUrl"]: e["resource"] for e in _bundle()["entry"]}
    assert len(entries) == 5  # one per save: 2 triage saves, 3 step saves
    for entry in entries:
        provenance = entry["resource"]
        assert entry["request"] == service_entry["request"]
        (author,) = [a["who"]["reference"] for a in provenance["agent"]]
        for target in provenance["target"]:
            written = by_url[target["reference"]]
            recorders = [p["reference"] for p in written.get("performer", [])]
            if written["resourceType"] == "ServiceRequest":
                recorders = [written["requester"]["reference"]]
            if written["resourceType"] == "Observation" or recorders:
                assert recorders == [author], (target, author)
