"""The CDS Hooks endpoints served without the app's router and middleware stack.

The EHR waits on every hook call, and for each of them FastAPI matched the path against
every route of the app (the SMART pages, the admin API, the social service…), solved a
dependency graph and passed five middleware layers — more CPU than the card rules. The
CDS handlers need only the ``Request``, so ``CdsFastPath`` is the app's outermost ASGI
layer (``service.app.KindreflexApp``): it recognises their three paths (at the root and
under ``/t/{tenant}``) and calls the handlers directly. The router keeps the same
routes: they document the endpoints in OpenAPI and answer anything this dispatch leaves
alone (another method → 405).

What the skipped layers did for these calls is done here: request metrics (with the
router's route templates), a JSON 500 for an unexpected error, CORS
(``service.cds.cors``: the preflight ``OPTIONS`` and ``Access-Control-Allow-Origin``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import tenant_slug, tenants_of
from service.cds import cors
from service.cds.router import DEFAULT_HEADERS, call_service, cds_error, discovery, feedback
from service.observability import CLIENT_CLOSED, Metrics, measured
from service.tenancy import UnknownTenantError

log = logging.getLogger(__name__)

_PATH = re.compile(
    r"(?:/t/(?P<tenant>[^/]+))?/cds-services(?:/(?P<service_id>[^/]+)(?P<feedback>/feedback)?)?"
)
Handler = Callable[..., Awaitable[Response]]
_HANDLERS: tuple[tuple[Handler, str], ...] = (
    (discovery, "/cds-services"),
    (call_service, "/cds-services/{service_id}"),
    (feedback, "/cds-services/{service_id}/feedback"),
)


class CdsFastPath:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics
        self._routes = {
            prefix + path: Route(prefix + path, handler)
            for handler, path in _HANDLERS
            for prefix in ("", "/t/{tenant}")
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        target = self._target(scope["method"], match) if match else None
        if match is None or (target is None and scope["method"] != "OPTIONS"):
            await self.app(scope, receive, send)
            return

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            await self._answer(scope, receive, send, match, target)

        await measured(self._metrics, answer, scope, receive, send)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        match: re.Match[str],
        target: tuple[Handler, str] | None,
    ) -> None:
        try:
            response = await self._response(scope, receive, match, target)
        except ClientDisconnect:  # as the app answers it on other paths (service.app)
            log.info("client closed the request", extra={"fields": {"path": scope["path"]}})
            response = Response(status_code=CLIENT_CLOSED)
        except Exception:  # what Starlette's ServerErrorMiddleware does for other paths
            log.exception("CDS endpoint failed", extra={"fields": {"path": scope["path"]}})
            response = cds_error(500, "internal", "unexpected error; it is logged")
        await response(scope, receive, send)

    async def _response(
        self,
        scope: Scope,
        receive: Receive,
        match: re.Match[str],
        target: tuple[Handler, str] | None,
    ) -> Response:
        params = match.groupdict()
        scope["path_params"] = {k: params[k] for k in ("tenant", "service_id") if params[k]}
        request = Request(scope, receive)
        origin = request.headers.get("origin")
        allowed = origin is not None and await _allowed(request, origin)
        if target is None:  # a CORS preflight
            response: Response = _preflight(origin, allowed)
        else:
            handler, template = target
            scope["route"] = self._routes[template]
            service = {"service_id": match["service_id"]} if match["service_id"] else {}
            response = await handler(request=request, **service)
            if origin is not None and allowed:
                response.headers.update(cors.response_headers(origin))
        return response

    @staticmethod
    def _target(method: str, match: re.Match[str]) -> tuple[Handler, str] | None:
        tenant, service_id, to_feedback = match.group("tenant", "service_id", "feedback")
        handler: Handler
        if service_id is None:
            if method != "GET":
                return None
            handler, template = discovery, "/cds-services"
        elif method != "POST":
            return None
        elif to_feedback:
            handler, template = feedback, "/cds-services/{service_id}/feedback"
        else:
            handler, template = call_service, "/cds-services/{service_id}"
        if tenant is not None:
            template = "/t/{tenant}" + template
        return handler, template


async def _allowed(request: Request, origin: str) -> bool:
    try:
        return cors.allowed(await tenants_of(request).current(tenant_slug(request)), origin)
    except (UnknownTenantError, SQLAlchemyError):  # the handler answers 404 or 503
        return False


def _preflight(origin: str | None, allowed: bool) -> Response:
    if origin is None or not allowed:
        reason = "this origin is not registered as a web origin of the hospital's EHR"
        return cds_error(403, "origin_not_allowed", reason)
    # the app's default headers, as the refusal above has them (found by review: only the
    # preflight's 204 had none)
    return Response(status_code=204, headers=DEFAULT_HEADERS | cors.preflight_headers(origin))
