"""``AsyncNamespace``: python-socketio's class-based handlers, on the facade.

Methods named ``on_<event>`` handle ``<event>`` of the namespace (``on_connect(sid, environ,
auth)``, ``on_disconnect(sid, reason)``); the helpers (``emit``, ``enter_room`` ...) are the
server's, with this namespace as the default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from roomcast.socketio.emit_args import CallOptions, EmitOptions

if TYPE_CHECKING:
    from roomcast.socketio.server import AsyncServer

__all__ = ["AsyncNamespace"]

_Options = TypeVar("_Options", EmitOptions, CallOptions)


async def call_compat(handler: Callable[..., Any], event: str, args: tuple[Any, ...]) -> Any:
    """Call ``handler(*args)`` (awaited when it is a coroutine function); a ``disconnect`` or
    ``connect`` handler written for fewer arguments (no ``reason``, no ``auth``) is called
    again without the last one, as python-socketio does."""
    try:
        result = handler(*args)
    except TypeError:  # raised by the call itself when the arguments do not fit
        if event not in ("connect", "disconnect"):
            raise
        result = handler(*args[:-1])
    if inspect.isawaitable(result):
        return await result
    return result


class AsyncNamespace:
    """Base class for class-based namespaces; register with ``AsyncServer.register_namespace``."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace or "/"
        self.server: AsyncServer | None = None

    def _set_server(self, server: AsyncServer) -> None:
        self.server = server

    def is_asyncio_based(self) -> bool:
        return True

    def _server(self) -> AsyncServer:
        if self.server is None:
            raise RuntimeError("this namespace is not registered with a server (register_namespace)")
        return self.server

    def _here(self, options: _Options) -> _Options:
        """``options`` with this namespace when they name none (python-socketio's rule)."""
        if not options.get("namespace"):
            options["namespace"] = self.namespace
        return options

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Run ``on_<event>``; override to route events otherwise. ``None`` without one."""
        handler = getattr(self, "on_" + (event or ""), None)
        if handler is None:
            return None
        return await call_compat(handler, event, args)

    async def emit(self, event: str, data: Any = None, **options: Unpack[EmitOptions]) -> None:
        await self._server().emit(event, data, **self._here(options))

    async def send(self, data: Any, **options: Unpack[EmitOptions]) -> None:
        await self._server().send(data, **self._here(options))

    async def call(self, event: str, data: Any = None, **options: Unpack[CallOptions]) -> Any:
        return await self._server().call(event, data, **self._here(options))

    async def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        await self._server().enter_room(sid, room, namespace=namespace or self.namespace)

    async def leave_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        await self._server().leave_room(sid, room, namespace=namespace or self.namespace)

    async def close_room(self, room: str, namespace: str | None = None) -> None:
        await self._server().close_room(room, namespace=namespace or self.namespace)

    def rooms(self, sid: str, namespace: str | None = None) -> list[str]:
        return self._server().rooms(sid, namespace=namespace or self.namespace)

    async def get_session(self, sid: str, namespace: str | None = None) -> dict[str, Any]:
        return await self._server().get_session(sid, namespace=namespace or self.namespace)

    async def save_session(self, sid: str, session: dict[str, Any], namespace: str | None = None) -> None:
        await self._server().save_session(sid, session, namespace=namespace or self.namespace)

    def session(self, sid: str, namespace: str | None = None) -> Any:
        return self._server().session(sid, namespace=namespace or self.namespace)

    async def disconnect(self, sid: str, namespace: str | None = None) -> None:
        await self._server().disconnect(sid, namespace=namespace or self.namespace)
