"""Graceful drain: what a server does between SIGTERM and its exit (``--shutdown-grace``).

Imports ``server.app`` and L0. ``server.runner`` (the native door) runs a ``Drain`` when it is
told to stop, then ``App.shutdown``; under an ASGI host ``server.asgi_drain`` runs the same
``Drain`` between the host's signal and the host's own shutdown. Why each step, on a timeline
that starts at the signal and ends within the grace ``G``:

1. **At once, not ready.** ``/readyz`` answers 503, so a load balancer stops choosing this
   node. Everything else still works: publications through the API reach Redis (and so the
   other nodes), and tasks keep reporting.
2. **Still accepting for the drain delay** (``Settings.drain_delay``, 1 s by default, at most a
   quarter of the grace). A load balancer notices a failed readiness probe only on its next
   probe; refusing connections before then would turn clients it still sends here into
   errors. After the delay the door stops accepting (``stop_accepting``): the native door
   closes its listening socket; the ASGI door, whose socket is the host's, answers every new
   client 503 with ``Retry-After`` (``RoomcastApp``).
3. **Clients are moved away in jittered batches** from the end of the delay to ``G`` less a
   shutdown reserve. Closing every connection at the same instant would have every client
   reconnect to the next node in the same second (a rolling restart then stampedes each node
   in turn). Each batch closes a random share of the connections still open, sized so the
   expected number per batch is even, at a jittered time inside its slot. Each transport is
   told in the way its clients read as "come back" (``disconnect.SHUTDOWN``):

   * Socket.IO: the Engine.IO session is closed (WebSocket close 1001, or the end of a
     long-poll), which the official client reads as "transport close" and reconnects. A
     Socket.IO DISCONNECT packet is never sent: the client would read it as "io server
     disconnect" and stop for good.
   * SSE: a final ``event: error`` with ``"reconnect": true``, then the end of the stream;
     ``EventSource`` and the browser module reconnect with their ``Last-Event-ID``.
   * ``/ws``: close code 1001 (going away), which the browser module retries on (it stops
     only on 1000, 1008 and 3500-3999).

   With Redis, every client recovers on another node from its position. Without Redis there
   is no other node holding the rooms: a client that comes back gets a reset.
4. **In-process tasks get the grace to finish** (``spawn``, ``start`` blocks), until the same
   reserve. A producer still running then is cancelled by ``TaskService.aclose`` and its task
   failed with ``SHUTTING_DOWN``; ``App.shutdown`` then flushes every task write and closes.
5. **A second signal hurries**: the remaining waits end at once, every client still connected
   is closed in one go, and the shutdown runs (``server.runner`` bounds even that).

A grace of 0 skips the drain: the old immediate shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from roomcast import disconnect
from roomcast.server.app import App

__all__ = ["Drain", "DrainPlan", "SHUTTING_DOWN", "SHUTDOWN_RESERVE", "BATCH_INTERVAL", "MAX_BATCHES"]

logger = logging.getLogger("roomcast.drain")

SHUTTING_DOWN = "server shutting down"
"""The error a task whose producer outlived the grace is failed with."""

SHUTDOWN_RESERVE = 1.0
"""Seconds kept at the end of the grace for ``App.shutdown`` (task writes flushed, Redis and
the store closed), at most a fifth of the grace: clients and tasks have the rest."""

BATCH_INTERVAL = 0.05
"""The shortest time between two batches of disconnections: below it jitter means nothing."""

MAX_BATCHES = 100
"""The most batches a drain is cut into, so a long grace does not wake the loop for nothing."""


@dataclass(frozen=True, slots=True)
class DrainPlan:
    """When each step happens, in seconds after the signal.

    Attributes:
        delay: until the listening socket closes (new connections accepted until then).
        spread_until: the last batch of disconnections is due by then; in-process tasks have
            until then to end.
        grace: the whole grace; the shutdown runs in ``grace - spread_until``.
    """

    delay: float
    spread_until: float
    grace: float

    @classmethod
    def of(cls, grace: float, drain_delay: float) -> DrainPlan:
        """The plan for ``--shutdown-grace`` and ``--drain-delay``; a delay longer than a
        quarter of the grace is cut to it, so clients always get most of the grace."""
        reserve = min(SHUTDOWN_RESERVE, grace / 5)
        delay = max(0.0, min(drain_delay, grace / 4))
        return cls(delay=delay, spread_until=max(delay, grace - reserve), grace=grace)


Closer = Callable[[], None]


def _clients(app: App) -> list[Closer]:
    """A closer for every client connected to ``app`` now, on every transport; each tells
    its client to reconnect (``disconnect.SHUTDOWN``) in that transport's own way."""
    reason = disconnect.SHUTDOWN
    closers: list[Closer] = []
    for engine in (app.engine, app.echo):
        if engine is not None:
            closers.extend(functools.partial(session.close, reason) for session in engine.sessions.values())
    closers.extend(functools.partial(conn.disconnect, reason) for conn in app.sse.streams)
    closers.extend(functools.partial(ws.disconnect, reason) for ws in app.ws.connections)
    return closers


class Drain:
    """One graceful drain of ``app`` served by ``server`` (module docstring).

    Args:
        app: the started app.
        stop_accepting: called after the drain delay, so no new client arrives (the native
            door: its listening server's ``close``).
        plan: when each step happens.
        hurry: set by a second signal: every remaining wait ends at once.
        rng: the jitter's source (a seeded one makes a drain repeatable).
    """

    def __init__(
        self,
        app: App,
        stop_accepting: Callable[[], None],
        plan: DrainPlan,
        hurry: asyncio.Event,
        rng: random.Random | None = None,
    ) -> None:
        self.app = app
        self.stop_accepting = stop_accepting
        self.plan = plan
        self.hurry = hurry
        self.rng = rng if rng is not None else random.Random()
        self.moved = 0
        """Clients told to reconnect elsewhere so far."""

    async def run(self) -> None:
        """Drain: not ready, keep accepting for the delay, then move clients away and let
        tasks end, each by ``plan.spread_until``. Returns early once nothing is left (no
        client, no producer) or on ``hurry``; ``App.shutdown`` is the caller's next step."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        app, plan = self.app, self.plan
        app.tasks.shutdown_reason = SHUTTING_DOWN  # whatever ends the drain, a producer cut short says why
        app.drain()
        logger.info(
            "draining: not ready; accepting new connections for %.1f s, then moving %d clients away "
            "over %.1f s (grace %.1f s)",
            plan.delay,
            len(_clients(app)),
            plan.spread_until - plan.delay,
            plan.grace,
        )
        await self._until(start + plan.delay)
        self.stop_accepting()  # no new connections; those open stay
        await asyncio.gather(self._spread(start + plan.delay, start + plan.spread_until), self._tasks(start))
        if self.hurry.is_set():
            for close in _clients(app):  # the rest at once
                close()
                self.moved += 1
        logger.info("drained in %.2f s: %d clients told to reconnect elsewhere", loop.time() - start, self.moved)

    async def _spread(self, begin: float, end: float) -> None:
        """Close the clients in jittered batches between ``begin`` and ``end`` (loop times).

        Batch ``i`` of ``n`` is due at a random time inside its slot of the window, and closes
        ``k`` of the ``m`` clients still open with ``k = floor(m / (n - i) + u)`` (``u``
        uniform in [0, 1)): on average an even share, a whole number each time, and the last
        batch closes everything left. Clients that connected during the delay are counted
        as they come, since each batch looks at who is connected then.
        """
        window = max(0.0, end - begin)
        batches = max(1, min(MAX_BATCHES, int(window / BATCH_INTERVAL)))
        for index in range(batches):
            if await self._until(begin + window * (index + self.rng.random()) / batches):
                return  # hurried: ``run`` closes the rest at once
            clients = _clients(self.app)
            if not clients:
                return  # nobody left; no new connection can come
            left = batches - index
            count = (
                len(clients) if left == 1 else min(len(clients), math.floor(len(clients) / left + self.rng.random()))
            )
            for close in self.rng.sample(clients, count):
                close()
            self.moved += count

    async def _tasks(self, start: float) -> None:
        """Wait, up to ``plan.spread_until``, for every producer running in this process to
        end; a producer started meanwhile is waited for too."""
        loop = asyncio.get_running_loop()
        deadline = start + self.plan.spread_until
        while producers := self.app.tasks.producers():
            if self.hurry.is_set() or loop.time() >= deadline:
                logger.warning("%d in-process tasks still running: failing them (%s)", len(producers), SHUTTING_DOWN)
                return
            hurried = asyncio.ensure_future(self.hurry.wait())
            try:
                await asyncio.wait(
                    {*producers, hurried}, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                hurried.cancel()

    async def _until(self, when: float) -> bool:
        """Wait until loop time ``when``; ``True`` when ``hurry`` ended the wait first."""
        timeout = when - asyncio.get_running_loop().time()
        if self.hurry.is_set():
            return True
        if timeout <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.hurry.wait(), timeout)
        return self.hurry.is_set()
