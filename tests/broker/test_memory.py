"""MemoryBroker: offsets, epochs, bounded history (size and age) and synchronous delivery."""

from __future__ import annotations

import asyncio
import time

import pytest
from loopstep import yield_to_loop

from roomcast.broker.base import HistoryResult
from roomcast.broker.memory import MemoryBroker
from roomcast.types import Publication, StreamPosition


class RecordingEvents:
    """Stands in for the hub: records every publication the broker delivers."""

    def __init__(self) -> None:
        self.received: list[Publication] = []
        self.tasks: list[asyncio.Task[object] | None] = []

    def on_publication(self, publication: Publication) -> None:
        self.received.append(publication)
        self.tasks.append(asyncio.current_task())


async def publish_n(broker: MemoryBroker, room: str, n: int, *, ts: float | None = None) -> list[Publication]:
    return [await broker.publish(room, "ev", (i,), ts=time.time() if ts is None else ts) for i in range(1, n + 1)]


def offsets(result: HistoryResult) -> list[int]:
    return [p.position.offset for p in result.publications]


async def test_offsets_count_1_2_3_per_room_independently() -> None:
    b = MemoryBroker()
    a1 = await b.publish("a", "ev", (), ts=1.0)
    a2 = await b.publish("a", "ev", (), ts=1.0)
    x1 = await b.publish("b", "ev", (), ts=1.0)
    a3 = await b.publish("a", "ev", (), ts=1.0)
    x2 = await b.publish("b", "ev", (), ts=1.0)
    assert [p.position.offset for p in (a1, a2, a3)] == [1, 2, 3]
    assert [p.position.offset for p in (x1, x2)] == [1, 2]
    assert await b.position("a") == a3.position
    assert await b.position("b") == x2.position
    assert (await b.position("never")).offset == 0


async def test_publication_carries_what_was_published() -> None:
    b = MemoryBroker()
    pub = await b.publish("room", "chat", ("hi", {"n": 1}), ts=123.5)
    assert pub == Publication("room", "chat", ("hi", {"n": 1}), StreamPosition(pub.position.epoch, 1), 123.5)


async def test_each_room_has_its_own_epoch_and_a_restart_changes_every_one() -> None:
    b = MemoryBroker()
    pa = await b.publish("a", "ev", (), ts=1.0)
    pb = await b.publish("b", "ev", (), ts=1.0)
    assert pa.position.epoch and pb.position.epoch and pa.position.epoch != pb.position.epoch
    assert (await b.position("a")).epoch == pa.position.epoch  # stable while the stream lives

    restarted = MemoryBroker()
    fresh = await restarted.position("a")
    assert fresh.epoch != pa.position.epoch and fresh.offset == 0
    # a client holding the old position cannot be continued by the restarted broker
    result = await restarted.history("a", since=pa.position)
    assert result == HistoryResult((), fresh, complete=False)


async def test_history_returns_exactly_the_publications_after_an_offset() -> None:
    b = MemoryBroker()
    pubs = await publish_n(b, "r", 5)
    await publish_n(b, "other", 3)
    result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, 2))
    assert result.complete
    assert result.publications == tuple(pubs[2:])
    assert result.position == StreamPosition((await b.position("r")).epoch, 5)

    everything = await b.history("r", since=StreamPosition((await b.position("r")).epoch, 0))
    assert everything.complete and everything.publications == tuple(pubs)


async def test_history_at_the_current_offset_is_complete_and_empty() -> None:
    b = MemoryBroker()
    await publish_n(b, "r", 3)
    assert await b.history("r", since=StreamPosition((await b.position("r")).epoch, 3)) == HistoryResult(
        (), StreamPosition((await b.position("r")).epoch, 3), complete=True
    )
    # an unknown room at offset 0 of its epoch is a fresh, complete stream
    fresh = await b.position("new")
    assert await b.history("new", since=fresh) == HistoryResult((), fresh, complete=True)


@pytest.mark.parametrize(
    ("epoch", "offset"),
    [
        ("other-epoch", 1),  # another epoch (e.g. before a restart)
        ("other-epoch", 3),
        (None, 4),  # ahead of the room
        (None, 100),
        (None, -1),  # nonsense
    ],
)
async def test_history_that_cannot_be_continued_is_incomplete(epoch: str | None, offset: int) -> None:
    b = MemoryBroker()
    await publish_n(b, "r", 3)
    result = await b.history("r", since=StreamPosition(epoch or (await b.position("r")).epoch, offset))
    assert result == HistoryResult((), StreamPosition((await b.position("r")).epoch, 3), complete=False)


async def test_offset_ahead_of_an_unknown_room_is_incomplete() -> None:
    b = MemoryBroker()
    result = await b.history("new", since=StreamPosition((await b.position("new")).epoch, 1))
    assert not result.complete


async def test_size_trimming_keeps_the_newest_and_reports_the_gap() -> None:
    b = MemoryBroker(history_size=3)
    pubs = await publish_n(b, "r", 5)  # history holds offsets 3, 4, 5
    for since in (0, 1):
        result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, since))
        assert not result.complete, since
        assert result.publications == ()
        assert result.position == StreamPosition((await b.position("r")).epoch, 5)
    # offset 2 needs 3, 4, 5: exactly what is kept
    result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, 2))
    assert result.complete and result.publications == tuple(pubs[2:])
    result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, 4))
    assert result.complete and offsets(result) == [5]


async def test_age_trimming_drops_old_publications() -> None:
    b = MemoryBroker(history_ttl=0.5)
    now = time.time()
    old = await publish_n(b, "r", 2, ts=now - 3600)  # offsets 1, 2: long expired
    fresh = await publish_n(b, "r", 2, ts=now + 3600)  # offsets 3, 4: well within the ttl
    assert [p.position.offset for p in old + fresh] == [1, 2, 3, 4]

    result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, 0))
    assert not result.complete and result.publications == ()
    result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, 1))
    assert not result.complete
    result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, 2))
    assert result.complete and result.publications == tuple(fresh)


async def test_age_trimming_everything_expired() -> None:
    b = MemoryBroker(history_ttl=1.0)
    await publish_n(b, "r", 3, ts=time.time() - 3600)
    result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, 2))
    assert result == HistoryResult((), StreamPosition((await b.position("r")).epoch, 3), complete=False)
    # nothing was missed: still complete
    result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, 3))
    assert result.complete


async def test_history_size_zero_keeps_nothing() -> None:
    b = MemoryBroker(history_size=0)
    pubs = await publish_n(b, "r", 3)
    assert [p.position.offset for p in pubs] == [1, 2, 3]  # offsets still count
    for since in (0, 1, 2):
        result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, since))
        assert result == HistoryResult((), StreamPosition((await b.position("r")).epoch, 3), complete=False)
    assert (await b.history("r", since=StreamPosition((await b.position("r")).epoch, 3))).complete


@pytest.mark.parametrize("kwargs", [{"history_size": -1}, {"history_ttl": -0.1}])
def test_negative_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MemoryBroker(**kwargs)  # type: ignore[arg-type]


async def test_broker_delivers_synchronously_the_same_publication_it_returns() -> None:
    b = MemoryBroker()
    events = RecordingEvents()
    await b.start(events)
    coro = b.publish("r", "ev", (1,), ts=time.time())
    assert events.received == []  # nothing before the publish runs
    pub = await coro
    assert len(events.received) == 1
    assert events.received[0] is pub
    # delivered inside the publisher's own task, not scheduled for later
    assert events.tasks == [asyncio.current_task()]
    # the history entry is the delivered object too (atomic history + publish)
    result = await b.history("r", since=StreamPosition((await b.position("r")).epoch, 0))
    assert result.publications[0] is pub


async def test_delivery_order_matches_offsets() -> None:
    b = MemoryBroker()
    events = RecordingEvents()
    await b.start(events)
    await publish_n(b, "a", 3)
    await publish_n(b, "b", 2)
    assert [(p.room, p.position.offset) for p in events.received] == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2)]


async def test_publish_before_start_and_after_aclose_delivers_nothing_but_keeps_history() -> None:
    b = MemoryBroker()
    events = RecordingEvents()
    await b.publish("r", "ev", (), ts=time.time())
    await b.start(events)
    await b.publish("r", "ev", (), ts=time.time())
    await b.aclose()
    await b.publish("r", "ev", (), ts=time.time())
    assert [p.position.offset for p in events.received] == [2]
    assert offsets(await b.history("r", since=StreamPosition((await b.position("r")).epoch, 0))) == [1, 2, 3]


# -- bounds: count, age, bytes per room, bytes in all; freeing ------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _payload(n: int) -> tuple[bytes, ...]:
    return (b'"' + b"x" * n + b'"',)


async def test_a_room_nobody_follows_keeps_at_most_its_bytes() -> None:
    """500 publications of 900 KB to a room nobody follows: history keeps 10 MB, not 450."""
    b = MemoryBroker(history_room_bytes=10_000_000)
    for _ in range(500):
        await b.publish("blobs", "blob", ("x",), ts=time.time(), encoded=_payload(900_000))
    assert b.history_bytes <= 10_000_000
    kept = await b.history("blobs", since=StreamPosition((await b.position("blobs")).epoch, 489))
    assert kept.complete and len(kept.publications) == 11  # the newest, whole


async def test_the_global_cap_drops_the_oldest_publications_of_any_room_first() -> None:
    b = MemoryBroker(history_bytes=1_000_000)
    for room in ("old", "middle", "new"):
        for _ in range(4):
            await b.publish(room, "blob", ("x",), ts=time.time(), encoded=_payload(100_000))
    assert b.history_bytes <= 1_000_000
    for _ in range(4):
        await b.publish("newest", "blob", ("x",), ts=time.time(), encoded=_payload(100_000))
    assert b.history_bytes <= 1_000_000
    old = await b.history("old", since=StreamPosition((await b.position("old")).epoch, 0))
    newest = await b.history("newest", since=StreamPosition((await b.position("newest")).epoch, 0))
    assert not old.complete and newest.complete and len(newest.publications) == 4


async def test_25000_one_off_rooms_leave_nothing_behind_once_they_expire() -> None:
    """Published once each, marked finished, and forgotten after their lifetime; twice, with
    no growth the second time (tracemalloc, not RSS)."""
    import gc
    import tracemalloc

    ROOMS = 25_000  # enough that a leak of a few bytes a room shows; tracemalloc makes each one slow
    clock = Clock()
    b = MemoryBroker(history_ttl=300.0, clock=clock)
    empty = {"streams": 0, "publications": 0, "order": 0, "bytes": 0, "terminal": 0, "presence": 0}

    async def cycle() -> None:
        for n in range(ROOMS):
            await b.publish(f"job:{n}", "done", ({"n": n},), ts=clock.now, encoded=(b'{"n":%d}' % n,))
            if n % 10 == 0:
                await b.mark_terminal(f"job:{n}")
        assert b.held()["streams"] == ROOMS
        clock.now += 301
        assert b.sweep() == ROOMS
        assert b.held() == empty

    tracemalloc.start()
    try:
        await cycle()
        gc.collect()
        first = tracemalloc.get_traced_memory()[0]
        await cycle()
        gc.collect()
        second = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert second - first < 10 * ROOMS, f"grew {second - first} bytes in a second cycle"  # < 10 B a room


async def test_the_sweep_runs_by_itself_once_started() -> None:
    clock = Clock()
    b = MemoryBroker(history_ttl=1.0, sweep_interval=0.01, clock=clock)
    await b.start(RecordingEvents())
    try:
        await b.publish("once", "ev", (), ts=clock.now)
        clock.now += 2
        async with asyncio.timeout(5):
            while b.streams:
                await yield_to_loop()
    finally:
        await b.aclose()
