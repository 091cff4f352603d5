"""The broker contract (``roomcast.broker.base``), and the hub's sync on top of it, per broker.

Every test runs over each broker of ``brokers.BROKERS``: ``MemoryBroker`` (synchronous
delivery) and ``AsyncBroker`` (suspends in every call, delivers later in a seeded random
order across rooms). What the contract promises is asserted the same way for each: per-room
offsets and epochs, history after a position, delivery once and in room order to a subscribed
node, terminal after the last publication, a new epoch for a freed room. On top of it, the
hub's subscribe loses and repeats nothing under concurrent publishing, and a broken live
stream gives exactly what was missed, or a reset.

What each broker asserts differently: ``MemoryBroker`` trims history exactly by count and
age; a freed stream is one ``sweep`` found quiet, empty and unfollowed past its lifetime.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import brokers
import pytest
from asyncbroker import AsyncBroker
from brokers import BROKERS, make_broker
from hub_doubles import CountingEncoder, RecordingConnection
from loopstep import yield_to_loop

from roomcast import disconnect
from roomcast.hub import Hub
from roomcast.types import Publication, RoomName, StreamPosition, Subscription

WAIT = 10.0


class Events:
    """Stands in for the hub: what a broker delivered, with a way to wait for it."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self.log: list[tuple[str, Any]] = []
        self.lost: list[Any] = []
        self._changed = asyncio.Event()

    def on_publication(self, publication: Publication) -> None:
        self.publications.append(publication)
        self.log.append(("pub", (publication.room, publication.position.offset)))
        self._changed.set()

    def on_terminal(self, room: RoomName) -> None:
        self.log.append(("terminal", room))
        self._changed.set()

    def on_stream_lost(self, rooms: Any) -> None:
        self.lost.append(rooms)
        self._changed.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.log) < count:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture(params=BROKERS)
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# -- the broker alone ---------------------------------------------------------------------------
async def test_offsets_count_per_room_and_each_room_has_its_own_stable_epoch(kind: str) -> None:
    broker = make_broker(kind)
    fresh = await broker.position("a")
    assert fresh.offset == 0
    pubs = [await broker.publish(room, "ev", (n,), ts=1.0) for n, room in enumerate("aabab")]
    assert [(p.room, p.position.offset) for p in pubs] == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)]
    assert {p.position.epoch for p in pubs if p.room == "a"} == {fresh.epoch}  # read before: the same epoch
    assert pubs[2].position.epoch != fresh.epoch
    assert await broker.position("a") == StreamPosition(fresh.epoch, 3)


async def test_history_gives_exactly_what_follows_a_position_or_says_it_cannot(kind: str) -> None:
    broker = make_broker(kind, history_size=3)
    pubs = [await broker.publish("r", "ev", (n,), ts=1e12) for n in range(5)]
    epoch = pubs[0].position.epoch
    after_two = await broker.history("r", since=StreamPosition(epoch, 2))
    assert after_two.complete and after_two.publications == tuple(pubs[2:])
    for since in (StreamPosition(epoch, 1), StreamPosition("other", 2), StreamPosition(epoch, 9)):
        gone = await broker.history("r", since=since)
        assert not gone.complete and gone.publications == () and gone.position == pubs[-1].position


async def test_a_subscribed_node_gets_every_publication_once_in_room_order(kind: str) -> None:
    broker, events = make_broker(kind), Events()
    await broker.start(events)
    await broker.subscribe("a")
    await broker.subscribe("b")
    await broker.publish("c", "ev", (), ts=1.0)  # nobody here follows c: it may come or not
    sent = [await broker.publish(room, "ev", (), ts=1.0) for room in "abbaab"]
    async with asyncio.timeout(WAIT):
        while len(received := [p for p in events.publications if p.room in "ab"]) < len(sent):
            await events.until(len(events.log) + 1)
    for room in "ab":
        assert [p.position.offset for p in received if p.room == room] == [1, 2, 3]


async def test_terminal_reaches_a_subscribed_node_after_the_rooms_last_publication(kind: str) -> None:
    broker, events = make_broker(kind), Events()
    await broker.start(events)
    await broker.subscribe("task:1")
    for _ in range(3):
        await broker.publish("task:1", "progress", (), ts=1.0)
    await broker.mark_terminal("task:1")
    await broker.mark_terminal("task:1")  # once is enough
    await events.until(4)
    assert events.log == [
        ("pub", ("task:1", 1)),
        ("pub", ("task:1", 2)),
        ("pub", ("task:1", 3)),
        ("terminal", "task:1"),
    ]
    assert await broker.is_terminal("task:1") and not await broker.is_terminal("task:2")


async def test_a_freed_and_recreated_room_gets_a_new_epoch(kind: str) -> None:
    """A quiet room nobody follows is freed after its lifetime; one that is followed is not.

    ``MemoryBroker`` (and the async broker on it) frees at its sweep, on an injected clock;
    Redis expires the room's keys itself, so its row waits (bounded) for the epoch to change.
    """
    clock = Clock()
    broker = make_broker(kind, history_ttl=1.0 if kind == "redis" else 300.0, clock=clock)
    await broker.start(Events())
    try:
        first = await broker.publish("once", "ev", (), ts=clock.now)
        await broker.subscribe("followed")
        followed = await broker.publish("followed", "ev", (), ts=clock.now)
        if kind == "redis":
            async with asyncio.timeout(WAIT):
                while (await broker.position("once")).epoch == first.position.epoch:
                    await yield_to_loop()
        else:
            clock.now += 301
            assert broker.sweep() == 1  # "once": expired, empty, unfollowed; "followed" stays
        again = await broker.publish("once", "ev", (), ts=clock.now)
        assert again.position.epoch != first.position.epoch and again.position.offset == 1
        assert not (await broker.history("once", since=first.position)).complete  # never offset 1 again
        assert await broker.position("followed") == followed.position
    finally:
        await broker.aclose()


async def test_presence_counts_connections_and_distinct_users(kind: str) -> None:
    broker = make_broker(kind)
    for client, user in (("c1", "ann"), ("c2", "ann"), ("c3", None), ("c4", "bob")):
        await broker.add_presence("r", client, user)
    await broker.remove_presence("r", "c4")
    await broker.remove_presence("r", "never")
    presence = await broker.presence("r")
    assert (presence.connections, presence.users) == (3, ("ann",))
    assert (await broker.presence("empty")).connections == 0


# -- the hub's sync over the broker -------------------------------------------------------------
class Viewer(RecordingConnection):
    """A subscriber that can be waited on: the offsets of what reached it, per room."""

    def __init__(self, id: str, hub: Hub, encoder: CountingEncoder) -> None:
        super().__init__(id, hub=hub, encoder=encoder)
        self._changed = asyncio.Event()
        self.subs: dict[str, Subscription] = {}

    def write(self, encoded: Any) -> bool:
        self._changed.set()
        return super().write(encoded)

    def disconnect(self, reason: disconnect.Disconnect) -> None:
        super().disconnect(reason)
        self._changed.set()

    def live(self) -> list[int]:
        return [encoded[-1] for encoded in self.written]

    def view(self, room: str) -> list[int]:
        """Offsets the subscriber holds of ``room``: its subscription's, then the live ones."""
        sub = self.subs[room]
        return [p.position.offset for p in sub.publications] + self.live()

    async def until(self, offset: int) -> None:
        async with asyncio.timeout(WAIT):
            while not self.written or self.written[-1][-1] < offset:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def hub(kind: str) -> AsyncIterator[Hub]:
    h = Hub(broker=make_broker(kind))
    await h.start()
    try:
        yield h
    finally:
        await h.aclose()


@pytest.mark.parametrize("seed", range(6))
async def test_subscribe_under_concurrent_publishing_loses_nothing_and_repeats_nothing(kind: str, seed: int) -> None:
    hub = Hub(broker=make_broker(kind, seed=seed))
    await hub.start()
    rng = random.Random(seed)
    encoder, total = CountingEncoder(), 120

    async def state(room: str) -> str:
        for _ in range(rng.randint(0, 3)):
            await yield_to_loop()  # a provider that awaits I/O
        return f"state of {room}"

    hub.snapshot("*")(state)
    try:

        async def publisher() -> None:
            for n in range(1, total + 1):
                await hub.publish("r", "ev", n)
                for _ in range(rng.randint(0, 2)):
                    await yield_to_loop()

        task = asyncio.create_task(publisher())
        viewers: list[Viewer] = []
        earlier: StreamPosition | None = None
        for i in range(12):  # arrive while it publishes, some coming back with a position
            for _ in range(rng.randint(1, 15)):
                await yield_to_loop()
            viewer = Viewer(f"v{i}", hub, encoder)
            hub.add_connection(viewer)
            viewer.subs["r"] = sub = await hub.subscribe(viewer, "r", since=earlier if i % 3 == 2 else None)
            earlier = sub.base if sub.position.offset else None
            viewers.append(viewer)
        async with asyncio.timeout(WAIT):
            await task
        final = (await hub.broker.position("r")).offset
        for viewer in viewers:
            sub = viewer.subs["r"]
            if sub.position.offset < final:
                await viewer.until(final)
            assert viewer.view("r") == list(range(sub.base.offset + 1, final + 1)), viewer.id
            assert sub.recovered or sub.snapshot == "state of r"
    finally:
        await hub.aclose()


async def test_joining_and_awaiting_the_join_leaves_no_gap(hub: Hub) -> None:
    viewer = Viewer("v", hub, CountingEncoder())
    hub.add_connection(viewer)
    await viewer.join("r")  # the broker delivers r here from now on
    await hub.publish("r", "ev")
    await viewer.until(1)
    assert viewer.live() == [1]


async def test_subscribing_again_to_a_room_covers_the_gap_once(hub: Hub) -> None:
    viewer = Viewer("v", hub, CountingEncoder())
    hub.add_connection(viewer)
    viewer.subs["r"] = first = await hub.subscribe(viewer, "r")
    await hub.publish("r", "ev")
    await viewer.until(1)
    viewer.subs["r"] = again = await hub.subscribe(viewer, "r", since=first.position)
    await hub.publish("r", "ev")
    await viewer.until(2)
    assert [p.position.offset for p in again.publications] == [1]  # given again, by the answer
    assert viewer.live()[-1] == 2 and viewer.live().count(2) == 1
    assert hub.rooms() == {"r": 1}


# -- a broken live stream -----------------------------------------------------------------------
async def _broken_hub(**limits: Any) -> tuple[Hub, AsyncBroker]:
    broker = AsyncBroker(seed=3, **limits)
    hub = Hub(broker=broker)
    await hub.start()
    return hub, broker


async def _viewers(hub: Hub, room: str, n: int) -> list[Viewer]:
    encoder, viewers = CountingEncoder(), []
    for i in range(n):
        viewer = Viewer(f"v{i}", hub, encoder)
        hub.add_connection(viewer)
        viewer.subs[room] = await hub.subscribe(viewer, room)
        viewers.append(viewer)
    return viewers


async def test_a_broken_stream_is_made_whole_from_history() -> None:
    hub, broker = await _broken_hub()
    try:
        viewers = await _viewers(hub, "r", 3)
        await hub.publish("r", "ev")
        for viewer in viewers:
            await viewer.until(1)
        broker.break_stream({"r"})
        for _ in range(5):
            await hub.publish("r", "ev")  # lost on the way to this node
        assert broker.dropped == 5 and all(v.live() == [1] for v in viewers)
        await broker.mend_stream({"r"})
        await hub.publish("r", "ev")
        for viewer in viewers:
            await viewer.until(7)
            assert viewer.view("r") == [1, 2, 3, 4, 5, 6, 7]
            assert viewer.disconnects == []
        assert hub.stream_losses == 1
    finally:
        await hub.aclose()


async def test_a_broken_stream_past_what_history_holds_resets_its_subscribers() -> None:
    hub, broker = await _broken_hub(history_size=2)
    try:
        viewers = await _viewers(hub, "r", 2)
        others = await _viewers(hub, "elsewhere", 1)
        broker.break_stream({"r"})
        for _ in range(5):
            await hub.publish("r", "ev")
        await broker.mend_stream(None)  # every room is re-checked; only r is short
        async with asyncio.timeout(WAIT):
            while not all(v.disconnects for v in viewers):
                await yield_to_loop()
        assert [v.disconnects for v in viewers] == [[disconnect.INSUFFICIENT_STATE]] * 2
        assert others[0].disconnects == [] and hub.rooms() == {"elsewhere": 1}
        back = Viewer("back", hub, CountingEncoder())  # a client coming back with its position
        hub.add_connection(back)
        sub = await hub.subscribe(back, "r", since=viewers[0].subs["r"].position)
        assert not sub.recovered and sub.position.offset == 5  # an explicit reset, never a gap
    finally:
        await hub.aclose()


async def test_a_stream_broken_while_a_subscriber_syncs_is_read_again() -> None:
    hub, broker = await _broken_hub()
    gate, entered = asyncio.Event(), asyncio.Event()

    @hub.snapshot("r")
    async def slow(room: str) -> str:
        entered.set()
        await gate.wait()
        return "state"

    try:
        viewer = Viewer("v", hub, CountingEncoder())
        hub.add_connection(viewer)
        subscribing = asyncio.create_task(hub.subscribe(viewer, "r"))
        async with asyncio.timeout(WAIT):
            await entered.wait()
        broker.break_stream({"r"})
        await hub.publish("r", "ev")
        await hub.publish("r", "ev")
        await broker.mend_stream({"r"})
        gate.set()
        async with asyncio.timeout(WAIT):
            viewer.subs["r"] = await subscribing
        await hub.publish("r", "ev")
        await viewer.until(3)
        assert viewer.view("r") == list(range(viewer.subs["r"].base.offset + 1, 4))
    finally:
        await hub.aclose()


async def test_a_killed_redis_subscription_is_reconnected_and_what_it_missed_is_read_back() -> None:
    """``CLIENT KILL TYPE pubsub``: the node's live stream breaks for real. It reconnects with
    backoff, and its subscribers get what was published meanwhile from history, once."""
    import redis.asyncio as aioredis

    hub = Hub(broker=make_broker("redis"))
    await hub.start()
    try:
        viewers = await _viewers(hub, "r", 2)
        await hub.publish("r", "ev")
        for viewer in viewers:
            await viewer.until(1)
        admin = aioredis.from_url(brokers.REDIS_URL)
        try:
            assert await admin.client_kill_filter(_type="pubsub") >= 1
            for _ in range(5):
                await hub.publish("r", "ev")  # some while the subscription is down
        finally:
            await admin.aclose()
        async with asyncio.timeout(WAIT):
            while hub.stream_losses == 0:
                await yield_to_loop()
        await hub.publish("r", "ev")
        for viewer in viewers:
            await viewer.until(7)
            assert viewer.view("r") == [1, 2, 3, 4, 5, 6, 7]
    finally:
        await hub.aclose()


async def test_a_deaf_redis_subscription_is_found_by_its_heartbeat_and_reconnected() -> None:
    """Redis stops delivering (``CLIENT PAUSE ... WRITE``: the node's heartbeat cannot go
    through) without any error on the subscription: the node notices that it no longer hears
    itself, says so (``unhealthy``, which ``/readyz`` reports), reconnects, and its
    subscribers get everything once Redis delivers again."""
    import redis.asyncio as aioredis

    from roomcast.broker.redis import RedisBroker

    assert brokers.REDIS_URL is not None
    broker = RedisBroker(brokers.REDIS_URL, heartbeat_interval=0.1, heartbeat_timeout=0.5)
    hub = Hub(broker=broker)
    await hub.start()
    admin = aioredis.from_url(brokers.REDIS_URL)
    try:
        viewers = await _viewers(hub, "deaf", 2)
        await hub.publish("deaf", "ev")
        for viewer in viewers:
            await viewer.until(1)
        await admin.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
        async with asyncio.timeout(WAIT):
            while broker.unhealthy is None:
                await yield_to_loop()
        assert "heard nothing" in broker.unhealthy
        async with asyncio.timeout(WAIT):  # Redis delivers again: heard, reconnected, reported
            while broker.unhealthy is not None or hub.stream_losses == 0:
                await yield_to_loop()
        await hub.publish("deaf", "ev")
        for viewer in viewers:
            await viewer.until(2)
            assert viewer.view("deaf") == [1, 2]
        assert broker.deaf_events == 1
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await hub.aclose()
