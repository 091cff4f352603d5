"""A Redis that restarted: history is trusted with an append-only file, and only then.

Real parts: redis-servers started for each test, SIGKILLed and started again on the same
port and directory. Without an append-only file, what a restarted Redis holds is an RDB
snapshot (or nothing): older than what the nodes delivered, under the same epochs. Every
room's epoch then changes, so no client that saw offsets 4 and 5 is given other
publications as 4 and 5, and no subscriber is told its position continues. The publish and
read scripts notice by themselves: each room records the run id of the Redis process its
epoch belongs to, and the scripts compare it with ``INFO server`` of the server they run on.
"""

from __future__ import annotations

import redis
from hub_doubles import CountingEncoder, RecordingConnection
from redisserver import RedisProcess, running_redis

from roomcast.broker.redis import RedisBroker
from roomcast.hub import Hub
from roomcast.types import Publication, StreamPosition


async def _publish(broker: RedisBroker, room: str, count: int) -> list[Publication]:
    return [await broker.publish(room, "ev", (n,), ts=1.0) for n in range(count)]


def _meta(server: RedisProcess, room: str) -> dict[bytes, bytes]:
    """The room's epoch, offset and run id, read from Redis itself."""
    client = redis.Redis.from_url(server.url)
    try:
        meta: dict[bytes, bytes] = client.hgetall(f"rc:{{{room}}}:m")
        return meta
    finally:
        client.close()


def _snapshot(server: RedisProcess) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.save()
    finally:
        client.close()


async def test_a_redis_restored_from_an_older_snapshot_gives_every_room_a_new_epoch() -> None:
    with running_redis(rdb=True) as server:
        broker = RedisBroker(server.url)
        try:
            rooms = {room: await _publish(broker, room, 3) for room in ("ahead", "inside", "publish", "quiet")}
            _snapshot(server)  # the snapshot holds offsets 1-3 of each room
            for room in ("ahead", "inside", "publish"):
                rooms[room] += await _publish(broker, room, 2)  # 4 and 5: delivered, not in the snapshot
            server.kill()
            server.start()
            old = {room: pubs[0].position.epoch for room, pubs in rooms.items()}
            assert _meta(server, "ahead")[b"o"] == b"3"  # the fault is real: offset 3 under the old epoch
            assert _meta(server, "ahead")[b"e"] == old["ahead"].encode()

            after = await _publish(broker, "ahead", 3)  # trusting the snapshot, these would be 4, 5, 6
            ahead = await broker.history("ahead", since=rooms["ahead"][-1].position)  # a subscriber at 5
            assert not ahead.complete and ahead.publications == ()  # not "recovered" with 6 alone
            assert ahead.position.epoch != old["ahead"] and ahead.position == after[-1].position
            assert [p.position.offset for p in after] == [1, 2, 3]

            inside = await broker.history("inside", since=rooms["inside"][1].position)  # at 2, inside the snapshot
            assert not inside.complete and inside.publications == ()
            assert inside.position.epoch != old["inside"]

            again = await broker.publish("publish", "ev", ("after",), ts=2.0)
            assert again.position.epoch != old["publish"] and again.position.offset == 1  # never a second 4
            everything = await broker.history("publish", since=StreamPosition(again.position.epoch, 0))
            assert [p.data for p in everything.publications] == [("after",)]  # the snapshot's stream went with it

            quiet = await broker.position("quiet")  # nothing written after the snapshot: reset all the same
            assert quiet.epoch != old["quiet"] and quiet.offset == 0
        finally:
            await broker.aclose()


async def test_with_an_append_only_file_history_is_trusted_across_a_restart() -> None:
    with running_redis(aof=True) as server:
        broker = RedisBroker(server.url)
        try:
            pubs = await _publish(broker, "r", 5)
            before = _meta(server, "r")[b"r"]
            server.kill()
            server.start()
            recovered = await broker.history("r", since=pubs[2].position)
            assert recovered.complete and recovered.publications == tuple(pubs[3:])
            after = await broker.publish("r", "ev", (5,), ts=1.0)
            assert after.position == StreamPosition(pubs[0].position.epoch, 6)
            assert _meta(server, "r")[b"r"] != before  # the room now belongs to the new process
        finally:
            await broker.aclose()


async def test_a_subscriber_returning_after_redis_came_back_from_an_older_snapshot_is_reset() -> None:
    """A client leaves holding offset 5; Redis comes back with offsets up to 3 and the room
    goes on. Trusting the snapshot, the room would number its next publications 4, 5, 6
    under the same epoch, and the client would be "recovered" with 6 alone: a silent gap.
    It gets an explicit reset (a fresh snapshot) instead."""
    with running_redis(rdb=True) as server:
        hub = Hub(broker=RedisBroker(server.url))
        await hub.start()
        try:
            for n in range(3):
                await hub.publish("r", "ev", n)
            _snapshot(server)
            for n in range(3, 5):
                await hub.publish("r", "ev", n)
            held = await hub.broker.position("r")
            assert held.offset == 5
            server.kill()
            server.start()
            for n in range(5, 8):
                await hub.publish("r", "ev", n)
            viewer = RecordingConnection("v", hub=hub, encoder=CountingEncoder())
            hub.add_connection(viewer)
            sub = await hub.subscribe(viewer, "r", since=held)
            assert not sub.recovered and sub.publications == ()
            assert sub.position.epoch != held.epoch and sub.position.offset == 3
        finally:
            await hub.aclose()
