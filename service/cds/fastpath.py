"""The CDS Hooks endpoints served without the app's router.

The EHR waits on every hook call, and for each of them FastAPI matched the path against
every route of the app (the SMART pages, the admin API, the social service…) and solved
a dependency graph — more CPU than the card rules themselves. The CDS handlers need only
the ``Request``, so this pure ASGI middleware recognises their three paths (at the root
and under ``/t/{tenant}``) and calls the handlers directly. The router keeps the same
routes: they document the endpoints in OpenAPI and answer anything this dispatch leaves
alone (another method → 405).

``scope["route"]`` is set to a route with the same template as the router's, so the
request metrics keep their route templates.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.cds.router import call_service, discovery, feedback

_PATH = re.compile(
    r"(?:/t/(?P<tenant>[^/]+))?/cds-services(?:/(?P<service_id>[^/]+)(?P<feedback>/feedback)?)?"
)
Handler = Callable[..., Awaitable[Response]]


class CdsFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[str, Route] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self._target(scope) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        handler, path_params, template = target
        scope["path_params"] = path_params
        route = self._routes.get(template)
        if route is None:
            route = self._routes[template] = Route(template, handler)
        scope["route"] = route
        arguments: dict[str, Any] = {}
        if "service_id" in path_params:
            arguments["service_id"] = path_params["service_id"]
        response = await handler(request=Request(scope, receive), **arguments)
        await response(scope, receive, send)

    @staticmethod
    def _target(scope: Scope) -> tuple[Handler, dict[str, str], str] | None:
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            return None
        tenant, service_id, to_feedback = match.group("tenant", "service_id", "feedback")
        handler: Handler
        if service_id is None:
            if scope["method"] != "GET":
                return None
            handler, template = discovery, "/cds-services"
        elif scope["method"] != "POST":
            return None
        elif to_feedback:
            handler, template = feedback, "/cds-services/{service_id}/feedback"
        else:
            handler, template = call_service, "/cds-services/{service_id}"
        params = {"service_id": service_id} if service_id is not None else {}
        if tenant is not None:
            params["tenant"] = tenant
            template = "/t/{tenant}" + template
        return handler, params, template
