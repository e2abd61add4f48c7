"""Per-tenant configuration: EHR registrations, hook settings, and what an admin tunes.

A tenant's configuration is ONE typed, versioned document. Every save makes a new
version (history is kept, so a finding can name the configuration — and the wording of
the plan — that was shown); the document is also what `kindreflex config export/import`
reads and writes as YAML. Secrets inside it are ``SecretStr`` and are stored encrypted.
"""

from __future__ import annotations

import json
import re
from contextlib import suppress
from enum import StrEnum
from functools import lru_cache
from string import Formatter, ascii_letters, digits
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import jwt
from pydantic import (
    AfterValidator,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from service.config_error import ConfigValueError
from service.fhir import terminology
from service.jwk_use import ALGORITHMS, MIN_RSA_BITS, verifiable_algorithms
from service.partners import (
    PartnerDirectory,
    load_default_directory,
    parse_directory,
)
from service.protocol import (
    Consultation,
    HagueTrigger,
    LivesWith,
    PregnancyOf,
    ProgressAssessment,
    ReferralTarget,
    SafetyAction,
    SafetyAssessment,
    Step,
    SupportAction,
    TeamDecision,
)
from service.scopes import save_rights_not_granted
from service.settings import is_loopback, over_tls
from service.text import is_one_line

Language = Literal["nl", "fr", "en"]
Hook = Literal["encounter-start", "patient-view"]
ClientAuth = Literal["private_key_jwt", "client_secret_basic", "none"]

ALL_HOOKS: tuple[Hook, ...] = ("encounter-start", "patient-view")
#: The guide's CodeSystem of the reasons a nurse may give for not following the card.
OVERRIDE_REASONS = "cds-override-reason"
#: What a launch asks for by default (SMART 2 scopes): read and search the patient's
#: record, create the findings, update a child already recorded, a referral's status and
#: the concern Flag (with If-Match), create, find, read and update a referral's partner
#: organisation (not in the patient's compartment, so a user scope; the case page reads it
#: with the referral; a referral lays the directory's entry over it where the EHR grants
#: the update, an optional right: ``scopes.OPTIONAL_RIGHTS``), read the practitioners who
#: recorded a finding or raised the concern (the case page names them: ``_include``), the
#: user's identity, and a refresh token so that the outbox can still deliver after the
#: nurse's session has ended.
DEFAULT_SCOPES = (
    "launch openid fhirUser offline_access patient/*.rs patient/*.c "
    "patient/RelatedPerson.u patient/ServiceRequest.u patient/Flag.u "
    "user/Organization.crus user/Practitioner.rs"
)
#: The defaults of earlier versions (the first also what the admin screen offered), stored
#: as text in every configuration saved with them: read as today's default, which asks
#: for what a case now writes and reads (a hospital's own choice of scopes is kept).
EARLIER_DEFAULT_SCOPES = frozenset(
    {
        "launch openid fhirUser patient/*.rs patient/*.c encounter/*.rs",
        "launch openid fhirUser offline_access patient/*.rs patient/*.c "
        "patient/RelatedPerson.u patient/Flag.u",
        # until 2026-12-07: no update of a partner's Organization, an optional right since
        # (``scopes.OPTIONAL_RIGHTS``), which no launch is refused for
        "launch openid fhirUser offline_access patient/*.rs patient/*.c "
        "patient/RelatedPerson.u patient/ServiceRequest.u patient/Flag.u "
        "user/Organization.crs user/Practitioner.rs",
    }
)


#: What every launch asks for besides its rights on resources: the EHR launch itself, and
#: who the user is (an id_token with ``fhirUser``: the author of each finding, the roles).
LAUNCH_SCOPES = ("launch", "openid", "fhirUser")


def scopes_missing(scopes: str) -> list[str]:
    """What the app needs that ``scopes`` does not ask for: the launch's own scopes, then
    each write the app makes (those of ``DEFAULT_SCOPES``, as v2 scopes, but the optional
    rights: ``scopes.OPTIONAL_RIGHTS``, asked for and used where granted). A registration
    asking less launches well enough, and then no save can ever reach the record: each
    waits in the outbox for a sign-in that never brings the right (found by review)."""
    asked = scopes.split()
    launch = [scope for scope in LAUNCH_SCOPES if scope not in asked]
    return launch + save_rights_not_granted(DEFAULT_SCOPES, scopes)


#: The validation context of a configuration an administrator submits:
#: ``TenantConfiguration.model_validate(data, context=SUBMITTED)``. Checks added after
#: configurations were first stored run only then, so that a version stored before them
#: still loads (and can be corrected) instead of taking the whole hospital down.
SUBMITTED = "submitted"


def _submitted(info: ValidationInfo) -> bool:
    return info.context == SUBMITTED


def _as_sent(value: str, info: ValidationInfo, what: str, code: str) -> str:
    """A name the EHR compares exactly (a client id, an issuer): a blank one, or one with a
    space typed around it, was saved and refused each launch or call ("client_id '…' is
    not registered"), so it is refused when submitted (review)."""
    if _submitted(info) and (not value.strip() or value != value.strip()):
        written = f"{value!r} is not {what}: write it exactly, without spaces around it"
        raise ConfigValueError(written, code, value=value)
    return value


#: How long each text of the configuration may be, by what it holds. Decision: checked when
#: submitted (``SUBMITTED``), code ``too-long`` with the ``limit``: a text had no bound
#: but the request body's 4 MiB, and a name of megabytes went into every page, export and
#: audit. A version stored before still loads, as it is. The limits are generous for what
#: each one holds and no more: a name, a label, a region or a phone number 200 characters
#: (as the hospital's name, ``tenants.name``'s column); a client id, a CDS client id
#: (``sub``), a claim or role name, a code 255 (what identity providers and EHRs use); an
#: e-mail address 254 (RFC 5321's path); a URL, an origin, a code system, an issuer and
#: the scopes (sent in the authorize URL) 2048 (what browsers and servers reliably
#: carry); a client secret 1024; a partner's address or opening hours 1000 (a few lines);
#: a description, a card's or the plan's wording 4000 (a few paragraphs: the card's
#: detail, a step's help).
NAME_LENGTH = 200
IDENTIFIER_LENGTH = 255
EMAIL_LENGTH = 254
URL_LENGTH = 2048
SECRET_LENGTH = 1024
LINES_LENGTH = 1000
TEXT_LENGTH = 4000


def _at_most(limit: int) -> AfterValidator:
    """A text (or secret) refused when submitted longer than ``limit`` characters; checked
    before the field's own checks, so that none of them reads, or a refusal repeats, a huge
    value. A secret's refusal says nothing of it, not even its length."""

    def check(value: str | SecretStr, info: ValidationInfo) -> str | SecretStr:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if _submitted(info) and len(text) > limit:
            given = "" if isinstance(value, SecretStr) else f" ({len(text)} given)"
            raise ConfigValueError(f"at most {limit} characters{given}", "too-long", limit=limit)
        return value

    return AfterValidator(check)


NameText = Annotated[str, _at_most(NAME_LENGTH)]
IdText = Annotated[str, _at_most(IDENTIFIER_LENGTH)]
EmailText = Annotated[str, _at_most(EMAIL_LENGTH)]
UrlText = Annotated[str, _at_most(URL_LENGTH)]
LinesText = Annotated[str, _at_most(LINES_LENGTH)]
LongText = Annotated[str, _at_most(TEXT_LENGTH)]
Secret = Annotated[SecretStr, _at_most(SECRET_LENGTH)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: The members of a JWK that hold private or secret key material: RSA's ``d``, ``p``,
#: ``q``, ``dp``, ``dq``, ``qi`` and ``oth``, EC's (and OKP's) ``d``, a symmetric key's
#: ``k`` (RFC 7518 6.2.2, 6.3.2, 6.4.1; RFC 8037 2). An issuer's keys are public: none.
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def private_members(key: object) -> list[str]:
    """The private members a JWK holds (their names, never their values), in order."""
    return sorted(PRIVATE_JWK_MEMBERS.intersection(key)) if isinstance(key, dict) else []


def public_jwks(document: object, masked_as: str | None = None) -> object:
    """A JWK Set with each key's private members left out (what is left of an RSA or EC
    private key is its public key), or each one's value replaced by ``masked_as`` (the
    audit's changes show that a member was there); anything that is no JWK Set as it is."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return document
    keys = [
        _public_key(key, masked_as) if isinstance(key, dict) else key for key in document["keys"]
    ]
    return {**document, "keys": keys}


def _public_key(key: dict[str, Any], masked_as: str | None) -> dict[str, Any]:
    if masked_as is None:
        public = {m: v for m, v in key.items() if m not in PRIVATE_JWK_MEMBERS}
        operations = key.get("key_ops")
        if private_members(key) and isinstance(operations, list):
            # a private key's key_ops name what it does ("sign": PyJWT writes it); what is
            # left is its public key, which does the counterpart (RFC 7517 4.3), or it would
            # verify nothing (service.cds.auth reads key_ops)
            public["key_ops"] = [
                _PUBLIC_OPERATION.get(op, op) if isinstance(op, str) else op for op in operations
            ]
        return public
    return {m: masked_as if m in PRIVATE_JWK_MEMBERS else v for m, v in key.items()}


#: A private key's operations (RFC 7517 4.3) and those of the public key left of it.
_PUBLIC_OPERATION = {"sign": "verify", "decrypt": "encrypt", "unwrapKey": "wrapKey"}


def jwk_set(document: object) -> jwt.PyJWKSet:
    """The usable keys of a JWK Set (RFC 7517 section 5); ConfigValueError says what is wrong.

    As the RFC asks, a member that is not an RSA or EC key with string members is ignored,
    and so is a key PyJWT cannot build; only a set with no usable key is refused. The
    shape is checked here because PyJWT trusts it: a list, ``null`` or a key whose ``alg``
    is a list makes it raise AttributeError or TypeError. The reason never quotes a key
    (a fetched set's keys holding private material are left out before:
    ``service.cds.auth``; a configured one holding any is refused when saved and read
    without it: ``CdsIssuer``).
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigValueError(
            'a JWK Set is a JSON object whose "keys" is a list of JWKs', "jwks-not-a-set"
        )
    keys = [key for key in document["keys"] if isinstance(key, dict) and _well_formed(key)]
    try:
        return jwt.PyJWKSet(keys)
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError, KeyError):
        raise ConfigValueError(
            "the JWK Set has no usable RSA or EC public key", "jwks-no-usable-key"
        ) from None


def _well_formed(key: dict[Any, Any]) -> bool:
    """An RSA or EC key (the JWT algorithms accepted) whose identifying members are strings."""
    members = ("kid", "alg", "use")
    return key.get("kty") in ("RSA", "EC") and all(isinstance(key.get(m, ""), str) for m in members)


#: An origin as CSP ``frame-ancestors`` names it: ``scheme://host[:port]``, ASCII only (a
#: header is Latin-1: a Unicode domain made every page of the hospital a 500), no path,
#: space, ``;`` or ``,`` (which would end the directive and start another, or a list).
_FRAME_ORIGIN = re.compile(
    r"(https?)://"
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?",
    re.ASCII,
)


def is_frame_origin(origin: str) -> bool:
    """Whether ``origin`` may be put in the CSP ``frame-ancestors`` header as it is: the form
    above, https, or http on this machine only (the demo EHR), as for the other URLs
    (``service.settings.over_tls``)."""
    parts = _FRAME_ORIGIN.fullmatch(origin)
    return parts is not None and (parts.group(1) == "https" or is_loopback(parts.group(2)))


def is_web_url(url: str) -> bool:
    """Whether ``url`` is an absolute web URL: an ``https`` URL with a host, or ``http`` on
    this machine only (the demo), as for the other URLs (``service.settings.over_tls``),
    written without a space or a control character (a URL has none, RFC 3986). Not
    ``kindreflex.be`` (no scheme: relative), ``/over`` nor ``javascript:…``. False for
    text that is no URL at all (``https://[::1``), never an error: it also checks values
    stored before a save checked them."""
    if not is_one_line(url) or any(character.isspace() for character in url):
        return False
    try:
        host = urlsplit(url).hostname
    except ValueError:  # an unclosed IPv6 bracket
        return False
    return bool(host) and over_tls(url)


class CdsIssuer(Strict):
    """An EHR allowed to call our CDS services: its JWT ``iss`` and where its keys are."""

    iss: UrlText = Field(description="The `iss` claim the EHR puts in its CDS Hooks JWT.")
    jku: list[UrlText] = Field(
        default_factory=list,
        description="JWKS URLs this issuer may name in the JWT `jku` header (allow-list).",
    )
    jwks: dict[str, object] | None = Field(
        None, description="The issuer's public keys, when configured instead of fetched."
    )
    subjects: list[IdText] = Field(
        default_factory=list,
        description="The CDS client ids (JWT `sub`) this issuer may call with; empty: any.",
    )

    @field_validator("iss")
    @classmethod
    def _named(cls, value: str, info: ValidationInfo) -> str:
        return _as_sent(value, info, "the `iss` of the EHR's CDS JWTs", "cds-issuer-iss")

    @field_validator("jku")
    @classmethod
    def _fetched_over_tls(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """A JWKS URL is fetched for every new key: an https URL (http on this machine), as
        the CDS service fetches it (``service.cds.auth``), refused when saved, not at the
        first hook call."""
        for index, url in enumerate(value if _submitted(info) else ()):
            if not is_web_url(url):
                raise ConfigValueError(
                    f"{url!r} is not an https URL of a JWK Set (http only on this machine)",
                    "cds-issuer-jku",
                    (index,),
                    url=url,
                )
        return value

    @model_validator(mode="after")
    def _keys_somewhere(self, info: ValidationInfo) -> CdsIssuer:
        """An issuer with neither a JWKS URL nor keys could verify no call: every hook call of
        that EHR was refused (401) until someone read the service's log."""
        if _submitted(info) and not self.jku and self.jwks is None:
            raise ConfigValueError(
                f"issuer {self.iss!r} has neither a JWKS URL (jku) nor keys (jwks): no CDS "
                "call of it could be verified",
                "cds-issuer-no-keys",
                iss=self.iss,
            )
        return self

    @field_validator("jwks", mode="before")
    @classmethod
    def _public_keys_only(cls, value: object, info: ValidationInfo) -> object:
        """An issuer's keys verify its calls: its public keys. A key holding private
        material (the EHR's signing key, pasted by mistake) was stored, and shown in every
        export, on the screen and in every admin's audit, for good: anyone who read it
        could sign CDS calls as the EHR (found by review). Refused when submitted, the
        reason naming the members, never their values.

        Decision: a version stored before this check is read with the private members
        left out (``public_jwks``): what remains of an RSA or EC private key is its public
        key, so the issuer's calls still verify (an EC one did; an RSA private key verified
        none), and nothing read from the configuration (exports, the screen, the API)
        shows them again. The stored versions are left as they are, the audit masks the
        members (``service.admin.changes``); the key was exposed, and the EHR should
        replace it (docs/install-in-your-hospital.md)."""
        if not _submitted(info):
            return public_jwks(value)
        keys = value.get("keys") if isinstance(value, dict) else None
        for index, key in enumerate(keys if isinstance(keys, list) else ()):
            if members := private_members(key):
                raise ConfigValueError(
                    f"key {index + 1} of the JWK Set holds private key material "
                    f"({', '.join(members)}): an issuer's public keys are wanted. Send the "
                    "public key only; the private key signs the EHR's CDS calls and must "
                    "not be sent around (a private key that left the EHR should be "
                    "replaced). Nothing was saved",
                    "jwks-private-key",
                    ("keys", index),
                    n=index + 1,
                    members=", ".join(members),
                )
        return value

    @field_validator("jwks")
    @classmethod
    def _usable_keys(
        cls, value: dict[str, object] | None, info: ValidationInfo
    ) -> dict[str, object] | None:
        """Keys that cannot verify any call are refused when saved, not at the first call:
        a set that is no JWK Set or has no RSA or EC key (``jwk_set``), and one whose keys
        all verify nothing by the rule the CDS service verifies with
        (``jwk_use.verifiable_algorithms``): a key for encryption (``use``, ``key_ops``), of
        an ``alg`` not accepted or of another curve, an RSA key under 2048 bits. Such a set
        was saved, and every call of the EHR refused with 401 (found by review)."""
        if value is not None and _submitted(info):
            keys = jwk_set(value).keys
            if not any(verifiable_algorithms(key)[0] for key in keys):
                why = "; ".join(_unfit(key) for key in keys)
                raise ConfigValueError(
                    "the JWK Set has no usable RSA or EC public key: none may verify a CDS "
                    f'call\'s signature ({why}). A key verifies with "use": "sig" or '
                    'without use, "verify" in its key_ops or without key_ops, an alg of '
                    f"{', '.join(sorted(ALGORITHMS))} or without alg, RSA of at least "
                    f"{MIN_RSA_BITS} bits or EC on its algorithm's curve",
                    "jwks-no-usable-key",
                )
        return value


def _unfit(key: jwt.PyJWK) -> str:
    """Why ``key`` verifies nothing, naming its kid, never its values."""
    _, member = verifiable_algorithms(key)
    kid = key.key_id
    shown = kid if kid is None or len(kid) <= 80 else kid[:79] + "…"
    what = f"key {shown!r}" if shown is not None else "a key without kid"
    if member is None:
        return f"{what}: its type, size or curve fits no algorithm accepted"
    return f"{what}: its {member}"


class RoleMapping(Strict):
    """How the EHR's id_token tells a nurse, a social worker and an admin apart."""

    claim: IdText = Field("roles", description="id_token claim holding the user's roles.")
    social_worker: list[IdText] = Field(default_factory=lambda: ["social-worker"])
    admin: list[IdText] = Field(default_factory=lambda: ["admin"])


@lru_cache(maxsize=256)  # on every hook call (its presentation): a few bases per deployment
def base_url_key(url: str) -> str:
    """A FHIR base as a key for comparison: the spellings of one base are one key. The
    scheme and the host are compared without case, without a trailing dot and without
    the scheme's default port; a trailing slash is no part of it; the path keeps its case
    (RFC 3986 6.2.2, 6.2.3). An EHR sent ``fhirServer`` as registered, capitals in the host,
    and after pydantic had lowercased it the CDS service sent no request; another
    hospital's client passed the one-client-one-hospital check written another way
    (both found by review). Both sides go through the parser ``fhirServer`` goes through
    (pydantic's): it also writes an IPv6 address short, a non-ASCII host in Punycode,
    removes dot segments (found by review).

    The path is compared percent-encoding normalised (RFC 3986 6.2.2.1, 6.2.2.2): an
    unreserved character written encoded is the character (``/%66hir`` is ``/fhir``), and
    what stays encoded is compared with its hex in capitals (``%c3%a9`` is ``%C3%A9``).
    User-info (``https://name@host/fhir``) is no part of the key: it names no other server,
    the same ``.well-known/smart-configuration`` answers. Both passed the check written so,
    and AZ Gent's admin registered AZ Brugge's EHR client (found by review).

    Decision: a FHIR base URL with user-info is refused when saved (``EhrRegistration``,
    code ``fhir-base-url-userinfo``): it is the SMART ``iss`` and where the EHR's tokens
    go, and a name or password in it would be shown and logged wherever the base is. One
    stored before that check still loads, and is keyed here without it; the CDS service
    sends no token to a ``fhirServer`` written with user-info (``service.cds.router``)."""
    with suppress(ValueError):  # not a URL pydantic reads: compared as it is
        url = str(AnyUrl(url.strip()))
    parts = urlsplit(url.rstrip("/"))
    try:
        port = parts.port
    except ValueError:  # not a URL to send anything to: compared as written
        return url.rstrip("/")
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    host = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path, query, fragment = (
        _percent_normalised(part) for part in (parts.path.rstrip("/"), parts.query, parts.fragment)
    )
    return urlunsplit((scheme, host, path, query, fragment))


def _percent_normalised(text: str) -> str:
    """``text`` with each percent-encoded unreserved character decoded and the hex of the
    others in capitals (RFC 3986 6.2.2.1, 6.2.2.2). A reserved character stays encoded:
    ``%2F`` is no path separator."""
    return _PERCENT_ENCODED.sub(_one_percent_normalised, text)


def _one_percent_normalised(encoded: re.Match[str]) -> str:
    character = chr(int(encoded.group(1), 16))
    return character if character in _UNRESERVED else encoded.group(0).upper()


def _without_userinfo(url: str) -> str:
    """``url`` with what comes before the host's ``@`` (a user name, a password) left out."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


_PERCENT_ENCODED = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(ascii_letters + digits + "-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class EhrRegistration(Strict):
    """One EHR this tenant's users launch us from."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: NameText
    fhir_base_url: UrlText = Field(description="The EHR's FHIR base: the SMART `iss`.")
    client_id: IdText
    client_auth: ClientAuth = "private_key_jwt"
    client_secret: Secret | None = None
    scopes: UrlText = DEFAULT_SCOPES
    cds_issuers: list[CdsIssuer] = Field(default_factory=list)
    frame_origins: list[UrlText] = Field(
        default_factory=list, description="Origins allowed to frame the app (CSP frame-ancestors)."
    )
    default_language: Language = "nl"
    roles: RoleMapping = Field(default_factory=RoleMapping)
    own_redirect_uri: bool = Field(
        default=False,
        description="The EHR answers at this registration's own redirect URI, "
        "`{KINDREFLEX_PUBLIC_URL}/callback/{hospital}/{id}`, registered at the EHR instead of "
        "`/callback`: an authorization server mix-up is then refused also where the EHR does "
        "not name itself in its answers (RFC 9207).",
    )

    @field_validator("scopes")
    @classmethod
    def _asked(cls, value: str, info: ValidationInfo) -> str:
        if value in EARLIER_DEFAULT_SCOPES:
            return DEFAULT_SCOPES
        missing = scopes_missing(value) if _submitted(info) else []
        if missing:
            raise ConfigValueError(
                f"the scopes do not ask for {' '.join(missing)}: the app would launch, and "
                "no save could reach the record (scopes are separated by spaces)",
                "scopes-missing",
                missing=" ".join(missing),
            )
        return value

    @field_validator("fhir_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str, info: ValidationInfo) -> str:
        """Without its trailing slash. Bearer tokens go to it (the SMART session's, the CDS
        call's ``fhirAuthorization``), and RFC 6750 sends them only over TLS: an http URL off
        this machine is refused when saved. One stored before this check loads; the CDS
        service then sends it no token (``service.cds.router``), the launch refuses it.

        A user name or password before the host (``https://name:pass@…``) is refused when
        saved, first, and the refusal shows the URL without it: the base is the SMART
        ``iss``, shown and logged wherever it is, and the EHR's client credentials are the
        client id and secret (the decision, in ``base_url_key``)."""
        if _submitted(info) and "@" in urlsplit(value).netloc:
            bare = _without_userinfo(value).rstrip("/")
            raise ConfigValueError(
                f"{bare!r} is written with a user name or password before its host (…@): a "
                "FHIR base URL has none, it is shown and logged wherever the base is; the "
                "EHR's client credentials are the client id and secret",
                "fhir-base-url-userinfo",
                url=bare,
            )
        if _submitted(info) and not over_tls(value):
            raise ConfigValueError(
                f"{value!r} is not an https URL (http only on this machine): the EHR's "
                "tokens are sent to it",
                "fhir-base-url",
                url=value,
            )
        parts = urlsplit(value)
        if _submitted(info) and (not parts.hostname or parts.query or parts.fragment):
            # a base without a host (https:///fhir) or with a query is the `iss` of no launch
            raise ConfigValueError(
                f"{value!r} is not a FHIR base URL: a host, a path at most, no query",
                "fhir-base-url-form",
                url=value,
            )
        return value.rstrip("/")

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str, info: ValidationInfo) -> str:
        return _as_sent(value, info, "the client id the EHR gave", "client-id")

    @field_validator("cds_issuers")
    @classmethod
    def _issuers_once(cls, value: list[CdsIssuer], info: ValidationInfo) -> list[CdsIssuer]:
        """An issuer listed twice: only the first one's keys ever verified its calls."""
        seen = [issuer.iss for issuer in value]
        twice = sorted({iss for iss in seen if seen.count(iss) > 1})
        if _submitted(info) and twice:
            raise ConfigValueError(
                f"issuer {twice[0]!r} is listed twice: list its JWKS URLs on one line",
                "cds-issuer-twice",
                iss=twice[0],
            )
        return value

    @field_validator("frame_origins")
    @classmethod
    def _origins_only(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """Each one goes into a header of every page: refused when saved, not a broken or
        injected header. One stored before this check loads (``SUBMITTED``); the page
        headers leave it out (``smart_app.security``)."""
        for index, origin in enumerate(value if _submitted(info) else ()):
            if not is_frame_origin(origin):
                raise ConfigValueError(
                    f"{origin!r} is not an origin such as https://epd.example.be:8443 (https, "
                    "or http on this machine only; no path, space, ';' or ','); a domain with "
                    "other than ASCII letters is written in Punycode (xn--…)",
                    "frame-origin",
                    (index,),
                    origin=origin,
                )
        return value


class LocalTriggerCode(Strict):
    """A code of the hospital's own coding that counts as a Hague trigger (added to the guide's)."""

    trigger: HagueTrigger
    system: UrlText = Field(min_length=1, description="The code system URI as the EHR sends it.")
    code: IdText = Field(min_length=1)


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
    override_reasons: list[IdText] = Field(
        default_factory=lambda: [
            "patient-not-responsive",
            "already-done",
            "no-children",
            "not-now",
        ],
        description="Override reasons the card offers, in this order (codes of the "
        "guide's CDS override-reason CodeSystem).",
    )
    card_wording: dict[Language, dict[CardText, LongText]] = Field(
        default_factory=dict,
        description="The facility's own card wording per language; a summary may use "
        "`{reasons}` (warning) and stays within 140 characters.",
    )
    source_url: UrlText = Field(
        "https://kindreflex.be/",
        description="Where the card's source label links to: an absolute https URL (http "
        "only on this machine); empty: the card's source has no link.",
    )

    @field_validator("source_url")
    @classmethod
    def _absolute_web_url(cls, value: str, info: ValidationInfo) -> str:
        """Every card's ``source.url``, which CDS Hooks 2.0 has the EHR load in the user's
        browser when the source label is clicked ("an optional absolute URL to load (via
        GET, in a browser context)"). Any text was saved: ``kindreflex.be`` or ``/over``
        (relative: a dead link, or one to a page of the EHR), ``javascript:…`` (a script
        run in the EHR's page). Refused when saved (``SUBMITTED``); one stored before this
        check loads, and the cards leave it out (``service.cds.cards``)."""
        if _submitted(info) and value and not is_web_url(value):
            raise ConfigValueError(
                f"{value!r} is not an absolute https URL (http only on this machine), such "
                "as https://kindreflex.be/: the EHR opens it in the browser from every card; "
                "leave it empty for no link",
                "source-url",
                url=value,
            )
        return value

    @field_validator("override_reasons")
    @classmethod
    def _known_override_reasons(cls, value: list[str]) -> list[str]:
        known = terminology.code_system(OVERRIDE_REASONS).codes
        unknown = [code for code in value if code not in known]
        if unknown:
            raise ConfigValueError(
                f"unknown override reason(s) {unknown}; known: {sorted(known)}",
                "unknown-override-reasons",
                reasons=", ".join(unknown),
                known=", ".join(sorted(known)),
            )
        return value

    @field_validator("card_wording")
    @classmethod
    def _summaries_fit_a_card(
        cls, value: dict[Language, dict[CardText, str]]
    ) -> dict[Language, dict[CardText, str]]:
        for language, texts in value.items():
            for name, text in texts.items():
                # an info card has no reasons to name
                allowed = frozenset({"reasons"}) if name.startswith("warning") else frozenset()
                try:
                    filled = _filled(text, allowed)
                except ConfigValueError as error:
                    what = "only the placeholder {reasons}" if allowed else "no placeholder"
                    raise ConfigValueError(
                        f"card_wording.{language}.{name}: {what} may be used ({error})",
                        error.code,
                        (language, name),
                        **error.params,
                    ) from error
                if name.endswith("summary") and len(filled) > 100:
                    raise ConfigValueError(
                        f"card_wording.{language}.{name}: at most 100 characters, so that the "
                        "reasons still fit the 140 characters of a card summary",
                        "card-summary-too-long",
                        (language, name),
                        limit=100,
                    )
        return value


def _filled(text: str, allowed: frozenset[str]) -> str:
    """The wording with its ``allowed`` placeholders empty; ConfigValueError for any other
    field, and for a text Python cannot format (a lone ``{``, ``{reasons:d}``).

    The fields are checked before formatting: ``{reasons.x}`` or ``{reasons[0]}`` would
    fail only for some values of ``reasons`` (or, as ``{reasons.upper}``, put a Python
    object's description on the card), and so would a field nested in the format spec.
    """
    try:
        for _literal, field, spec, _conversion in Formatter().parse(text):
            if field is not None and field not in allowed:
                placeholder = f"{{{field}}}"
                raise ConfigValueError(
                    f"unknown placeholder {placeholder}",
                    "card-placeholder" if allowed else "card-no-placeholder",
                    placeholder=placeholder,
                    allowed=", ".join(f"{{{name}}}" for name in sorted(allowed)),
                )
            if spec and "{" in spec:
                raise ConfigValueError(
                    "no placeholder may be nested in the format of {reasons}",
                    "card-nested-placeholder",
                    placeholder=f"{{{field}}}",
                )
        return text.format(**dict.fromkeys(allowed, ""))
    except ConfigValueError:
        raise
    except ValueError as error:  # Python's own words, shown as data
        raise ConfigValueError(str(error), "card-format", detail=error) from None


# --- Partner directory and the facility's own plan (admin journey, issue 6) -------------


@lru_cache(maxsize=32)
def _parsed_directory(document: str) -> PartnerDirectory:
    """The directory; a broken rule raises PartnerDirectoryError, a ConfigValueError."""
    return parse_directory(json.loads(document), source="partners")


class PartnerPhone(Strict):
    number: NameText = Field(description="Belgian national form, e.g. `09 216 73 30`.")
    label: NameText | None = None


class PartnerEntry(Strict):
    """One organisation of the directory; the fields of ``service/partners.py``'s format."""

    id: str = Field(description="Lower-case letters, digits and hyphens; spaces around it go.")
    type: ReferralTarget
    name: NameText
    description: LongText | None = None
    phones: list[PartnerPhone] = Field(default_factory=list)
    website: UrlText | None = None
    email: EmailText | None = None
    address: LinesText | None = None
    opening_hours: LinesText | None = None
    region: NameText | None = None
    cbe: str | None = Field(
        None, pattern=r"^[01][0-9]{9}$", description="KBO/BCE enterprise number, 10 digits."
    )

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_the_directory_reads_it(cls, value: object) -> object:
        """The id without spaces around it, as the directory reads it (``partners._text``),
        whatever brought it (the JSON API, a FHIR Bundle, quoted YAML, a version stored
        before): step 6 names its partner by the directory's id, and an entry kept as
        given (``"vk-oost-vlaanderen "``) matched none of them, a 500. Normalised, not
        refused: the directory already strips every text, and a stored version must load."""
        return value.strip() if isinstance(value, str) else value


class PartnerSettings(Strict):
    """The tenant's partner directory; ``service.partners`` holds the validation rules."""

    region: NameText
    entries: list[PartnerEntry]

    @model_validator(mode="after")
    def _valid_directory(self) -> PartnerSettings:
        self.directory()  # raises with the entry number and the field at fault
        return self

    def directory(self) -> PartnerDirectory:
        """The directory as the screens use it, parsed once per distinct content (every
        nurse page shows its numbers; parsing costs about ten times the dump)."""
        return _parsed_directory(
            self.model_dump_json(exclude_none=True, exclude={"entries": {"__all__": {"cbe"}}})
        )

    def entry(self, partner_id: str) -> PartnerEntry:
        """The entry of the directory's partner ``partner_id`` (``PartnerDirectory.get``:
        the same id, both read without spaces around it); KeyError: none."""
        found = next((e for e in self.entries if e.id == partner_id), None)
        if found is None:
            raise KeyError(f"no partner '{partner_id}' in the directory")
        return found

    @classmethod
    def from_directory(cls, directory: PartnerDirectory) -> PartnerSettings:
        entries = [
            PartnerEntry(
                id=p.id,
                type=p.type,
                name=p.name,
                description=p.description,
                phones=[PartnerPhone(number=ph.number, label=ph.label) for ph in p.phones],
                website=p.website,
                email=p.email,
                address=p.address,
                opening_hours=p.opening_hours,
                region=None if p.region == directory.region else p.region,
            )
            for p in directory.partners
        ]
        return cls(region=directory.region, entries=entries)


@lru_cache(maxsize=1)
def default_partners() -> PartnerSettings:
    """The directory a new hospital starts with: Oost-Vlaanderen (seed 002); immutable, shared."""
    return PartnerSettings.from_directory(load_default_directory())


#: The choices of the six steps whose wording a facility may adapt, by choice-set name.
PLAN_CHOICE_SETS: dict[str, type[StrEnum]] = {
    "lives-with": LivesWith,
    "pregnancy-of": PregnancyOf,
    "safety-assessment": SafetyAssessment,
    "support-action": SupportAction,
    "consultation": Consultation,
    "team-decision": TeamDecision,
    "safety-progress": ProgressAssessment,
    "safety-action": SafetyAction,
}


class Wording(Strict):
    """A text in each language; an absent language shows the generic wording."""

    nl: LongText | None = None
    fr: LongText | None = None
    en: LongText | None = None


class PlanText(Strict):
    """The facility's wording of one step or one choice."""

    title: Wording = Field(default_factory=Wording)
    help: Wording = Field(default_factory=Wording)


class PlanSettings(Strict):
    """The facility's own plan: wording and help text only (steps and branch rules are fixed).

    ``revision`` is the plan version in force: the admin use cases raise it whenever the
    wording changes, and a finding records the revision that was shown.
    """

    revision: int = Field(1, ge=1)
    steps: dict[Step, PlanText] = Field(default_factory=dict)
    choices: dict[str, PlanText] = Field(
        default_factory=dict,
        description="Keyed `<choice set>/<code>`, e.g. `safety-assessment/niet-pluis`.",
    )

    @field_validator("choices")
    @classmethod
    def _known_choices(cls, value: dict[str, PlanText]) -> dict[str, PlanText]:
        for key in value:
            choice_set, _, code = key.partition("/")
            codes = PLAN_CHOICE_SETS.get(choice_set)
            if codes is None or code not in {c.value for c in codes}:
                raise ConfigValueError(
                    f"'{key}' is not a choice of the plan (<choice set>/<code>)",
                    "unknown-plan-choice",
                    key=key,
                )
        return value

    def text(
        self, key: Step | str, part: Literal["title", "help"], language: Language
    ) -> str | None:
        """The facility's text of a step or choice in ``language``, or None: use the generic one."""
        item = self.steps.get(key) if isinstance(key, Step) else self.choices.get(key)
        return None if item is None else getattr(getattr(item, part), language)


#: The longest hospital name: the ``tenants.name`` column's length.
HOSPITAL_NAME_LENGTH = 200


class TenantConfiguration(Strict):
    """Everything an EHR administrator configures for one hospital."""

    name: str
    registrations: list[EhrRegistration] = Field(default_factory=list)
    hooks: HookSettings = Field(default_factory=HookSettings)
    partners: PartnerSettings = Field(default_factory=default_partners)
    plan: PlanSettings = Field(default_factory=PlanSettings)

    @field_validator("name")
    @classmethod
    def _name_fits_its_column(cls, name: str, info: ValidationInfo) -> str:
        """The name the pages' titles and the audit show, as ``tenants.name`` holds it: a
        longer one or a NUL was a 500 on PostgreSQL (found by review). Checked when saved:
        one stored before still loads."""
        if not _submitted(info):
            return name
        if not 1 <= len(name) <= HOSPITAL_NAME_LENGTH:
            raise ConfigValueError(
                f"the hospital's name must be 1 to {HOSPITAL_NAME_LENGTH} characters long",
                "too-long" if name else "too-short",
                limit=HOSPITAL_NAME_LENGTH if name else 1,
            )
        if not is_one_line(name):
            raise ConfigValueError(
                "the hospital's name must be one line of text, without control characters",
                "not-one-line",
            )
        return name

    @model_validator(mode="after")
    def _one_registration_per_ehr(self, info: ValidationInfo) -> TenantConfiguration:
        """A launch finds its registration by the EHR's FHIR base (``registration_for_iss``):
        a second registration of the same base would never be used, its client, roles and
        frames silently ignored. Checked when saved: one stored before still loads."""
        if not _submitted(info):
            return self
        ids: set[str] = set()
        bases: set[str] = set()
        for index, registration in enumerate(self.registrations):
            at: tuple[str | int, ...] = ("registrations", index)
            if registration.id in ids:
                raise ConfigValueError(
                    f"the registration id {registration.id} is used twice",
                    "id-twice",
                    (*at, "id"),
                    id=registration.id,
                )
            if base_url_key(registration.fhir_base_url) in bases:
                raise ConfigValueError(
                    f"another registration has the FHIR base {registration.fhir_base_url}: "
                    "a launch from it always takes the first",
                    "fhir-base-twice",
                    (*at, "fhir_base_url"),
                    url=registration.fhir_base_url,
                )
            ids.add(registration.id)
            bases.add(base_url_key(registration.fhir_base_url))
        return self

    def registration_by_id(self, registration_id: str) -> EhrRegistration | None:
        """The registration with the id ``registration_id`` (the first, as a launch takes
        it, should a configuration stored before ids were checked have it twice)."""
        return next((r for r in self.registrations if r.id == registration_id), None)

    def registration_for_iss(self, iss: str) -> EhrRegistration | None:
        """The registration whose FHIR base a launch's ``iss`` names, however written
        (``base_url_key``): the capitals of an EHR's scheme or host made a launch "an EHR
        not registered" that the CDS service and the admin checks took for the same."""
        wanted = base_url_key(iss)
        return next(
            (r for r in self.registrations if base_url_key(r.fhir_base_url) == wanted), None
        )
