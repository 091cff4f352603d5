"""Recovery with a shared session store: ``Recovery(shared=RedisSessionStore)`` on a real Redis.

Each ``Recovery`` here is one node (its own trail epoch, its own Redis connections). What it
proves: a session saved by one node is placed exactly by another from the offset its client
presents, with nothing from the saving node's memory; it is restored once when nodes race;
it lives for the recovery window; what Redis cannot hold is refused with a warning, never
saved in part. Writes are awaited with ``SharedSessions.flush`` and expiry with Redis's own
keyspace notifications.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from keyspace import key_events
from redisserver import fresh_url

from roomcast.broker.sessions import SESSION_PREFIX, RedisSessionStore
from roomcast.transports.recovery import (
    MAX_SESSION_BYTES,
    TRAIL_SPAN,
    Recovery,
    Resume,
    SavedSession,
    SharedSessions,
    Trail,
    decode_session,
    encode_session,
)
from roomcast.types import Publication, StreamPosition

WAIT = 5.0
Node = Callable[..., Recovery]


@pytest.fixture
async def url(redis_url: str) -> str:
    return fresh_url(redis_url)


@pytest.fixture
async def node(url: str) -> AsyncIterator[Node]:
    """Builds nodes on the test's Redis; closes them (and their connections) at the end."""
    built: list[Recovery] = []

    def build(window: float = 60.0) -> Recovery:
        recovery = Recovery(window, shared=RedisSessionStore(url))
        built.append(recovery)
        return recovery

    yield build
    for recovery in built:
        await recovery.aclose()


@pytest.fixture
async def raw(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(url)
    yield client
    await client.aclose()


def shared(recovery: Recovery) -> SharedSessions:
    assert isinstance(recovery.store, SharedSessions)
    return recovery.store


def _pub(room: str, n: int, epoch: str = "e") -> Publication:
    return Publication(room, "news", (n,), StreamPosition(epoch, n), 0.0)


def _save(recovery: Recovery, pid: str = "pid", *, rooms: dict[str, int], written: int, **extra: Any) -> None:
    positions = {room: StreamPosition("e", offset) for room, offset in rooms.items()}
    fields: dict[str, Any] = {"sid": "sid", "namespace": "/", "data": {"user": "ann"}, "since": 0}
    fields.update(extra)
    recovery.save(pid, positions=positions, written=written, **fields)


def _offsets(resume: Resume | None) -> dict[str, int] | None:
    return None if resume is None else {room: p.offset for room, p in resume.positions.items()}


async def test_a_node_places_a_comeback_saved_by_another_from_the_offset_its_client_holds(
    node: Node, raw: aioredis.Redis
) -> None:
    a, b = node(), node()
    a.stamp(_pub("a", 1))  # seq 1: received
    a.stamp(_pub("b", 5))  # seq 2: in flight
    a.stamp(_pub("a", 2))  # seq 3: in flight
    a.stamp(_pub("b", 6))  # seq 4: in flight
    a.stamp(_pub("other", 1))  # seq 5: not this socket's room
    _save(a, rooms={"a": 2, "b": 6, "c": 3}, written=4)
    await shared(a).flush()
    assert await raw.exists(SESSION_PREFIX + "pid") == 1
    for n in range(1, 4):
        b.stamp(_pub("z", n))  # b's own trail: other numbers, another epoch

    assert b.parse_offset(f"{a.epoch}.1") is None  # b cannot read a's offsets by itself
    resume = await b.claim("/", {"pid": "pid", "offset": f"{a.epoch}.1"})
    assert _offsets(resume) == {"a": 1, "b": 4, "c": 3}  # each room back to its first lost publication
    assert resume is not None and resume.saved.sid == "sid" and resume.saved.data == {"user": "ann"}
    assert resume.since == b.head == 3  # the client's next offsets are b's
    assert await raw.exists(SESSION_PREFIX + "pid") == 0
    assert await b.claim("/", {"pid": "pid", "offset": f"{a.epoch}.1"}) is None  # once


async def test_an_offset_a_node_did_not_give_is_refused_on_any_node(node: Node) -> None:
    a, b = node(), node()
    a.stamp(_pub("r", 1))
    for n, offset in enumerate(["elsewhere.1", f"{b.epoch}.0", f"{a.epoch}.2", f"{a.epoch}.-1", 7]):
        _save(a, f"p{n}", rooms={"r": 1}, written=1)
        await shared(a).flush()
        assert await b.claim("/", {"pid": f"p{n}", "offset": offset}) is None, offset
    _save(a, "ok", rooms={"r": 1}, written=1)
    await shared(a).flush()
    assert _offsets(await b.claim("/", {"pid": "ok", "offset": f"{a.epoch}.1"})) == {"r": 1}


async def test_a_client_lost_again_before_the_new_node_sent_it_anything_is_placed_by_the_offset_it_kept(
    node: Node,
) -> None:
    """A → B → lost before any event from B: the client still holds A's offset."""
    a, b = node(), node()
    a.stamp(_pub("r", 1))
    held = f"{a.epoch}.1"
    _save(a, rooms={"r": 1}, written=1)
    await shared(a).flush()
    for n in range(1, 6):
        b.stamp(_pub("x", n))
    resume = await b.claim("/", {"pid": "pid", "offset": held})
    assert resume is not None and resume.since == 5
    b.stamp(_pub("r", 2))  # seq 6: the replay of what it missed, written but never read
    _save(b, rooms={"r": 2}, written=6, since=resume.since, presented=held)
    await shared(b).flush()

    back = await a.claim("/", {"pid": "pid", "offset": held})  # back on a, whose epoch the offset has
    assert _offsets(back) == {"r": 1}  # what b wrote in flight is sent again
    _save(b, "other", rooms={"r": 2}, written=6, since=5, presented=held)
    await shared(b).flush()
    assert await a.claim("/", {"pid": "other", "offset": f"{a.epoch}.0"}) is None  # not what it kept


async def test_nodes_asked_for_the_same_session_at_once_restore_it_once(node: Node) -> None:
    a, b, c = node(), node(), node()
    a.stamp(_pub("r", 1))
    pids = [f"pid-{n}" for n in range(20)]
    for pid in pids:
        _save(a, pid, rooms={"r": 1}, written=1)
    await shared(a).flush()
    claims = await asyncio.gather(
        *(n.claim("/", {"pid": pid, "offset": f"{a.epoch}.1"}) for pid in pids for n in (b, c))
    )
    for i, pid in enumerate(pids):
        restored = [r for r in claims[2 * i : 2 * i + 2] if r is not None]
        assert len(restored) == 1 and restored[0].pid == pid


async def test_a_session_lives_for_the_window_and_is_gone_after_it(url: str, node: Node, raw: aioredis.Redis) -> None:
    a, b = node(window=0.3), node(window=0.3)
    async with key_events(url, SESSION_PREFIX + "*") as events:
        _save(a, rooms={}, written=0)
        await shared(a).flush()
        assert 0 < await raw.pttl(SESSION_PREFIX + "pid") <= 300  # the window, measured by Redis
        async with asyncio.timeout(WAIT):
            await events.until(SESSION_PREFIX + "pid", "expired")
    assert await b.claim("/", {"pid": "pid"}) is None


async def test_a_comeback_that_overtakes_its_own_save_on_the_same_node_waits_for_it(
    node: Node, raw: aioredis.Redis
) -> None:
    a = node()
    _save(a, rooms={"r": 1}, written=0)
    assert shared(a).__len__() == 1  # the write is still in flight
    resume = await a.claim("/", {"pid": "pid"})
    assert _offsets(resume) == {"r": 1}
    assert await raw.exists(SESSION_PREFIX + "pid") == 0


async def test_a_session_of_another_namespace_stays_for_it(node: Node) -> None:
    a, b = node(), node()
    _save(a, rooms={"r": 1}, written=0, namespace="/custom")
    await shared(a).flush()
    assert await b.claim("/", {"pid": "pid"}) is None
    await shared(b).flush()  # it was handed back
    assert _offsets(await b.claim("/custom", {"pid": "pid"})) == {"r": 1}


async def test_a_session_handed_back_keeps_its_deadline(node: Node, raw: aioredis.Redis) -> None:
    a, b = node(), node()
    _save(a, rooms={"r": 1}, written=0)
    await shared(a).flush()
    before = await raw.pttl(SESSION_PREFIX + "pid")
    resume = await b.claim("/", {"pid": "pid"})
    assert resume is not None
    b.put_back(resume)  # its comeback ended before it was accepted
    await shared(b).flush()
    assert 0 < await raw.pttl(SESSION_PREFIX + "pid") <= before
    assert _offsets(await a.claim("/", {"pid": "pid"})) == {"r": 1}


UNSTORABLE: dict[str, Any] = {
    "an object": object(),
    "bytes": b"\x00",
    "a set": {1, 2},
    "a key that is not a string": {1: "one"},
    "nested too deep": None,  # built below: 130 arrays in one another
    "over the size bound": "x" * MAX_SESSION_BYTES,
}


@pytest.mark.parametrize("kind", list(UNSTORABLE))
async def test_data_redis_cannot_hold_is_refused_with_a_warning_and_never_saved(
    node: Node, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    a, b = node(), node()
    value = UNSTORABLE[kind]
    if kind == "nested too deep":
        for _ in range(130):
            value = [value]
    with caplog.at_level(logging.WARNING, logger="roomcast.socketio"):
        _save(a, rooms={"r": 1}, written=0, data={"user": "ann", "value": value})
    assert shared(a).refused == 1 and len(shared(a)) == 0  # nothing written, nothing in flight
    assert any(
        "session not saved for recovery" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    )
    assert await raw.exists(SESSION_PREFIX + "pid") == 0
    assert await b.claim("/", {"pid": "pid"}) is None  # its client gets a new session


async def test_data_comes_back_as_json_gives_it(node: Node) -> None:
    a, b = node(), node()
    data = {"user": "ann", "scores": (1, 2), "profile": {"tags": ["x"], "age": 3.5, "admin": False, "none": None}}
    _save(a, rooms={}, written=0, data=data)
    await shared(a).flush()
    resume = await b.claim("/", {"pid": "pid"})
    assert resume is not None
    assert resume.saved.data == {**data, "scores": [1, 2]}  # a tuple is a JSON array: a list


def test_the_encoding_keeps_a_whole_trail_span_small_and_exact() -> None:
    rooms = {f"room-{n}": StreamPosition("e", 5000) for n in range(3)}
    trail = tuple(
        Trail(seq, f"room-{seq % 3}", StreamPosition("e" if seq > 10 else "old", seq)) for seq in range(1, 1025)
    )
    saved = SavedSession("sid", "/", rooms, {"k": "v"}, "ep", 2000, 7, "ep.3", trail, 9, 99.0)
    blob = encode_session(saved)
    assert len(trail) == TRAIL_SPAN and len(blob) < 20 * TRAIL_SPAN  # a few bytes per entry
    assert decode_session(blob, expires=99.0) == saved
    assert decode_session(b'{"v": 999}', expires=1.0) is None  # a layout this version cannot read
    assert decode_session(b"not json", expires=1.0) is None


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_an_unreachable_redis_loses_the_session_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    a = Recovery(60.0, shared=RedisSessionStore(f"redis://127.0.0.1:{_closed_port()}/0"))
    try:
        with caplog.at_level(logging.WARNING, logger="roomcast.socketio"):
            _save(a, rooms={"r": 1}, written=0)
            await shared(a).flush()
            assert await a.claim("/", {"pid": "pid"}) is None  # a new session, never a wrong one
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("not saved for recovery" in m for m in messages)
        assert any("not restored" in m for m in messages)
    finally:
        await a.aclose()
