"""What is not a room reaches every node too: a disconnect of a user, a message to one
connection by id, the room listing (``hub.nodes`` over the node bus).

Real ``roomcast serve --redis`` processes and a real redis-server; a node SIGKILLed mid-test
leaves the listing at once, without holding up the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
from hub_doubles import CountingEncoder, RecordingConnection
from rawclient import open_websocket
from redisserver import fresh_url
from sseclient import open_sse
from test_task_restart import WAIT, serving

from roomcast.broker.redis import RedisBroker
from roomcast.cluster.redis import RedisCluster
from roomcast.hub import Hub

SECRET = "a-test-secret-of-at-least-32-bytes!!"


def _token(user: str) -> str:
    return jwt.encode({"sub": user, "rooms": {"subscribe": ["*"]}}, SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def _nodes(tmp_path: Path, url: str, count: int) -> AsyncIterator[list[tuple[asyncio.subprocess.Process, str]]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(serving(tmp_path / f"n{n}.db", "--redis", url, "--jwt-secret", SECRET))
            for n in range(count)
        ]


async def _api(base: str, method: str, path: str, body: object = None) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{base}{path}", json=body) as response:
            assert response.status == 200, await response.text()
            answer: dict[str, object] = await response.json()
            return answer


async def test_disconnecting_a_user_reaches_their_connections_on_every_node(tmp_path: Path, redis_url: str) -> None:
    async with _nodes(tmp_path, fresh_url(redis_url), 3) as [(_, a), (_, b), (_, c)]:
        host, port = c.removeprefix("http://").split(":")
        async with (
            open_sse(a, ["board"], extra_query={"token": _token("ann")}) as ann_a,
            open_sse(b, ["board"], extra_query={"token": _token("bob")}) as bob_b,
        ):
            assert (await ann_a.next(WAIT)).event == "snapshot"
            assert (await bob_b.next(WAIT)).event == "snapshot"
            ws = await open_websocket(
                host,
                int(port),
                "/ws",
                headers={"Sec-WebSocket-Protocol": "roomcast.v1", "Authorization": f"Bearer {_token('ann')}"},
            )
            try:
                ws.send(json.dumps({"type": "subscribe", "id": 1, "room": "board"}))
                assert json.loads(await ws.recv())["type"] == "snapshot"
                assert await _api(b, "POST", "/api/disconnect", {"user": "ann"}) == {"disconnected": 2}
                ended = await ann_a.until_end(WAIT)  # node A closed ann's stream with the reason
                assert ended[-1].event == "error" and "server" in ended[-1].data
                assert await asyncio.wait_for(ws.closed, WAIT) == 3012  # SERVER_DISCONNECT
            finally:
                ws.close()
            await _api(c, "POST", "/api/publish", {"room": "board", "event": "still", "data": 1})
            assert (await bob_b.next(WAIT)).json() == 1  # bob, elsewhere, is still served


async def test_the_room_listing_sums_every_node_and_a_killed_node_leaves_it_at_once(
    tmp_path: Path, redis_url: str
) -> None:
    async with _nodes(tmp_path, fresh_url(redis_url), 3) as [(_, a), (killed, b), (_, c)]:
        async with (
            open_sse(a, ["x"], extra_query={"token": _token("ann")}) as s1,
            open_sse(b, ["x", "y"], extra_query={"token": _token("bob")}) as s2,
        ):
            for stream in (s1, s2):
                assert (await stream.next(WAIT)).event == "snapshot"
            listing = (await _api(c, "GET", "/api/rooms"))["rooms"]
            assert listing == [
                {"room": "x", "connections": 2, "users": 2},
                {"room": "y", "connections": 1, "users": 1},
            ]
            killed.kill()
            await asyncio.wait_for(killed.wait(), WAIT)
            started = time.monotonic()
            listing = (await _api(c, "GET", "/api/rooms"))["rooms"]
            assert listing == [{"room": "x", "connections": 1, "users": 1}]
            assert time.monotonic() - started < 2  # the dead node is skipped, not waited for


async def test_a_message_to_one_connection_reaches_it_on_the_node_that_holds_it(redis_url: str) -> None:
    url = fresh_url(redis_url)
    hubs = [Hub(broker=RedisBroker(url), cluster=RedisCluster(url)) for _ in range(2)]
    for hub in hubs:
        await hub.start()
    try:
        there = RecordingConnection("conn-on-b", hub=hubs[1], encoder=CountingEncoder())
        hubs[1].add_connection(there)
        assert await hubs[0].nodes.emit_to("conn-on-b", "hello", {"n": 1}, [2]) is True
        assert there.emitted == [("hello", ({"n": 1}, [2]))]
        assert await hubs[0].nodes.emit_to("nobody", "hello") is False
    finally:
        for hub in hubs:
            await hub.aclose()
