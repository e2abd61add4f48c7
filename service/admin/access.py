"""How administrators get in: one-time bootstrap tokens, admin sessions, CSRF tokens.

Only SHA-256 hashes of tokens are stored, so a database dump opens no door. A bootstrap
token (``kindreflex admin bootstrap``) is single use and expires; redeeming it opens an
admin session of that one tenant. A SMART sign-in with the admin role (the EHR's
authorization server, ``smart_app/session.py``) opens the same kind of session through
:func:`open_session`. Everything here is tenant-scoped: a session of hospital A is
worthless at hospital B.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.db.base import Database, utcnow
from service.db.models import AdminBootstrapToken, AdminEvent, AdminSession
from service.session_use import record_use
from service.settings import DEFAULT_SESSION_IDLE_MINUTES
from service.text import is_one_line

BOOTSTRAP_TTL = timedelta(minutes=30)
SESSION_TTL = timedelta(hours=8)
#: A session unused this long ends (``KINDREFLEX_SESSION_IDLE_MINUTES``; its default here).
DEFAULT_IDLE_LIMIT = timedelta(minutes=DEFAULT_SESSION_IDLE_MINUTES)
MAX_NAME_LENGTH = 200  # the actor column holds 500; room for " (bootstrap token #n)"


class AccessDeniedError(PermissionError):
    """A token or session that does not (or no longer) grant access."""


class InvalidNameError(ValueError):
    """The name given at sign-in cannot be recorded as the actor of the audit."""


@dataclass(frozen=True)
class IssuedSession:
    """A new admin session: the token goes to the client once and is never stored."""

    token: str
    csrf_token: str
    actor: str
    expires_at: datetime


@dataclass(frozen=True)
class AdminPrincipal:
    """The signed-in administrator of one tenant."""

    tenant_id: int
    actor: str
    session_id: int
    csrf_token: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token_for(session_token: str) -> str:
    """The CSRF token that goes with a session: derived, so nothing more is stored."""
    return hmac.new(session_token.encode(), b"kindreflex-admin-csrf", hashlib.sha256).hexdigest()


def record_event(session: Session, tenant_id: int, actor: str, action: str, **detail: Any) -> None:
    """An admin event (sign-in, refused token, test connection…); never a secret in detail."""
    session.add(AdminEvent(tenant_id=tenant_id, actor=actor, action=action, detail=detail))


def issue_bootstrap_token(
    database: Database, tenant_id: int, ttl: timedelta = BOOTSTRAP_TTL
) -> tuple[str, datetime]:
    """A new one-time token for the tenant's first set-up, and when it expires."""
    token = secrets.token_urlsafe(32)
    expires_at = utcnow() + ttl
    with database.session() as session:
        session.add(
            AdminBootstrapToken(tenant_id=tenant_id, token_hash=_hash(token), expires_at=expires_at)
        )
        record_event(
            session,
            tenant_id,
            "kindreflex admin bootstrap",
            "bootstrap-token-issued",
            expires_at=expires_at.isoformat(),
        )
    return token, expires_at


def redeem_bootstrap_token(
    database: Database, tenant_id: int, token: str, name: str
) -> IssuedSession:
    """Spend a bootstrap token on an admin session; refused when unknown, used or expired.

    ``name`` is checked first (InvalidNameError): nothing is recorded and the token is not
    spent for a name the audit could not hold.
    """
    name = checked_name(name)
    now = utcnow()
    with database.session() as session:
        # One conditional UPDATE: of two concurrent redemptions exactly one wins.
        used = session.execute(
            update(AdminBootstrapToken)
            .where(
                AdminBootstrapToken.tenant_id == tenant_id,
                AdminBootstrapToken.token_hash == _hash(token),
                AdminBootstrapToken.used_at.is_(None),
                AdminBootstrapToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(AdminBootstrapToken.id)
        ).scalar_one_or_none()
    if used is None:
        with database.session() as session:
            record_event(session, tenant_id, name or "anonymous", "bootstrap-token-refused")
        raise AccessDeniedError("this bootstrap token is unknown, already used or expired")
    actor = f"{name or 'admin'} (bootstrap token #{used})"
    return open_session(database, tenant_id, actor, via="bootstrap-token")


def checked_name(name: str) -> str:
    """The name an admin signs in with, stripped; InvalidNameError when it is too long or
    holds characters the audit cannot record faithfully."""
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"the name is longer than {MAX_NAME_LENGTH} characters")
    if not is_one_line(name):
        raise InvalidNameError("the name contains control characters")
    return name


def open_session(
    database: Database, tenant_id: int, actor: str, via: str, ttl: timedelta = SESSION_TTL
) -> IssuedSession:
    """A new admin session of ``tenant_id`` for ``actor`` (after a bootstrap token or SMART)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now + ttl
    with database.session() as session:
        session.add(
            AdminSession(
                tenant_id=tenant_id,
                token_hash=_hash(token),
                actor=actor,
                expires_at=expires_at,
                last_active_at=now,
            )
        )
        record_event(session, tenant_id, actor, "admin-signed-in", via=via)
    return IssuedSession(token, csrf_token_for(token), actor, expires_at)


def authenticate(
    database: Database, token: str, idle_limit: timedelta = DEFAULT_IDLE_LIMIT
) -> AdminPrincipal | None:
    """The live session of this token, or None (unknown, ended, expired, or unused for
    ``idle_limit``). Records the request as the session's last use, to the minute."""
    now = utcnow()
    # a row stored before its last use was recorded counts from its sign-in
    last_used = func.coalesce(AdminSession.last_active_at, AdminSession.created_at)
    with database.session() as session:
        row = session.scalar(
            select(AdminSession).where(
                AdminSession.token_hash == _hash(token),
                AdminSession.ended_at.is_(None),
                AdminSession.expires_at > now,
                last_used > now - idle_limit,
            )
        )
        if row is None:
            return None
        record_use(session, row, now)
        return AdminPrincipal(row.tenant_id, row.actor, row.id, csrf_token_for(token))


def end_session(database: Database, principal: AdminPrincipal) -> None:
    with database.session() as session:
        session.execute(
            update(AdminSession)
            .where(AdminSession.id == principal.session_id)
            .values(ended_at=utcnow())
        )
        record_event(session, principal.tenant_id, principal.actor, "admin-signed-out")


def events(database: Database, tenant_id: int, limit: int = 100) -> list[AdminEvent]:
    """The tenant's newest admin events, newest first."""
    with database.session() as session:
        return list(
            session.scalars(
                select(AdminEvent)
                .where(AdminEvent.tenant_id == tenant_id)
                .order_by(AdminEvent.at.desc(), AdminEvent.id.desc())
                .limit(limit)
            )
        )
