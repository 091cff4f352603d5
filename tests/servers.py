"""A real roomcast server on 127.0.0.1 with an ephemeral port, for tests in any folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.native import DoorCounters, DoorLimits, serve


@dataclass
class RunningServer:
    app: App
    host: str
    port: int
    counters: DoorCounters = field(default_factory=DoorCounters)

    @property
    def hub(self) -> Hub:
        return self.app.hub

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@asynccontextmanager
async def running(app: App) -> AsyncIterator[RunningServer]:
    """Serve ``app`` on the native door at 127.0.0.1:0 for the duration of the block."""
    s = app.settings
    await app.startup()
    counters = app.door_counters  # the ones its /metrics reads
    server = await serve(app, "127.0.0.1", 0, limits=DoorLimits.from_settings(s), counters=counters)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield RunningServer(app, host, port, counters)
    finally:
        server.close()
        await app.shutdown()


@asynccontextmanager
async def uvicorn_running(asgi_app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with a real uvicorn on 127.0.0.1:0; yields its base URL."""
    import uvicorn

    class _Server(uvicorn.Server):
        def __init__(self, config: uvicorn.Config) -> None:
            super().__init__(config)
            self.ready = asyncio.Event()

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                self.ready.set()

    config = uvicorn.Config(
        asgi_app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", timeout_graceful_shutdown=2
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            ready = asyncio.create_task(server.ready.wait())
            await asyncio.wait((ready, task), return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
        assert server.ready.is_set(), "uvicorn did not start"
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
