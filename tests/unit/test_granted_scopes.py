"""What a token's granted scope leaves out of the writes the registration asked for
(``service.scopes.writes_not_granted``): SMART v1 and v2 syntax, wildcards, a user-level
grant for a patient-level need; reads are not checked."""

from __future__ import annotations

import pytest

from service.scopes import writes_not_granted
from service.tenant_config import DEFAULT_SCOPES, scopes_missing


@pytest.mark.parametrize(
    "granted",
    [
        DEFAULT_SCOPES,
        "launch openid patient/*.cruds user/*.cruds",
        "patient/*.write user/*.write",  # v1
        "patient/*.* user/Organization.*",  # v1 wildcard
        "user/*.cu",  # the user's whole access covers the patient's
        "patient/*.c patient/*.u?category=exam user/Organization.c",  # v2 query: not enforced
    ],
)
def test_every_write_asked_for_is_granted(granted: str) -> None:
    assert writes_not_granted(DEFAULT_SCOPES, granted) == []


def test_the_writes_not_granted_are_named_as_v2_scopes_in_the_order_asked() -> None:
    granted = "launch openid fhirUser patient/*.read patient/*.c user/*.rs"
    assert writes_not_granted(DEFAULT_SCOPES, granted) == [
        "patient/RelatedPerson.u",
        "patient/ServiceRequest.u",
        "patient/Flag.u",
        "user/Organization.c",
    ]


def test_a_patient_level_grant_does_not_cover_a_user_level_need() -> None:
    assert writes_not_granted("user/Organization.c", "patient/*.cruds") == ["user/Organization.c"]


def test_reads_and_other_scopes_are_not_checked() -> None:
    assert writes_not_granted("launch openid patient/*.rs user/Practitioner.rs", "launch") == []


#: What an EHR that grants no wildcard gives for the defaults, type by type.
PER_TYPE = (
    "patient/Observation.crs patient/RelatedPerson.crus patient/Flag.crus "
    "patient/ServiceRequest.crus patient/Provenance.cr patient/AuditEvent.c "
    "user/Organization.crs user/Practitioner.rs"
)


def test_a_wildcard_asked_for_is_granted_type_by_type() -> None:
    """SMART 2: the scopes granted "may differ from the scopes requested … often true when
    dealing with wildcard FHIR Resource scope requests". Such an EHR was refused."""
    assert writes_not_granted(DEFAULT_SCOPES, PER_TYPE) == []


def test_a_type_the_app_writes_that_is_not_granted_is_named() -> None:
    without_audit = PER_TYPE.replace("patient/AuditEvent.c ", "")
    assert writes_not_granted(DEFAULT_SCOPES, without_audit) == ["patient/AuditEvent.c"]
    no_update = "patient/*.c user/Organization.c"
    assert writes_not_granted("patient/*.cu", no_update) == ["patient/*.u"]
    assert writes_not_granted("user/*.c", "user/Observation.c") == [
        "user/RelatedPerson.c", "user/Flag.c", "user/ServiceRequest.c", "user/Provenance.c",
        "user/AuditEvent.c", "user/Organization.c",
    ]  # fmt: skip


def test_an_administrator_may_ask_type_by_type() -> None:
    """The configuration refused a registration asking for the app's rights type by type:
    "Narrow them if your EHR's policy asks" (the install guide) could not be done."""
    assert scopes_missing(f"launch openid fhirUser {PER_TYPE}") == []
    assert scopes_missing(f"launch openid fhirUser {PER_TYPE.replace('Flag.crus', 'Flag.rs')}") == [
        "patient/Flag.c", "patient/Flag.u",
    ]  # fmt: skip
