"""Application event handlers: registration by (namespace, event) and isolated dispatch.

Imports L0 and ``hub.connection``. A handler receives the connection and the event's
arguments; its return value is the acknowledgement (a ``tuple`` spreads into several ack
arguments, ``None`` acknowledges with none). A handler that raises is logged with its
traceback and counted; it never takes the connection or the server down.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from roomcast.hub.connection import Connection

__all__ = ["Handler", "ConnectHandler", "HandlerRegistry", "HandlerFailed"]

logger = logging.getLogger("roomcast.handlers")

Handler = Callable[..., Any]
"""``(connection, *args) -> ack`` — sync or ``async``."""
ConnectHandler = Callable[[Connection, Any], Any]
"""``(connection, auth) -> None``; raise ``ConnectionRefused`` to refuse."""


class HandlerFailed(Exception):
    """A handler raised; the original exception is ``__cause__``. Internal to dispatch."""


class HandlerRegistry:
    """Handlers by namespace and event name, plus connect/disconnect hooks per namespace."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], Handler] = {}
        self._connect: dict[str, ConnectHandler] = {}
        self._disconnect: dict[str, Handler] = {}
        self.namespaces: set[str] = {"/"}
        self.failures = 0

    def add(self, namespace: str, event: str, handler: Handler) -> None:
        self.namespaces.add(namespace)
        self._events[(namespace, event)] = handler

    def add_connect(self, namespace: str, handler: ConnectHandler) -> None:
        self.namespaces.add(namespace)
        self._connect[namespace] = handler

    def add_disconnect(self, namespace: str, handler: Handler) -> None:
        self.namespaces.add(namespace)
        self._disconnect[namespace] = handler

    def get(self, namespace: str, event: str) -> Handler | None:
        return self._events.get((namespace, event))

    def connect_handler(self, namespace: str) -> ConnectHandler | None:
        return self._connect.get(namespace)

    def disconnect_handler(self, namespace: str) -> Handler | None:
        return self._disconnect.get(namespace)

    async def call(self, handler: Handler, *args: Any) -> Any:
        """Run ``handler`` (sync or async) and return its result.

        Raises:
            HandlerFailed: the handler raised; it has been logged and counted.
        """
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                result = await result
            return result
        except Exception as exc:
            raise HandlerFailed(self.failed(handler)) from exc

    def failed(self, handler: Handler) -> str:
        """Count and log (with the traceback) the exception being handled; returns the name.

        Call it from an ``except`` block. The one place handler failures are recorded, so
        every transport isolates them the same way.
        """
        self.failures += 1
        name = getattr(handler, "__qualname__", repr(handler))
        logger.exception("handler %s failed", name)
        return name

