"""The audit of configuration changes: who changed what, when, old → new, secrets masked.

Every change of a tenant's configuration is a new ``TenantConfigVersion`` row that names
its author and time, written in the same transaction as the change itself. The audit is
therefore derived from those rows — it cannot miss a change or record one that did not
happen. The "what" is the difference between consecutive documents as a list of paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from service.db.base import Database
from service.db.models import TenantConfigVersion
from service.tenancy import SecretBox
from service.tenant_config import public_jwks

MASK = "***"
SECRET_KEYS = frozenset({"client_secret"})


@dataclass(frozen=True)
class Change:
    """One changed value; ``None`` on one side means absent."""

    path: str
    old: Any
    new: Any


@dataclass(frozen=True)
class ConfigChange:
    """One configuration version and what it changed relative to the previous one."""

    version: int
    actor: str
    at: datetime
    changes: tuple[Change, ...]


def _key(item: Any, index: int) -> str:
    """Lists of objects with an ``id`` are compared by id, so a reorder is not a change."""
    if isinstance(item, dict) and "id" in item:
        return str(item["id"])
    return str(index)


def _masked(value: Any) -> Any:
    return None if value is None else MASK


def diff(old: Any, new: Any, path: str = "") -> list[Change]:
    """Paths whose values differ (``registrations[ehr].client_id``); secrets masked."""
    if path.rsplit(".", 1)[-1] in SECRET_KEYS:
        return [] if old == new else [Change(path, _masked(old), _masked(new))]
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[Change] = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            changes += diff(old.get(key), new.get(key), sub)
        return changes
    if isinstance(old, list) and isinstance(new, list) and _keyed(old) and _keyed(new):
        old_by = {_key(item, i): item for i, item in enumerate(old)}
        new_by = {_key(item, i): item for i, item in enumerate(new)}
        changes = []
        for key in list(old_by) + [k for k in new_by if k not in old_by]:
            changes += diff(old_by.get(key), new_by.get(key), f"{path}[{key}]")
        return changes
    if old == new:
        return []
    return [Change(path, _mask_inside(old), _mask_inside(new))]


def _keyed(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "id" in item for item in items)


def _mask_inside(value: Any) -> Any:
    """A whole object added or removed: its secrets still masked."""
    if isinstance(value, dict):
        return {k: _masked(v) if k in SECRET_KEYS else _mask_inside(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_inside(v) for v in value]
    return value


def history(
    database: Database, secrets: SecretBox, tenant_id: int, limit: int = 100
) -> list[ConfigChange]:
    """The newest ``limit`` configuration changes of one tenant, newest first."""
    with database.session() as session:
        rows = list(
            session.scalars(
                select(TenantConfigVersion)
                .where(TenantConfigVersion.tenant_id == tenant_id)
                .order_by(TenantConfigVersion.version.desc())
                .limit(limit + 1)
            )
        )
    # Stored secrets are encrypted with a fresh nonce each save: compare the plain values.
    documents = [_private_keys_masked(secrets.open(row.document)[0]) for row in rows]
    result = []
    for index, row in enumerate(rows[:limit]):
        previous = documents[index + 1] if index + 1 < len(rows) else {}
        changes = diff(previous, documents[index])
        result.append(ConfigChange(row.version, row.created_by, row.created_at, tuple(changes)))
    return result


def _private_keys_masked(document: dict[str, Any]) -> dict[str, Any]:
    """The document with the private members of its issuers' configured keys masked.

    Saving a key set holding any is refused now (``CdsIssuer``); a version stored before
    holds them still, and each of its changes showed them to every admin (found by review).
    A member masked in one version and gone from the next is a change, shown masked."""
    registrations = document.get("registrations")
    if not isinstance(registrations, list):
        return document
    return {**document, "registrations": [_registration_masked(r) for r in registrations]}


def _registration_masked(registration: Any) -> Any:
    issuers = registration.get("cds_issuers") if isinstance(registration, dict) else None
    if not isinstance(issuers, list):
        return registration
    return {**registration, "cds_issuers": [_issuer_masked(i) for i in issuers]}


def _issuer_masked(issuer: Any) -> Any:
    if not isinstance(issuer, dict) or "jwks" not in issuer:
        return issuer
    return {**issuer, "jwks": public_jwks(issuer["jwks"], masked_as=MASK)}
