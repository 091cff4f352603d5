"""``Publication.canonical`` (a mapped task's own form) is kept by every broker, live and in history.

Over Redis it crosses nodes in the wire form's optional sixth element; entries of the
previous release (four or five elements) still read, with no canonical form, and a node of
the previous release reads the new form as it read its own.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from brokerevents import Events
from brokers import make_broker
from redisserver import fresh_url

from roomcast import _json
from roomcast.broker.redis import PUBLISH_SCRIPT, RedisBroker, publish_call
from roomcast.hub.publication import prepare
from roomcast.types import Publication, StreamPosition

WAIT = 10.0
MAPPED = ({"progressId": "t1", "percentage": 40.0},)
OWN = ({"id": "t1", "progress": 40.0, "metadata": {"secret": "é"}},)


async def _publish(broker: Any, room: str, *, skip: frozenset[str] | None = None) -> Publication:
    encoded, binary = prepare("crawl_progress", MAPPED)
    canonical, _ = prepare("crawl_progress", OWN)
    pub: Publication = await broker.publish(
        room, "crawl_progress", MAPPED, ts=time.time(), encoded=encoded, binary=binary, skip=skip, canonical=canonical
    )
    return pub


def _own(pub: Publication) -> tuple[Any, ...]:
    assert pub.canonical is not None, pub
    return tuple(_json.loads(raw) for raw in pub.canonical)


@pytest.mark.parametrize("kind", ["memory", "async", "redis"])
async def test_every_broker_keeps_the_canonical_form_live_and_in_history(kind: str) -> None:
    broker, events = make_broker(kind), Events()
    await broker.start(events)
    try:
        await broker.subscribe("r")
        sent = await _publish(broker, "r")
        plain = await broker.publish("r", "chat", ("hi",), ts=time.time(), encoded=prepare("chat", ("hi",))[0])
        live = [await events.next(), await events.next()]
        history = (await broker.history("r", since=StreamPosition(sent.position.epoch, 0))).publications
        for pub in (sent, live[0], history[0]):
            assert (pub.data, _own(pub), pub.skip) == (MAPPED, OWN, None)
        assert plain.canonical is live[1].canonical is history[1].canonical is None
        assert sent.size > plain.size  # history pays for both forms
    finally:
        await broker.aclose()


async def test_the_redis_wire_form_carries_it_sixth_and_reads_the_previous_releases(redis_url: str) -> None:
    url = fresh_url(redis_url)
    a, b, events = RedisBroker(url), RedisBroker(url), Events()
    admin = aioredis.from_url(url)
    await a.start(Events())
    await b.start(events)
    try:
        await b.subscribe("w")
        skipped = await _publish(a, "w", skip=frozenset({"c1"}))
        received = await events.next()  # across nodes, with the skip beside it
        assert (_own(received), received.skip, received.position) == (OWN, frozenset({"c1"}), skipped.position)
        unskipped = await _publish(a, "w")
        for old in (["chat", 3.0, False, ['"four"']], ["chat", 4.0, False, ['"five"'], ["c2"]]):
            keys, args = publish_call("w", "chat", 0.0, (), (), False, 1000, 300)
            args[3] = _json.dumps(old)
            await admin.register_script(PUBLISH_SCRIPT)(keys=keys, args=args)
        later = [await events.next() for _ in range(3)]
        assert _own(later[0]) == OWN and later[0].skip is None
        assert [(p.data, p.canonical, p.skip) for p in later[1:]] == [
            (("four",), None, None),
            (("five",), None, frozenset({"c2"})),
        ]
        history = (await b.history("w", since=StreamPosition(skipped.position.epoch, 0))).publications
        assert [p.canonical is not None for p in history] == [True, True, False, False]

        entries = await admin.xrange("rc:{w}:s")
        wire = _json.loads(entries[1][1][b"p"])  # no skip: a null fifth keeps the sixth in place
        assert wire[4] is None and [_json.loads(raw) for raw in wire[5]] == list(OWN)
        event, ts, _, raws = wire[:4]  # what the previous release unpacks, and its reading of the fifth
        assert (event, ts, [_json.loads(r) for r in raws]) == ("crawl_progress", unskipped.ts, list(MAPPED))
        assert (frozenset(wire[4]) if len(wire) > 4 and wire[4] else None) is None
    finally:
        await admin.aclose()
        await a.aclose()
        await b.aclose()
