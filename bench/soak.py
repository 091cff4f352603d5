"""A bounded soak of a real ``roomcast serve`` process: churn, fan-out, tasks, bad clients, a restart.

    .venv/bin/python bench/soak.py [--minutes 15] [--json F]

What runs, all against 127.0.0.1 and stopping by itself after ``--minutes``:

* subscribers on every transport (Socket.IO with room meta, SSE, ``/ws``) that connect,
  follow a few rooms, drop and come back with their positions, over and over; each checks
  that every room's offsets arrive in order with no gap and nothing twice (an explicit
  reset, after the restart, is allowed: a gap never is);
* a publisher sending to those rooms through ``POST /api/publish``, keeping the answers;
* task traffic: tasks created, reported on and completed through the API; each completed
  task is read back at the end (the acknowledged result must be stored);
* a slow SSE client that never reads, and hostile clients (an endless header, a slowloris),
  each refused or cut;
* one SIGTERM and restart of the server half-way (same port, same task database).

Pass: no gap and no duplicate on any subscriber, every acknowledged task result stored, the
server's RSS after warm-up within 10 % of its level at the start of that phase, and its open
file descriptors back to the baseline once the clients have left. Figures are printed (and
written to ``--json``); docs/performance.md reports them. Exit status 1 on a failed check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from roomcast.protocol import sse

ROOMS = [f"soak:{n}" for n in range(8)]
HISTORY_TTL = 60
"""Each finished task leaves a room whose history lives this long: a steady state (every room
created is also freed) comes after it and a sweep, well inside each half of the run."""
PY = sys.executable


@dataclass
class Tally:
    """What every subscriber saw, summed."""

    events: int = 0
    gaps: int = 0
    duplicates: int = 0
    resets: int = 0
    reconnects: int = 0
    errors: int = 0
    published: int = 0
    tasks_acknowledged: dict[str, Any] = field(default_factory=dict)
    refused_attacks: int = 0


class Positions:
    """One subscriber's place in each room: the check that nothing is skipped or repeated."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.at: dict[str, tuple[str, int]] = {}

    def synced(self, room: str, epoch: str, offset: int, recovered: bool) -> None:
        """A subscribe's answer: recovered, the missed events follow and move the position
        themselves; otherwise the snapshot's position is where it stands (a reset if it held one)."""
        held = self.at.get(room)
        if recovered and held is not None:
            return
        if held is not None:
            self.tally.resets += 1
        self.at[room] = (epoch, offset)

    def event(self, room: str, epoch: str, offset: int) -> None:
        self.tally.events += 1
        held = self.at.get(room)
        if held is None or held[0] != epoch:
            self.tally.gaps += 1  # an event of a stream it was never synced to
        elif offset <= held[1]:
            self.tally.duplicates += 1
            return
        elif offset != held[1] + 1:
            self.tally.gaps += 1
        self.at[room] = (epoch, offset)


class Server:
    def __init__(self, port: int, db: str) -> None:
        self.port, self.db = port, db
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "roomcast",
                "serve",
                "--port",
                str(self.port),
                "--task-db",
                self.db,
                "--log-level",
                "warning",
                "--history-ttl",
                str(HISTORY_TTL),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if b"listening on" in line:
                return
        raise RuntimeError("the server did not start")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def rss(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

    def fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


async def ws_subscriber(base: str, tally: Tally, stop: asyncio.Event, rng: random.Random) -> None:
    places = Positions(tally)
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                async with http.ws_connect(base.replace("http", "ws") + "/ws", protocols=("roomcast.v1",)) as ws:
                    for n, room in enumerate(rng.sample(ROOMS, 3)):
                        request: dict[str, Any] = {"type": "subscribe", "id": n, "room": room}
                        if room in places.at:
                            request["epoch"], request["offset"] = places.at[room]
                        await ws.send_str(json.dumps(request))
                    deadline = time.monotonic() + rng.uniform(2, 8)
                    while time.monotonic() < deadline and not stop.is_set():
                        message = await ws.receive(timeout=10)
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        body = json.loads(message.data)
                        if body["type"] == "snapshot":
                            places.synced(body["room"], body["epoch"], body["offset"], body["recovered"])
                        elif body["type"] == "event" and "room" in body:
                            epoch = places.at.get(body["room"], ("?", 0))[0]
                            places.event(body["room"], epoch, body["offset"])
                tally.reconnects += 1
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                tally.errors += 1
                await asyncio.sleep(rng.uniform(0.2, 1.0))


async def sse_subscriber(base: str, tally: Tally, stop: asyncio.Event, rng: random.Random) -> None:
    places = Positions(tally)
    rooms = rng.sample(ROOMS, 2)
    cursor: str | None = None
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                headers = {"Last-Event-ID": cursor} if cursor else {}
                url = f"{base}/sse?" + "&".join(f"room={r}" for r in rooms)
                async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(sock_read=30)) as response:
                    event, data, last_id = "message", "", None
                    deadline = time.monotonic() + rng.uniform(2, 8)
                    async for raw in response.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("id:"):
                            last_id = line[3:].strip()
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data = line[5:].strip()
                        elif line == "":
                            if event in ("snapshot", "reset"):
                                body = json.loads(data)
                                places.synced(body["room"], body["epoch"], body["offset"], False)
                            elif last_id is not None and data:
                                now = sse.decode_cursor(last_id)
                                for room, position in now.items():
                                    held = places.at.get(room)
                                    if held is not None and held[0] == position.epoch and position.offset > held[1]:
                                        places.event(room, position.epoch, position.offset)
                                    elif held is None or held[0] != position.epoch:
                                        places.synced(room, position.epoch, position.offset, held is None)
                            cursor = last_id or cursor
                            event, data = "message", ""
                            if time.monotonic() > deadline or stop.is_set():
                                break
                tally.reconnects += 1
            except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError):
                tally.errors += 1
                await asyncio.sleep(rng.uniform(0.2, 1.0))


async def socketio_subscriber(base: str, tally: Tally, stop: asyncio.Event, rng: random.Random) -> None:
    places = Positions(tally)
    rooms = rng.sample(ROOMS, 2)
    while not stop.is_set():
        client = socketio.AsyncClient(reconnection=False)

        def on_event(*args: Any) -> None:
            meta = args[-1] if args and isinstance(args[-1], dict) and "$room" in args[-1] else None
            if meta is not None:
                places.event(meta["$room"], meta["$epoch"], meta["$offset"])

        client.on("n", on_event)
        try:
            await client.connect(f"{base}?roomcast=1", transports=["websocket"], wait_timeout=10)
            for room in rooms:
                request: dict[str, Any] = {"room": room}
                if room in places.at:
                    request["epoch"], request["offset"] = places.at[room]
                reply = await client.call("subscribe", request, timeout=10)
                pubs = reply.get("publications") or []
                base_offset = reply["offset"] - (0 if reply["recovered"] else len(pubs))
                places.synced(room, reply["epoch"], base_offset, reply["recovered"])
                for pub in pubs:
                    places.event(room, reply["epoch"], pub["offset"])
            with contextlib.suppress(asyncio.TimeoutError):  # connected for a while, then it drops
                await asyncio.wait_for(stop.wait(), rng.uniform(2, 8))
        except (TimeoutError, socketio.exceptions.SocketIOError, ConnectionError, KeyError):
            tally.errors += 1
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()
        tally.reconnects += 1


async def publisher(base: str, tally: Tally, stop: asyncio.Event, rate: float) -> None:
    async with aiohttp.ClientSession() as http:
        n = 0
        while not stop.is_set():
            n += 1
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
                async with http.post(
                    f"{base}/api/publish", json={"room": ROOMS[n % len(ROOMS)], "event": "n", "data": {"n": n}}
                ) as response:
                    if response.status == 200:
                        tally.published += 1
            await asyncio.sleep(1 / rate)


async def tasks(base: str, tally: Tally, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, KeyError):
                async with http.post(f"{base}/api/tasks", json={"kind": "soak"}) as response:
                    task = await response.json() if response.status == 201 else None
                if task is None:
                    continue
                for progress in (10, 50, 90):
                    async with http.post(f"{base}/api/tasks/{task['id']}/progress", json={"progress": progress}):
                        pass
                async with http.post(
                    f"{base}/api/tasks/{task['id']}/complete", json={"result": {"id": task["id"]}}
                ) as response:
                    if response.status == 200:
                        tally.tasks_acknowledged[task["id"]] = {"id": task["id"]}
            await asyncio.sleep(0.5)


async def bad_clients(port: int, tally: Tally, stop: asyncio.Event) -> None:
    """A slow SSE reader, an endless header and a slowloris, over and over."""
    while not stop.is_set():
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nX-Endless: " + b"v" * 200_000)
            line = await asyncio.wait_for(reader.readline(), 10)
            tally.refused_attacks += line.startswith(b"HTTP/1.1 431")
            writer.transport.abort()
            slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
            slow.transport.pause_reading()
            slow.write(b"GET /sse?room=" + ROOMS[0].encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await asyncio.wait_for(stop.wait(), 5)
            slow.transport.abort()
        await asyncio.sleep(1)


async def soak(minutes: float) -> dict[str, Any]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="roomcast-soak-")
    server = Server(port, str(Path(tmp) / "tasks.db"))
    server.start()
    fds_at_start = server.fds()
    tally, stop = Tally(), asyncio.Event()
    workers = [
        *(asyncio.create_task(ws_subscriber(base, tally, stop, random.Random(i))) for i in range(20)),
        *(asyncio.create_task(sse_subscriber(base, tally, stop, random.Random(100 + i))) for i in range(20)),
        *(asyncio.create_task(socketio_subscriber(base, tally, stop, random.Random(200 + i))) for i in range(20)),
        asyncio.create_task(publisher(base, tally, stop, rate=50)),
        asyncio.create_task(tasks(base, tally, stop)),
        asyncio.create_task(bad_clients(port, tally, stop)),
    ]
    total = minutes * 60
    # Warm-up: each phase (before and after the restart) first fills the rooms' history and
    # the task database's cache; a third of the phase covers it at the default rates.
    half = total / 2
    warm = half / 3
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    restarted = False
    restart_exit: int | None = None
    while (elapsed := time.monotonic() - started) < total:
        if not restarted and elapsed >= half:
            restart_exit = server.stop()  # SIGTERM mid-run; clients come back by themselves
            server.start()
            restarted, samples = True, []
        samples.append((time.monotonic() - started, server.rss()))
        await asyncio.sleep(5)
    stop.set()
    await asyncio.wait(workers, timeout=30)
    for worker in workers:
        worker.cancel()
    async with aiohttp.ClientSession() as http:
        missing = []
        for task_id, result in tally.tasks_acknowledged.items():
            async with http.get(f"{base}/api/tasks/{task_id}") as response:
                stored = await response.json() if response.status == 200 else {}
            if stored.get("status") != "completed" or stored.get("result") != result:
                missing.append(task_id)
    deadline = time.monotonic() + 20
    while server.fds() > fds_at_start and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    fds_at_end = server.fds()
    phase_start = samples[0][0]
    after_warmup = [rss for at, rss in samples if at - phase_start >= warm]
    third = max(1, len(after_warmup) // 3)
    level = statistics.median(after_warmup[:third])  # flat: the last third against the first
    late = statistics.median(after_warmup[-third:])
    peak = max(after_warmup)
    exit_code = server.stop()
    report = {
        "minutes": minutes,
        "published": tally.published,
        "events": tally.events,
        "gaps": tally.gaps,
        "duplicates": tally.duplicates,
        "resets": tally.resets,
        "reconnects": tally.reconnects,
        "client_errors": tally.errors,
        "tasks_acknowledged": len(tally.tasks_acknowledged),
        "tasks_missing": len(missing),
        "attacks_refused": tally.refused_attacks,
        "rss_level_mb": round(level / 1e6, 1),
        "rss_late_mb": round(late / 1e6, 1),
        "rss_peak_mb": round(peak / 1e6, 1),
        "rss_growth_pct": round(100 * (late - level) / level, 1),
        "rss_series_mb": [round(rss / 1e6, 1) for _, rss in samples],
        "fds_start": fds_at_start,
        "fds_end": fds_at_end,
        "sigterm_exit": restart_exit,
        "final_exit": exit_code,
    }
    report["pass"] = (
        tally.gaps == 0
        and tally.duplicates == 0
        and not missing
        and report["rss_growth_pct"] <= 10
        and fds_at_end <= fds_at_start
        and restart_exit == 0
        and tally.events > 0
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = asyncio.run(soak(args.minutes))
    for key, value in report.items():
        print(f"{key:>20}: {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.exit(0 if report["pass"] else 1)


if __name__ == "__main__":
    main()
