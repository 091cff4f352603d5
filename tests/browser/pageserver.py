"""A page on an origin of its own (127.0.0.1, ephemeral port), so the browser's requests to
roomcast are cross-origin and roomcast's CORS policy is exercised."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serve_page(render: Callable[[web.Request], str]) -> AsyncIterator[str]:
    """Serve ``render(request)`` as HTML at ``/`` for the duration of the block; yields the origin."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=render(request), content_type="text/html")

    async def no_icon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    site = web.Application()
    site.router.add_get("/", index)
    site.router.add_get("/favicon.ico", no_icon)
    runner = web.AppRunner(site, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
