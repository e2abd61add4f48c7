"""The sandbox's FHIR endpoint: checks SMART bearer tokens, then reverse-proxies to sekmet.

Clients only ever see the facade base (``{ehr}/fhir``): base URLs in bodies and in the
``Location``/``Content-Location`` headers are rewritten both ways. ``metadata`` and
``.well-known/smart-configuration`` are public; every other request needs a live access token
of this authorization server whose scopes allow the interaction (type + c/r/u/d/s; patient
compartments are not enforced). Missing/unknown/expired token → 401, scope → 403.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .auth import AuthServer
from .scopes import needed_interactions

__all__ = ["FacadeRequest", "FhirFacade", "build_facade_router"]

FORWARD_REQUEST = (
    "accept",
    "content-type",
    "if-match",
    "if-none-match",
    "if-none-exist",
    "if-modified-since",
    "prefer",
    "x-request-id",
)
FORWARD_RESPONSE = (
    "content-type",
    "location",
    "content-location",
    "etag",
    "last-modified",
    "x-request-id",
)


@dataclass(frozen=True)
class FacadeRequest:
    method: str
    path: str
    query: str
    status: int
    client_id: str | None


def _outcome(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return JSONResponse(
        body, status_code=status, headers=headers, media_type="application/fhir+json"
    )


@dataclass
class FhirFacade:
    upstream: str  # sekmet base, e.g. http://127.0.0.1:41234/fhir
    base: str  # facade base, e.g. http://127.0.0.1:8095/fhir
    auth: AuthServer
    http: httpx.AsyncClient
    log: deque[FacadeRequest] = field(default_factory=lambda: deque(maxlen=10_000))

    def _pairs(self, src: str, dst: str) -> list[tuple[bytes, bytes]]:
        return [
            (src.encode(), dst.encode()),
            (quote(src, safe="").encode(), quote(dst, safe="").encode()),
        ]

    def rewrite_out(self, data: bytes) -> bytes:
        for a, b in self._pairs(self.upstream, self.base):
            data = data.replace(a, b)
        return data

    def rewrite_in(self, data: bytes) -> bytes:
        for a, b in self._pairs(self.base, self.upstream):
            data = data.replace(a, b)
        return data

    async def fetch(self, query: str) -> dict[str, Any] | None:
        """A read or search for the EHR itself (trusted, no token); the facade's base URLs."""
        r = await self.http.get(
            f"{self.upstream}/{query.lstrip('/')}", headers={"Accept": "application/fhir+json"}
        )
        if r.status_code != 200:
            return None
        data: dict[str, Any] = json.loads(self.rewrite_out(r.content))
        return data

    async def capability_statement(self) -> Response:
        r = await self.http.get(
            f"{self.upstream}/metadata", headers={"Accept": "application/fhir+json"}
        )
        cs = json.loads(self.rewrite_out(r.content))
        security = {
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ]
                }
            ],
            "extension": [
                {
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "authorize", "valueUri": self.auth.authorize_url},
                        {"url": "token", "valueUri": self.auth.token_url},
                    ],
                }
            ],
        }
        for rest in cs.get("rest", []) or []:
            rest["security"] = security
        cs["implementation"] = {
            "description": "Kindreflex sandbox EHR (FHIR facade)",
            "url": self.base,
        }
        return JSONResponse(cs, media_type="application/fhir+json")

    async def proxy(self, request: Request, path: str) -> Response:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        grant = self.auth.check_access_token(token)
        query = request.url.query
        if grant is None:
            reason = "missing bearer token" if not token else "invalid or expired access token"
            resp = _outcome(
                401,
                "login",
                reason,
                {
                    "WWW-Authenticate": 'Bearer realm="kindreflex-sandbox", '
                    f'error="invalid_token", error_description="{reason}"'
                },
            )
            self.log.append(FacadeRequest(request.method, path, query, 401, None))
            return resp
        raw = await request.body()
        body: Any = None
        if raw and request.method == "POST" and not path.strip("/"):
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        needed = needed_interactions(request.method, path, body)
        # only what the scopes refuse is named: of a transaction, not each of its entries
        refused = [n for n in dict.fromkeys(needed) if not self.auth.grant_allows(grant, [n])]
        if refused:
            self.log.append(FacadeRequest(request.method, path, query, 403, grant.client_id))
            wanted = ", ".join(f"{t}.{i}" for t, i in refused)
            return _outcome(403, "forbidden", f"the token's scopes do not allow {wanted}")
        headers = {
            k: self.rewrite_in(v.encode()).decode()
            for k, v in request.headers.items()
            if k.lower() in FORWARD_REQUEST
        }
        url = f"{self.upstream}/{path}"
        if query:
            url += "?" + self.rewrite_in(query.encode()).decode()
        try:
            upstream = await self.http.request(
                request.method, url, content=self.rewrite_in(raw), headers=headers
            )
        except httpx.HTTPError as exc:
            self.log.append(FacadeRequest(request.method, path, query, 502, grant.client_id))
            return _outcome(502, "transient", f"FHIR server unreachable: {exc}")
        out_headers = {
            k: self.rewrite_out(v.encode()).decode()
            for k, v in upstream.headers.items()
            if k.lower() in FORWARD_RESPONSE
        }
        out_headers.pop("content-type", None)
        self.log.append(
            FacadeRequest(request.method, path, query, upstream.status_code, grant.client_id)
        )
        return Response(
            self.rewrite_out(upstream.content),
            status_code=upstream.status_code,
            headers=out_headers,
            media_type=upstream.headers.get("content-type", "application/fhir+json"),
        )


def build_facade_router(facade: FhirFacade) -> APIRouter:
    router = APIRouter()

    @router.get("/fhir/.well-known/smart-configuration")
    async def smart_configuration() -> JSONResponse:
        return JSONResponse(facade.auth.smart_configuration())

    @router.get("/fhir/metadata")
    async def metadata() -> Response:
        return await facade.capability_statement()

    @router.api_route("/fhir", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    @router.api_route(
        "/fhir/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
    )
    async def fhir(request: Request, path: str = "") -> Response:
        return await facade.proxy(request, path)

    return router
