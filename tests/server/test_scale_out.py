"""Several ``roomcast serve`` processes on one Redis serve as one hub (``--redis``).

Real processes on 127.0.0.1 and a real redis-server: an event published on one node reaches
subscribers of every transport on the others; a client that moves to another node recovers
by offset there; a publish while Redis is down is refused with 503, never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from rawclient import open_websocket
from redisserver import fresh_url, running_redis
from sseclient import open_sse
from test_task_restart import WAIT, serving

from roomcast import Publisher
from roomcast.protocol import sse


@contextlib.asynccontextmanager
async def nodes(tmp_path: Path, url: str, count: int) -> AsyncIterator[list[str]]:
    """``count`` servers on ``url``, each with its own task database; yields their base URLs."""
    async with contextlib.AsyncExitStack() as stack:
        urls = []
        for n in range(count):
            _, base = await stack.enter_async_context(serving(tmp_path / f"tasks-{n}.db", "--redis", url))
            urls.append(base)
        yield urls


async def test_an_event_published_on_one_node_reaches_every_transport_on_the_others(
    tmp_path: Path, redis_url: str
) -> None:
    async with nodes(tmp_path, fresh_url(redis_url), 3) as (a, b, c):
        host, port = b.removeprefix("http://").split(":")
        async with open_sse(c, ["board"]) as stream:
            assert (await stream.next(WAIT)).event == "snapshot"
            ws = await open_websocket(host, int(port), "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
            try:
                ws.send(json.dumps({"type": "subscribe", "id": 1, "room": "board"}))
                assert json.loads(await ws.recv())["type"] == "snapshot"
                answer = await Publisher(a).apublish("board", "moved", {"card": 7})
                assert answer.offset == 1
                event = await stream.next(WAIT)
                assert (event.event, event.json()) == ("moved", {"card": 7})
                message = json.loads(await ws.recv())
                assert (message["event"], message["data"], message["offset"]) == ("moved", {"card": 7}, 1)
            finally:
                ws.close()


async def test_a_client_that_moves_to_another_node_recovers_what_it_missed_there(
    tmp_path: Path, redis_url: str
) -> None:
    async with nodes(tmp_path, fresh_url(redis_url), 2) as (a, b):
        publisher = Publisher(a)
        async with open_sse(a, ["feed"]) as stream:
            await stream.next(WAIT)
            await publisher.apublish("feed", "n", 1)
            assert (await stream.next(WAIT)).json() == 1
            cursor = stream.last_id
        for n in (2, 3, 4):
            await publisher.apublish("feed", "n", n)
        async with open_sse(b, ["feed"], last_event_id=cursor) as back:  # the other node
            assert [(await back.next(WAIT)).json() for _ in range(3)] == [2, 3, 4]
            position = sse.decode_cursor(back.last_id or "")["feed"]
            assert position.offset == 4
            await Publisher(b).apublish("feed", "n", 5)
            assert (await back.next(WAIT)).json() == 5  # then live, nothing twice


async def test_a_publish_while_redis_is_down_is_refused_with_503(tmp_path: Path) -> None:
    with running_redis() as server:  # its own redis-server: this test kills it
        async with nodes(tmp_path, server.url, 1) as (a,):
            assert (await Publisher(a).apublish("r", "before", 1)).offset == 1
            server.kill()
            async with aiohttp.ClientSession() as http:
                async with asyncio.timeout(WAIT):
                    async with http.post(
                        f"{a}/api/publish", json={"room": "r", "event": "lost", "data": 2}
                    ) as response:
                        assert response.status == 503
                        body = await response.json()
            assert body["error"]["code"] == "broker_unavailable" and "redis" in body["error"]["message"]


@pytest.mark.parametrize("aof", [True, False], ids=["with-aof", "without-persistence"])
async def test_redis_killed_and_restarted_gives_every_subscriber_what_it_missed_or_a_reset(
    tmp_path: Path, aof: bool
) -> None:
    """redis-server SIGKILLed and started again on the same port. With an append-only file its
    history survives: a subscriber that comes back recovers exactly what it missed. Without
    persistence the rooms start again under new epochs: the subscriber gets an explicit
    reset (a fresh snapshot), never a silent gap."""
    with running_redis(aof=aof) as server:
        async with nodes(tmp_path, server.url, 2) as (a, b):
            publisher = Publisher(a)
            async with open_sse(b, ["feed"]) as stream:
                await stream.next(WAIT)
                for n in (1, 2):
                    await publisher.apublish("feed", "n", n)
                assert [(await stream.next(WAIT)).json() for _ in range(2)] == [1, 2]
                cursor = stream.last_id
            server.kill()
            server.start()
            async with asyncio.timeout(WAIT):  # the nodes reconnect by themselves
                while True:
                    with contextlib.suppress(Exception):
                        await publisher.apublish("feed", "n", 3)
                        break
            async with open_sse(b, ["feed"], last_event_id=cursor) as back:
                first = await back.next(WAIT)
                if aof:
                    assert (first.event, first.json()) == ("n", 3), first.data  # recovered: exactly what it missed
                else:
                    assert first.event == "reset" and first.json()["offset"] == 1  # a new epoch, said so


async def test_a_worker_publishes_straight_into_redis_with_the_publisher_api(tmp_path: Path, redis_url: str) -> None:
    """No web server on the worker's side: ``RedisPublisher`` runs the nodes' own script, so
    its publications are numbered and delivered like a node's, and refused like one's."""
    from roomcast import PublishError, RedisPublisher

    url = fresh_url(redis_url)
    async with nodes(tmp_path, url, 1) as (a,):
        worker = RedisPublisher(url)
        async with open_sse(a, ["jobs"]) as stream:
            assert (await stream.next(WAIT)).event == "snapshot"
            first = await asyncio.to_thread(worker.publish, "jobs", "done", {"job": 1})  # sync, from a thread
            second = await worker.apublish("jobs", "done", {"job": 2})
            assert (first.offset, second.offset) == (1, 2) and first.epoch == second.epoch
            assert [(await stream.next(WAIT)).json() for _ in range(2)] == [{"job": 1}, {"job": 2}]
            [third] = await worker.abroadcast(["jobs"], "done", {"job": 3})
            assert third.offset == 3 and (await stream.next(WAIT)).json() == {"job": 3}
        with pytest.raises(PublishError) as refused:
            await worker.apublish("jobs", "disconnect", 1)
        assert refused.value.status == 400 and "reserved" in refused.value.message
    with running_redis() as server:
        gone = RedisPublisher(server.url)
        server.kill()
        with pytest.raises(PublishError) as down:
            await gone.apublish("jobs", "lost", 1)
        assert down.value.status == 0 and down.value.code == "unreachable"


async def test_presence_and_finished_rooms_are_the_same_from_every_node(tmp_path: Path, redis_url: str) -> None:
    """Presence counts every node's connections; a room finished through one node ends an
    SSE reconnect on another with 204, so EventSource stops whichever node it reaches."""
    url = fresh_url(redis_url)
    async with nodes(tmp_path, url, 2) as (a, b), aiohttp.ClientSession() as http:
        async with open_sse(a, ["chat"]) as one, open_sse(b, ["chat"]) as two:
            await one.next(WAIT)
            await two.next(WAIT)
            for base in (a, b):  # each node writes its own entries as they join: wait for both
                async with asyncio.timeout(WAIT):
                    while True:
                        async with http.get(f"{base}/api/presence?room=chat") as response:
                            if (await response.json())["connections"] == 2:
                                break
        async with http.post(f"{a}/api/tasks", json={"kind": "crawl"}) as response:
            task = await response.json()
        room = f"task:{task['id']}"
        async with open_sse(b, [room]) as stream:  # the task lives on node a; its room everywhere
            await stream.next(WAIT)
            async with http.post(f"{a}/api/tasks/{task['id']}/complete", json={"result": 1}):
                pass
            events = await stream.until_end()  # the stream ends once the room is finished
            assert events[-1].event == "task:completed"
            cursor = stream.last_id
        async with open_sse(b, [room], last_event_id=cursor) as back:
            assert back.status == 204


async def test_readyz_says_why_while_the_redis_subscription_is_deaf(redis_url: str) -> None:
    """A load balancer takes the node out while it hears nothing from Redis, and back after."""
    import redis.asyncio as aioredis
    from servers import running

    from roomcast.broker.redis import RedisBroker
    from roomcast.hub.hub import Hub
    from roomcast.server.app import App
    from roomcast.server.config import Settings

    broker = RedisBroker(fresh_url(redis_url), heartbeat_interval=0.1, heartbeat_timeout=0.5)
    admin = aioredis.from_url(redis_url)
    async with running(App(Hub(broker=broker), Settings(task_db=":memory:"))) as srv, aiohttp.ClientSession() as http:

        async def readyz() -> tuple[int, str]:
            async with http.get(f"{srv.url}/readyz") as response:
                return response.status, await response.text()

        assert await readyz() == (200, "ready")
        try:
            await admin.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
            async with asyncio.timeout(WAIT):
                while (answer := await readyz())[0] == 200:
                    pass
            assert answer[0] == 503 and "heard nothing" in answer[1]
            async with asyncio.timeout(WAIT):
                while await readyz() != (200, "ready"):
                    pass
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
            await admin.aclose()
