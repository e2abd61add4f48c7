"""What a token's granted scope leaves out of the writes the registration asked for
(``service.scopes.writes_not_granted``): SMART v1 and v2 syntax, wildcards, a user-level
grant for a patient-level need; reads are not checked."""

from __future__ import annotations

import pytest

from service.scopes import writes_not_granted
from service.tenant_config import DEFAULT_SCOPES


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
