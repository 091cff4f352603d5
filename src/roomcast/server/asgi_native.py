"""The native door inside an ASGI app's process: ``RoomcastApp(native_port=...)``.

Imports ``server.runner`` (the door ``roomcast serve`` opens, and its drain) and
``server.app``. Why: through ASGI every delivered message is an ASGI dict and a call into
the host's WebSocket layer, about 3× the CPU of the native door on a fan-out
(docs/performance.md). A FastAPI app that keeps its API on uvicorn can serve its real-time
clients on the native door instead: same process, same event loop, same hub (so a route
that publishes reaches them with no broker hop), its own port. A reverse proxy sends
``/socket.io/``, ``/sse`` and ``/ws`` there and the rest to uvicorn (docs/deploy.md).

It lives and dies with the ASGI lifespan: opened after ``App.startup`` at
``lifespan.startup``, drained and closed at ``lifespan.shutdown`` before ``App.shutdown``,
unless the host's signal already drained it (``server.asgi_drain``). A host that never
sends the lifespan cannot start it, and ``RoomcastApp`` then refuses requests rather than
leave the port silently closed.
"""

from __future__ import annotations

import asyncio
import logging

from roomcast.server.app import App
from roomcast.server.runner import drain, listen
from roomcast.server.tls import server_context

__all__ = ["InProcessDoor", "NEEDS_LIFESPAN"]

logger = logging.getLogger("roomcast.asgi")

NEEDS_LIFESPAN = (
    "RoomcastApp(native_port=...) opens its native door at the ASGI lifespan startup, which this "
    "host did not send: pass FastAPI(lifespan=rt.lifespan) (a mounted app never receives the "
    "lifespan), or serve RoomcastApp itself with the host's lifespan on"
)


class InProcessDoor:
    """roomcast's native door on ``port`` (``Settings.host``), in this event loop, serving ``app``.

    ``port=0`` picks a free port; ``address`` says which once open. With
    ``Settings.ssl_certfile`` it serves TLS with that certificate (read again only by a
    restart: the ``SIGHUP`` reload is ``roomcast serve``'s, the host owns the signals here).
    """

    def __init__(self, app: App, port: int) -> None:
        self.app = app
        self.port = port
        self.server: asyncio.Server | None = None
        self.hurry = asyncio.Event()

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` while open, else ``None``."""
        if self.server is None or not self.server.sockets:
            return None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def open(self) -> None:
        """Listen (the app is started).

        Raises:
            CannotListen: the port cannot be bound.
            CertificateError: ``ssl_certfile`` cannot be used.
        """
        s = self.app.settings
        context = server_context(s.ssl_certfile, s.ssl_keyfile) if s.ssl_certfile else None
        self.server = await listen(self.app, port=self.port, ssl=context)
        address = self.address
        if address is not None:
            scheme = "https" if context is not None else "http"
            logger.info("native door listening on %s://%s:%d (in-process, sharing the hub)", scheme, *address)

    def stop_accepting(self) -> None:
        """Close the listening socket; connections already open stay (the drain's step 2)."""
        if self.server is not None:
            self.server.close()

    async def close(self, *, drained: bool) -> None:
        """Drain the door's clients unless ``drained`` (a signal's drain already moved every
        client of the app), then close it; ``App.shutdown`` is the caller's next step."""
        server = self.server
        if server is None:
            return
        if drained:
            server.close()
        else:
            await drain(self.app, server, self.hurry)
