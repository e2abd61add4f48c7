"""Signing keys of the sandbox EHR (made fresh at start-up, never written to disk)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["Alg", "SigningKey", "jwks"]

Alg = Literal["RS256", "RS384", "ES384"]


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: Alg
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, kid: str, alg: Alg) -> SigningKey:
        if alg.startswith("RS"):
            return cls(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return cls(kid, alg, ec.generate_private_key(ec.SECP384R1()))

    def public_jwk(self) -> dict[str, Any]:
        pub = self.private_key.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(pub))
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(pub))
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig", "key_ops": ["verify"]})
        return jwk

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        h = {"kid": self.kid, "typ": "JWT", **(headers or {})}
        return jwt.encode(claims, self.private_key, algorithm=self.alg, headers=h)


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}
