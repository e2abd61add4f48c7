"""Tables of the foundation. Feature modules add their own models next to their migration.

Every table that holds data or configuration belongs to exactly one tenant (hospital).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from service.db.base import Base, UTCDateTime, utcnow


class Tenant(Base):
    """A hospital served by this deployment."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TenantScoped:
    """Mixin for every tenant-owned table: a non-null, indexed ``tenant_id``."""

    @declared_attr
    def tenant_id(cls) -> Mapped[int]:  # noqa: N805 - SQLAlchemy passes the class
        return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


class TenantConfigVersion(TenantScoped, Base):
    """One saved version of a tenant's configuration document (never updated, only added)."""

    __tablename__ = "tenant_config_versions"
    __table_args__ = (UniqueConstraint("tenant_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int]
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(500))


# --- SMART App Launch and the deployment's signing keys (smart_app/, service/keys.py) ---


class SigningKey(Base):
    """One of the deployment's own signing keys (private_key_jwt client assertions).

    Deliberately NOT tenant-scoped, like ``tenants``: the deployment publishes one JWKS at
    ``/.well-known/jwks.json`` that every hospital's EHR registers.
    """

    __tablename__ = "signing_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    alg: Mapped[str] = mapped_column(String(10))
    private_key: Mapped[str] = mapped_column(Text)  # PEM, Fernet-sealed when `sealed`
    sealed: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    publish_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LaunchState(TenantScoped, Base):
    """An authorization request in flight: single-use, expiring, bound to one browser."""

    __tablename__ = "smart_launch_states"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    browser_hash: Mapped[str] = mapped_column(String(64))
    registration_id: Mapped[str] = mapped_column(String(63))
    path_prefix: Mapped[str] = mapped_column(String(80))
    code_verifier: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str] = mapped_column(String(64))
    server: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AppSession(TenantScoped, Base):
    """A launched app session. The browser holds only a random secret whose hash is here."""

    __tablename__ = "smart_app_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    cookie_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    registration_id: Mapped[str] = mapped_column(String(63))
    path_prefix: Mapped[str] = mapped_column(String(80))
    fhir_base_url: Mapped[str] = mapped_column(String(500))
    token_endpoint: Mapped[str] = mapped_column(String(500))
    fhir_user: Mapped[str] = mapped_column(String(500))
    user_name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    language: Mapped[str] = mapped_column(String(2))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    encounter_id: Mapped[str | None] = mapped_column(String(64))
    app_context: Mapped[str | None] = mapped_column(Text)
    launch_details: Mapped[dict[str, Any]] = mapped_column(JSON)
    scope: Mapped[str] = mapped_column(Text)
    access_token: Mapped[str] = mapped_column(Text)  # Fernet-sealed when `sealed`
    refresh_token: Mapped[str | None] = mapped_column(Text)
    sealed: Mapped[bool]
    access_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
