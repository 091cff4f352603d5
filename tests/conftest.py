"""Shared fixtures: a real roomcast server on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from roomcast.hub.hub import Hub  # noqa: E402
from roomcast.server.app import App  # noqa: E402
from roomcast.server.config import Settings  # noqa: E402
from roomcast.server.conformance import register_demo_events  # noqa: E402
from roomcast.server.native import serve  # noqa: E402


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


ServerFactory = Callable[..., "asynccontextmanager[RunningServer]"]


@pytest.fixture
def make_app() -> Callable[..., App]:
    """Build an App with the demo events (echo, join, publish, drop) and custom settings."""

    def build(**settings: object) -> App:
        hub = Hub()
        register_demo_events(hub)
        return App(hub, Settings(**settings))  # type: ignore[arg-type]

    return build


@pytest.fixture
async def server(make_app: Callable[..., App]) -> AsyncIterator[RunningServer]:
    async with running(make_app()) as srv:
        yield srv
