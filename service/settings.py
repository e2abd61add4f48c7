"""All configuration of the service, read once from ``KINDREFLEX_*`` environment variables.

An optional dotenv-style file named by ``KINDREFLEX_SETTINGS_FILE`` is read as well;
environment variables win over the file. Secrets are ``SecretStr`` so that they never
appear in a log line or a ``repr``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from difflib import get_close_matches
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import psycopg
from dotenv import dotenv_values
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from service.db.base import MAX_OVERFLOW, POOL_SIZE

Environment = Literal["production", "demo", "test"]
#: A hospital's slug: the ``/t/{slug}`` of its URLs.
TENANT_SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"
SLUG_RULE = "a hospital's slug is lowercase letters, digits and '-' (its URLs are /t/<slug>)"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


#: In production: a key a person chose (a word, a short phrase) can be guessed, and with it
#: every EHR token and private key the database holds can be read.
MIN_SECRET_KEY_LENGTH = 32


#: Minutes without a request that end a signed-in session (``session_idle_minutes``).
#: An hour: at the emergency department's shared workstations a session must not stay
#: open for the next person for the rest of the 8-hour shift (ISO 27799, NEN 7510 ask for
#: an inactivity limit), while a nurse called away from a half-filled triage, or a social
#: worker reading a chart before a call, comes back to her session. The EHR's own screen
#: lock is usually shorter; a session that ended costs a launch from the EHR, and what a
#: form carried is shown back.
DEFAULT_SESSION_IDLE_MINUTES = 60
#: Below 5 minutes a nurse reading the chart beside the form loses her session; above 8
#: hours (every session's absolute limit) the setting would change nothing.
MIN_SESSION_IDLE_MINUTES, MAX_SESSION_IDLE_MINUTES = 5, 480


#: The database driver the service ships, by backend (``postgresql://`` names it too).
_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg"}


class Settings(BaseSettings):
    """The service's settings. Every field is ``KINDREFLEX_<FIELD NAME>`` in the environment."""

    # hide_input_in_errors: a value refused is not repeated in the error (a proxy's or a
    # database's password in its URL); the message says what is wrong with it
    model_config = SettingsConfigDict(
        env_prefix="KINDREFLEX_", extra="ignore", hide_input_in_errors=True
    )

    environment: Environment = Field(
        "production",
        description="`production` refuses unsafe switches; `demo` and `test` allow them.",
    )
    database_url: str = Field(
        "sqlite:///kindreflex.db",
        description="SQLAlchemy URL. The embedded default is a SQLite file in the working "
        "directory; `postgresql+psycopg://…` selects PostgreSQL (production, several instances).",
    )
    database_pool_size: int = Field(
        POOL_SIZE,
        ge=1,
        le=1000,
        description="PostgreSQL: the connections each instance (each worker process) keeps "
        "open for the screens, the APIs and the outbox (1..1000; 0 would be SQLAlchemy's "
        "'no limit'). SQLite ignores it.",
    )
    database_max_overflow: int = Field(
        MAX_OVERFLOW,
        ge=0,
        le=1000,
        description="PostgreSQL: the connections each instance opens beyond "
        "database_pool_size under load, closed when done (0..1000; -1 would be SQLAlchemy's "
        "'no limit'). A request that finds none free waits up to 30 s, then is told to try again. "
        "SQLite ignores it.",
    )
    public_url: str = Field(
        "http://localhost:8000",
        description="The URL under which EHRs reach this service: the `aud` of CDS Hooks JWTs, "
        "the base of SMART launch links and of the JWKS.",
    )
    host: str = Field("127.0.0.1", description="Interface `kindreflex serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `kindreflex serve` listens on.")
    default_tenant: str = Field(
        "default",
        description="Tenant (hospital) that un-prefixed paths such as `/cds-services` belong to.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Seals secrets at rest: EHR client secrets, session tokens, our private "
        "signing keys. Without it, registrations can only use private_key_jwt.",
    )
    log_level: str = Field("INFO", description="Python logging level.")
    cds_jwt_required: bool = Field(
        True,
        description="Verify the EHR's CDS Hooks JWT. Only `demo`/`test` may turn this off, "
        "and the service then warns at every start.",
    )
    guide_dir: Path | None = Field(
        None,
        description="Directory of the built FHIR guide's JSON resources; default: the "
        "repository's fhir_profiles/fsh-generated/resources (the container image sets it).",
    )
    fhir_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Timeout of one request to a hospital FHIR server, all of it: "
        "connecting, sending and the whole answer (at most 300 s). A screen's reads "
        "together end within three times it. Also the outbox's settle window: a "
        "transaction the server left unanswered (it may apply it later) is retried no "
        "sooner than this after the attempt ended.",
    )
    outbox_interval_seconds: float = Field(
        2.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="How often the outbox retries undelivered FHIR writes (at most "
        "hourly): the worker's cycle and the first step of each write's backoff (a write "
        "left unanswered waits at least fhir_timeout_seconds).",
    )

    session_idle_minutes: int = Field(
        DEFAULT_SESSION_IDLE_MINUTES,
        ge=MIN_SESSION_IDLE_MINUTES,
        le=MAX_SESSION_IDLE_MINUTES,
        description="Minutes without a request after which a signed-in session ends: a "
        "nurse's or social worker's app session (the EHR opens the app again) and an "
        "administrator's (sign in again), as at their 8 hours (5..480). Saves waiting in "
        "the outbox are still delivered with the session's tokens.",
    )

    outbound_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Where the service may connect (a hospital's FHIR server and SMART "
        "endpoints, CDS issuers' JWK Sets): host names, `*.example.org` (any name under it), "
        "IP addresses and CIDR ranges, separated by commas. An IP address matches a URL "
        "written with it, not a name resolving to it; a range matches both (a name when "
        "every address it resolves to is in the ranges). Empty (the default): any address "
        "but those never allowed (link-local and the other cloud metadata addresses, "
        "unspecified, multicast, broadcast), so that the demo and hospitals' EHRs on loopback "
        "or private addresses work out of the box. Set by the platform operator, not by a "
        "hospital: an administrator's URL outside it is refused when saved and when "
        "connecting (`service.outbound`).",
    )
    outbound_proxy: SecretStr | None = Field(
        None,
        description="An HTTP proxy every outgoing connection goes through, "
        "`http://proxy.hospital.example:3128` or `https://…`, with credentials if it needs "
        "them (`http://user:password@…`, percent-encoded; never logged). The policy then "
        "checks each target's host as written before asking the proxy; the proxy resolves "
        "names. Unset (the default): connections are direct, and HTTP(S)_PROXY and "
        "ALL_PROXY are ignored.",
    )
    outbound_no_proxy: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts connected to directly though `outbound_proxy` is set (a "
        "hospital's internal FHIR server): host names, `*.example.org`, IP addresses and "
        "CIDR ranges as `outbound_allow` takes them, matched against the URL's host as "
        "written, separated by commas. Loopback is always direct. Checked by the policy "
        "as any direct connection.",
    )

    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry traces, metrics and logs of every request, "
        "for a hospital that runs an OpenTelemetry SDK and collector. Off by default: the "
        "service's figures are at /metrics (Prometheus) and its logs are JSON lines, and off, "
        "FastAPI does not look up the OpenTelemetry providers on every request.",
    )

    @field_validator("default_tenant")
    @classmethod
    def _a_slug(cls, value: str) -> str:
        # said as `admin bootstrap --tenant` says it: a regular expression told an
        # administrator nothing (review)
        if not re.fullmatch(TENANT_SLUG, value):
            raise ValueError(SLUG_RULE)
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _not_a_service_link(cls, value: object) -> object:
        # Kubernetes names its variables for a Service "kindreflex" KINDREFLEX_PORT=tcp://…
        # in every pod of the namespace (unless enableServiceLinks is false): "not a valid
        # integer" told a platform engineer nothing (found by review)
        if isinstance(value, str) and value.startswith("tcp://"):
            raise ValueError(
                "this is Kubernetes' variable for a Service named kindreflex, not a port: "
                "set enableServiceLinks: false in the pod spec (deploy/kubernetes does)"
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("outbound_allow", "outbound_no_proxy", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [entry.strip() for entry in value.split(",") if entry.strip()]
        return value

    @field_validator("outbound_allow", "outbound_no_proxy")
    @classmethod
    def _allow_list_entries(cls, value: list[str]) -> list[str]:
        from service.outbound import OutboundPolicy  # imported when set: it imports httpx

        if value:
            OutboundPolicy.parse(value)
        return value

    @field_validator("outbound_proxy", mode="before")
    @classmethod
    def _empty_is_no_proxy(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("outbound_proxy")
    @classmethod
    def _proxy_url(cls, value: SecretStr | None) -> SecretStr | None:
        from service.outbound import proxy_url_problem

        if value is not None:
            problem = proxy_url_problem(value.get_secret_value())
            if problem is not None:
                raise ValueError(problem)  # never the URL: it may hold credentials
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"one of {', '.join(_LOG_LEVELS)}")
        return level

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL (e.g. postgresql+psycopg://…)") from None
        backend = url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"{backend} is not supported: SQLite or PostgreSQL")
        # the drivers the service ships; another one named crashed the first command with
        # a traceback (ModuleNotFoundError), past this check (found by review)
        driver, shipped = url.get_driver_name(), _DRIVERS[backend]
        if driver != shipped:
            raise ValueError(f"the driver {driver} is not supported: {backend}+{shipped}://…")
        # An "@" left unescaped in the password moved the rest of it into the host or the
        # database name, which the errors then showed ("failed to resolve host 'ss'"). (A
        # SQLite file's path may hold one.)
        if backend == "postgresql" and "@" in f"{url.host}{url.database}":
            raise ValueError(
                "the user or password holds an '@' (or a '/'): URL-encode them (%40, %2F)"
            )
        if backend == "postgresql":
            _check_libpq_parameters(url)
        return value

    @field_validator("secret_key")
    @classmethod
    def _not_empty_nor_padded(cls, value: SecretStr | None) -> SecretStr | None:
        # `--from-literal=KINDREFLEX_SECRET_KEY="$(openssl rand -base64 32)"` on a machine
        # without openssl stores an empty key: everything was then sealed under a known one
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("is empty: give it a random value (`openssl rand -base64 32`)")
        # The same key with or without a file's newline (a Secret made --from-file, one made
        # --from-literal, the settings file) is one key: taken as given, a key restored the
        # other way opened nothing it had sealed (found by an operations review)
        return SecretStr(key)

    @model_validator(mode="after")
    def _no_unsafe_switch_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        if not self.cds_jwt_required:
            raise ValueError(
                "KINDREFLEX_CDS_JWT_REQUIRED=false is only allowed with "
                "KINDREFLEX_ENVIRONMENT=demo or test: in production every CDS call must be signed"
            )
        key = self.secret_key.get_secret_value() if self.secret_key else None
        if key is not None and len(key) < MIN_SECRET_KEY_LENGTH:
            raise ValueError(
                f"KINDREFLEX_SECRET_KEY is shorter than {MIN_SECRET_KEY_LENGTH} characters: in "
                "production it seals the EHR tokens and our private keys; give it a random "
                "value (`openssl rand -base64 32` gives 44)"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.database_url).get_backend_name() == "sqlite"

    def safe_summary(self) -> dict[str, Any]:
        """The settings as loggable data: secrets and database passwords masked."""
        data = self.model_dump()
        data["secret_key"] = "***" if self.secret_key else None
        data["database_url"] = shown_database_url(self.database_url)
        if self.outbound_proxy is not None:  # the proxy's address, never its credentials
            from service.outbound import OutboundProxy

            data["outbound_proxy"] = OutboundProxy.parse(
                self.outbound_proxy.get_secret_value()
            ).shown
        return data


def _check_libpq_parameters(url: URL) -> None:
    """The parameters after the ``?`` are libpq's: a misspelt one (``sslmod``) or a
    ``connect_timeout`` that is no number crashed every command with a traceback, the
    Kubernetes Job and pods in a loop (found by review). Named, never with its value: it
    may be a password."""
    for name, value in url.query.items():
        try:
            psycopg.conninfo.make_conninfo("", **{name: str(value)})
        except psycopg.ProgrammingError:
            raise ValueError(
                f"{name!r} after the '?' is not a libpq connection parameter (see "
                "PostgreSQL's 'Parameter Key Words'; e.g. sslmode, sslrootcert)"
            ) from None
    timeout = url.query.get("connect_timeout")
    if timeout is not None and not re.fullmatch(r"\s*-?\d+\s*", str(timeout)):
        raise ValueError("connect_timeout after the '?' is a whole number of seconds")


#: libpq's parameters that hold a secret, written after the ``?`` of a database URL.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def shown_database_url(database_url: str) -> str:
    """The database URL as errors and logs may show it: a password masked, in the user part
    and as a libpq parameter (``?password=…``, printed in clear before: found by review)."""
    url = make_url(database_url)
    hidden = {name: "***" for name in url.query if name.lower() in _SECRET_PARAMETERS}
    return url.update_query_dict(hidden).render_as_string(hide_password=True)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (and ``KINDREFLEX_SETTINGS_FILE``), then overrides."""
    env_file = os.environ.get("KINDREFLEX_SETTINGS_FILE")
    if env_file and not Path(env_file).is_file():
        raise FileNotFoundError(f"KINDREFLEX_SETTINGS_FILE names a missing file: {env_file}")
    return Settings(_env_file=env_file, **overrides)


class _EmbeddedSettings(Settings):
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def embedded_settings(**overrides: Any) -> Settings:
    """The embedded defaults and ``overrides``; neither the environment nor the settings
    file is read. For ``kindreflex demo``, which promises to run as shipped: a shell that
    exports a hospital's settings for ``serve`` (``KINDREFLEX_OUTBOUND_ALLOW`` naming its
    EHR) made the demo refuse its own sandbox (review)."""
    return _EmbeddedSettings(**overrides)


#: Names of our prefix that are no setting: the settings file's own, the test suite's.
_NOT_SETTINGS = ("KINDREFLEX_SETTINGS_FILE", "KINDREFLEX_TEST_")


def settings_given() -> list[str]:
    """The ``KINDREFLEX_*`` names set in the environment and the settings file, sorted,
    but for those that are no setting of the service by design (``_NOT_SETTINGS``)."""
    names = {name.upper() for name in os.environ}
    env_file = os.environ.get("KINDREFLEX_SETTINGS_FILE")
    if env_file and Path(env_file).is_file():
        names |= {name.upper() for name in dotenv_values(env_file)}
    return sorted(
        name
        for name in names
        if name.startswith("KINDREFLEX_") and not name.startswith(_NOT_SETTINGS)
    )


def unknown_settings() -> list[str]:
    """The ``KINDREFLEX_*`` names in the environment and the settings file that are no
    setting, each with the setting it is likely a misspelling of. The settings ignore them
    (``extra="ignore"``): a ``KINDREFLEX_OUTBOUND_ALLOWLIST`` left the allow-list unset
    without a word, and the service connected wherever a configuration said (review)."""
    known = [f"KINDREFLEX_{name.upper()}" for name in Settings.model_fields]
    return [_with_guess(name, known) for name in settings_given() if name not in known]


def _with_guess(name: str, known: list[str]) -> str:
    guess = get_close_matches(name, known, n=1, cutoff=0.8)
    return f"{name} (did you mean {guess[0]}?)" if guess else name


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``): plain
    http to it never leaves the machine, and no other machine reaches a server there."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def over_tls(url: str) -> bool:
    """Whether what is fetched from or sent to ``url`` is protected in transit: https, or
    plain http on the loopback interface (it never leaves the machine). SMART 2.x sends
    codes, tokens and client credentials only over TLS; RFC 7515 fetches a JWK Set only
    over TLS (a key set read in clear could be swapped on the way)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname))
