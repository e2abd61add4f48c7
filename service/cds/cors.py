"""CORS for the CDS endpoints, for CDS clients that run in the EHR's web page.

CDS Hooks 2.0 expects CDS services to support CORS for browser-based CDS clients and
leaves the policy to the implementer. Ours: an origin is allowed when one of the
hospital's EHR registrations lists it in ``frame_origins`` (the EHR's web origins, which
the app's CSP trusts already). No credentials are involved — the EHR's JWT in the
``Authorization`` header is the authentication — so no cookie is ever sent cross-origin.
"""

from __future__ import annotations

from service.tenancy import TenantContext

MAX_AGE_SECONDS = 600
ALLOWED_HEADERS = "Authorization, Content-Type, Accept-Language"


def allowed(tenant: TenantContext, origin: str) -> bool:
    return any(origin in registration.frame_origins for registration in tenant.config.registrations)


def response_headers(origin: str) -> dict[str, str]:
    """Headers of an answer to an allowed origin (``Vary``: caches must key on the origin)."""
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def preflight_headers(origin: str) -> dict[str, str]:
    return response_headers(origin) | {
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
    }
