"""The CDS Hooks 2.0 client side of the sandbox EHR.

Every call carries ``Authorization: Bearer <JWT>`` signed with the sandbox's key (ES384 by
default, RS384 optional); header ``kid`` and ``jku`` (= the sandbox JWKS URL), claims ``iss`` (the
sandbox EHR base URL), ``sub`` (the sandbox's client id), ``aud`` (the exact URL called),
``iat``, ``exp`` (≤ 5 minutes) and a unique ``jti``. Prefetch templates from discovery are
resolved (``{{context.*}}``, ``{{userPractitionerId}}`` …) and run against FHIR.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .keys import SigningKey

__all__ = ["CdsCall", "CdsClient", "compute_prefetch", "resolve_template"]

_TOKEN = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
FhirFetch = Callable[[str], Awaitable[dict[str, Any] | None]]


def _user_tokens(user_id: str | None) -> dict[str, str]:
    if not user_id or "/" not in user_id:
        return {}
    rtype, rid = user_id.split("/", 1)
    name = {
        "Practitioner": "userPractitionerId",
        "PractitionerRole": "userPractitionerRoleId",
        "Patient": "userPatientId",
        "RelatedPerson": "userRelatedPersonId",
    }.get(rtype)
    return {name: rid} if name else {}


def resolve_template(
    template: str, context: dict[str, Any], user_id: str | None = None
) -> str | None:
    """Fill a prefetch template; ``None`` when a token has no value (the key is then omitted)."""
    users = _user_tokens(user_id if user_id is not None else context.get("userId"))
    missing = False

    def value(m: re.Match[str]) -> str:
        nonlocal missing
        token = m.group(1)
        if token.startswith("context."):
            cur: Any = context
            for part in token.split(".")[1:]:
                cur = cur.get(part) if isinstance(cur, dict) else None
            if isinstance(cur, str | int | float) and not isinstance(cur, bool):
                return str(cur)
            if isinstance(cur, list) and cur and all(isinstance(x, str) for x in cur):
                return ",".join(cur)
            missing = True
            return ""
        if token in users:
            return users[token]
        missing = True
        return ""

    out = _TOKEN.sub(value, template)
    return None if missing else out


async def compute_prefetch(
    templates: dict[str, str], context: dict[str, Any], fetch: FhirFetch, user_id: str | None = None
) -> dict[str, Any]:
    """Run each resolved template against FHIR (a read or a search); omit what cannot be had."""
    out: dict[str, Any] = {}
    for key, template in templates.items():
        query = resolve_template(template, context, user_id)
        if query is None:
            continue
        result = await fetch(query.lstrip("/"))
        if result is not None:
            out[key] = result
    return out


@dataclass
class CdsCall:
    """One hook call: what was sent and what came back."""

    service_id: str
    url: str
    request: dict[str, Any]
    jwt: str
    status: int
    response: dict[str, Any] | None
    error: str | None = None
    cards: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CdsClient:
    issuer: str  # the sandbox EHR base URL
    jwks_url: str
    key: SigningKey
    client_id: str = "kindreflex-sandbox-ehr"
    jwt_lifetime: int = 300
    timeout: float = 10.0
    clock: Callable[[], float] | None = None

    def sign(self, aud: str) -> str:
        import time

        now = int((self.clock or time.time)())
        claims = {
            "iss": self.issuer,
            "sub": self.client_id,
            "aud": aud,
            "iat": now,
            "exp": now + min(self.jwt_lifetime, 300),
            "jti": str(uuid.uuid4()),
        }
        return self.key.sign(claims, headers={"jku": self.jwks_url})

    def _headers(self, aud: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.sign(aud)}", "Accept": "application/json"}

    async def discover(self, http: httpx.AsyncClient, cds_base: str) -> list[dict[str, Any]]:
        url = f"{cds_base.rstrip('/')}/cds-services"
        r = await http.get(url, headers=self._headers(url), timeout=self.timeout)
        r.raise_for_status()
        services = r.json().get("services", [])
        return [s for s in services if isinstance(s, dict)]

    async def call(
        self,
        http: httpx.AsyncClient,
        cds_base: str,
        service: dict[str, Any],
        *,
        context: dict[str, Any],
        fetch: FhirFetch | None,
        fhir_server: str | None,
        fhir_authorization: dict[str, Any] | None,
    ) -> CdsCall:
        sid = str(service["id"])
        url = f"{cds_base.rstrip('/')}/cds-services/{sid}"
        body: dict[str, Any] = {
            "hook": service["hook"],
            "hookInstance": str(uuid.uuid4()),
            "context": context,
        }
        if fhir_server:
            body["fhirServer"] = fhir_server
        if fhir_authorization and fhir_server:
            body["fhirAuthorization"] = fhir_authorization
        templates = service.get("prefetch") or {}
        if templates and fetch is not None:
            body["prefetch"] = await compute_prefetch(templates, context, fetch)
        token = self.sign(url)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            r = await http.post(url, json=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            return CdsCall(sid, url, body, token, 0, None, f"{type(exc).__name__}: {exc}")
        try:
            data = r.json()
        except ValueError:
            data = None
        call = CdsCall(
            sid, url, body, token, r.status_code, data if isinstance(data, dict) else None
        )
        if r.status_code != 200:
            call.error = f"HTTP {r.status_code}: {r.text[:500]}"
        elif call.response is not None:
            call.cards = [c for c in call.response.get("cards", []) if isinstance(c, dict)]
        return call

    async def feedback(
        self, http: httpx.AsyncClient, cds_base: str, service_id: str, items: list[dict[str, Any]]
    ) -> httpx.Response:
        url = f"{cds_base.rstrip('/')}/cds-services/{service_id}/feedback"
        return await http.post(
            url, json={"feedback": items}, headers=self._headers(url), timeout=self.timeout
        )
