"""Configuration of the sandbox EHR: plain dataclasses, so tests and ``kindreflex demo`` wire it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["SandboxConfig", "SmartClient"]

DEFAULT_APP_SCOPE = (
    "launch openid fhirUser offline_access patient/*.cruds user/*.cruds "
    "launch/patient launch/encounter online_access"
)


@dataclass(frozen=True)
class SmartClient:
    """A SMART app registered with the sandbox's authorization server.

    Confidential-asymmetric (``private_key_jwt``) when ``jwks_uri`` or ``jwks`` is given, a
    public client otherwise. ``redirect_uris`` are matched exactly.
    """

    client_id: str
    redirect_uris: tuple[str, ...]
    jwks_uri: str | None = None
    jwks: dict[str, Any] | None = None
    name: str = "Kindreflex"
    allowed_scope: str = DEFAULT_APP_SCOPE

    @property
    def public(self) -> bool:
        return self.jwks_uri is None and self.jwks is None


@dataclass
class SandboxConfig:
    """Everything the sandbox needs; every field has a localhost default.

    * ``cds_base_url`` — the CDS service base; discovery is ``{cds_base_url}/cds-services``.
      ``None``: the EHR page works but calls no hooks.
    * ``app_launch_url`` — the SMART app's launch URL, for the EHR page's direct "launch
      app" button (cards bring their own ``smart`` links).
    * ``clients`` — registered SMART apps.
    * ``host``/``ehr_port``/``fhir_port`` — where to listen (0 = a free port).
    * ``public_host`` — the host name in the URLs the sandbox hands out (default ``host``); use
      ``localhost`` while the app runs on ``127.0.0.1`` to make the iframe cross-site.
    * ``client_assertion_algs`` — the ``private_key_jwt`` algorithms the token endpoint
      verifies (and advertises); narrow it to try a client against a stricter server.
    * ``relative_fhir_user`` — the id_token's ``fhirUser`` relative to the FHIR base
      (``Practitioner/…``), as SMART allows and some EHRs send it; absolute by default.
    * ``names_itself`` — the authorization responses name their issuer (RFC 9207 ``iss``,
      advertised in the SMART configuration); off, as most EHRs are still, to try a
      client's mix-up defence without it.
    """

    cds_base_url: str | None = None
    app_launch_url: str | None = None
    clients: tuple[SmartClient, ...] = ()
    host: str = "127.0.0.1"
    ehr_port: int = 0
    fhir_port: int = 0
    public_host: str | None = None
    roles_claim: str = "roles"
    access_token_lifetime: int = 3600
    refresh_token_lifetime: int = 24 * 3600
    launch_lifetime: int = 600
    code_lifetime: int = 120
    client_assertion_algs: tuple[str, ...] = ("RS384", "ES384", "RS256", "ES256")
    cds_jwt_alg: Literal["ES384", "RS384"] = "ES384"
    cds_jwt_lifetime: int = 300
    cds_client_id: str = "kindreflex-cds"
    cds_fhir_scope: str = "patient/*.rs user/Practitioner.rs"
    cds_timeout: float = 10.0
    auto_consent: bool = False
    relative_fhir_user: bool = False
    names_itself: bool = True
    frame_origins: tuple[str, ...] = ()
    data_dir: Path | None = None
    seed: bool = True
    fhir_startup_timeout: float = 30.0
    clock: Callable[[], float] = field(default=time.time, repr=False)
