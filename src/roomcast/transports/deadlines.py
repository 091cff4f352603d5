"""``DeadlineWheel``: many per-session deadlines served by one event-loop timer.

Imports only asyncio. Why: every Engine.IO session always has a deadline (its next ping or
its pong timeout). One ``loop.call_at`` handle per session costs about 640 bytes and one
timer-heap entry each; twenty thousand idle connections then carry twenty thousand handles.
Here a deadline is a reference in a list keyed by its tick (``resolution`` seconds), and one
loop timer is armed for the earliest tick. A deadline fires at the start of its tick: up to
``resolution`` early, never late by more than the loop's own lag. The owner treats the filed
time as reached (``EngineIOServer`` hands the machine the deadline itself, not the clock), so
a ping timeout of 500 ms closes the session at 500 ms, not a tick after the client's retry.

The owner remembers the tick ``file`` returned, to ``cancel`` the entry when it re-arms or
ends (a scan of one tick's short list), and the callback receives the tick it was filed under.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["DeadlineWheel"]

T = TypeVar("T")


class DeadlineWheel(Generic[T]):
    """Calls ``callback(item, tick)`` once each filed deadline has passed.

    Args:
        callback: called from the loop, in tick order; it decides whether ``tick`` is still
            the item's current one.
        resolution: seconds per tick.
    """

    def __init__(self, callback: Callable[[T, int], None], *, resolution: float = 0.005) -> None:
        self._callback = callback
        self._resolution = resolution
        self._slots: dict[int, list[T]] = {}
        self._ticks: list[int] = []  # a heap of the ticks that have a slot
        self._handle: asyncio.TimerHandle | None = None
        self._armed_tick: int | None = None

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots.values())

    def file(self, item: T, when: float) -> int:
        """File ``item`` for loop time ``when``; returns the tick to remember as current."""
        tick = math.floor(when / self._resolution)
        slot = self._slots.get(tick)
        if slot is None:
            self._slots[tick] = [item]
            heapq.heappush(self._ticks, tick)
            if self._armed_tick is None or tick < self._armed_tick:
                self._arm(tick)
        else:
            slot.append(item)
        return tick

    def cancel(self, item: T, tick: int) -> None:
        """Withdraw ``item`` filed under ``tick`` (a no-op if it already fired)."""
        slot = self._slots.get(tick)
        if slot is None:
            return
        try:
            slot.remove(item)
        except ValueError:
            return
        if not slot:
            del self._slots[tick]  # the tick stays in the heap; _fire skips it

    def close(self) -> None:
        """Drop every deadline and the loop timer."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed_tick = None
        self._slots.clear()
        self._ticks.clear()

    def _arm(self, tick: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_tick = tick
        self._handle = asyncio.get_running_loop().call_at(tick * self._resolution, self._fire)

    def _fire(self) -> None:
        self._handle = self._armed_tick = None
        # the loop may call a timer a clock-resolution early: count the tick as begun
        now_tick = math.floor(asyncio.get_running_loop().time() / self._resolution + 1e-6)
        ticks = self._ticks
        while ticks and ticks[0] <= now_tick:
            tick = heapq.heappop(ticks)
            for item in self._slots.pop(tick, ()):
                self._callback(item, tick)
        # callbacks may have filed new deadlines (and armed for them); arm for the earliest
        if ticks and (self._armed_tick is None or ticks[0] < self._armed_tick):
            self._arm(ticks[0])
