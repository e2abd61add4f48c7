"""Which JWT algorithms a public JWK may verify: one rule for where a key is used and where
it is saved.

The CDS service indexes an issuer's keys by what each may verify (``service.cds.auth``);
an administrator's save refuses a configured JWK Set none of whose keys would verify
anything (``service.tenant_config.CdsIssuer``): saved, every call of that EHR was a 401
(found by review). Both ask :func:`verifiable_algorithms`, so the save never accepts a set
the calls then refuse, nor the other way round. It lives here, importing nothing of the
service, because ``service.cds.auth`` imports ``service.tenant_config``.
"""

from __future__ import annotations

import jwt

#: The JWT algorithms a CDS call may be signed with: asymmetric only.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
MIN_RSA_BITS = 2048
#: The curve each ECDSA algorithm is defined on (RFC 7518 3.4): ES256 over a P-384 key is
#: no ES256 signature.
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_RSA = ALGORITHMS.difference(_CURVES)  # the accepted algorithms that are not ECDSA's
_BY_CURVE = {curve: frozenset({alg}) for alg, curve in _CURVES.items()}


def verifiable_algorithms(key: jwt.PyJWK) -> tuple[frozenset[str], str | None]:
    """The algorithms ``key`` (an RSA or EC key: ``tenant_config.jwk_set`` keeps no other
    type) may verify; when its own members leave it none, which one: ``use``, ``key_ops``
    or ``alg``. None with no algorithm: its type, size or curve fits none accepted here.

    A key verifies the algorithms its type and curve allow, and of those only what its own
    members allow: a ``use`` other than ``sig`` (RFC 7517 4.2) or a ``key_ops`` without
    ``verify`` (4.3) marks a key for something else, and an ``alg`` member (4.4) binds it
    to that one algorithm (RFC 8725 3.1). An RSA key shorter than 2048 bits verifies
    nothing (RFC 7518 3.3: "A key of size 2048 bits or larger MUST be used"); PyJWT checks
    it only when it prepares a key itself, which the CDS service does not."""
    if key.key_type == "RSA":
        fitting = _RSA if key.key.key_size >= MIN_RSA_BITS else frozenset()
    else:  # EC
        fitting = _BY_CURVE.get(key.key.curve.name, frozenset())
    if not fitting:
        return fitting, None  # of no algorithm accepted here, whatever its members say
    # PyJWK reads alg from the JWK (an RSA key without one is RS256 to it) and no key_ops:
    # the members as published (jwk_set keeps only keys whose kid, alg and use are strings)
    members = key._jwk_data
    if members.get("use", "sig") != "sig":
        return frozenset(), "use"
    operations = members.get("key_ops")
    if operations is not None and (not isinstance(operations, list) or "verify" not in operations):
        return frozenset(), "key_ops"
    alg = members.get("alg")
    if alg is not None:
        fitting = fitting & {alg}
        if not fitting:
            return fitting, "alg"
    return fitting, None
