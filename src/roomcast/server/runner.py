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
from roomcast.server.native import DoorLimits, serve

__all__ = ["run", "serve_app"]


async def serve_app(app: App, *, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Serve ``app`` until cancelled or signalled; calls ``on_ready(host, port)`` once listening."""
    s = app.settings
    await app.startup()
    server = await serve(app, s.host, s.port, limits=DoorLimits.from_settings(s))
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
