"""Application event handlers: registration by (namespace, event) and isolated dispatch.

Imports L0 and ``hub.connection``. A handler receives the connection and the event's
arguments; its return value is the acknowledgement (a ``tuple`` spreads into several ack
arguments, ``None`` acknowledges with none). A handler that raises is logged with its
traceback and counted; it never takes the connection or the server down.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from roomcast.hub.connection import Connection

__all__ = ["Handler", "ConnectHandler", "HandlerRegistry", "UNHANDLED"]

UNHANDLED: Final = object()
"""What a handler returns for an event it does not handle (python-socketio's "not
handled"): the client's ack request then gets no answer, as with no handler at all."""

logger = logging.getLogger("roomcast.handlers")

Handler = Callable[..., Any]
"""``(connection, *args) -> ack`` — sync or ``async``."""
ConnectHandler = Callable[[Connection, Any], Any]
"""``(connection, auth) -> None``; raise ``ConnectionRefused`` to refuse."""


class HandlerRegistry:
    """Handlers by namespace and event name, plus connect/disconnect hooks per namespace."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], Handler] = {}
        self._fallback: dict[str, Handler] = {}
        self._connect: dict[str, ConnectHandler] = {}
        self._disconnect: dict[str, Handler] = {}
        self._accepted: dict[str, Callable[[Connection], None]] = {}
        self.namespaces: set[str] = {"/"}
        self.failures = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, namespace: str, event: str, handler: Handler) -> None:
        self.namespaces.add(namespace)
        self._events[(namespace, event)] = handler

    def add_fallback(self, namespace: str, handler: Handler) -> None:
        """``handler(conn, event, *args) -> ack`` for the events of ``namespace`` that have no
        handler of their own (python-socketio's catch-all ``"*"``), before the built-in ones."""
        self.namespaces.add(namespace)
        self._fallback[namespace] = handler

    def fallback(self, namespace: str) -> Handler | None:
        return self._fallback.get(namespace)

    def add_connect(self, namespace: str, handler: ConnectHandler) -> None:
        self.namespaces.add(namespace)
        self._connect[namespace] = handler

    def add_disconnect(self, namespace: str, handler: Handler) -> None:
        self.namespaces.add(namespace)
        self._disconnect[namespace] = handler

    def add_accepted(self, namespace: str, hook: Callable[[Connection], None]) -> None:
        """``hook(conn)`` runs once a connection of ``namespace`` is accepted and its client
        told so: where rooms asked for by a connect handler are joined, since publications
        written before the CONNECT reply would reach a client that is not connected yet."""
        self._accepted[namespace] = hook

    def accepted_hook(self, namespace: str) -> Callable[[Connection], None] | None:
        return self._accepted.get(namespace)

    def get(self, namespace: str, event: str) -> Handler | None:
        return self._events.get((namespace, event))

    def connect_handler(self, namespace: str) -> ConnectHandler | None:
        return self._connect.get(namespace)

    def disconnect_handler(self, namespace: str) -> Handler | None:
        return self._disconnect.get(namespace)

    def dispatch(
        self,
        handler: Handler,
        args: tuple[Any, ...],
        *,
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
        expected: tuple[type[Exception], ...] = (),
    ) -> None:
        """Run ``handler(*args)``: a sync one inline, an ``async`` one as a task owned here.

        Every transport dispatches through this, so failures are isolated one way: an
        exception is logged with its traceback and counted (unless it is one of
        ``expected``, such as ``ConnectionRefused``), then handed to ``on_error``; it never
        reaches the transport. A result goes to ``on_result`` (e.g. the ack).
        """
        try:
            result = handler(*args)
        except Exception as exc:
            self._fail(handler, exc, on_error, expected)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(self._finish(handler, result, on_result, on_error, expected))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif on_result is not None:
            on_result(result)

    async def _finish(
        self,
        handler: Handler,
        pending: Awaitable[Any],
        on_result: Callable[[Any], None] | None,
        on_error: Callable[[Exception], None] | None,
        expected: tuple[type[Exception], ...],
    ) -> None:
        try:
            result = await pending
        except Exception as exc:
            self._fail(handler, exc, on_error, expected)
            return
        if on_result is not None:
            on_result(result)

    def _fail(
        self,
        handler: Handler,
        exc: Exception,
        on_error: Callable[[Exception], None] | None,
        expected: tuple[type[Exception], ...],
    ) -> None:
        if not isinstance(exc, expected):
            self.failures += 1
            name = getattr(handler, "__qualname__", repr(handler))
            logger.error("handler %s failed", name, exc_info=exc)
        if on_error is not None:
            on_error(exc)
