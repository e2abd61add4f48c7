"""Requests through the service's outbound transport (``service.outbound``) with a network
backend of the test's choosing: a guarded one whose resolver answers as the test says."""

from __future__ import annotations

import anyio
import httpcore
import httpx

from service import outbound


def get_with(backend: httpcore.AsyncNetworkBackend, url: str) -> httpx.Response:
    """GET ``url`` through the service's transport connecting with ``backend`` (a guarded
    one with a stand-in resolver): :class:`BlockingClient` takes no backend."""

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=outbound.async_transport(backend)) as http:
            return await http.get(url)

    return anyio.run(get)
