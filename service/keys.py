"""The deployment's own signing keys, their rotation and the public JWKS.

EHR authorization servers authenticate us with ``private_key_jwt`` (SMART App Launch 2.x,
"confidential asymmetric" clients): we sign a short client assertion, they verify it with
the keys published at ``GET /.well-known/jwks.json``.

* SMART clients SHALL support both RS384 and ES384, and a server need verify only one of
  them: there is an RSA key (RS384) and an EC P-384 key (ES384) at any time, both
  published; each assertion is signed with the algorithm the EHR accepts
  (``smart_app.oauth.AuthServer.assertion_alg``).
* The first key of each algorithm is generated on first use (the first JWKS request or
  token exchange).
* ``kindreflex keys rotate`` adds a new key of each algorithm and keeps the previous ones
  published for
  ``RETIRED_KEY_PUBLISHED_FOR`` (1 day). The new key is published ``JWKS_MAX_AGE`` before
  it signs (the JWKS's cache lifetime), the old one keeps signing meanwhile. Our
  assertions live at most ``ASSERTION_LIFETIME`` (5 minutes), but authorization servers
  may cache a client's JWKS longer than we ask — a day covers any sane cache. After that
  the old private key is deleted.
* Private keys are Fernet-sealed when ``KINDREFLEX_SECRET_KEY`` is set; without it they are
  stored in clear (the database is then the secret), and the service warns at start.
* One JWKS for the whole deployment (not per tenant): every hospital registers the same
  ``jwks_uri``, so the table is not tenant-scoped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import jwt
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import SecretStr
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.db.base import Database, utcnow
from service.db.models import SigningKey
from service.settings import Settings

#: SMART App Launch 2.x: clients SHALL support both; servers verify at least one of them.
Algorithm = Literal["RS384", "ES384"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
DEFAULT_ALGORITHM: Algorithm = "RS384"  # when the EHR does not say which one it verifies
RSA_KEY_BITS = 3072
ASSERTION_LIFETIME = timedelta(minutes=5)
RETIRED_KEY_PUBLISHED_FOR = timedelta(days=1)
JWKS_MAX_AGE = timedelta(minutes=5)  # Cache-Control of the JWKS
NEW_KEY_PUBLISHED_AHEAD = JWKS_MAX_AGE
JWKS_PATH = "/.well-known/jwks.json"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class UnsealError(RuntimeError):
    """A sealed value cannot be opened: KINDREFLEX_SECRET_KEY is missing or has changed."""


def purpose_key(secret_key: SecretStr, purpose: str) -> bytes:
    """A 32-byte key derived from ``KINDREFLEX_SECRET_KEY`` for one purpose alone (domain
    separation: a key of one use is never that of another)."""
    return hashlib.sha256(f"kindreflex:{purpose}:{secret_key.get_secret_value()}".encode()).digest()


class Sealer:
    """Fernet encryption derived from ``KINDREFLEX_SECRET_KEY`` for one purpose.

    Each purpose gets its own key (domain separation), so a value sealed for one use can
    never be opened as another. Without a secret key the sealer passes values through and
    says so in ``active``.
    """

    def __init__(self, secret_key: SecretStr | None, purpose: str) -> None:
        self._fernet: Fernet | None = None
        if secret_key is not None:
            self._fernet = Fernet(base64.urlsafe_b64encode(purpose_key(secret_key, purpose)))

    @property
    def active(self) -> bool:
        return self._fernet is not None

    def seal(self, plain: str) -> str:
        return plain if self._fernet is None else self._fernet.encrypt(plain.encode()).decode()

    def open(self, stored: str, sealed: bool) -> str:
        if not sealed:
            return stored
        if self._fernet is None:
            raise UnsealError("a sealed value needs KINDREFLEX_SECRET_KEY, which is not set")
        try:
            return self._fernet.decrypt(stored.encode()).decode()
        except InvalidToken as error:
            raise UnsealError(
                "a sealed value does not open: KINDREFLEX_SECRET_KEY changed"
            ) from error


@dataclass(frozen=True)
class Rotation:
    """What a rotation did, for the operator: the new keys' kids, how many previous keys
    stay published (retired), and how many it deleted because it could not open them."""

    new: list[str]
    kept: int
    unreadable: int


class UnreadableKeysError(Exception):
    """Stored signing keys do not open with this process's ``KINDREFLEX_SECRET_KEY``, and
    the rotation was not told to discard them."""

    def __init__(self, unreadable: int, stored: int) -> None:
        super().__init__(f"{unreadable} of the {stored} stored signing keys do not open")
        self.unreadable = unreadable
        self.stored = stored


class KeyStore:
    """Generates, rotates and serves the deployment's signing keys."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self._database = database
        self._sealer = Sealer(settings.secret_key, "signing-keys")
        self._public_url = settings.public_url
        self._private: dict[str, PrivateKey] = {}  # kid -> parsed key (parsing is slow)
        self._lock = threading.Lock()

    @property
    def jwks_url(self) -> str:
        return f"{self._public_url}{JWKS_PATH}"

    def jwks(self) -> dict[str, Any]:
        """The public keys to publish: the signing keys and retired keys still in their grace."""
        with self._database.session() as session:
            for algorithm in ALGORITHMS:
                self._ensure_signing_key(session, algorithm)
            now = utcnow()
            rows = session.scalars(select(SigningKey).order_by(SigningKey.id)).all()
            return {
                "keys": [
                    self._public_jwk(row)
                    for row in rows
                    if row.publish_until is None or row.publish_until > now
                ]
            }

    def sign(self, claims: dict[str, Any], algorithm: Algorithm = DEFAULT_ALGORITHM) -> str:
        """A JWT signed with the current key of ``algorithm`` (``kid`` in the header)."""
        with self._database.session() as session:
            row = self._ensure_signing_key(session, algorithm)
            key = self._private_key(row)
        return jwt.encode(claims, key, algorithm=row.alg, headers={"kid": row.kid, "typ": "JWT"})

    def sign_client_assertion(
        self, token_endpoint: str, client_id: str, algorithm: Algorithm = DEFAULT_ALGORITHM
    ) -> str:
        """A ``private_key_jwt`` client assertion for one token request (RFC 7523)."""
        now = utcnow()
        return self.sign(
            {
                "iss": client_id,
                "sub": client_id,
                "aud": token_endpoint,
                "jti": secrets.token_urlsafe(24),
                "iat": int(now.timestamp()),
                "exp": int((now + ASSERTION_LIFETIME).timestamp()),
            },
            algorithm,
        )

    def rotate(self, *, discard_unreadable: bool = False) -> Rotation:
        """Add a new key of each algorithm (each signs once published for
        ``NEW_KEY_PUBLISHED_AHEAD``); the previous ones stay published for
        ``RETIRED_KEY_PUBLISHED_FOR``.

        A key sealed under another ``KINDREFLEX_SECRET_KEY`` can neither sign nor be
        published (its public half is derived from the private one), and kept it would
        fail the JWKS for the whole grace: with ``discard_unreadable`` it is deleted at
        once, so a rotation is how the service recovers from a changed secret key. Without,
        :class:`UnreadableKeysError` and nothing changed: run with a stale or mistyped key,
        the rotation deleted the live service's keys and sealed new ones it could not
        open, its JWKS a 500 for every launch (found by review).
        """
        with self._database.session() as session:
            now = utcnow()
            # Retired keys past their grace are gone for good: nothing may verify with them.
            session.execute(delete(SigningKey).where(SigningKey.publish_until <= now))
            rows = session.scalars(select(SigningKey)).all()
            opened = {row.kid: self._opens(row) for row in rows}
            unreadable = sum(not opens for opens in opened.values())
            if unreadable and not discard_unreadable:
                raise UnreadableKeysError(unreadable, len(rows))  # the session rolls back
            kept = 0
            for row in rows:
                if not opened[row.kid]:
                    session.delete(row)
                    continue
                if row.retired_at is None:
                    row.retired_at = now
                    row.publish_until = now + RETIRED_KEY_PUBLISHED_FOR
                kept += 1
            new = [self._new_key(session, algorithm).kid for algorithm in ALGORITHMS]
            return Rotation(new, kept, unreadable)

    def _ensure_signing_key(self, session: Session, algorithm: Algorithm) -> SigningKey:
        """The key of ``algorithm`` to sign with: the newest one published for at least
        ``NEW_KEY_PUBLISHED_AHEAD``.

        A rotated-in key is published before it signs, so that an EHR holding a cached copy
        of our JWKS already knows it; until then the key published longest keeps signing.
        The very first key signs at once (there is nothing cached to be behind).
        """
        now = utcnow()
        rows = session.scalars(
            select(SigningKey)
            .where(SigningKey.alg == algorithm)
            .where(SigningKey.publish_until.is_(None) | (SigningKey.publish_until > now))
            .order_by(SigningKey.created_at.desc(), SigningKey.id.desc())
        ).all()
        if not rows:
            # Two instances starting at once may both generate a key: both are published
            # and the newest signs, which is harmless.
            return self._new_key(session, algorithm)
        mature = [row for row in rows if row.created_at <= now - NEW_KEY_PUBLISHED_AHEAD]
        return mature[0] if mature else rows[-1]  # else the one published longest

    def _new_key(self, session: Session, algorithm: Algorithm) -> SigningKey:
        key: PrivateKey = (
            ec.generate_private_key(ec.SECP384R1())
            if algorithm == "ES384"
            else rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        row = SigningKey(
            kid=uuid.uuid4().hex,
            alg=algorithm,
            private_key=self._sealer.seal(pem),
            sealed=self._sealer.active,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        with self._lock:
            self._private[row.kid] = key
        return row

    def _opens(self, row: SigningKey) -> bool:
        """Whether this instance's secret key opens ``row``'s private key."""
        try:
            self._private_key(row)
        except UnsealError:
            return False
        return True

    def _private_key(self, row: SigningKey) -> PrivateKey:
        with self._lock:
            cached = self._private.get(row.kid)
        if cached is not None:
            return cached
        pem = self._sealer.open(row.private_key, row.sealed).encode()
        key = serialization.load_pem_private_key(pem, password=None)
        expected = ec.EllipticCurvePrivateKey if row.alg == "ES384" else rsa.RSAPrivateKey
        if not isinstance(key, expected):
            raise TypeError(f"signing key {row.kid} is not a key for {row.alg}")
        with self._lock:
            self._private[row.kid] = key
        return key

    def _public_jwk(self, row: SigningKey) -> dict[str, Any]:
        public = self._private_key(row).public_key()
        jwk: dict[str, Any] = json.loads(
            ECAlgorithm.to_jwk(public)
            if isinstance(public, ec.EllipticCurvePublicKey)
            else RSAAlgorithm.to_jwk(public)
        )
        jwk.update({"kid": row.kid, "alg": row.alg, "use": "sig", "key_ops": ["verify"]})
        return jwk


router = APIRouter()


@router.get(JWKS_PATH, summary="The app's public signing keys (JWKS)")
def jwks(request: Request) -> JSONResponse:
    store: KeyStore = request.app.state.keys
    # EHRs may cache this for JWKS_MAX_AGE: a rotated-in key is published that long
    # before it signs (see KeyStore._ensure_signing_key).
    return JSONResponse(
        store.jwks(),
        media_type="application/jwk-set+json",
        headers={"Cache-Control": f"public, max-age={int(JWKS_MAX_AGE.total_seconds())}"},
    )
