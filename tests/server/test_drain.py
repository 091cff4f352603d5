"""Graceful drain on SIGTERM (``server.drain``), played with real ``roomcast serve`` processes,
real sockets and a real redis-server.

What a rolling restart needs from a node that is told to stop, each checked here:

* ``/readyz`` answers 503 at once, so the load balancer stops sending clients;
* the listening socket closes after the drain delay, never before a client is moved;
* connected clients are told to come back, each in its transport's own words (``/ws``: close
  1001; SSE: a final ``error`` event with ``reconnect: true``; Socket.IO: the Engine.IO
  transport closes, with no Socket.IO DISCONNECT packet), spread over the grace rather than
  at one instant;
* every client reconnects to the other node and recovers from its own position, so not one
  publication made during the drain is missed;
* the process exits 0 within the grace; a second signal makes it exit at once;
* an in-process task finishes if the grace lets it, and is failed with "server shutting
  down" if not.

Clients are raw (``rawclient``, ``sseclient``): hundreds of them fit in the test process.
Every wait has a bound; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rawclient import RawWebSocket, open_websocket
from redisserver import fresh_url
from sseclient import open_sse
from test_task_restart import serving

from roomcast import Publisher
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.drain import SHUTTING_DOWN, DrainPlan
from roomcast.server.runner import HURRY_BOUND, serve_app
from roomcast.tasks.service import TaskHandle

GRACE = 3.0
PLAN = DrainPlan.of(GRACE, Settings().drain_delay)
WAIT = 30.0
ROOM = "board"
WS_PROTOCOL = {"Sec-WebSocket-Protocol": "roomcast.v1"}
OPENING = 50
"""Clients opening on node A at once. RedisBroker's connection pool refuses past about 100
concurrent room reads (``MaxConnectionsError``, the stream then ends "could not subscribe"):
a known limit outside the drain, so the test opens in waves, as real clients arrive."""


def _address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _refused(base: str) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(_address(base)) != 0


@dataclass
class Moved:
    """One client's story: what it saw of the drain, and every publication it applied."""

    kind: str
    seen: set[int] = field(default_factory=set)
    told_at: float | None = None
    told: str = ""
    recovered: bool | None = None


async def _next(ws: RawWebSocket) -> str | bytes | None:
    """The next message, or ``None`` once the server closed the connection (queued messages
    first: they arrived before the close)."""
    while True:
        if not ws.messages.empty():
            message = ws.messages.get_nowait()
        elif ws.closed.done():
            return None
        else:
            getter = asyncio.ensure_future(ws.messages.get())
            await asyncio.wait({getter, ws.closed}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            message = getter.result()
        if message == "2":  # an Engine.IO ping
            ws.send("3")
            continue
        return message


class Clients:
    """Every client of the test, and when the last publication's ``n`` is known."""

    def __init__(self) -> None:
        self.all: list[Moved] = []
        self.subscribed = 0
        self.changed = asyncio.Condition()
        self.last: int | None = None
        self.opening = asyncio.Semaphore(OPENING)

    async def note_subscribed(self) -> None:
        self.opening.release()
        async with self.changed:
            self.subscribed += 1
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT), self.changed:
            await self.changed.wait_for(predicate)

    async def poke(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def done(self, moved: Moved) -> bool:
        return self.last is not None and self.last in moved.seen


async def ws_client(clients: Clients, a: str, b: str) -> None:
    """``/ws``: subscribe on A, follow it to its close, resume on B from the last offset."""
    moved = Moved("ws")
    clients.all.append(moved)
    await clients.opening.acquire()
    ws = await open_websocket(*_address(a), "/ws", headers=WS_PROTOCOL, timeout=WAIT)
    assert ws.status == 101
    ws.send(json.dumps({"type": "subscribe", "id": 1, "room": ROOM}))
    snapshot = json.loads(await ws.recv(WAIT))
    assert snapshot["type"] == "snapshot", snapshot
    epoch, offset = snapshot["epoch"], snapshot["offset"]
    await clients.note_subscribed()
    while (raw := await _next(ws)) is not None:
        message = json.loads(raw)
        if message["type"] == "snapshot":
            epoch, offset = message["epoch"], message["offset"]
        elif message["type"] == "event":
            moved.seen.add(message["data"]["n"])
            offset = message["offset"]
    moved.told_at, moved.told = time.monotonic(), f"close {ws.close_code}"
    await clients.poke()
    ws = await open_websocket(*_address(b), "/ws", headers=WS_PROTOCOL, timeout=WAIT)
    try:
        ws.send(json.dumps({"type": "subscribe", "id": 2, "room": ROOM, "epoch": epoch, "offset": offset}))
        while not clients.done(moved):
            raw = await _next(ws)
            assert raw is not None, "node B closed a client"
            message = json.loads(raw)
            if message["type"] == "snapshot":
                moved.recovered = message["recovered"]
            elif message["type"] == "event":
                moved.seen.add(message["data"]["n"])
            await clients.poke()
    finally:
        ws.close()


def raw_is_ack(raw: str | bytes | None) -> bool:
    """The built-in ``subscribe``'s answer on Socket.IO (ack id 0)."""
    assert raw is not None
    return isinstance(raw, str) and raw.startswith("430")


async def sio_client(clients: Clients, a: str, b: str) -> None:
    """Socket.IO over WebSocket with room meta: resume on B with the built-in ``subscribe``."""
    moved = Moved("socket.io")
    clients.all.append(moved)
    path = "/socket.io/?EIO=4&transport=websocket&roomcast=1"

    async def connect(base: str, room: dict[str, Any]) -> RawWebSocket:
        ws = await open_websocket(*_address(base), path, timeout=WAIT)
        assert ws.status == 101
        ws.send("40")
        ws.send("420" + json.dumps(["subscribe", room]))
        return ws

    def apply(raw: str | bytes, position: dict[str, Any]) -> None:
        assert isinstance(raw, str)
        assert not raw.startswith("41"), "a Socket.IO DISCONNECT would stop the official client for good"
        if raw.startswith("430"):
            answer = json.loads(raw[3:])[0]
            position.update(epoch=answer["epoch"], offset=answer["offset"])
            moved.recovered = answer["recovered"]
            for pub in answer.get("publications", []):
                data = pub["data"]  # the event's arguments, as a list
                moved.seen.add((data[0] if isinstance(data, list) else data)["n"])
        elif raw.startswith("42"):
            _event, data, meta = json.loads(raw[2:])
            moved.seen.add(data["n"])
            position.update(epoch=meta["$epoch"], offset=meta["$offset"])

    position: dict[str, Any] = {"room": ROOM}
    await clients.opening.acquire()
    ws = await connect(a, {"room": ROOM})
    while True:
        raw = await _next(ws)
        if raw is not None and not raw.startswith("40"):
            apply(raw, position)
        if raw_is_ack(raw):
            break
    await clients.note_subscribed()
    while (raw := await _next(ws)) is not None:
        apply(raw, position)
    moved.told_at, moved.told = time.monotonic(), f"close {ws.close_code}"
    await clients.poke()
    ws = await connect(b, dict(position))
    try:
        while not clients.done(moved):
            raw = await _next(ws)
            assert raw is not None, "node B closed a client"
            apply(raw, position)
            await clients.poke()
    finally:
        ws.close()


async def sse_client(clients: Clients, a: str, b: str) -> None:
    """SSE: read to the final ``error`` event and the end, reconnect to B with Last-Event-ID."""
    moved = Moved("sse")
    clients.all.append(moved)
    await clients.opening.acquire()
    async with open_sse(a, [ROOM]) as stream:
        assert stream.status == 200
        first = await stream.next(WAIT)
        await clients.poke()
        assert first.event == "snapshot", first
        await clients.note_subscribed()
        with contextlib.suppress(EOFError):
            while True:
                event = await stream.next(WAIT)
                if event.event == "moved":
                    moved.seen.add(event.json()["n"])
                elif event.event == "error":
                    error = event.json()
                    moved.told = f"error reconnect={error['reconnect']} {error['message']}"
        moved.told_at = time.monotonic()
        last_id = stream.last_id
    await clients.poke()
    async with open_sse(b, [ROOM], last_event_id=last_id) as stream:
        assert stream.status == 200
        while not clients.done(moved):
            event = await stream.next(WAIT)
            if event.event == "moved":
                moved.seen.add(event.json()["n"])
            elif event.event in ("reset", "snapshot"):
                moved.recovered = False
            await clients.poke()
        moved.recovered = moved.recovered is not False


async def _read_all(proc: asyncio.subprocess.Process) -> bytes:
    """Read a server's output to its end: its log lines (one per connection) must not fill the pipe."""
    assert proc.stdout is not None
    return await proc.stdout.read()


async def _until_503(http: aiohttp.ClientSession, base: str) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            async with http.get(f"{base}/readyz") as response:
                await response.read()
                if response.status == 503:
                    return


async def _drain_two_nodes(tmp_path: Path, redis_url: str, counts: dict[str, int]) -> None:
    """``counts`` clients of each transport on node A; SIGTERM A while B publishes."""
    makers: dict[str, Callable[[Clients, str, str], Awaitable[None]]] = {
        "ws": ws_client,
        "socket.io": sio_client,
        "sse": sse_client,
    }
    url = fresh_url(redis_url)
    grace = ("--shutdown-grace", str(GRACE))
    async with (
        serving(tmp_path / "a.db", "--redis", url, *grace) as (proc_a, a),
        serving(tmp_path / "b.db", "--redis", url, *grace) as (_proc_b, b),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http,
    ):
        output = [asyncio.ensure_future(_read_all(proc)) for proc in (proc_a, _proc_b)]  # a full pipe would stall it
        clients = Clients()
        total = sum(counts.values())
        runners = [asyncio.ensure_future(makers[kind](clients, a, b)) for kind, n in counts.items() for _ in range(n)]
        publisher = Publisher(b)
        published = 0
        stop_publishing = asyncio.Event()

        async def publish() -> None:
            nonlocal published
            while not stop_publishing.is_set():
                await publisher.apublish(ROOM, "moved", {"n": published + 1})
                published += 1

        try:
            await clients.wait_for(lambda: clients.subscribed == total or any(r.done() for r in runners))
            for runner in runners:
                if runner.done():
                    runner.result()  # a client that failed before the drain: its error, now
            async with http.get(f"{a}/readyz") as response:  # the keep-alive connection, opened now
                assert response.status == 200
            publishing = asyncio.ensure_future(publish())
            signalled = time.monotonic()
            proc_a.send_signal(signal.SIGTERM)
            await _until_503(http, a)
            not_ready_after = time.monotonic() - signalled

            await clients.wait_for(lambda: any(m.told_at is not None for m in clients.all))
            first = min((m for m in clients.all if m.told_at is not None), key=lambda m: m.told_at or 0)
            assert _refused(a), (
                "the listening socket is closed before any client is moved",
                first,
                time.monotonic() - signalled,
            )
            code = await asyncio.wait_for(proc_a.wait(), WAIT)
            exited_after = time.monotonic() - signalled

            await clients.wait_for(lambda: all(m.told_at is not None for m in clients.all))
            stop_publishing.set()
            await asyncio.wait_for(publishing, WAIT)
            # The last one is announced before it is published, so no client can have read it
            # already and wait for ever for a next one.
            clients.last = published + 1
            await publisher.apublish(ROOM, "moved", {"n": published + 1})
            published += 1
            await asyncio.wait_for(asyncio.gather(*runners), WAIT)
        finally:
            for task in (*runners, *output):
                task.cancel()
            await asyncio.gather(*runners, *output, return_exceptions=True)

        told = sorted(m.told_at - signalled for m in clients.all if m.told_at is not None)
        print(
            f"\n{total} clients {counts}: /readyz 503 after {not_ready_after:.3f} s; first moved at "
            f"{told[0]:.3f} s, last at {told[-1]:.3f} s (grace {GRACE} s, plan {PLAN}); node A exited "
            f"{code} after {exited_after:.3f} s; {published} publications, "
            f"{sum(m.recovered is True for m in clients.all)} clients recovered on B"
        )
        assert code == 0
        assert not_ready_after < PLAN.delay
        assert exited_after < GRACE + 1.0  # the grace, and an interpreter's exit on a busy machine
        assert told[0] >= PLAN.delay  # nobody moved while the load balancer may still send clients
        assert told[-1] - told[0] > 0.3 * GRACE  # spread, not one stampede
        signals = {(m.kind, m.told) for m in clients.all}
        assert signals <= {
            ("ws", "close 1001"),
            ("socket.io", "close 1001"),
            ("sse", "error reconnect=True server shutting down"),
        }
        assert published > 0
        for moved in clients.all:
            assert moved.seen == set(range(1, published + 1)), (
                moved.kind,
                sorted(set(range(1, published + 1)) - moved.seen),
            )
            assert moved.recovered is True, moved.kind


async def test_a_draining_node_moves_its_clients_to_the_other_node_with_nothing_lost(
    tmp_path: Path, redis_url: str
) -> None:
    await _drain_two_nodes(tmp_path, redis_url, {"ws": 200, "socket.io": 150, "sse": 150})


async def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    async with (
        serving(tmp_path / "tasks.db", "--shutdown-grace", "30") as (proc, base),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http,
    ):
        ws = await open_websocket(*_address(base), "/ws", headers=WS_PROTOCOL, timeout=WAIT)
        assert ws.status == 101
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        await _until_503(http, base)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), WAIT)
        took = time.monotonic() - signalled
        print(f"\nexit {code} {took:.3f} s after the second signal (grace 30 s)")
        assert code == 0
        assert took < HURRY_BOUND
        assert await asyncio.wait_for(ws.closed, WAIT) == 1001


async def _serve_with_task(finishes: bool) -> tuple[str, str | None, float]:
    """Serve an ``App`` in this process through ``serve_app``'s own signal handlers, spawn a
    task whose producer ends only once released, SIGTERM this very process, release it during
    the drain if ``finishes``; the task's last status and error, and how long the stop took."""
    app = App(settings=Settings(port=0, task_db=":memory:", shutdown_grace=GRACE))
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()
    changes: list[Any] = []
    app.tasks.add_listener(changes.append)  # each status change, once published

    async def producer(task: TaskHandle) -> str:
        task.progress(10)
        await release.wait()
        return "done"

    server = asyncio.ensure_future(
        serve_app(app, on_ready=lambda host, port: listening.set_result(f"http://{host}:{port}"))
    )
    try:
        base = await asyncio.wait_for(listening, WAIT)
        task = await app.tasks.spawn("crawl", producer)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            async with http.get(f"{base}/readyz") as response:  # the keep-alive connection
                assert response.status == 200
            signalled = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)  # serve_app's handler takes it
            await _until_503(http, base)
        if finishes:
            release.set()
        await asyncio.wait_for(server, WAIT)
        took = time.monotonic() - signalled
        last = [t for t in changes if t.id == task.id][-1]
        return last.status.value, last.error, took
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


async def test_a_running_task_gets_the_grace_to_finish() -> None:
    status, error, took = await _serve_with_task(finishes=True)
    assert (status, error) == ("completed", None)
    assert took < GRACE


async def test_a_task_still_running_after_the_grace_is_failed_with_server_shutting_down() -> None:
    status, error, took = await _serve_with_task(finishes=False)
    assert (status, error) == ("failed", SHUTTING_DOWN)
    assert PLAN.spread_until <= took < GRACE + 1.0
