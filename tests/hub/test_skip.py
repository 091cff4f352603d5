"""``skip``: a publication that is not for some connections (python-socketio's ``skip_sid``).

Over every broker: the fan-out leaves the skipped out with one encode for everyone, and the
exclusion is kept in history, so a skipped connection that comes back by offset does not get
the publication either, while everyone else's replay has it. Over Redis it crosses nodes.
"""

from __future__ import annotations

import pytest
from brokers import _fresh_redis, fanned_out
from hub_doubles import ConnFactory, CountingEncoder, RecordingConnection

from roomcast.broker.redis import RedisBroker
from roomcast.hub import Hub


def events(conn: RecordingConnection) -> list[str]:
    return [encoded[1] for encoded in conn.written]  # CountingEncoder: [name, event, data, offset]


async def test_fan_out_skips_the_listed_connections_with_one_encode(
    hub: Hub, make_conn: ConnFactory, encoder: CountingEncoder
) -> None:
    sender, other, third = make_conn(), make_conn(), make_conn()
    for conn in (sender, other, third):
        await conn.join("r")
    before = hub.delivered
    await hub.publish("r", "moved", {"x": 1}, skip=[sender.id])
    await hub.publish("r", "for-all")
    await fanned_out(hub, "r")
    assert events(sender) == ["for-all"]
    assert events(other) == events(third) == ["moved", "for-all"]
    assert encoder.calls == 2  # once per publication, skip or not
    assert hub.delivered - before == 5


async def test_a_skipped_connection_recovering_by_offset_does_not_get_it_back(hub: Hub, make_conn: ConnFactory) -> None:
    sender, other = make_conn(), make_conn()
    start = await hub.broker.position("r")
    await hub.publish("r", "mine", 1, skip={sender.id})
    await hub.publish("r", "everyone", 2)
    mine = await hub.subscribe(sender, "r", since=start)
    theirs = await hub.subscribe(other, "r", since=start)
    assert mine.recovered and theirs.recovered
    assert [p.event for p in mine.publications] == ["everyone"]
    assert [p.event for p in theirs.publications] == ["mine", "everyone"]
    assert mine.position == theirs.position  # the skipped one still stands past it


@pytest.mark.parametrize("broker_kind", ["redis"])
async def test_skip_crosses_nodes_and_survives_in_redis_history(broker_kind: str) -> None:
    url = _fresh_redis()
    publishing, receiving = Hub(broker=RedisBroker(url)), Hub(broker=RedisBroker(url))
    await publishing.start()
    await receiving.start()
    try:
        encoder = CountingEncoder()
        skipped = RecordingConnection("s1", hub=receiving, encoder=encoder)
        kept = RecordingConnection("k1", hub=receiving, encoder=encoder)
        for conn in (skipped, kept):
            receiving.add_connection(conn)
            await conn.join("r")
        start = await publishing.broker.position("r")
        await publishing.publish("r", "hello", {"a": [1, 2]}, skip=["s1", "elsewhere"])
        await fanned_out(receiving, "r")
        assert events(skipped) == [] and events(kept) == ["hello"]
        history = await receiving.broker.history("r", since=start)
        assert [p.skip for p in history.publications] == [frozenset({"s1", "elsewhere"})]
    finally:
        await publishing.aclose()
        await receiving.aclose()
