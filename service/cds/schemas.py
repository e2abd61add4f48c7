"""The CDS Hooks 2.0 request bodies this service accepts, as pydantic models.

Only what the service reads is modelled; other fields (CDS Hooks extensions) are ignored.
Ids that end up in FHIR queries are checked against FHIR's id syntax, so a context value
can never smuggle extra query parameters into a prefetch request.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from service.cds.situation import PREFETCH_KEYS
from service.text import OneLine

log = logging.getLogger(__name__)

FhirId = Annotated[str, Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
UserReference = Annotated[
    str,
    Field(pattern=r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$"),
]


def _bearer(value: str) -> str:
    if value.lower() != "bearer":
        raise ValueError("token_type is Bearer")
    return value


class Lenient(BaseModel):
    """CDS Hooks lets clients add extension fields: ignore what we do not read."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class FhirAuthorization(Lenient):
    access_token: str = Field(min_length=1)
    # CDS Hooks fixes "Bearer"; RFC 6749 (5.1) makes the token type case-insensitive
    token_type: Annotated[str, AfterValidator(_bearer)]
    expires_in: int = Field(gt=0)
    scope: str
    subject: str


#: The users a Kindreflex card is for: care staff, as the EHR names them in ``userId``.
CARE_STAFF = frozenset({"Practitioner", "PractitionerRole"})


class HookContext(Lenient):
    """The context of ``encounter-start`` and ``patient-view`` (the encounter is optional
    in ``patient-view``, required in ``encounter-start``: checked by the router).

    ``userId`` may name a Patient or a RelatedPerson: the patient-view hook has them "when
    a patient or their proxy are viewing the record" (a patient portal). Accepted, not
    refused, and answered without a card (``for_care_staff``, ``service.cds.router``)."""

    userId: UserReference  # noqa: N815 - CDS Hooks field names
    patientId: FhirId  # noqa: N815
    encounterId: FhirId | None = None  # noqa: N815

    @property
    def for_care_staff(self) -> bool:
        """Whether the user is care staff (a Practitioner or PractitionerRole), not the
        patient or their proxy (a Patient or RelatedPerson)."""
        return self.userId.partition("/")[0] in CARE_STAFF


class HookRequest(Lenient):
    hook: str = Field(min_length=1)
    hookInstance: UUID  # noqa: N815
    fhirServer: HttpUrl | None = None  # noqa: N815
    fhirAuthorization: FhirAuthorization | None = None  # noqa: N815
    context: dict[str, Any]
    # the keys of our discovery document; the spec's own example sends others ("user": "123")
    prefetch: dict[str, Any] | None = None

    @field_validator("fhirAuthorization", mode="wrap")
    @classmethod
    def _unusable_authorization_is_left_out(
        cls, value: Any, handler: ValidatorFunctionWrapHandler
    ) -> FhirAuthorization | None:
        """A fhirAuthorization we cannot use (no ``subject``, ``expires_in`` 0) costs the
        fallback FHIR request, not the card: the prefetch may hold all the rules need. It
        refused the whole call before (found by a review against the spec)."""
        try:
            authorization: FhirAuthorization | None = handler(value)
        except ValidationError:
            log.warning("an unusable fhirAuthorization is left out; the prefetch is read")
            return None
        return authorization

    @model_validator(mode="after")
    def _authorization_needs_a_server(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirAuthorization is given without fhirServer")
        return self

    @model_validator(mode="after")
    def _our_prefetch_keys_hold_resources(self) -> HookRequest:
        for key in PREFETCH_KEYS:
            value = (self.prefetch or {}).get(key)
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"prefetch.{key} is a FHIR resource (a JSON object) or null")
        return self


#: How an RFC 3339 (5.6) date-time opens: a full date, then the time of day.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _a_date_time(value: Any) -> Any:
    """CDS Hooks 2.0: outcomeTimestamp is a *string*, a date-time "as profiled in section
    5.6 of RFC3339". Pydantic reads more: a number (or a string of digits) as Unix seconds,
    or as milliseconds when it is large, and a date alone as its midnight; each was stored
    as a moment the user may never have acted at (found by a review against the spec)."""
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        raise ValueError("a date and time as RFC 3339 writes it, e.g. 2026-11-23T10:05:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    # CDS Hooks: "ISO timestamp in UTC", so one without an offset is read as UTC (it was
    # refused). Stored in UTC: 0001-01-01T00:00:00+14:00 is valid without a UTC value.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
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
    outcomeTimestamp: Annotated[  # noqa: N815
        datetime, BeforeValidator(_a_date_time), AfterValidator(_in_utc)
    ]

    @property
    def reason(self) -> Coding | None:
        """The override reason; none for an accepted card, whatever was sent with it (the
        spec does not forbid one: it was refused, and the whole post with it)."""
        if self.outcome != "overridden" or self.overrideReason is None:
            return None
        return self.overrideReason.reason


class FeedbackRequest(Lenient):
    feedback: list[Feedback] = Field(min_length=1, max_length=100)
