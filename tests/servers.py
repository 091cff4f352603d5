"""A real roomcast server on 127.0.0.1 with an ephemeral port, for tests in any folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.native import serve


@dataclass
class RunningServer:
    app: App
    host: str
    port: int

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
    server = await serve(app, "127.0.0.1", 0, max_body_bytes=s.max_payload, max_buffer_bytes=s.max_buffer_bytes)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield RunningServer(app, host, port)
    finally:
        server.close()
        await app.shutdown()
