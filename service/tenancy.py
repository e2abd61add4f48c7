"""Tenants and their current configuration, as the rest of the service sees them.

Reading the configuration is on the CDS hot path, so each process keeps the current
version in memory and re-checks the database at most every ``REFRESH_SECONDS``; a save in
this process is visible at once, a save in another instance within that interval.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.db.base import Database
from service.db.models import Tenant, TenantConfigVersion
from service.settings import TENANT_SLUG
from service.single_flight import SingleFlight
from service.tenant_config import TenantConfiguration

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
STALE_GRACE_SECONDS = 1.0  # see TenantDirectory.current


class UnknownTenantError(LookupError):
    """No tenant with that slug is configured on this deployment (a 404). Its message is
    the same whether no such hospital exists or it has no configuration yet: anyone may
    ask (``/t/<slug>/…``), and whether a hospital is still being set up is no stranger's
    business; ``reason`` says which, for the log. That a hospital is served here is no
    secret (its slug is in the launch and CDS URLs every EHR of it is given), so a known
    slug answers otherwise (the sign-in page, 401 without a session)."""

    def __init__(self, slug: str, reason: str) -> None:
        super().__init__(f"no hospital '{slug}' is configured on this service")
        self.reason = reason


def _named_by_a_slug(slug: str) -> None:
    """Refuse, as unknown, what no hospital can be named (``/t/%00/…``): the query with it
    was PostgreSQL's error, a 500 on every hospital-prefixed route (found by fuzzing)."""
    if not re.fullmatch(TENANT_SLUG, slug):
        raise UnknownTenantError("…", "not a hospital slug")  # not repeated: anyone sent it


class SecretsUnavailableError(RuntimeError):
    """A client secret must be stored, but KINDREFLEX_SECRET_KEY is not set."""


@dataclass(frozen=True)
class TenantContext:
    """A tenant and the configuration version in force."""

    id: int
    slug: str
    version: int
    config: TenantConfiguration


class SecretBox:
    """Encrypts the secrets inside configuration documents with the deployment's key."""

    def __init__(self, secret_key: SecretStr | None) -> None:
        self._fernet: Fernet | None = None
        if secret_key is not None:
            digest = hashlib.sha256(secret_key.get_secret_value().encode()).digest()
            self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def _require(self) -> Fernet:
        if self._fernet is None:
            raise SecretsUnavailableError(
                "storing a client secret needs KINDREFLEX_SECRET_KEY; "
                "or register the EHR with client_auth private_key_jwt"
            )
        return self._fernet

    def seal(self, document: dict[str, Any], config: TenantConfiguration) -> dict[str, Any]:
        pairs = zip(document["registrations"], config.registrations, strict=True)
        for stored, registration in pairs:
            if registration.client_secret is not None:
                plain = registration.client_secret.get_secret_value().encode()
                stored["client_secret"] = self._require().encrypt(plain).decode()
        return document

    def open(self, document: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The document with its secrets in the clear, and the ids of the registrations
        whose secret cannot be read (KINDREFLEX_SECRET_KEY changed or unset): theirs is
        left out, as if none were stored. The rest of the hospital keeps working (its CDS
        hooks, its other EHRs, the admin screen where the secret is entered again); a
        launch through such a registration is refused saying why.

        ``document`` itself is left as it was: it is usually a database row's, which must
        never hold a secret in the clear."""
        unreadable = []
        registrations = []
        for stored in document.get("registrations", []):
            sealed = stored.get("client_secret")
            if sealed:
                stored = {k: v for k, v in stored.items() if k != "client_secret"}
                plain = self._decrypt(sealed)
                if plain is None:
                    unreadable.append(str(stored.get("id")))
                else:
                    stored["client_secret"] = plain
            registrations.append(stored)
        opened = {**document, "registrations": registrations} if registrations else dict(document)
        return opened, tuple(unreadable)

    def _decrypt(self, sealed: str) -> str | None:
        if self._fernet is None:
            return None
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            return None


class TenantDirectory:
    """Creates tenants, saves configuration versions, and serves the current one."""

    def __init__(
        self, database: Database, secrets: SecretBox, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._database = database
        self._secrets = secrets
        self._clock = clock
        self._cache: dict[str, tuple[float, TenantContext]] = {}
        self._lock = threading.Lock()
        self._refreshes: SingleFlight[str, TenantContext] = SingleFlight()

    @property
    def database(self) -> Database:
        """Where the hospitals' configurations (and what depends on them) are stored."""
        return self._database

    def get(self, slug: str, at_least: int = 0, *, fresh: bool = False) -> TenantContext:
        """The hospital's configuration in force; read again when the copy held is older
        than ``REFRESH_SECONDS`` or than the version ``at_least`` (one another instance saved),
        or always with ``fresh``: what an administrator reads and changes, which another
        instance may have changed a moment ago."""
        _named_by_a_slug(slug)
        now = self._clock()
        cached = self._cache.get(slug)
        if (
            not fresh
            and cached
            and now - cached[0] < REFRESH_SECONDS
            and cached[1].version >= at_least
        ):
            return cached[1]
        with self._database.session() as session:
            context = self._load(session, slug, cached[1] if cached else None)
        with self._lock:
            self._cache[slug] = (now, context)
        return context

    def last_read(self, slug: str) -> TenantContext | None:
        """The hospital's configuration as this instance last read it, however old; None if
        it never did. Never the database: for an answer when the database has failed (the
        error page's frame origins, ``smart_app.errors.handle_database_error``)."""
        cached = self._cache.get(slug)
        return cached[1] if cached else None

    async def current(self, slug: str) -> TenantContext:
        """``get`` for code on the event loop (the CDS path), which must never wait for the
        database on the loop nor hold a call up for a routine refresh:

        * the refresh runs in a worker thread, one at a time per hospital;
        * while it runs, calls within ``STALE_GRACE_SECONDS`` of the due time get the
          version they had (the loop's waits on a thread are slow under load, and every
          call in flight would wait for it); later ones wait for the refresh.
        """
        _named_by_a_slug(slug)
        cached = self._cache.get(slug)
        age = self._clock() - cached[0] if cached else None
        if cached and age is not None and age < REFRESH_SECONDS:
            return cached[1]
        refresh = self._refreshes.start(slug, lambda: self._refresh(slug))
        if cached and age is not None and age < REFRESH_SECONDS + STALE_GRACE_SECONDS:
            return cached[1]
        return await asyncio.shield(refresh)

    async def _refresh(self, slug: str) -> TenantContext:
        try:
            return await run_in_threadpool(self.get, slug)
        except UnknownTenantError:
            raise  # the caller's answer (404), not a fault of the service
        except Exception as error:
            # the callers that waited have it; after a refresh in the background the next
            # call tries again, and the failure must not pass unseen
            log.warning(
                "hospital configuration not refreshed",
                extra={"fields": {"tenant": slug, "error": type(error).__name__}},
            )
            raise

    def _load(self, session: Session, slug: str, cached: TenantContext | None) -> TenantContext:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
        if tenant is None:
            raise UnknownTenantError(slug, "no such hospital")
        latest = session.scalar(
            select(func.max(TenantConfigVersion.version)).where(
                TenantConfigVersion.tenant_id == tenant.id
            )
        )
        if cached is not None and cached.version == latest:
            return cached
        row = session.scalar(
            select(TenantConfigVersion).where(
                TenantConfigVersion.tenant_id == tenant.id, TenantConfigVersion.version == latest
            )
        )
        if row is None:
            raise UnknownTenantError(slug, "the hospital has no configuration yet")
        document, unreadable = self._secrets.open(row.document)
        if unreadable:
            # an operator's to mend (the key back, or the secret entered again); never the
            # secret itself
            log.error(
                "stored client secrets cannot be read: KINDREFLEX_SECRET_KEY changed or unset",
                extra={"fields": {"tenant": slug, "registrations": list(unreadable)}},
            )
        config = TenantConfiguration.model_validate(document)
        return TenantContext(id=tenant.id, slug=slug, version=row.version, config=config)

    def save(
        self, slug: str, config: TenantConfiguration, actor: str, *, replaces: int | None = None
    ) -> TenantContext:
        """Store ``config`` as the tenant's newest version (creating the tenant if new).

        ``replaces``: the version the change was made on (0 for a new tenant). It is stored
        as exactly the next one, so a change made on a version another save has replaced
        meanwhile (on another instance, or read from this one's cache, which may be
        ``REFRESH_SECONDS`` old) meets the unique version and raises ``IntegrityError``
        instead of silently undoing the other change. Without it: after the latest."""
        if not re.fullmatch(TENANT_SLUG, slug):
            raise ValueError(f"'{slug}' cannot name a hospital: lowercase letters, digits, '-'")
        document = self._secrets.seal(_plain_document(config), config)
        try:
            return self._store(slug, config, actor, document, replaces)
        except IntegrityError:
            with self._lock:  # the caller is told the version in force, not the cached one
                self._cache.pop(slug, None)
            raise

    def _store(
        self,
        slug: str,
        config: TenantConfiguration,
        actor: str,
        document: dict[str, Any],
        replaces: int | None,
    ) -> TenantContext:
        with self._database.session() as session:
            tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
            if tenant is None:
                tenant = Tenant(slug=slug, name=config.name)
                session.add(tenant)
                session.flush()
            tenant.name = config.name
            if replaces is None:
                replaces = session.scalar(
                    select(func.max(TenantConfigVersion.version)).where(
                        TenantConfigVersion.tenant_id == tenant.id
                    )
                )
            version = (replaces or 0) + 1
            session.add(
                TenantConfigVersion(
                    tenant_id=tenant.id, version=version, document=document, created_by=actor
                )
            )
            context = TenantContext(id=tenant.id, slug=slug, version=version, config=config)
        with self._lock:
            self._cache[slug] = (self._clock(), context)
        return context

    def slugs(self) -> list[str]:
        with self._database.session() as session:
            return list(session.scalars(select(Tenant.slug).order_by(Tenant.slug)))


def _plain_document(config: TenantConfiguration) -> dict[str, Any]:
    """The configuration as JSON data, secrets still in clear (sealed before storing)."""
    document = config.model_dump(mode="json")
    for stored, registration in zip(document["registrations"], config.registrations, strict=True):
        stored["client_secret"] = None if registration.client_secret is None else "sealed"
    return document
