"""Binary attachments cross nodes as bytes: every node delivers what the publishing one would.

Real parts: the session's redis-server and two ``RedisBroker`` nodes on it (or a worker's
``RedisPublisher`` and a node). A publication whose data holds bytes is published through
one and received by the other, live and from history; what it decodes to is encoded by every
transport's encoder exactly as the publication the publishing hub handed its broker (which
is what ``MemoryBroker`` delivers in one process). The wire form stays one compact JSON text,
and entries written by the previous release, or not by ``publish_call`` at all, are still
delivered.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from brokerevents import Events
from redisserver import fresh_url

from roomcast import RedisPublisher, _json
from roomcast.broker.redis import PUBLISH_SCRIPT, RedisBroker, publish_call
from roomcast.hub.publication import prepare
from roomcast.protocol import socketio as sio
from roomcast.transports.socketio import SioEncoder, subscription_reply
from roomcast.transports.sse import event_body
from roomcast.transports.websocket import WsEncoder
from roomcast.types import Publication, StreamPosition, Subscription

WAIT = 10.0

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))

CASES: dict[str, tuple[Any, ...]] = {
    "bare": (PNG,),
    "nested": (
        {"name": "a.png", "png": PNG, "thumbs": [b"", bytearray(b"\xff\x00"), memoryview(b"mv")], "w": 1.5, "n": None},
    ),
    "several arguments": ("caption", 3, (b"\x01", [b"\x02", {"deep": (b"\x03",)}])),
    # application data that merely looks like json_safe's form stays what it is
    "look-alike": ({"$binary": "AQI="}, b"\x01\x02", {"$binary": b"\x04"}),
    "non-ascii keys": ({"fichier é": b"\x05", "日本": [b"\x06"]},),
}


def normalised(value: Any) -> Any:
    """``value`` as JSON gives it back, with its binary leaves as ``bytes``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalised(v) for v in value]
    return value


@asynccontextmanager
async def two_nodes(url: str, room: str) -> AsyncIterator[tuple[RedisBroker, RedisBroker, Events]]:
    """Node ``a`` publishes; node ``b`` follows ``room``, its deliveries in the ``Events``."""
    a, b, events = RedisBroker(url), RedisBroker(url), Events()
    await a.start(Events())
    await b.start(events)
    try:
        await b.subscribe(room)
        yield a, b, events
    finally:
        await a.aclose()
        await b.aclose()


async def published(node: RedisBroker, room: str, event: str, args: tuple[Any, ...]) -> Publication:
    """Publish as ``Hub.publish`` does: through the gate, then the broker."""
    encoded, binary = prepare(event, args)
    return await node.publish(room, event, args, ts=1_700_000_000.25, encoded=encoded, binary=binary)


def renderings(pub: Publication) -> list[Any]:
    """What each transport writes for ``pub``, live and as a Socket.IO subscribe's ack."""
    sub = Subscription(pub.room, pub.position, recovered=True, publications=(pub,))
    return [
        SioEncoder("/").encode(pub).packets,
        SioEncoder("/admin", meta=True).encode(pub).frames,
        event_body(pub),
        WsEncoder().encode(pub).message,
        sio.encode(sio.SioPacket(sio.SioType.ACK, "/", [subscription_reply(sub)], 7)),
    ]


@pytest.mark.parametrize("case", list(CASES))
async def test_a_binary_publication_reaches_another_node_as_bytes_live_and_from_history(
    redis_url: str, case: str
) -> None:
    args = CASES[case]
    async with two_nodes(fresh_url(redis_url), "gallery") as (a, b, events):
        sent = await published(a, "gallery", "img", args)
        live = await events.next()
        assert live.data == tuple(normalised(args)) and live.binary
        assert (live.encoded, live.position, live.ts) == (sent.encoded, sent.position, sent.ts)
        for node in (a, b):  # history, read through either node, is what was delivered live
            history = await node.history("gallery", since=StreamPosition(sent.position.epoch, 0))
            assert history.complete and history.publications == (live,)


@pytest.mark.parametrize("case", list(CASES))
async def test_every_transport_renders_a_received_binary_publication_as_the_publishing_node_does(
    redis_url: str, case: str
) -> None:
    """The publication ``RedisBroker.publish`` returns carries the publisher's own data, as
    ``MemoryBroker`` delivers it; the one another node decodes must render the same bytes on
    Socket.IO (a binary event, its attachments), SSE and /ws (the ``{"$binary"}`` form)."""
    async with two_nodes(fresh_url(redis_url), "gallery") as (a, _, events):
        sent = await published(a, "gallery", "img", CASES[case])
        received = await events.next()
        assert renderings(received) == renderings(sent)
    live = SioEncoder("/").encode(received).packets
    assert live[0].startswith(f"45{len(live) - 1}-") and len(live) > 1  # a binary event, with attachments


async def test_bytes_under_a_key_with_lone_surrogates_follow_the_key_json_safe_gives_it(redis_url: str) -> None:
    """Such a key reaches every transport with its surrogates replaced (``json_safe``); the
    path to the bytes under it names the key that way, so they arrive as bytes too."""
    async with two_nodes(fresh_url(redis_url), "odd") as (a, _, events):
        await published(a, "odd", "img", ({"k\ud800": b"\x07", "ok": "x\udfffy"},))
        received = await events.next()
        assert received.data == ({"k?": b"\x07", "ok": "x?y"},) and received.binary
        assert event_body(received) == b'event: img\ndata: {"k?":{"$binary":"Bw=="},"ok":"x?y"}\n\n'


async def test_a_publication_without_bytes_keeps_its_wire_form(redis_url: str) -> None:
    """Only publications with attachments pay anything: the others' wire form is unchanged."""
    url = fresh_url(redis_url)
    async with two_nodes(url, "board") as (a, _, events):
        sent = await published(a, "board", "moved", ({"$binary": "AQI="}, [1, "two"]))
        received = await events.next()
        assert received.data == ({"$binary": "AQI="}, [1, "two"]) and not received.binary
        assert renderings(received) == renderings(sent)
    [(_, fields)] = await _entries(url, "board")
    assert _json.loads(fields[b"p"]) == ["moved", 1_700_000_000.25, False, ['{"$binary":"AQI="}', '[1,"two"]']]


async def test_a_10_kb_attachment_costs_its_base64_once_on_the_wire(redis_url: str) -> None:
    """The bytes travel once, as the base64 the JSON transports embed anyway (no second copy,
    no escaping: base64 needs none inside a JSON string), plus the path that marks them."""
    url = fresh_url(redis_url)
    blob = os.urandom(10 * 1024)
    async with two_nodes(url, "files") as (a, _, events):
        await published(a, "files", "upload", ({"name": "x.bin", "blob": blob},))
        assert (await events.next()).data == ({"name": "x.bin", "blob": blob},)
    [(_, fields)] = await _entries(url, "files")
    payload = fields[b"p"]
    b64 = base64.b64encode(blob)
    assert payload.count(b64) == 1 and len(b64) == 13_656
    assert len(payload) - len(b64) < 100, payload.replace(b64, b"<base64>")


async def test_a_workers_binary_publication_is_delivered_as_bytes_sync_and_async(redis_url: str) -> None:
    """``RedisPublisher`` builds the same wire form through the same ``publish_call``."""
    url = fresh_url(redis_url)
    worker = RedisPublisher(url)
    async with two_nodes(url, "thumbs") as (_, b, events):
        first = await asyncio.to_thread(worker.publish, "thumbs", "thumb", {"id": 1, "jpg": b"\xff\xd8\xff"})
        second = await worker.apublish("thumbs", "thumb", [b"\x00", bytearray(b"\x01")])
        assert [(await events.next()).data for _ in range(2)] == [
            ({"id": 1, "jpg": b"\xff\xd8\xff"},),
            ([b"\x00", b"\x01"],),
        ]
        history = await b.history("thumbs", since=StreamPosition(first.epoch, 0))
        assert [p.data for p in history.publications] == [({"id": 1, "jpg": b"\xff\xd8\xff"},), ([b"\x00", b"\x01"],)]
        assert history.position.offset == second.offset == 2


async def test_entries_of_the_previous_release_and_odd_paths_are_still_delivered(redis_url: str) -> None:
    """A node or worker of the previous release wrote ``true`` where the paths are: its
    publication arrives in the JSON form, as it did then. Paths that lead nowhere (an entry
    not written by ``publish_call``) are ignored, never a broken subscription; and a node
    of the previous release can read the new form (four fields, a list where it had a bool)."""
    url = fresh_url(redis_url)
    admin = aioredis.from_url(url)
    script = admin.register_script(PUBLISH_SCRIPT)
    try:
        async with two_nodes(url, "mixed") as (_, b, events):
            old = ["img", 1.0, True, ['{"$binary":"AQI="}']]
            odd = ["img", 2.0, [[0, "x"], [5], "no", [], [0, 0, 0], [1]], ['{"$binary":"AQI="}', '{"$binary":"@@"}']]
            for payload in (old, odd):
                keys, args = publish_call("mixed", "img", 0.0, (), (), False, 1000, 300)
                args[3] = _json.dumps(payload)
                await script(keys=keys, args=args)
            first, second = await events.next(), await events.next()
            assert (first.data, first.binary) == (({"$binary": "AQI="},), True)
            assert (second.data, second.binary) == (({"$binary": "AQI="}, {"$binary": "@@"}), True)
            sent = await published(b, "mixed", "img", (b"\x01",))
            assert (await events.next()).data == (b"\x01",)
        *_, (_, fields) = await _entries(url, "mixed")
        event, ts, binary, raws = _json.loads(fields[b"p"])  # what the previous release unpacked
        assert (event, ts, bool(binary), raws) == ("img", sent.ts, True, ['{"$binary":"AQ=="}'])
    finally:
        await admin.aclose()


async def _entries(url: str, room: str) -> list[Any]:
    admin = aioredis.from_url(url)
    try:
        entries: list[Any] = await admin.xrange(f"rc:{{{room}}}:s")
        return entries
    finally:
        await admin.aclose()
