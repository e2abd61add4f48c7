"""The deployment's signing keys: generated once, rotated with a grace period, public JWKS."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, update

from service.app import create_app
from service.db.base import Database, utcnow
from service.db.models import SigningKey
from service.keys import (
    ALGORITHMS,
    ASSERTION_LIFETIME,
    NEW_KEY_PUBLISHED_AHEAD,
    RETIRED_KEY_PUBLISHED_FOR,
    Algorithm,
    KeyStore,
)
from service.settings import Settings, load_settings

PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
TOKEN_ENDPOINT = "https://ehr.example/token"


def _settings(database: Database, **overrides: object) -> Settings:
    return load_settings(
        database_url=database.engine.url.render_as_string(hide_password=False),
        environment="test",
        **overrides,
    )


def _verify(assertion: str, jwks: dict[str, object]) -> dict[str, object]:
    kid = jwt.get_unverified_header(assertion)["kid"]
    keys = [k for k in jwks["keys"] if isinstance(k, dict) and k["kid"] == kid]  # type: ignore[attr-defined]
    assert len(keys) == 1, f"kid {kid} is not published"
    key = jwt.PyJWK(keys[0])
    claims: dict[str, object] = jwt.decode(
        assertion, key.key, algorithms=[keys[0]["alg"]], audience=TOKEN_ENDPOINT
    )
    return claims


def test_jwks_endpoint_publishes_an_rs384_and_an_es384_key_and_no_private_material(
    database: Database,
) -> None:
    """SMART 2.x: a client SHALL support both RS384 and ES384 (a server verifies one)."""
    client = TestClient(create_app(_settings(database), database))
    first = client.get("/.well-known/jwks.json")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("application/jwk-set+json")
    keys = first.json()["keys"]
    assert sorted((k["kty"], k["alg"], k.get("crv")) for k in keys) == [
        ("EC", "ES384", "P-384"),
        ("RSA", "RS384", None),
    ]
    for key in keys:
        assert key["use"] == "sig"
        assert key["kid"]
        assert not PRIVATE_JWK_MEMBERS & set(key), "the JWKS leaks private key members"
    # Generated once: the next request (and the next instance) publishes the same key.
    assert client.get("/.well-known/jwks.json").json() == first.json()
    other_instance = TestClient(create_app(_settings(database), database))
    assert other_instance.get("/.well-known/jwks.json").json() == first.json()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_client_assertion_claims_follow_rfc_7523_and_live_at_most_five_minutes(
    database: Database, algorithm: Algorithm
) -> None:
    store = KeyStore(database, _settings(database))
    assertion = store.sign_client_assertion(TOKEN_ENDPOINT, "kindreflex-app", algorithm)
    assert jwt.get_unverified_header(assertion)["alg"] == algorithm
    assert jwt.get_unverified_header(assertion)["typ"] == "JWT"
    claims = _verify(assertion, store.jwks())
    assert claims["iss"] == claims["sub"] == "kindreflex-app"
    assert claims["aud"] == TOKEN_ENDPOINT
    assert isinstance(claims["exp"], int)
    assert isinstance(claims["iat"], int)
    assert 0 < claims["exp"] - claims["iat"] <= ASSERTION_LIFETIME.total_seconds()
    again = jwt.decode(
        store.sign_client_assertion(TOKEN_ENDPOINT, "kindreflex-app"),
        options={"verify_signature": False},
    )
    assert again["jti"] != claims["jti"]


def test_rotation_publishes_the_new_key_before_it_signs_and_keeps_the_old_one_a_day(
    database: Database,
) -> None:
    store = KeyStore(database, _settings(database))
    old_assertion = store.sign_client_assertion(TOKEN_ENDPOINT, "app")
    old_kid = jwt.get_unverified_header(old_assertion)["kid"]

    old_kids = {k["kid"] for k in store.jwks()["keys"]}  # RS384's and ES384's
    new_kids = store.rotate().new
    new_kid = new_kids[ALGORITHMS.index("RS384")]

    published = store.jwks()
    assert {k["kid"] for k in published["keys"]} == old_kids | set(new_kids)
    _verify(old_assertion, published)  # a token signed before the rotation still verifies
    # An EHR may hold our JWKS from before the rotation: the old key signs until that expires.
    assert _kid(store.sign_client_assertion(TOKEN_ENDPOINT, "app")) == old_kid
    _shift(database, new_kid, created_at=utcnow() - NEW_KEY_PUBLISHED_AHEAD)
    new_assertion = store.sign_client_assertion(TOKEN_ENDPOINT, "app")
    assert _kid(new_assertion) == new_kid
    _verify(new_assertion, published)

    # A day later (the grace, set back in our own table): unpublished, then deleted.
    for kid in old_kids:
        _shift(database, kid, publish_until=utcnow() - timedelta(seconds=1))
    assert {k["kid"] for k in store.jwks()["keys"]} == set(new_kids)
    newest = store.rotate().new
    with database.session() as session:
        kids = set(session.scalars(select(SigningKey.kid)))
    assert kids == set(new_kids) | set(newest)


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _shift(database: Database, kid: str, **values: object) -> None:
    """Move a key's timestamps in our own table: the passage of time, without waiting."""
    with database.session() as session:
        session.execute(update(SigningKey).where(SigningKey.kid == kid).values(**values))


def test_private_keys_are_sealed_with_the_secret_key(database: Database) -> None:
    settings = _settings(database, secret_key=SecretStr("correct horse battery staple"))
    store = KeyStore(database, settings)
    assertion = store.sign_client_assertion(TOKEN_ENDPOINT, "app")
    store.sign_client_assertion(TOKEN_ENDPOINT, "app", "ES384")
    with database.session() as session:
        rows = session.scalars(select(SigningKey)).all()
    assert len(rows) == 2
    for row in rows:
        assert row.sealed
        assert "PRIVATE KEY" not in row.private_key
    # Another instance (a fresh process) opens the sealed key and signs with the same kid.
    again = KeyStore(database, settings).sign_client_assertion(TOKEN_ENDPOINT, "app")
    assert jwt.get_unverified_header(again)["kid"] == jwt.get_unverified_header(assertion)["kid"]
    _verify(again, store.jwks())


def _rotate_command(settings: Settings, *options: str) -> list[str]:
    """``kindreflex keys rotate`` in a process of its own; the lines it printed."""
    return _run_rotate(settings, *options, check=True).stdout.splitlines()


def _run_rotate(
    settings: Settings, *options: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KINDREFLEX_DATABASE_URL": settings.database_url,
        "KINDREFLEX_ENVIRONMENT": settings.environment,  # production wants a longer key
    }
    if settings.secret_key is not None:
        env["KINDREFLEX_SECRET_KEY"] = settings.secret_key.get_secret_value()
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "rotate", *options],
        env=env,
        capture_output=True,
        text=True,
        check=check,
    )


def test_keys_rotate_command(database: Database) -> None:
    settings = _settings(database)
    before = {k["kid"] for k in KeyStore(database, settings).jwks()["keys"]}
    printed = _rotate_command(settings)
    after = {k["kid"] for k in KeyStore(database, settings).jwks()["keys"]}
    assert before < after
    assert len(after) == 4  # the RS384 and ES384 keys, each with its successor
    new = ", ".join(sorted(after - before, key=printed[0].index))
    assert printed == [
        f"new signing keys {new}: published at /.well-known/jwks.json now, "
        f"signing in {NEW_KEY_PUBLISHED_AHEAD}",
        f"2 previous keys stay published for {RETIRED_KEY_PUBLISHED_FOR}",
    ]


def test_the_rotate_command_says_it_removed_keys_sealed_under_another_secret_key(
    database: Database,
) -> None:
    """Not that the previous keys stay published: they are gone, the new ones sign at once."""
    KeyStore(database, _settings(database, secret_key=SecretStr("the old secret"))).jwks()
    settings = _settings(database, secret_key=SecretStr("the new secret"))
    printed = _rotate_command(settings, "--discard-unreadable")
    new = [k["kid"] for k in KeyStore(database, settings).jwks()["keys"]]
    assert len(new) == 2
    assert printed == [
        f"new signing keys {', '.join(sorted(new, key=printed[0].index))}: published at "
        "/.well-known/jwks.json now, signing at once",
        "2 previous keys removed: sealed under another KINDREFLEX_SECRET_KEY, they could not "
        "be read (nor sign, nor be published)",
    ]


def test_a_rotation_recovers_from_a_changed_secret_key(database: Database) -> None:
    """Keys sealed under the old secret key can neither sign nor be published: the rotation
    drops them, so the JWKS answers again and the new keys sign at once."""
    before = KeyStore(database, _settings(database, secret_key=SecretStr("the old secret")))
    old_kids = {k["kid"] for k in before.jwks()["keys"]}
    store = KeyStore(database, _settings(database, secret_key=SecretStr("the new secret")))
    new_kids = store.rotate(discard_unreadable=True).new
    published = store.jwks()
    assert {k["kid"] for k in published["keys"]} == set(new_kids)
    assert not old_kids & set(new_kids)
    for algorithm in ALGORITHMS:
        assertion = store.sign_client_assertion(TOKEN_ENDPOINT, "app", algorithm)
        assert _kid(assertion) == new_kids[ALGORITHMS.index(algorithm)]
        _verify(assertion, published)


def test_a_rotation_under_another_secret_key_changes_nothing_unless_told_to_discard(
    database: Database,
) -> None:
    """Run from a shell with a stale or mistyped key (an old pod), the rotation deleted the
    live service's keys and sealed new ones it could not open: its JWKS a 500 for every
    launch, and the command said all was well (found by review)."""
    live = KeyStore(database, _settings(database, secret_key=SecretStr("the service's key")))
    published = live.jwks()
    stale = _settings(database, secret_key=SecretStr("a stale key"))

    refused = _run_rotate(stale)

    assert refused.returncode == 2
    assert "2 of the 2 stored signing keys do not open with this KINDREFLEX_SECRET_KEY" in (
        refused.stderr
    )
    assert "nothing was changed" in refused.stderr
    assert "--discard-unreadable" in refused.stderr
    assert refused.stdout == ""
    fresh = KeyStore(database, _settings(database, secret_key=SecretStr("the service's key")))
    assert fresh.jwks() == published
    assertion = fresh.sign_client_assertion(TOKEN_ENDPOINT, "app")
    _verify(assertion, published)
