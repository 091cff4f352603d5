"""Graceful drain under an ASGI host: the host's SIGTERM drains roomcast's clients first.

Imports ``server.drain`` and ``server.app``. ``RoomcastApp`` installs a ``SignalDrain`` when it
starts; the drain itself is ``server.drain.Drain``, the native door's, step for step.

**Why a signal hook and not the lifespan.** What uvicorn (0.55) does on SIGTERM or SIGINT: it
closes its listening sockets, asks every connection to shut down (each WebSocket gets close
1012 at once, all in the same instant; an HTTP response still streaming, an SSE stream or a
long-poll, is left to end by itself), waits for every connection and task to end (for ever,
unless ``--timeout-graceful-shutdown``, after which their tasks are cancelled: an SSE client
sees the stream cut with no word), and only then sends ``lifespan.shutdown``. When the app
hears of the shutdown there is nobody left to drain, and one SSE stream holds the process
until the timeout. The ASGI protocol has no "shutdown is starting" message.

So the first signal reaches roomcast before it reaches the host: ``SignalDrain`` puts its own
handler in front of the one the host installed with ``signal.signal`` (uvicorn's
``handle_exit``), runs the drain (``/readyz`` 503, the drain delay, clients told to reconnect
in jittered batches, in-process tasks given the grace) and only then hands the signal to the
host's handler. The host's shutdown then finds nothing to wait for: it closes its sockets and
sends ``lifespan.shutdown`` (``App.shutdown``) in the grace's reserve. A second signal hurries
the drain and is handed on at once (uvicorn's second SIGINT is its forced exit).

The listening socket is the host's, so after the drain delay the door cannot close it;
``RoomcastApp`` answers every new client (a WebSocket handshake, an SSE stream, an Engine.IO
handshake) with 503 and ``Retry-After`` instead, which socket.io-client and the browser module
retry with their backoff, while requests of sessions already open, the API and the probes go
on. A client that was just moved therefore does not come straight back to this process.

When nothing is wrapped: outside the main thread (signals are the main thread's), and for a
host that handles its signals with ``loop.add_signal_handler`` or not at all; the app is then
shut down at ``lifespan.shutdown`` as before. ``shutdown_grace = 0`` skips the drain.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from roomcast.server.app import App
from roomcast.server.drain import Drain, DrainPlan

__all__ = ["SignalDrain", "DRAIN_SIGNALS"]

logger = logging.getLogger("roomcast.drain")

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals an ASGI host stops on (uvicorn's own two on Unix)."""

Handler = Callable[[int, FrameType | None], Any]


def _wrappable(handler: object) -> bool:
    """A Python handler the host installed with ``signal.signal``: not ``SIG_DFL``/``SIG_IGN``,
    and not asyncio's placeholder for ``loop.add_signal_handler`` (that loop dispatches the
    signal itself, so a handler put in front would never be the only one to see it)."""
    return callable(handler) and getattr(handler, "__name__", "") != "_sighandler_noop"


class SignalDrain:
    """The host's SIGTERM and SIGINT, drained before the host hears of them (module docstring).

    Args:
        app: the started app.
        stop_accepting: called after the drain delay, so the door refuses new clients.
    """

    def __init__(self, app: App, stop_accepting: Callable[[], None]) -> None:
        self.app = app
        self.stop_accepting = stop_accepting
        self.hurry = asyncio.Event()
        self.drained: asyncio.Task[None] | None = None
        """The drain, once the first signal came."""
        self._previous: dict[int, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> bool:
        """Put the handler in front of the host's; ``False`` when there is nothing to wrap."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        for sig in DRAIN_SIGNALS:
            previous = signal.getsignal(sig)
            if _wrappable(previous):
                self._previous[sig] = previous  # type: ignore[assignment]  # callable, checked
                signal.signal(sig, self._on_signal)
        return bool(self._previous)

    def uninstall(self) -> None:
        """Give the host its handlers back (those still ours: a later wrapper keeps its own)."""
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """In the main thread between two bytecodes of whatever ran: only schedule the work."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._pass_on(signum)
            return
        loop.call_soon_threadsafe(self._signalled, signum)

    def _signalled(self, signum: int) -> None:
        if self.drained is None:
            logger.info("%s: draining, then handing the signal to the server", signal.Signals(signum).name)
            self.drained = asyncio.ensure_future(self._drain_then_pass_on(signum))
            return
        logger.warning("%s again: hurrying the drain", signal.Signals(signum).name)
        self.hurry.set()
        self._pass_on(signum)

    async def _drain_then_pass_on(self, signum: int) -> None:
        settings = self.app.settings
        try:
            if settings.shutdown_grace > 0:
                plan = DrainPlan.of(settings.shutdown_grace, settings.drain_delay)
                await Drain(self.app, self.stop_accepting, plan, self.hurry).run()
        except Exception:  # the host must still stop: a failed drain is logged, not a hang
            logger.exception("the drain failed; stopping without it")
        finally:
            if not self.hurry.is_set():  # a second signal was handed on already
                self._pass_on(signum)

    def _pass_on(self, signum: int) -> None:
        previous = self._previous.get(signum)
        if previous is not None:
            previous(signum, None)
