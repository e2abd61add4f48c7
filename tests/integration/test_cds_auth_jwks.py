"""An issuer's JWK Set that is not one, or is too large or too slow: the CDS call is refused
with 401 and the reason, never a 500 nor a wait; a configured one is refused when an admin
saves it.

The real app on SQLite and PostgreSQL, real signed JWTs, the JWK Set served over real
HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sandbox.keys import Alg, SigningKey
from service.cds.auth import (
    JWKS_MAX_BYTES,
    JWKS_RETRY_SECONDS,
    JWKS_STALE_SECONDS,
    JWKS_TIMEOUT_SECONDS,
    JWKS_TTL_SECONDS,
    CdsAuthError,
    JwksCache,
)
from service.db.base import Database
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import CdsIssuer
from tests.support.cds import (
    AUD,
    EHR_JWKS,
    EHR_KEY,
    PUBLIC_URL,
    Ehr,
    admin_headers,
    call_encounter_start,
    make_cds_app,
    store_unchecked,
    tenant_config,
)
from tests.support.served import Counted, ServedJson, Trickled

BAD_ALG: dict[str, object] = {"keys": [{**EHR_KEY.public_jwk(), "alg": ["ES384"]}]}


@pytest.fixture
def app(database_url: str, database: Database) -> FastAPI:
    return make_cds_app(database_url, database)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url=PUBLIC_URL) as test_client:
        yield test_client


def without_jku(ehr: Ehr) -> str:
    """A token signed by the EHR's key that names no jku: verified with the configured keys."""
    now = int(time.time())
    claims = {"iss": ehr.issuer, "aud": AUD, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
    return ehr.key.sign(claims)


UNUSABLE: dict[str, tuple[bytes, str]] = {
    "a list": (b"[]", "is unusable: a JWK Set is a JSON object"),
    "null": (b"null", "is unusable: a JWK Set is a JSON object"),
    "a string": (b'"x"', "is unusable: a JWK Set is a JSON object"),
    "keys not a list": (b'{"keys": {}}', "is unusable: a JWK Set is a JSON object"),
    "a key's alg a list": (json.dumps(BAD_ALG).encode(), "is unusable: the JWK Set has no usable"),
    "not JSON": (b'{"keys": [', "could not be read"),
    "nested too deeply": (b"[" * 100_000, "could not be read"),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_a_fetched_jwk_set_that_is_not_one_is_refused_with_401_and_the_reason(
    app: FastAPI, client: TestClient, case: str
) -> None:
    body, reason = UNUSABLE[case]
    with ServedJson(body, path="/jwks.json") as jwks:
        ehr = Ehr(EHR_KEY, jwks.url, "https://ehr.az-gent.example/cds")
        store_unchecked(app, tenant_config(ehr))
        refused = call_encounter_start(client, ehr.token(AUD))
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "invalid_token"
        assert f"the issuer's JWK Set at {jwks.url} {reason}" in refused.json()["reason"]
        # a failed fetch is not cached: once the EHR serves its keys, its calls get through
        jwks.body = EHR_JWKS
        assert call_encounter_start(client, ehr.token(AUD)).status_code == 200


EHR = Ehr(EHR_KEY, "http://127.0.0.1:9/unused", "https://ehr.az-gent.example/cds")


def test_a_configured_jwk_set_that_is_not_one_is_refused_when_an_admin_saves_it(
    app: FastAPI, client: TestClient, database: Database
) -> None:
    store_unchecked(app, tenant_config(EHR))
    headers = admin_headers(app, database)
    registration = client.get("/admin/api/registrations", headers=headers).json()[0]
    unusable: list[object] = [{}, {"keys": "x"}, {"keys": []}, BAD_ALG]
    for jwks in unusable:
        changed = {**registration, "cds_issuers": [{"iss": EHR.issuer, "jwks": jwks}]}
        refused = client.put("/admin/api/registrations/ehr", headers=headers, json=changed)
        assert refused.status_code == 422, refused.text
        (issue,) = refused.json()["issue"]
        assert issue["expression"] == ["registrations[0].cds_issuers[0].jwks"]
        assert "JWK Set" in issue["diagnostics"]
    assert call_encounter_start(client, without_jku(EHR)).status_code == 401  # nothing was saved
    good = {**registration, "cds_issuers": [{"iss": EHR.issuer, "jwks": json.loads(EHR_JWKS)}]}
    assert client.put("/admin/api/registrations/ehr", headers=headers, json=good).is_success
    assert call_encounter_start(client, without_jku(EHR)).status_code == 200


def test_a_configured_jwk_set_stored_before_the_check_is_a_401_not_a_500(
    app: FastAPI, client: TestClient
) -> None:
    """A version stored before saves were checked still loads; its issuer is refused."""
    store_unchecked(app, tenant_config(EHR, jwks=BAD_ALG))
    refused = call_encounter_start(client, without_jku(EHR))
    assert refused.status_code == 401, refused.text
    reason = refused.json()["reason"]
    assert f"the configured JWK Set of {EHR.issuer!r} is unusable" in reason


def test_a_jwk_set_larger_than_the_limit_is_refused_without_reading_it_all(
    app: FastAPI, client: TestClient
) -> None:
    padded = EHR_JWKS[:-1] + b" " * JWKS_MAX_BYTES + b"}"  # the EHR's real keys, padded
    with ServedJson(padded, path="/jwks.json") as jwks:
        ehr = Ehr(EHR_KEY, jwks.url, "https://ehr.az-gent.example/cds")
        store_unchecked(app, tenant_config(ehr))
        refused = call_encounter_start(client, ehr.token(AUD))
        assert refused.status_code == 401, refused.text
        reason = refused.json()["reason"]
        assert reason == f"the issuer's JWK Set at {jwks.url} is larger than {JWKS_MAX_BYTES} bytes"
        jwks.body = EHR_JWKS
        assert call_encounter_start(client, ehr.token(AUD)).status_code == 200


def test_a_jwk_set_trickled_slower_than_the_deadline_is_refused_in_time(
    app: FastAPI, client: TestClient
) -> None:
    """Each byte comes within httpx's per-read timeout; the whole set would take 10 s."""
    with Trickled(EHR_JWKS, pause=10 / len(EHR_JWKS), path="/jwks.json") as jwks:
        ehr = Ehr(EHR_KEY, jwks.url, "https://ehr.az-gent.example/cds")
        store_unchecked(app, tenant_config(ehr))
        started = time.monotonic()
        refused = call_encounter_start(client, ehr.token(AUD))
        elapsed = time.monotonic() - started
        assert refused.status_code == 401, refused.text
        assert "could not be read (TimeoutError)" in refused.json()["reason"]
        assert elapsed < JWKS_TIMEOUT_SECONDS + 4  # room for a loaded machine; the set: 10 s


def test_a_jwk_set_url_in_cleartext_off_this_machine_is_never_fetched(
    app: FastAPI, client: TestClient
) -> None:
    """RFC 7515: a JWK Set is read over TLS. One read in clear could be swapped on the way,
    and every JWT signed with the swapped-in key would pass. (http on loopback, as in the
    other tests here, never leaves the machine.)"""
    url = "http://ehr.az-gent.example/jwks.json"
    ehr = Ehr(EHR_KEY, url, "https://ehr.az-gent.example/cds")
    store_unchecked(app, tenant_config(ehr))
    refused = call_encounter_start(client, ehr.token(AUD))
    assert refused.status_code == 401, refused.text
    assert refused.json()["reason"] == f"the issuer's JWK Set at {url} is not served over https"


def test_a_compressed_jwk_set_is_read_and_an_undecodable_one_refused(
    app: FastAPI, client: TestClient
) -> None:
    """An EHR's gateway compressing the keys: brotli (not decoded here) is refused as
    unreadable, not parsed as the keys; gzip is read. Before, both were parsed as sent."""
    with ServedJson(EHR_JWKS, path="/jwks.json", encoding="br") as jwks:
        ehr = Ehr(EHR_KEY, jwks.url, "https://ehr.az-gent.example/cds")
        store_unchecked(app, tenant_config(ehr))
        refused = call_encounter_start(client, ehr.token(AUD))
        assert refused.status_code == 401, refused.text
        reason = refused.json()["reason"]
        assert (
            reason == f"the issuer's JWK Set at {jwks.url} could not be read (UndecodableBodyError)"
        )
        jwks.body, jwks.encoding = gzip.compress(EHR_JWKS), "gzip"
        assert call_encounter_start(client, ehr.token(AUD)).status_code == 200


def _signed(
    private_key: Any, alg: str, kid: str, claims: dict[str, Any], jku: str | None = None
) -> str:
    """A compact JWS made by hand: PyJWT's encode refuses a key that does not fit its alg,
    as an EHR's own signing library might not. With ``jku``, the header names it."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    header = {"alg": alg, "kid": kid, "typ": "JWT"} | ({"jku": jku} if jku else {})
    signing_input = f"{part(header)}.{part(claims)}"
    signature = jwt.get_algorithm_by_name(alg).sign(signing_input.encode(), private_key)
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": EHR.issuer, "aud": AUD, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}


def test_a_key_too_weak_or_of_another_curve_than_the_alg_verifies_nothing(
    app: FastAPI, client: TestClient
) -> None:
    """RFC 7518: RSA keys of 2048 bits or more (3.3); ES256 is ECDSA on P-256 (3.4). The
    signature was verified with whatever key the kid named (found by review)."""
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    weak = SigningKey("weak", "RS256", short)
    store_unchecked(app, tenant_config(EHR, jwks={"keys": [weak.public_jwk()]}))
    refused = call_encounter_start(client, _signed(short, "RS256", "weak", _claims()))
    assert refused.status_code == 401, refused.text

    store_unchecked(app, tenant_config(EHR, jwks=json.loads(EHR_JWKS)))  # a P-384 key
    other_curve = _signed(EHR_KEY.private_key, "ES256", EHR_KEY.kid, _claims())
    assert call_encounter_start(client, other_curve).status_code == 401
    fitting = _signed(EHR_KEY.private_key, "ES384", EHR_KEY.kid, _claims())
    assert call_encounter_start(client, fitting).status_code == 200


def test_a_jwk_set_unreadable_again_keeps_its_keys_and_is_not_fetched_each_call() -> None:
    """Before, a failed refetch dropped keys that still worked and was not remembered: every
    call, anyone's naming the issuer, fetched again and waited up to the fetch's deadline
    (found by review). A clock of the test's own: the cache's times are minutes long."""
    now = [1000.0]

    async def scenario(served: Counted) -> None:
        async with httpx.AsyncClient() as http:
            cache = JwksCache(http, clock=lambda: now[0])
            assert len(await cache.keys(served.url, EHR_KEY.kid, EHR.issuer)) == 1
            served.body = b"not a JWK Set"
            now[0] += JWKS_TTL_SECONDS + 1  # due for a refetch, which fails
            for _ in range(5):  # the keys last read
                assert len(await cache.keys(served.url, EHR_KEY.kid, EHR.issuer)) == 1
            assert served.requests == 2  # one refetch, not five
            now[0] += JWKS_RETRY_SECONDS
            assert len(await cache.keys(served.url, EHR_KEY.kid, EHR.issuer)) == 1
            assert served.requests == 3
            now[0] += JWKS_STALE_SECONDS  # the keys last read are too old to stand in
            with pytest.raises(CdsAuthError, match="could not be read"):
                await cache.keys(served.url, EHR_KEY.kid, EHR.issuer)

    with Counted(EHR_JWKS) as served:
        asyncio.run(scenario(served))


def _private_jwk(key: SigningKey) -> dict[str, Any]:
    """The EHR's signing key as a JWK, its private members and all."""
    private = key.private_key
    jwk = (
        RSAAlgorithm.to_jwk(private)
        if isinstance(private, rsa.RSAPrivateKey)
        else ECAlgorithm.to_jwk(private)
    )
    return {**json.loads(jwk), "kid": key.kid, "alg": key.alg}


def test_a_configured_key_set_stored_with_private_keys_is_read_as_its_public_keys(
    app: FastAPI, client: TestClient, database: Database
) -> None:
    """A version stored before a private key was refused (found by review) still loads:
    read without its private members, what is left of each key is the issuer's public key,
    and the EHR's calls verify with it (an RSA private key verified none before). The
    private members are in no answer of the admin API any more, its audit masks them."""
    rsa_key = SigningKey.generate("ehr-rsa-1", "RS384")
    private: dict[str, Any] = {"keys": [_private_jwk(EHR_KEY), _private_jwk(rsa_key)]}
    jwks: dict[str, object] = private
    older = CdsIssuer.model_construct(iss=EHR.issuer, jku=[], jwks=jwks, subjects=[])
    config = tenant_config(EHR)
    (registration,) = config.registrations
    stored = registration.model_copy(update={"cds_issuers": [older]})
    before = config.model_copy(update={"registrations": [stored]})  # as an older version did
    TenantDirectory(database, SecretBox(app.state.settings.secret_key)).save("default", before, "t")

    assert call_encounter_start(client, without_jku(EHR)).status_code == 200
    with_rsa = Ehr(rsa_key, EHR.jwks_url, EHR.issuer)
    assert call_encounter_start(client, without_jku(with_rsa)).status_code == 200

    headers = admin_headers(app, database)
    secrets = [key["d"] for key in private["keys"]] + [private["keys"][1]["qi"]]
    for path in ("/admin/api/config", "/admin/api/config.yaml", "/admin/api/registrations"):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 200
        assert not [secret for secret in secrets if secret in answer.text], path
    read = client.get("/admin/api/registrations", headers=headers).json()[0]
    (keys,) = [issuer["jwks"]["keys"] for issuer in read["cds_issuers"]]
    assert [sorted(key) for key in keys] == [
        ["alg", "crv", "kid", "kty", "x", "y"],
        ["alg", "e", "key_ops", "kid", "kty", "n"],  # PyJWT writes key_ops for RSA
    ]
    # the next change (here of the name) stores the keys as read, public; the audit shows
    # the private members masked, then gone
    read["name"] = "AZ Gent EPD"
    assert client.put("/admin/api/registrations/ehr", headers=headers, json=read).is_success
    audit = client.get("/admin/api/audit", headers=headers)
    assert not [secret for secret in secrets if secret in audit.text]
    name, change = audit.json()["changes"][0]["changes"]
    assert name == {"path": "registrations[ehr].name", "old": "AZ Gent EHR", "new": "AZ Gent EPD"}
    assert change["path"] == "registrations[ehr].cds_issuers"
    assert change["old"][0]["jwks"]["keys"][1]["d"] == "***"
    assert "d" not in change["new"][0]["jwks"]["keys"][1]
    assert call_encounter_start(client, without_jku(with_rsa)).status_code == 200


@pytest.mark.parametrize("beside", ["alone", "beside a public key"])
def test_a_fetched_key_published_with_its_private_half_verifies_nothing_and_is_logged(
    app: FastAPI, client: TestClient, caplog: pytest.LogCaptureFixture, beside: str
) -> None:
    """An issuer publishing its private key at its JWKS URL lets anyone sign its hook
    calls: that key verifies no call (401, as an unknown key; an EC one verified before),
    and the EHR's administrator reads at ERROR, once per fetch, the issuer, the key's kid
    and the members, never their values. A public key beside it still verifies."""
    rotated = SigningKey.generate("ehr-key-2", "ES384")
    exposed = _private_jwk(EHR_KEY)
    keys = [exposed] + ([rotated.public_jwk()] if beside != "alone" else [])
    with ServedJson(json.dumps({"keys": keys}).encode(), path="/jwks.json") as jwks:
        ehr = Ehr(EHR_KEY, jwks.url, "https://ehr.az-gent.example/cds")
        store_unchecked(app, tenant_config(ehr))
        with caplog.at_level(logging.ERROR, logger="service.cds.auth"):
            for _ in range(2):  # the second call reads the keys cached: no second log
                refused = call_encounter_start(client, ehr.token(AUD))
                assert refused.status_code == 401, refused.text
                assert "no key of the issuer matches the JWT's kid" in refused.json()["reason"]
            if beside != "alone":
                signed = Ehr(rotated, jwks.url, ehr.issuer).token(AUD)
                assert call_encounter_start(client, signed).status_code == 200
    (logged,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "publishes private keys" in logged.getMessage()
    assert logged.fields == {  # type: ignore[attr-defined]
        "issuer": ehr.issuer,
        "jwks_url": jwks.url,
        "keys": [{"kid": EHR_KEY.kid, "members": ["d"]}],
    }
    assert exposed["d"] not in caplog.text


def _jwk(key: SigningKey, **members: object) -> dict[str, Any]:
    """The key's public JWK (use sig, key_ops verify, its alg) with ``members`` set; a
    member given None is left out."""
    jwk = {**key.public_jwk(), **members}
    return {member: value for member, value in jwk.items() if value is not None}


#: A key whose own members forbid it to verify the JWT's signature: (the key's type and
#: alg, its members changed, the alg the JWT is signed with, the member logged).
UNFIT: dict[str, tuple[Alg, dict[str, object], str, str | None]] = {
    "use enc": ("ES384", {"use": "enc", "key_ops": None}, "ES384", "use"),
    "key_ops without verify": (
        "ES384",
        {"use": None, "key_ops": ["encrypt", "wrapKey"]},
        "ES384",
        "key_ops",
    ),
    "key_ops a string": ("ES384", {"use": None, "key_ops": "verify"}, "ES384", "key_ops"),
    # an RSA key for RS256 only (RFC 8725 3.1): not logged, it verifies RS256
    "alg of another RSA algorithm": ("RS256", {}, "PS256", None),
    "alg of another curve": ("ES384", {"alg": "ES256"}, "ES384", "alg"),
}


#: A key no CDS call could be verified with, whatever its members say or by them: (its
#: public JWK, what the refusal says of it).
def _verifying_nothing() -> dict[str, tuple[dict[str, Any], str]]:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    keys = {
        case: (_jwk(SigningKey.generate("ehr-unfit", kind), **members), f"its {member}")
        for case, (kind, members, _, member) in UNFIT.items()
        if member is not None
    }
    weak = SigningKey("ehr-unfit", "RS256", short).public_jwk()
    k1 = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256K1()).public_key(), as_dict=True)
    fits_none = "its type, size or curve fits no algorithm accepted"
    return keys | {
        "RSA of 1024 bits": (weak, fits_none),
        "EC on secp256k1 (ES256K)": ({**k1, "kid": "ehr-unfit", "alg": "ES256K"}, fits_none),
    }


VERIFYING_NOTHING = _verifying_nothing()


@pytest.mark.parametrize("case", list(VERIFYING_NOTHING))
def test_a_configured_jwk_set_whose_keys_verify_nothing_is_refused_when_an_admin_saves_it(
    app: FastAPI, client: TestClient, database: Database, case: str
) -> None:
    """A set of only such keys passed the save's check (its shape), and then every call of
    the EHR was a 401 and a WARNING (found by review). The save asks the rule the calls are
    verified with (``jwk_use.verifiable_algorithms``): refused (422), naming each key's kid
    and why, nothing saved. A usable key beside them: saved, and it verifies."""
    store_unchecked(app, tenant_config(EHR))
    version = app.state.tenants.get("default").version
    headers = admin_headers(app, database)
    registration = client.get("/admin/api/registrations", headers=headers).json()[0]
    unfit, why = VERIFYING_NOTHING[case]

    issuers = [{"iss": EHR.issuer, "jwks": {"keys": [unfit]}}]
    changed = {**registration, "cds_issuers": issuers}
    refused = client.put("/admin/api/registrations/ehr", headers=headers, json=changed)

    assert refused.status_code == 422, refused.text
    (issue,) = refused.json()["issue"]
    assert issue["expression"] == ["registrations[0].cds_issuers[0].jwks"]
    assert (
        "the JWK Set has no usable RSA or EC public key: none may verify a CDS call's "
        f"signature (key 'ehr-unfit': {why})"
    ) in issue["diagnostics"]
    assert app.state.tenants.get("default", fresh=True).version == version  # nothing saved
    beside = SigningKey.generate("ehr-key-2", "ES384")
    issuers = [{"iss": EHR.issuer, "jwks": {"keys": [unfit, beside.public_jwk()]}}]
    changed = {**registration, "cds_issuers": issuers}
    assert client.put("/admin/api/registrations/ehr", headers=headers, json=changed).is_success
    token = _signed(beside.private_key, "ES384", beside.kid, _claims())
    assert call_encounter_start(client, token).status_code == 200


@pytest.mark.parametrize("source", ["fetched", "configured"])
@pytest.mark.parametrize("case", list(UNFIT))
def test_a_key_whose_use_key_ops_or_alg_forbids_it_verifies_nothing_and_is_logged(
    app: FastAPI, client: TestClient, caplog: pytest.LogCaptureFixture, case: str, source: str
) -> None:
    """RFC 7517 4.2-4.4, RFC 8725 3.1: a key for encryption, one whose key_ops leave out
    verify, or one whose alg names another algorithm verified the hook call's signature all
    the same (found by review). Now 401, as an unknown key; the EHR's administrator reads at
    WARNING, once per fetch (or parse of the configured set), the issuer, the URL, the
    key's kid and the member, never a key's values. A fitting key beside it verifies."""
    kind, members, alg, member = UNFIT[case]
    key = SigningKey.generate("ehr-unfit", kind)  # fresh: the configured set's parse is cached
    beside = SigningKey.generate("ehr-key-2", "ES384")
    keys: dict[str, object] = {"keys": [_jwk(key, **members), beside.public_jwk()]}
    with (
        ServedJson(json.dumps(keys).encode(), path="/jwks.json") as served,
        caplog.at_level(logging.WARNING, logger="service.cds.auth"),
    ):
        fetched = source == "fetched"
        ehr = Ehr(key, served.url, EHR.issuer)
        store_unchecked(app, tenant_config(ehr, jwks=None if fetched else keys))
        jku = served.url if fetched else None
        for _ in range(2):  # the second call reads the keys as indexed: no second log
            token = _signed(key.private_key, alg, key.kid, _claims(), jku)
            refused = call_encounter_start(client, token)
            assert refused.status_code == 401, refused.text
            reason = f"no key of the issuer matches the JWT's kid and alg {alg}"
            assert refused.json()["reason"] == reason
        fitting = _signed(beside.private_key, "ES384", beside.kid, _claims(), jku)
        assert call_encounter_start(client, fitting).status_code == 200
        if member is None:  # its alg's own algorithm it verifies
            own = _signed(key.private_key, key.alg, key.kid, _claims(), jku)
            assert call_encounter_start(client, own).status_code == 200
    logged = [r for r in caplog.records if "use, key_ops or alg" in r.getMessage()]
    if member is None:
        assert not logged
    else:
        (one,) = logged
        assert one.levelno == logging.WARNING
        assert one.fields == {  # type: ignore[attr-defined]
            "issuer": EHR.issuer,
            "jwks_url": served.url if fetched else None,
            "keys": [{"kid": key.kid, "member": member}],
        }
    public = key.public_jwk()
    values = [public[m] for m in ("n", "e", "x", "y") if m in public]
    assert not [value for value in values if value in caplog.text]


def test_a_key_without_use_key_ops_or_alg_verifies_what_its_type_and_curve_allow(
    app: FastAPI, client: TestClient
) -> None:
    """As before the members were read: a bare RSA key any RSA algorithm, a bare P-384 key
    ES384 and no other ECDSA algorithm."""
    rsa_key = SigningKey.generate("ehr-rsa-bare", "RS256")
    bare = {"use": None, "key_ops": None, "alg": None}
    keys: dict[str, object] = {"keys": [_jwk(rsa_key, **bare), _jwk(EHR_KEY, **bare)]}
    store_unchecked(app, tenant_config(EHR, jwks=keys))
    for alg in ("RS256", "RS512", "PS256", "PS384"):
        token = _signed(rsa_key.private_key, alg, rsa_key.kid, _claims())
        assert call_encounter_start(client, token).status_code == 200, alg
    fitting = _signed(EHR_KEY.private_key, "ES384", EHR_KEY.kid, _claims())
    assert call_encounter_start(client, fitting).status_code == 200
    other_curve = _signed(EHR_KEY.private_key, "ES256", EHR_KEY.kid, _claims())
    assert call_encounter_start(client, other_curve).status_code == 401
