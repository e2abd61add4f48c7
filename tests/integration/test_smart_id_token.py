"""The OpenID Connect id_token check: real signed JWTs, the issuer's JWKS over real HTTP."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from sandbox.keys import SigningKey
from smart_app import oauth
from smart_app.oauth import EHR_FETCH_MAX_BYTES, AuthServer, OAuthError, ehr_client, verify_id_token
from tests.support.sandbox import JwksServer
from tests.support.served import ServedJson, Trickled

ISSUER = "https://ehr.example"
CLIENT_ID = "kindreflex"
NONCE = "n-0S6_WzA2Mj"


@pytest.fixture(scope="module")
def issuer_key() -> SigningKey:
    return SigningKey.generate("ehr-1", "RS256")


@pytest.fixture(scope="module")
def jwks(issuer_key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer(issuer_key, SigningKey.generate("ehr-2", "ES384")) as server:
        yield server


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "practitioner-1",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
        "fhirUser": f"{ISSUER}/fhir/Practitioner/1",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _verify(jwks: ServedJson, token: str) -> dict[str, Any]:
    server = AuthServer("https://ehr.example/authorize", "https://ehr.example/token", ISSUER,
                        jwks.url)  # fmt: skip
    with ehr_client(timeout=5) as http:
        return verify_id_token(http, token, server, CLIENT_ID, NONCE)


def test_a_genuine_id_token_is_accepted(jwks: JwksServer, issuer_key: SigningKey) -> None:
    claims = _verify(jwks, issuer_key.sign(_claims()))
    assert claims["fhirUser"] == f"{ISSUER}/fhir/Practitioner/1"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "someone-else"}, "(?i)audience"),
        ({"iss": "https://rogue.example"}, "(?i)issuer"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired"),
        ({"nonce": "replayed"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"sub": None}, "sub"),
        ({"aud": [CLIENT_ID, "another-client"]}, "azp"),
        ({"aud": [CLIENT_ID, "another-client"], "azp": "another-client"}, "azp"),
        ({"azp": "another-client"}, "azp"),
    ],
)
def test_a_wrong_claim_is_refused(
    jwks: JwksServer, issuer_key: SigningKey, changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(OAuthError, match=reason) as refused:
        _verify(jwks, issuer_key.sign(_claims(**changes)))
    assert refused.value.kind == "id_token_invalid"


def test_several_audiences_are_accepted_when_we_are_the_authorized_party(
    jwks: JwksServer, issuer_key: SigningKey
) -> None:
    token = issuer_key.sign(_claims(aud=[CLIENT_ID, "fhir-server"], azp=CLIENT_ID))
    assert _verify(jwks, token)["azp"] == CLIENT_ID


def test_a_signature_by_another_key_under_the_same_kid_is_refused(jwks: JwksServer) -> None:
    forger = SigningKey.generate("ehr-1", "RS256")
    with pytest.raises(OAuthError, match="Signature verification failed"):
        _verify(jwks, forger.sign(_claims()))


def test_unknown_kid_unsigned_and_symmetric_tokens_are_refused(
    jwks: JwksServer, issuer_key: SigningKey
) -> None:
    with pytest.raises(OAuthError, match="kid"):
        _verify(jwks, SigningKey.generate("nobody", "RS256").sign(_claims()))
    unsigned = jwt.encode(_claims(), key="", algorithm="none", headers={"kid": "ehr-1"})
    with pytest.raises(OAuthError, match="not accepted"):
        _verify(jwks, unsigned)
    # HS256 keyed with the issuer's public key: the classic algorithm-confusion forgery.
    public_pem = issuer_key.public_jwk()["n"]
    forged = jwt.encode(_claims(), public_pem, algorithm="HS256", headers={"kid": "ehr-1"})
    with pytest.raises(OAuthError, match="not accepted"):
        _verify(jwks, forged)
    with pytest.raises(OAuthError, match="malformed"):
        _verify(jwks, "not-a-jwt")


def test_an_issuer_key_set_answered_too_slowly_or_too_large_is_refused_in_time(
    issuer_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte comes within the per-read timeout, the whole set would take 30 s; then one
    past the size limit."""
    monkeypatch.setattr(oauth, "EHR_FETCH_SECONDS", 2.0)  # 10 s: the launch tests wait that
    keys = json.dumps({"keys": [issuer_key.public_jwk()]}).encode()
    token = issuer_key.sign(_claims())
    with Trickled(keys, pause=30 / len(keys), path="/jwks.json") as slow:
        started = time.monotonic()
        with pytest.raises(OAuthError) as refused:
            _verify(slow, token)
        assert time.monotonic() - started < 2.0 + 5  # room for a loaded machine; the set: 30 s
    assert refused.value.kind == "ehr_unreachable"
    assert refused.value.detail == f"{slow.url}: TimeoutError"

    padded = keys[:-1] + b" " * EHR_FETCH_MAX_BYTES + b"}"
    with ServedJson(padded, path="/jwks.json") as flood, pytest.raises(OAuthError) as refused:
        _verify(flood, token)
    assert refused.value.kind == "ehr_unsupported"
    assert refused.value.detail.endswith(f"the answer is larger than {EHR_FETCH_MAX_BYTES} bytes")


def test_a_compressed_issuer_key_set_is_read_and_an_undecodable_one_refused(
    issuer_key: SigningKey,
) -> None:
    """The EHR compressing its keys: gzip is read; brotli (not decoded here) makes the EHR
    unusable for the sign-in, saying why. Before, both were parsed as sent."""
    keys = json.dumps({"keys": [issuer_key.public_jwk()]}).encode()
    token = issuer_key.sign(_claims())
    with ServedJson(keys, path="/jwks.json", encoding="br") as served:
        with pytest.raises(OAuthError) as refused:
            _verify(served, token)
        served.body, served.encoding = gzip.compress(keys), "gzip"
        assert _verify(served, token)["fhirUser"] == f"{ISSUER}/fhir/Practitioner/1"
    assert refused.value.kind == "ehr_unsupported"
    assert refused.value.detail == (
        f"{served.url}: the answer is encoded as 'br', which is not decoded here"
    )
