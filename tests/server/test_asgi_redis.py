"""``RoomcastApp(redis=URL)``: the ASGI door shares rooms through Redis, so ``uvicorn --workers
N yourapp:app`` serves one set of rooms from N processes.

The construction rules are checked on real objects; the rest runs a real ``uvicorn --workers
2`` in a subprocess on a module that builds ``RoomcastApp(redis=URL)``, with a real
redis-server and SSE subscribers on 127.0.0.1. Which worker accepted a subscriber is read
from ``/proc`` (``workerprocs.owners``); each wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from pathlib import Path

import pytest
from redisserver import fresh_url
from sseclient import SseStream, open_sse
from uvicornprocess import uvicorn_process
from workerprocs import Watched, owners

from roomcast import Publisher, RoomcastApp
from roomcast.broker.memory import MemoryBroker
from roomcast.broker.redis import RedisBroker
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings

WAIT = 30.0
BOUND = 200  # subscribers opened at most while waiting for both workers to hold one


def test_redis_gives_the_new_hub_a_redis_broker_as_settings_redis_url_does(redis_url: str) -> None:
    by_argument = RoomcastApp(redis=redis_url)
    assert isinstance(by_argument.hub.broker, RedisBroker)
    assert by_argument.settings.redis_url == redis_url
    tuned = RoomcastApp(redis=redis_url, settings=Settings(history_size=7, task_db=":memory:"))
    assert isinstance(tuned.hub.broker, RedisBroker)
    assert (tuned.settings.history_size, tuned.settings.task_db) == (7, ":memory:")  # the rest is kept
    assert isinstance(RoomcastApp(settings=Settings(redis_url=redis_url)).hub.broker, RedisBroker)


def test_the_forms_without_redis_are_unchanged() -> None:
    assert isinstance(RoomcastApp().hub.broker, MemoryBroker)
    hub = Hub()
    assert RoomcastApp(hub=hub).hub is hub
    app = App(settings=Settings(task_db=":memory:"))
    assert RoomcastApp(app).app is app


def test_redis_with_a_hub_or_an_app_or_another_url_is_a_type_error(redis_url: str) -> None:
    with pytest.raises(TypeError, match=r"hub= passes one already built: leave hub= out and register handlers"):
        RoomcastApp(hub=Hub(), redis=redis_url)
    with pytest.raises(TypeError, match="either an App or hub/settings/redis"):
        RoomcastApp(App(settings=Settings(task_db=":memory:")), redis=redis_url)
    with pytest.raises(TypeError, match="different Redis servers"):
        RoomcastApp(redis=redis_url, settings=Settings(redis_url="redis://127.0.0.1:1/0"))
    assert RoomcastApp(redis=redis_url, settings=Settings(redis_url=redis_url)).settings.redis_url == redis_url


APP_MODULE = """\
import os

from roomcast import RoomcastApp

# Each uvicorn worker imports this module and builds its own RoomcastApp: its own hub and node,
# sharing rooms (and tasks) with the others through Redis.
app = RoomcastApp(redis=os.environ["BOARD_REDIS_URL"])
"""


async def test_uvicorn_workers_share_rooms_a_publish_on_one_reaches_subscribers_on_the_other(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "board.py").write_text(APP_MODULE)
    env = {**os.environ, "BOARD_REDIS_URL": fresh_url(redis_url)}
    watched: dict[int, Watched] = {}
    try:  # yielded once both workers started their app (lifespan) and the port listens
        async with uvicorn_process(tmp_path, "--workers", "2", env=env, apps_started=2, wait=WAIT) as serving:
            proc, url, lines = serving
            output = "".join(lines)
            port = int(url.rsplit(":", 1)[1])
            pids = sorted({int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", output)})
            assert len(pids) == 2, output
            watched = {pid: Watched(pid) for pid in pids}

            async with contextlib.AsyncExitStack() as stack:
                held: dict[int, list[SseStream]] = {pid: [] for pid in pids}
                while not all(held.values()):  # open subscribers until both workers hold one
                    assert sum(map(len, held.values())) < BOUND, f"{BOUND} subscribers on one worker"
                    stream = await stack.enter_async_context(open_sse(url, ["board"]))
                    assert stream.status == 200 and (await stream.next(WAIT)).event == "snapshot"
                    assert stream.response.connection is not None and stream.response.connection.transport is not None
                    client_port = stream.response.connection.transport.get_extra_info("sockname")[1]
                    owner = owners(port, [client_port], pids)[client_port]
                    assert owner in held, f"connection from port {client_port} is held by {owner}"
                    held[owner].append(stream)
                print(f"uvicorn subscribers per worker: { {pid: len(s) for pid, s in held.items()} }")

                # Subscribers on both workers: whichever one takes the publish, the other's hear it.
                answer = await Publisher(url).apublish("board", "moved", {"card": 7})
                assert answer.offset == 1
                for streams in held.values():
                    for stream in streams:
                        event = await stream.next(WAIT)
                        assert (event.event, event.json()) == ("moved", {"card": 7})

            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), WAIT)
            for each in watched.values():
                await each.gone(WAIT)
    finally:  # uvicorn itself is killed first, so that it cannot start workers again
        for each in watched.values():
            each.kill()
            each.close()
