"""Run an ``App`` on the native front door until SIGINT/SIGTERM, with a graceful stop.

Imports ``server.app`` and ``server.native``. uvloop is used when installed (it is a
dependency on every platform it supports).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.native import DoorLimits, serve

__all__ = ["run", "serve_app", "door_limits"]


def door_limits(settings: Settings) -> DoorLimits:
    """The native door's share of the settings (docs/limits.md)."""
    return DoorLimits(
        max_body_bytes=settings.max_payload,
        max_buffer_bytes=settings.max_buffer_bytes,
        output_high_water=settings.output_high_water,
        max_request_line=settings.max_request_line,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        request_timeout=settings.request_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        max_connections=settings.max_connections,
        max_connections_per_address=settings.max_connections_per_address,
    )


async def serve_app(app: App, *, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Serve ``app`` until cancelled or signalled; calls ``on_ready(host, port)`` once listening."""
    s = app.settings
    await app.startup()
    server = await serve(app, s.host, s.port, limits=door_limits(s))
    host, port = server.sockets[0].getsockname()[:2]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / Windows
            pass
    if on_ready is not None:
        on_ready(host, port)
    try:
        await stop.wait()
    finally:
        server.close()
        await app.shutdown()


def run(app: App, *, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Blocking entry point for the CLI and scripts."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        asyncio.run(serve_app(app, on_ready=on_ready))
        return
    if sys.version_info >= (3, 12):
        uvloop.run(serve_app(app, on_ready=on_ready))
    else:
        uvloop.install()
        asyncio.run(serve_app(app, on_ready=on_ready))
