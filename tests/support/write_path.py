"""Shared parts of the FHIR write-path tests (outbox, triage save, audit, worklist)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import Counter

from sandbox.fhir_server import FhirServer
from service import casework
from service.db.base import Database, utcnow
from service.outbox import Outbox
from service.tenancy import SecretBox, TenantContext, TenantDirectory
from service.tenant_config import EhrRegistration, TenantConfiguration


class LoopbackTokens:
    """The token source for sekmet on loopback, which needs no token (see sandbox.fhir_server).

    Stands in for ``SessionTokens`` only where no SMART session exists; the tests of
    re-authorisation use the real ``SessionTokens``.
    """

    def access_token(self, session_id: str) -> str:
        return f"loopback-{session_id}"


@dataclass
class Clock:
    """The real time plus a jump: tests move the outbox's clock forward instead of sleeping."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    @property
    def now(self) -> datetime:
        return self()

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def make_outbox(
    database: Database,
    clock: Clock,
    tokens: Any = None,
    *,
    heartbeat_seconds: float = 15.0,
    lease_renewal_failures: Counter | None = None,
    timeout: float = 5.0,
) -> Outbox:
    """An outbox whose retries are never due before the test moves the clock (backoff ≥ 15 s),
    wired as the app wires it (``service.app``: a refused social save is undone). ``timeout``:
    KINDREFLEX_FHIR_TIMEOUT_SECONDS (a test waiting for one to pass makes it short)."""
    tokens = tokens or LoopbackTokens()
    outbox = Outbox(
        database,
        tokens,
        timeout=timeout,
        retry_base=30.0,
        clock=clock,
        heartbeat_seconds=heartbeat_seconds,
        lease_renewal_failures=lease_renewal_failures,
    )
    casework.install(outbox)
    return outbox


def make_tenant(database: Database, slug: str, fhir_base_url: str) -> TenantContext:
    config = TenantConfiguration(
        name=f"Ziekenhuis {slug.upper()}",
        registrations=[
            EhrRegistration(id="ehr", name="EHR", fhir_base_url=fhir_base_url, client_id="kr")
        ],
    )
    return TenantDirectory(database, SecretBox(None)).save(slug, config, actor="test")


def count(base_url: str, resource_type: str, **params: str) -> int:
    """How many resources the FHIR server holds that match ``params``."""
    bundle = httpx.get(
        f"{base_url}/{resource_type}", params={**params, "_summary": "count"}, timeout=10
    ).json()
    total: int = bundle["total"]
    return total


def search(base_url: str, resource_type: str, **params: str) -> list[dict[str, Any]]:
    bundle = httpx.get(f"{base_url}/{resource_type}", params=params, timeout=10).json()
    return [entry["resource"] for entry in bundle.get("entry", [])]


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[FhirServer]:
    """One real sekmet FHIR server process for a test module (data kept apart by identifiers)."""
    with FhirServer() as server:
        yield server
