"""Coalescing changes into batches: the pure buffer, then the asyncio driver on a fake clock.

The driver never sees real time: ``FakeClock`` is its clock and its ``sleep``, and the tests
move time by hand. Synchronisation is on events (a sleeper parked, a batch delivered),
each awaited under ``asyncio.timeout``; nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from loopstep import yield_to_loop

from roomcast.client.batcher import Change, ChangeBatcher, ChangeBuffer

WAIT = 2.0  # seconds of real time allowed for something that needs no real time at all


# -- the pure buffer -----------------------------------------------------------------------


def test_last_change_to_a_key_wins() -> None:
    buf = ChangeBuffer()
    buf.add(Change("a", "update", 1), now=0.0)
    buf.add(Change("a", "update", 2), now=0.1)
    buf.add(Change("a", "update", 3), now=0.2)
    assert buf.drain() == [Change("a", "update", 3)]


def test_delete_beats_an_update_before_it() -> None:
    buf = ChangeBuffer()
    buf.add(Change("a", "update", {"title": "x"}), now=0.0)
    buf.add(Change("a", "delete"), now=0.1)
    assert buf.drain() == [Change("a", "delete")]


def test_a_change_after_a_delete_re_creates_the_key() -> None:
    buf = ChangeBuffer()
    buf.add(Change("a", "delete"), now=0.0)
    buf.add(Change("a", "create", {"v": 2}), now=0.1)
    assert buf.drain() == [Change("a", "create", {"v": 2})]


def test_batch_order_is_the_order_of_each_keys_last_change() -> None:
    buf = ChangeBuffer()
    buf.add(Change("a", "update", 1), now=0.0)
    buf.add(Change("b", "create", "new"), now=0.1)
    buf.add(Change("a", "update", "points at b"), now=0.2)  # derived from b: must follow it
    buf.add(Change("c", "update", 1), now=0.3)
    assert [c.key for c in buf.drain()] == ["b", "a", "c"]


def test_debounce_hands_over_a_burst_once_it_goes_quiet() -> None:
    buf = ChangeBuffer(debounce=0.5, window=5.0, max_wait=10.0)
    for i in range(10):
        buf.add(Change(f"k{i}", "update"), now=i / 100)
    assert buf.due_at() == pytest.approx(0.09 + 0.5)
    assert buf.take(0.58) is None
    batch = buf.take(0.59)
    assert batch is not None and len(batch) == 10
    assert len(buf) == 0 and buf.due_at() is None and buf.take(100.0) is None


def test_window_hands_over_a_stream_that_never_goes_quiet() -> None:
    buf = ChangeBuffer(debounce=0.5, window=5.0, max_wait=10.0)
    taken_at = []
    for i in range(200):
        now = i / 10
        batch = buf.take(now)
        if batch:
            taken_at.append(now)
        buf.add(Change("k", "update", i), now)
    assert taken_at == [5.0, 10.0, 15.0]


@pytest.mark.parametrize("debounce,window", [(0.5, 60.0), (30.0, 60.0)])
def test_max_wait_caps_a_long_window_or_debounce(debounce: float, window: float) -> None:
    buf = ChangeBuffer(debounce=debounce, window=window, max_wait=10.0)
    for i in range(150):
        buf.add(Change("k", "update", i), now=i / 10)
        if buf.take(i / 10):
            assert i / 10 == 10.0
            break
    else:
        pytest.fail("never handed over")


def test_clear_drops_and_counts() -> None:
    buf = ChangeBuffer()
    buf.add(Change("a", "update"), now=0.0)
    buf.add(Change("b", "update"), now=0.0)
    buf.add(Change("a", "delete"), now=0.0)
    assert buf.clear() == 2
    assert buf.drain() == []


@pytest.mark.parametrize("kwargs", [{"debounce": -0.1}, {"window": 0.0}, {"max_wait": 0.0}, {"window": float("nan")}])
def test_bad_timings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ChangeBuffer(**kwargs)


# -- the driver on a fake clock ------------------------------------------------------------


class FakeClock:
    """Time that moves only when told; ``sleep`` parks until it has moved far enough.

    ``activity`` is set whenever the driver parks in ``sleep`` or a ``Recorder`` receives a
    batch: after waking a sleeper, a test waits on it to know the driver has reacted.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self.activity = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        entry = (self.now + delay, asyncio.get_running_loop().create_future())
        self.sleepers.append(entry)
        self.activity.set()
        try:
            await entry[1]
        finally:
            self.sleepers.remove(entry)

    def set(self, t: float) -> int:
        """Move to ``t`` and wake every sleeper due by then; returns how many woke."""
        assert t >= self.now
        self.now = t
        woken = 0
        for deadline, fut in self.sleepers:
            if deadline <= t + 1e-9 and not fut.done():
                fut.set_result(None)
                woken += 1
        return woken

    async def advance_to(self, t: float) -> None:
        """``set(t)``, then, if that woke the driver, wait until it parked again or delivered."""
        self.activity.clear()
        if self.set(t):
            async with asyncio.timeout(WAIT):
                await self.activity.wait()

    async def parked(self) -> float:
        """Wait until something sleeps, and return when it wants to wake up."""
        async with asyncio.timeout(WAIT):
            while True:
                waiting = [d for d, f in self.sleepers if not f.done()]
                if waiting:
                    return min(waiting)
                self.activity.clear()
                await self.activity.wait()


class Recorder:
    """A batch handler that records ``(time, batch)``; optionally blocks until released."""

    def __init__(self, clock: FakeClock, *, blocking: bool = False) -> None:
        self.clock = clock
        self.batches: list[tuple[float, list[Change]]] = []
        self.gate = asyncio.Event()
        if not blocking:
            self.gate.set()
        self.started = asyncio.Event()
        self.active = 0
        self.most_active = 0

    async def __call__(self, batch: list[Change]) -> None:
        self.batches.append((self.clock(), batch))
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        self.started.set()
        self.clock.activity.set()
        try:
            await self.gate.wait()
        finally:
            self.active -= 1

    @property
    def times(self) -> list[float]:
        return [t for t, _ in self.batches]

    async def next_batch(self, count: int) -> None:
        """Wait until ``count`` batches have been received in all."""
        async with asyncio.timeout(WAIT):
            while len(self.batches) < count:
                self.started.clear()
                await self.started.wait()


def make(clock: FakeClock, handler: Any, **kw: float) -> ChangeBatcher:
    return ChangeBatcher(handler, clock=clock, sleep=clock.sleep, **kw)


async def test_a_burst_of_1000_changes_is_one_batch() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    batcher = make(clock, rec)
    # 1,000 changes in one second, alternating over two keys.
    for i in range(1000):
        await clock.advance_to(i / 1000)
        batcher.add("ab"[i % 2], "update", i)
        await clock.parked()
    await clock.advance_to(1.498)  # half a second after the last-but-one change: not yet
    assert rec.batches == []
    assert await clock.parked() == pytest.approx(0.999 + 0.5)
    await clock.advance_to(0.999 + 0.5)
    assert rec.batches == [(0.999 + 0.5, [Change("a", "update", 998), Change("b", "update", 999)])]
    # Nothing else is pending or scheduled, however long we wait.
    assert clock.set(1000.0) == 0
    assert len(batcher) == 0 and len(rec.batches) == 1


async def test_a_steady_stream_every_100ms_is_handed_over_every_5s() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    batcher = make(clock, rec)
    for i in range(200):  # 20 s
        await clock.advance_to(i / 10)
        batcher.add(f"k{i}", "update", i)
        await clock.parked()
    await clock.advance_to(20.0)
    assert rec.times == [5.0, 10.0, 15.0, 20.0]
    for n, (_, batch) in enumerate(rec.batches):
        assert [c.data for c in batch] == list(range(50 * n, 50 * n + 50))  # none lost, none twice


async def test_slow_handler_one_batch_at_a_time_and_the_overdue_batch_follows_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    rec = Recorder(clock, blocking=True)
    batcher = make(clock, rec, debounce=0.5, window=5.0, max_wait=10.0)
    batcher.add("a", "update")
    assert await clock.parked() == 0.5
    await clock.advance_to(0.5)
    await rec.next_batch(1)  # the handler now takes 12.5 s
    clock.set(1.0)
    batcher.add("b", "update")
    clock.set(3.0)
    batcher.add("c", "update")
    assert clock.set(13.0) == 0  # nothing asleep: the driver is waiting for the handler
    assert len(batcher) == 2 and len(rec.batches) == 1
    with caplog.at_level(logging.WARNING, logger="roomcast.client"):
        rec.gate.set()
        await rec.next_batch(2)
    # Due at 1.5 but the handler was busy: handed over the moment it returned, no new
    # debounce; 12 s after its first change, which the log reports as over max_wait.
    assert rec.times == [0.5, 13.0]
    assert [c.key for c in rec.batches[1][1]] == ["b", "c"]
    assert rec.most_active == 1
    assert "max_wait" in caplog.text


async def test_flush_during_a_handler_call_waits_for_it() -> None:
    clock = FakeClock()
    rec = Recorder(clock, blocking=True)
    batcher = make(clock, rec)
    batcher.add("a", "update")
    await clock.parked()
    await clock.advance_to(0.5)
    await rec.next_batch(1)
    batcher.add("b", "update")
    flushing = asyncio.create_task(batcher.flush())
    rec.gate.set()  # the first call resumes only after flush had its chance to barge in
    async with asyncio.timeout(WAIT):
        await flushing
    assert [[c.key for c in b] for _, b in rec.batches] == [["a"], ["b"]]
    assert rec.most_active == 1


async def test_flush_hands_over_at_once_and_nothing_twice() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    batcher = make(clock, rec)
    batcher.add("a", "update", 1)
    await clock.parked()
    await batcher.flush()
    assert rec.batches == [(0.0, [Change("a", "update", 1)])]
    clock.set(1.0)  # the driver's old wake-up finds nothing
    batcher.add("b", "update", 2)
    assert await clock.parked() == 1.5
    await clock.advance_to(1.5)
    assert rec.batches[1:] == [(1.5, [Change("b", "update", 2)])]


async def test_hold_keeps_changes_and_release_hands_them_over() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    batcher = make(clock, rec)
    batcher.add("a", "update", 1)
    await clock.parked()
    batcher.hold()
    assert batcher.held
    clock.set(0.5)  # due, but held
    batcher.add("b", "update", 2)
    batcher.add("a", "delete")
    clock.set(60.0)
    assert rec.batches == [] and len(batcher) == 2
    batcher.release()
    await rec.next_batch(1)
    assert rec.batches == [(60.0, [Change("b", "update", 2), Change("a", "delete")])]


async def test_changes_added_while_held_wait_for_release() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    batcher = make(clock, rec)
    batcher.hold()
    batcher.add("a", "update")
    assert clock.sleepers == []  # nothing scheduled at all while held
    clock.set(30.0)
    batcher.release()
    await rec.next_batch(1)
    assert rec.times == [30.0]


async def test_close_drops_pending_and_stops() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    batcher = make(clock, rec)
    batcher.add("a", "update")
    batcher.add("b", "update")
    await clock.parked()
    assert batcher.close() == 2
    assert batcher.closed
    assert all(fut.cancelled() for _, fut in clock.sleepers)  # the sleeping driver is stopped
    batcher.add("c", "update")  # ignored
    await batcher.flush()  # nothing to hand over
    assert clock.set(100.0) == 0
    assert rec.batches == [] and len(batcher) == 0


async def test_close_during_a_handler_call_lets_it_finish_and_drops_the_rest() -> None:
    clock = FakeClock()
    rec = Recorder(clock, blocking=True)
    batcher = make(clock, rec)
    batcher.add("a", "update")
    await clock.parked()
    await clock.advance_to(0.5)
    await rec.next_batch(1)
    batcher.add("b", "update")
    assert batcher.close() == 1
    rec.gate.set()
    await batcher.flush()  # takes the lock only once the running call has returned
    assert rec.active == 0  # the call in progress was not cancelled: it returned
    assert clock.set(100.0) == 0
    assert [[c.key for c in b] for _, b in rec.batches] == [["a"]]


async def test_clear_drops_pending_cancels_the_planned_hand_over_and_batching_carries_on() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    batcher = make(clock, rec, debounce=0.5, window=5.0, max_wait=10.0)
    for i in range(40):  # a stream that never goes quiet, from 0.0 to 3.9: due at 4.4
        clock.set(i / 10)
        batcher.add(f"stale{i % 3}", "update", i)
    assert await clock.parked() == pytest.approx(4.4)
    assert batcher.clear() == 3
    assert len(batcher) == 0 and not batcher.closed
    assert all(fut.cancelled() for _, fut in clock.sleepers)  # the planned hand-over is gone
    assert clock.set(4.4) == 0 and rec.batches == []
    # The next changes start a batch of their own: its window counts from its first change
    # (4.5), not from the dropped batch's (0.0), and only they are handed over.
    for i in range(45, 100):
        await clock.advance_to(i / 10)
        batcher.add(f"k{i}", "update", i)
        await clock.parked()
    await clock.advance_to(10.0)
    assert rec.times == [9.5]
    assert [c.data for c in rec.batches[0][1]] == list(range(45, 95))
    assert batcher.clear() == 5  # 9.5 .. 9.9
    assert clock.set(100.0) == 0 and len(rec.batches) == 1
    await yield_to_loop()  # the cancelled driver ends
    assert clock.sleepers == []  # no driver left behind
    assert batcher.clear() == 0  # nothing pending: nothing to do


async def test_clear_during_a_handler_call_lets_it_finish_and_a_later_change_follows() -> None:
    clock = FakeClock()
    rec = Recorder(clock, blocking=True)
    batcher = make(clock, rec)
    batcher.add("a", "update")
    await clock.parked()
    await clock.advance_to(0.5)
    await rec.next_batch(1)  # the driver is inside the handler with ["a"]
    batcher.add("b", "update")
    assert batcher.clear() == 1
    clock.set(1.0)
    batcher.add("c", "update")  # while the call still runs: for the batch after it
    await yield_to_loop()
    assert clock.sleepers == []  # no second driver: the one in the handler takes "c" later
    rec.gate.set()
    assert await clock.parked() == 1.5  # the same driver went on: no second one started
    await clock.advance_to(1.5)
    await rec.next_batch(2)
    assert [[c.key for c in b] for _, b in rec.batches] == [["a"], ["c"]]
    assert rec.active == 0 and rec.most_active == 1  # not cancelled, never two at once


async def test_clear_then_flush_waits_for_the_call_in_progress_and_hands_over_nothing() -> None:
    clock = FakeClock()
    rec = Recorder(clock, blocking=True)
    batcher = make(clock, rec)
    batcher.add("a", "update")
    await clock.parked()
    await clock.advance_to(0.5)
    await rec.next_batch(1)
    batcher.add("b", "update")
    assert batcher.clear() == 1
    flushing = asyncio.create_task(batcher.flush())
    await yield_to_loop()
    assert not flushing.done()  # waits for the call in progress to return
    rec.gate.set()
    async with asyncio.timeout(WAIT):
        await flushing
    assert rec.active == 0 and [[c.key for c in b] for _, b in rec.batches] == [["a"]]


async def test_clear_while_held_drops_and_stays_held() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    batcher = make(clock, rec)
    batcher.hold()
    batcher.add("a", "update")
    assert batcher.clear() == 1 and batcher.held
    batcher.add("b", "update")
    clock.set(30.0)
    assert rec.batches == []  # still held
    batcher.release()
    await rec.next_batch(1)
    assert rec.batches == [(30.0, [Change("b", "update")])]


async def test_clear_after_close_drops_nothing_and_does_not_reopen() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    batcher = make(clock, rec)
    batcher.add("a", "update")
    assert batcher.close() == 1
    assert batcher.clear() == 0 and batcher.closed
    batcher.add("b", "update")  # still ignored
    assert len(batcher) == 0 and clock.sleepers == []


async def test_a_failing_handler_is_logged_and_batching_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    received: list[list[Change]] = []

    def handler(batch: list[Change]) -> None:  # a sync handler
        received.append(batch)
        clock.activity.set()
        if len(received) == 1:
            raise ValueError("cache refused the batch")

    batcher = make(clock, handler)
    with caplog.at_level(logging.ERROR, logger="roomcast.client"):
        batcher.add("a", "update")
        await clock.parked()
        await clock.advance_to(0.5)
        batcher.add("b", "update")
        await clock.parked()
        await clock.advance_to(1.0)
    assert [[c.key for c in b] for b in received] == [["a"], ["b"]]
    [record] = [r for r in caplog.records if r.name == "roomcast.client"]
    assert record.exc_info is not None and "cache refused the batch" in caplog.text
