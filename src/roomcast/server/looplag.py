"""``LoopLag``: how late the event loop runs what is due, as a Prometheus histogram.

Imports the stdlib only. One timer per ``interval`` (0.5 s by default): each time it fires, it
records how much later than its due time it ran, and files the next one. A loop that is busy
(a long fan-out, a blocking call, the GC) runs every callback late by the same amount, so this
one timer's lateness is what every client's event waited. The cost is one timer handle per
interval and a ``bisect`` per observation; nothing runs per message.

Why a timer and not a wrapped loop or ``sys.setswitchinterval``: it measures what clients
feel (time from due to run) on uvloop and asyncio alike, with no patching of the loop.
A stall longer than ``interval`` is recorded once, as one long lag, not as many missed ticks.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence

__all__ = ["LoopLag", "BUCKETS"]

BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the histogram's buckets; ``+Inf`` follows them."""


class LoopLag:
    """A histogram of the loop's lateness, filled by a timer of its own.

    Args:
        interval: seconds between two measurements.
        buckets: increasing upper bounds, in seconds.

    Attributes:
        counts: observations per bucket, not cumulative; the last one is past every bound.
        sum: seconds of lateness observed in all.
        count: observations made.
    """

    def __init__(self, interval: float = 0.5, buckets: Sequence[float] = BUCKETS) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0")
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("buckets must be strictly increasing")
        self.interval = interval
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._waiters: list[asyncio.Future[float]] = []

    def start(self) -> None:
        """Start measuring on the running loop. Idempotent."""
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._file(self._loop.time())

    def close(self) -> None:
        """Stop measuring; what was observed stays. Waiters of ``next_tick`` are cancelled."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.cancel()

    def observe(self, seconds: float) -> None:
        """Record one lateness of ``seconds``."""
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or under it)`` per bucket, ``inf`` last: Prometheus's form."""
        total, out = 0, []
        for bound, n in zip((*self.buckets, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out

    def next_tick(self) -> asyncio.Future[float]:
        """A future for the next measurement: it resolves to the lateness observed then.

        For tests and tools that wait for a measurement instead of sleeping for one.
        """
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def _file(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval
        self._timer = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = max(0.0, now - self._due)  # a loop may run a timer up to its clock resolution early
        self.observe(lag)
        self._file(now)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(lag)
