"""``RoomcastApp(native_port=...)``: a FastAPI app serving its API through ASGI and its
real-time clients on roomcast's native door, in one uvicorn process sharing one hub.

What a FastAPI deployment relies on, each checked against a real ``uvicorn`` process:

* an API route that publishes through the hub reaches an official python-socketio client
  and an SSE client connected to the native port;
* SIGTERM drains the native door's clients (SSE told to reconnect, the Socket.IO transport
  closed, not a "server disconnect") and the process stops by itself within the grace,
  with the native port closed; a host that stops without a signal still has the door's
  clients told to reconnect at the lifespan shutdown;
* behind nginx with docs/deploy.md's FastAPI block, ``/sse`` and ``/socket.io/`` reach the
  native door and the API reaches uvicorn (the access log's ``upstream=`` says which);
* without the lifespan (a mounted app in a FastAPI that does not pass ``rt.lifespan``)
  nothing is silently half-started: every request to roomcast is answered 500 naming the
  fix, and the log says it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import socketio
from nginxserver import fastapi_config, running_nginx
from servers import uvicorn_running
from sseclient import open_sse
from uvicornprocess import UvicornProcess, uvicorn_process

from roomcast import RoomcastApp
from roomcast.server.config import Settings
from roomcast.server.runner import CannotListen

GRACE = 1.5
WAIT = 20.0

NOTES = """\
from fastapi import FastAPI
from roomcast import RoomcastApp
from roomcast.server.config import Settings

rt = RoomcastApp(
    settings=Settings(task_db=":memory:", shutdown_grace={grace}, drain_delay=0.1), native_port=0
)
api = FastAPI(lifespan=rt.lifespan)


@api.post("/notes")
async def add_note(note: dict) -> dict:
    position = await rt.hub.publish("board", "note", note)
    return {{"offset": position.offset}}


@api.get("/native")
async def native() -> dict:
    host, port = rt.native_address
    return {{"host": host, "port": port}}


api.mount("/rt", rt)
"""


async def test_an_api_route_publishes_to_native_door_clients_and_sigterm_stops_it_cleanly(tmp_path: Path) -> None:
    source = NOTES.format(grace=GRACE)
    async with uvicorn_serving(tmp_path, source, "notes:api") as (proc, base, lines), aiohttp.ClientSession() as http:
        async with http.get(f"{base}/native") as answer:
            where = await answer.json()
        native = f"http://{where['host']}:{where['port']}"
        assert where["port"] != int(base.rsplit(":", 1)[1])
        client = socketio.AsyncClient(reconnection=False)
        notes: asyncio.Queue[object] = asyncio.Queue()
        reasons: asyncio.Queue[str] = asyncio.Queue()
        client.on("note", notes.put_nowait)

        @client.event
        async def disconnect(reason: str) -> None:
            reasons.put_nowait(reason)

        await client.connect(native, transports=["websocket"], wait_timeout=WAIT)
        try:
            joined = await client.call("subscribe", {"room": "board"}, timeout=WAIT)
            assert joined["room"] == "board"
            async with open_sse(native, ["board"]) as stream:
                assert stream.status == 200 and (await stream.next(WAIT)).event == "snapshot"

                async with http.post(f"{base}/notes", json={"text": "ship it"}) as published:
                    assert published.status == 200, await published.text()
                assert await asyncio.wait_for(notes.get(), WAIT) == {"text": "ship it"}
                event = await stream.next(WAIT)
                assert (event.event, event.json()) == ("note", {"text": "ship it"})

                signalled = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                told = [e for e in await stream.until_end(WAIT) if e.event == "error"]
                assert told and told[-1].json()["reconnect"] is True
            reason = await asyncio.wait_for(reasons.get(), WAIT)
            code = await asyncio.wait_for(proc.wait(), WAIT)
            stopped_after = time.monotonic() - signalled
        finally:
            await client.shutdown()
    output = "".join(lines)
    # the transport was closed (the official client reconnects), not a Socket.IO DISCONNECT
    assert reason == socketio.AsyncClient.reason.TRANSPORT_ERROR, reason
    assert code == -signal.SIGTERM, output  # uvicorn re-raises the signal it stopped on
    assert stopped_after < GRACE + 2.0, output
    assert "Traceback" not in output and "Application shutdown complete" in output, output
    with pytest.raises(OSError):  # the native port is closed with the process
        socket.create_connection((where["host"], where["port"]), timeout=WAIT).close()


async def test_behind_nginx_the_real_time_paths_reach_the_native_door_and_the_rest_uvicorn(tmp_path: Path) -> None:
    source = NOTES.format(grace=GRACE)
    async with uvicorn_serving(tmp_path, source, "notes:api") as (_, base, _), aiohttp.ClientSession() as http:
        async with http.get(f"{base}/native") as answer:
            where = await answer.json()
        api, native = base.removeprefix("http://"), f"{where['host']}:{where['port']}"
        with running_nginx([api, native], fastapi_config) as nginx:
            client = socketio.AsyncClient(reconnection=False)
            notes: asyncio.Queue[object] = asyncio.Queue()
            client.on("note", notes.put_nowait)
            await client.connect(nginx.url, transports=["websocket"], wait_timeout=WAIT)
            try:
                await client.call("subscribe", {"room": "board"}, timeout=WAIT)
                async with open_sse(nginx.url, ["board"]) as stream:
                    assert stream.status == 200 and (await stream.next(WAIT)).event == "snapshot"
                    async with http.post(f"{nginx.url}/notes", json={"text": "via nginx"}) as published:
                        assert published.status == 200, await published.text()
                    assert await asyncio.wait_for(notes.get(), WAIT) == {"text": "via nginx"}
                    event = await stream.next(WAIT)  # unbuffered through nginx
                    assert (event.event, event.json()) == ("note", {"text": "via nginx"})
            finally:
                await client.shutdown()
            lines = nginx.access_lines_once("/notes", "/sse", "/socket.io/")
    upstream = {line.split('"')[1].split()[1].split("?")[0]: line.rsplit("upstream=", 1)[1] for line in lines}
    assert upstream["/notes"] == api, lines
    assert upstream["/sse"] == native and upstream["/socket.io/"] == native, lines


async def test_a_lifespan_shutdown_without_a_signal_drains_the_native_doors_clients() -> None:
    """The host stops without a signal (``should_exit``, an embedding program): the door's
    SSE client is still told to reconnect before the app shuts down, not cut."""
    from fastapi import FastAPI

    rt = RoomcastApp(settings=Settings(task_db=":memory:", shutdown_grace=1.0, drain_delay=0.1), native_port=0)
    api = FastAPI(lifespan=rt.lifespan)
    api.mount("/rt", rt)
    snapshot = asyncio.Event()

    async def follow(native: str) -> list[str]:
        async with open_sse(native, ["board"]) as stream:
            assert (await stream.next(WAIT)).event == "snapshot"
            snapshot.set()
            return [f"{e.event} {e.data}" for e in await stream.until_end(WAIT)]

    async with uvicorn_running(api):
        assert rt.native_address is not None
        host, port = rt.native_address
        follower = asyncio.ensure_future(follow(f"http://{host}:{port}"))
        await asyncio.wait_for(snapshot.wait(), WAIT)
    told = await asyncio.wait_for(follower, WAIT)
    assert len(told) == 1 and told[0].startswith("error ") and '"reconnect":true' in told[0], told
    assert rt.native_address is None  # closed with the app


async def test_without_the_lifespan_every_request_is_refused_naming_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    from fastapi import FastAPI

    rt = RoomcastApp(settings=Settings(task_db=":memory:"), native_port=0)
    api = FastAPI()  # no lifespan=rt.lifespan: a mount never hears the lifespan
    api.mount("/rt", rt)
    async with uvicorn_running(api) as base, aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(f"{base}/rt/healthz") as answer:
                assert answer.status == 500
                error = (await answer.json())["error"]
        assert error["code"] == "no_lifespan" and "lifespan=rt.lifespan" in error["message"]
        assert rt.native_address is None
    assert [r.getMessage() for r in caplog.records if r.name == "roomcast.asgi"] == [error["message"]]


async def test_a_native_port_already_taken_fails_the_start_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rt = RoomcastApp(settings=Settings(task_db=":memory:"), native_port=port)
        with pytest.raises(CannotListen, match=f"cannot listen on 127.0.0.1:{port}: address already in use"):
            await rt.startup()
        assert rt.native_address is None


def test_a_native_port_out_of_range_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="native_port must be a TCP port"):
        RoomcastApp(native_port=70000)


@contextlib.asynccontextmanager
async def uvicorn_serving(tmp_path: Path, source: str, target: str) -> AsyncIterator[UvicornProcess]:
    """``uvicorn target`` with ``source`` written as the module ``target`` names."""
    (tmp_path / f"{target.split(':', 1)[0]}.py").write_text(source)
    async with uvicorn_process(tmp_path, app=target, wait=WAIT) as serving:
        yield serving
