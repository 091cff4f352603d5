"""``ASGIApp``: mount an ``AsyncServer`` as python-socketio's ``socketio.ASGIApp`` does.

Requests under ``socketio_path`` go to roomcast's Socket.IO transport; ``/sse`` and ``/ws``
(the same rooms over SSE and a plain WebSocket) to roomcast as well; everything else to
``other_asgi_app`` (a FastAPI or Starlette app), or to roomcast's own routes (``/api``,
``/metrics``, ``/healthz`` ...) without one. Lifespan: the server starts with the host app
and shuts down with it; without lifespan it starts on its first request.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from roomcast.server.asgi import RoomcastApp
from roomcast.socketio.server import AsyncServer

__all__ = ["ASGIApp"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_ROOMCAST_PATHS = ("/sse", "/ws")


class ASGIApp:
    """The ASGI application serving ``socketio_server`` (and ``other_asgi_app``).

    Args:
        socketio_server: the ``AsyncServer``.
        other_asgi_app: serves every other path.
        static_files: not supported (serve files with ``other_asgi_app``); must be empty.
        socketio_path: where Socket.IO is served (``"socket.io"``).
        on_startup, on_shutdown: called (awaited if async) after the server starts / before
            it stops.
    """

    def __init__(
        self,
        socketio_server: AsyncServer,
        other_asgi_app: Any = None,
        static_files: dict[str, Any] | None = None,
        socketio_path: str = "socket.io",
        on_startup: Callable[[], Any] | None = None,
        on_shutdown: Callable[[], Any] | None = None,
    ) -> None:
        if static_files:
            raise NotImplementedError("static_files is not supported: serve them with other_asgi_app")
        self.server = socketio_server
        self.other = other_asgi_app
        self.path = "/" + socketio_path.strip("/")
        self.roomcast = RoomcastApp(socketio_server.app)
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path: str = scope.get("path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if path == self.path or path == self.path + "/":
            if self.path != "/socket.io":
                scope = {**scope, "path": root + "/socket.io/"}
            await self.roomcast(scope, receive, send)
        elif self.other is None or path in _ROOMCAST_PATHS:
            await self.roomcast(scope, receive, send)
        else:
            await self.other(scope, receive, send)

    async def _startup(self) -> None:
        await self.roomcast.startup()
        if self.on_startup is not None:
            await _maybe_await(self.on_startup())

    async def _shutdown(self) -> None:
        if self.on_shutdown is not None:
            await _maybe_await(self.on_shutdown())
        await self.roomcast.shutdown()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.other is not None:  # the host app speaks the protocol; this one starts beside it

            async def wrapped_receive() -> MutableMapping[str, Any]:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self._startup()
                elif message["type"] == "lifespan.shutdown":
                    await self._shutdown()
                return message

            await self.other(scope, wrapped_receive, send)
            return
        while True:
            kind = (await receive())["type"]
            step = self._startup if kind == "lifespan.startup" else self._shutdown
            try:
                await step()
            except Exception as exc:
                await send({"type": f"{kind}.failed", "message": repr(exc)})
                return
            await send({"type": f"{kind}.complete"})
            if kind == "lifespan.shutdown":
                return


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value
