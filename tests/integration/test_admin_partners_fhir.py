"""The partner directory as a FHIR Bundle conforms to the guide, and round-trips.

Every Organization is validated against kindreflex-partner-organization, every
HealthcareService against FHIR R4 (the guide has no profile for it), by the shared
validator of tests/support/validator.py (@medplum/core plus our own checks).
"""

from __future__ import annotations

from service.admin.partners_io import export_bundle, export_csv, import_bundle, import_csv
from service.tenant_config import PartnerEntry, PartnerSettings, default_partners
from tests.support.validator import shared_validator


def with_a_kbo_number() -> PartnerSettings:
    directory = default_partners()
    first = directory.entries[0].model_copy(update={"cbe": "0412345678"})
    other_region = PartnerEntry.model_validate(
        {"id": "caw-brugge", "type": "caw", "name": "CAW Brugge", "region": "west-vlaanderen",
         "opening_hours": "ma-vr 9-17u", "address": "Straat 1, 8000 Brugge"}
    )  # fmt: skip
    return PartnerSettings(
        region=directory.region, entries=[first, *directory.entries[1:], other_region]
    )


def test_every_resource_of_the_exported_bundle_is_valid() -> None:
    validator = shared_validator()
    bundle = export_bundle(with_a_kbo_number())
    assert validator.validate(bundle) == []
    errors = validator.validate_bundle_entries(bundle)
    assert {url: found for url, found in errors.items() if found} == {}
    organisation = bundle["entry"][0]["resource"]
    assert organisation["identifier"][1]["value"] == "0412345678"
    assert organisation["type"][0]["coding"][0]["display"].startswith("Vertrouwenscentrum")


def test_bundle_and_csv_round_trip_the_whole_directory() -> None:
    directory = with_a_kbo_number()
    assert import_bundle(export_bundle(directory)) == directory
    assert import_csv(export_csv(directory), "ignored: the first row names it") == directory
