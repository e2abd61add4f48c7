"""Per-tenant configuration: EHR registrations, hook settings, and what an admin tunes.

A tenant's configuration is ONE typed, versioned document. Every save makes a new
version (history is kept, so a finding can name the configuration — and the wording of
the plan — that was shown); the document is also what `kindreflex config export/import`
reads and writes as YAML. Secrets inside it are ``SecretStr`` and are stored encrypted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from service.i18n import catalogue
from service.protocol import HagueTrigger

Language = Literal["nl", "fr", "en"]
Hook = Literal["encounter-start", "patient-view"]
ClientAuth = Literal["private_key_jwt", "client_secret_basic", "none"]

ALL_HOOKS: tuple[Hook, ...] = ("encounter-start", "patient-view")
DEFAULT_SCOPES = "launch openid fhirUser patient/*.rs patient/*.c encounter/*.rs"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CdsIssuer(Strict):
    """An EHR allowed to call our CDS services: its JWT ``iss`` and where its keys are."""

    iss: str = Field(description="The `iss` claim the EHR puts in its CDS Hooks JWT.")
    jku: list[str] = Field(
        default_factory=list,
        description="JWKS URLs this issuer may name in the JWT `jku` header (allow-list).",
    )
    jwks: dict[str, object] | None = Field(
        None, description="The issuer's public keys, when configured instead of fetched."
    )


class RoleMapping(Strict):
    """How the EHR's id_token tells a nurse, a social worker and an admin apart."""

    claim: str = Field("roles", description="id_token claim holding the user's roles.")
    social_worker: list[str] = Field(default_factory=lambda: ["social-worker"])
    admin: list[str] = Field(default_factory=lambda: ["admin"])


class EhrRegistration(Strict):
    """One EHR this tenant's users launch us from."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: str
    fhir_base_url: str = Field(description="The EHR's FHIR base: the SMART `iss`.")
    client_id: str
    client_auth: ClientAuth = "private_key_jwt"
    client_secret: SecretStr | None = None
    scopes: str = DEFAULT_SCOPES
    cds_issuers: list[CdsIssuer] = Field(default_factory=list)
    frame_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to frame the app (CSP frame-ancestors)."
    )
    default_language: Language = "nl"
    roles: RoleMapping = Field(default_factory=RoleMapping)

    @field_validator("fhir_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


class LocalTriggerCode(Strict):
    """A code of the hospital's own coding that counts as a Hague trigger (added to the guide's)."""

    trigger: HagueTrigger
    system: str = Field(min_length=1, description="The code system URI as the EHR sends it.")
    code: str = Field(min_length=1)


CardText = Literal["info_summary", "info_detail", "warning_summary", "warning_detail"]


class HookSettings(Strict):
    """What the CDS services do for this tenant."""

    enabled: list[Hook] = Field(default_factory=lambda: list(ALL_HOOKS))
    adult_age: int = Field(18, ge=12, le=25)
    once_per_encounter: bool = Field(
        True, description="No card once step 1 is recorded for the encounter."
    )
    local_trigger_codes: list[LocalTriggerCode] = Field(
        default_factory=list,
        description="Codes of the hospital's own codings that count as Hague triggers, "
        "on top of the guide's trigger ValueSets.",
    )
    override_reasons: list[str] = Field(
        default_factory=lambda: [
            "patient-not-responsive",
            "already-done",
            "no-children",
            "not-now",
        ],
        description="Override reasons the card offers, in this order (codes of the "
        "guide's CDS override-reason CodeSystem).",
    )
    card_wording: dict[Language, dict[CardText, str]] = Field(
        default_factory=dict,
        description="The facility's own card wording per language; a summary may use "
        "`{reasons}` (warning) and stays within 140 characters.",
    )
    source_url: str = Field(
        "https://kindreflex.be/", description="Where the card's source label links to."
    )

    @field_validator("override_reasons")
    @classmethod
    def _known_override_reasons(cls, value: list[str]) -> list[str]:
        prefix = "cds.override."
        known = {m.removeprefix(prefix) for m in catalogue("nl").messages if m.startswith(prefix)}
        unknown = [code for code in value if code not in known]
        if unknown:
            raise ValueError(f"unknown override reason(s) {unknown}; known: {sorted(known)}")
        return value

    @field_validator("card_wording")
    @classmethod
    def _summaries_fit_a_card(
        cls, value: dict[Language, dict[CardText, str]]
    ) -> dict[Language, dict[CardText, str]]:
        for language, texts in value.items():
            for name, text in texts.items():
                try:
                    filled = text.format(reasons="")
                except (KeyError, IndexError, ValueError) as error:
                    raise ValueError(
                        f"card_wording.{language}.{name}: only the placeholder {{reasons}} "
                        f"may be used ({error})"
                    ) from error
                if name.endswith("summary") and len(filled) > 100:
                    raise ValueError(
                        f"card_wording.{language}.{name}: at most 100 characters, so that the "
                        "reasons still fit the 140 characters of a card summary"
                    )
        return value


class TenantConfiguration(Strict):
    """Everything an EHR administrator configures for one hospital."""

    name: str
    registrations: list[EhrRegistration] = Field(default_factory=list)
    hooks: HookSettings = Field(default_factory=HookSettings)

    def registration_for_iss(self, iss: str) -> EhrRegistration | None:
        wanted = iss.rstrip("/")
        return next((r for r in self.registrations if r.fhir_base_url == wanted), None)
