"""The CDS Hooks 2.0 request bodies this service accepts, as pydantic models.

Only what the service reads is modelled; other fields (CDS Hooks extensions) are ignored.
Ids that end up in FHIR queries are checked against FHIR's id syntax, so a context value
can never smuggle extra query parameters into a prefetch request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    model_validator,
)

from service.text import OneLine

FhirId = Annotated[str, Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
UserReference = Annotated[
    str,
    Field(pattern=r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$"),
]


class Lenient(BaseModel):
    """CDS Hooks lets clients add extension fields: ignore what we do not read."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class FhirAuthorization(Lenient):
    access_token: str = Field(min_length=1)
    token_type: Literal["Bearer"]
    expires_in: int = Field(gt=0)
    scope: str
    subject: str


class HookContext(Lenient):
    """The context of ``encounter-start`` and ``patient-view`` (the encounter is optional
    in ``patient-view``, required in ``encounter-start``: checked by the router)."""

    userId: UserReference  # noqa: N815 - CDS Hooks field names
    patientId: FhirId  # noqa: N815
    encounterId: FhirId | None = None  # noqa: N815


class HookRequest(Lenient):
    hook: str = Field(min_length=1)
    hookInstance: UUID  # noqa: N815
    fhirServer: HttpUrl | None = None  # noqa: N815
    fhirAuthorization: FhirAuthorization | None = None  # noqa: N815
    context: dict[str, Any]
    prefetch: dict[str, dict[str, Any] | None] | None = None

    @model_validator(mode="after")
    def _authorization_needs_a_server(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirAuthorization is given without fhirServer")
        return self


def _in_utc(value: datetime) -> datetime:
    # stored in UTC: 0001-01-01T00:00:00+14:00 is a valid timestamp without a UTC value
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the timestamp is out of range once in UTC") from None


class Coding(Lenient):
    # one line (PostgreSQL refuses a NUL; a tab is no part of a code), as long as the
    # columns of ``cds_feedback`` that store them
    system: Annotated[OneLine, Field(max_length=500)] | None = None
    code: Annotated[OneLine, Field(min_length=1, max_length=100)]
    display: str | None = None  # read, never stored


class OverrideReason(Lenient):
    reason: Coding | None = None
    userComment: str | None = None  # noqa: N815 - read, never stored


class Feedback(Lenient):
    card: UUID
    outcome: Literal["accepted", "overridden"]
    overrideReason: OverrideReason | None = None  # noqa: N815
    outcomeTimestamp: Annotated[AwareDatetime, AfterValidator(_in_utc)]  # noqa: N815

    @model_validator(mode="after")
    def _override_reason_only_when_overridden(self) -> Feedback:
        if self.outcome == "accepted" and self.overrideReason is not None:
            raise ValueError("an accepted card has no overrideReason")
        return self


class FeedbackRequest(Lenient):
    feedback: list[Feedback] = Field(min_length=1, max_length=100)
