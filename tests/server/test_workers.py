"""``roomcast serve --workers N``: N processes on one port (``SO_REUSEPORT``), rooms shared
through Redis, supervised by the parent.

Everything is real: the ``roomcast`` command in a subprocess, its worker processes, a
redis-server, SSE subscribers on 127.0.0.1. Which worker accepted a connection is read from
``/proc`` (``workerprocs.owners``), never guessed; a worker's end is waited for on a pidfd.
Every wait has a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from redisserver import fresh_url
from sseclient import SseStream, open_sse
from workerprocs import Watched, owners

from roomcast import Publisher
from roomcast.cluster.redis import RedisCluster
from roomcast.server.runner import STOP_TIMEOUT
from roomcast.transports.engineio_forward import stats_kind

WAIT = 30.0  # starting Python workers on a busy 2-core machine: generous, still bounded
MANY = 24  # subscribers opened at least; with 2 workers all on one has odds 2 ** -23
BOUND = 200  # subscribers opened at most while waiting for every worker to hold one

LISTENING = re.compile(r"listening on (http://\S+)")
WORKER_LISTENING = re.compile(r"worker (\d+) listening \(pid (\d+)\)")
ALL_LISTENING = re.compile(r"(\d+) workers listening \(pids ([\d, ]+)\)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def refused(port: int) -> bool:
    """Nothing accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


class Output:
    """Every line a process printed (stdout and stderr), read as it comes."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._changed = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            async with self._changed:
                self.lines.append(raw.decode(errors="replace"))
                self._changed.notify_all()
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    async def find(
        self, pattern: re.Pattern[str], *, after: int = 0, timeout: float = WAIT
    ) -> tuple[int, re.Match[str]]:
        """The first line from index ``after`` that matches, and its index; waits for it."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for index in range(after, len(self.lines)):
                    if found := pattern.search(self.lines[index]):
                        return index, found
                if self.ended:
                    raise EOFError(f"no line matched {pattern.pattern!r}:\n{''.join(self.lines)}")
                await self._changed.wait()

    async def until_end(self, timeout: float = WAIT) -> str:
        async with asyncio.timeout(timeout):
            await self._reader
        return "".join(self.lines)


class Serve:
    """A ``roomcast serve`` process this test started, its output and the workers it named."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self.out = Output(proc.stdout)
        self.watched: dict[int, Watched] = {}

    async def listening(self) -> tuple[str, list[int]]:
        """The base URL it printed once every worker listened, and the workers' pids."""
        _, found = await self.out.find(LISTENING)
        # The parent's log line naming every worker: its log goes through a queue thread
        # (server.logs), so it may come before or after the URL printed on stdout.
        _, every = await self.out.find(ALL_LISTENING)
        pids = {int(pid) for pid in every[2].split(",")}
        self.watch(*pids)
        return found[1], sorted(pids)

    def watch(self, *pids: int) -> None:
        for pid in pids:
            if pid not in self.watched:
                self.watched[pid] = Watched(pid)

    async def stop(self, signum: int = signal.SIGTERM) -> tuple[int, float]:
        """Signal the parent; its exit status and the seconds it took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        code = await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT + WAIT)
        return code, time.monotonic() - started


@contextlib.asynccontextmanager
async def serving(*args: str) -> AsyncIterator[Serve]:
    """``roomcast serve ARGS`` in a subprocess; at the end, whatever still runs of it (the
    parent, by its pid; workers, by their pidfds) is killed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast",
        "serve",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    serve = Serve(proc)
    try:
        yield serve
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), WAIT)
        for watched in serve.watched.values():
            watched.kill()
            watched.close()
        with contextlib.suppress(TimeoutError, EOFError):
            await serve.out.until_end(WAIT)


async def subscribe_on_every_worker(
    stack: contextlib.AsyncExitStack, base: str, pids: list[int], room: str
) -> dict[int, list[SseStream]]:
    """Open SSE subscribers to ``room`` (at least ``MANY``) until every worker holds one;
    returns them by the pid of the worker that accepted each."""
    port = int(base.rsplit(":", 1)[1])
    held: dict[int, list[SseStream]] = {pid: [] for pid in pids}
    opened = 0
    while opened < MANY or not all(held.values()):
        assert opened < BOUND, f"{BOUND} subscribers and a worker holds none: { {p: len(s) for p, s in held.items()} }"
        stream = await stack.enter_async_context(open_sse(base, [room]))
        assert stream.status == 200
        assert (await stream.next(WAIT)).event == "snapshot"  # so the worker has accepted it
        assert stream.response.connection is not None and stream.response.connection.transport is not None
        client_port = stream.response.connection.transport.get_extra_info("sockname")[1]
        owner = owners(port, [client_port], pids)[client_port]
        assert owner in held, f"connection from port {client_port} is held by {owner}, not a worker"
        held[owner].append(stream)
        opened += 1
    return held


async def everyone_gets(held: dict[int, list[SseStream]], base: str, room: str, data: dict[str, int]) -> None:
    """One publish through the API reaches every subscriber, whichever worker holds it."""
    await Publisher(base).apublish(room, "moved", data)
    for streams in held.values():
        for stream in streams:
            event = await stream.next(WAIT)
            assert (event.event, event.json()) == ("moved", data)


async def test_two_workers_share_one_port_and_one_room_and_stop_together_on_sigterm(redis_url: str) -> None:
    port = free_port()
    grace = ("--shutdown-grace", "2")  # each worker drains its subscribers over it (test_drain)
    async with serving("--workers", "2", "--redis", fresh_url(redis_url), "--port", str(port), *grace) as serve:
        base, pids = await serve.listening()
        assert base == f"http://127.0.0.1:{port}" and len(pids) == 2
        async with contextlib.AsyncExitStack() as stack:
            held = await subscribe_on_every_worker(stack, base, pids, "board")
            print(f"subscribers per worker: { {pid: len(streams) for pid, streams in held.items()} }")
            await everyone_gets(held, base, "board", {"card": 7})

            code, took = await serve.stop(signal.SIGTERM)
        print(f"SIGTERM to exit with 2 workers and {sum(map(len, held.values()))} subscribers: {took:.3f} s")
        assert code == 0
        assert took < STOP_TIMEOUT  # graceful: no worker had to be killed
        assert all(serve.watched[pid].ended for pid in pids)  # the parent exited after its workers
        assert refused(port)
        output = "".join(serve.out.lines)
        assert "did not stop in time" not in output
        assert output.count("exited with status 0") == 2


@pytest.mark.parametrize("how", ["flag", "environment"])
async def test_workers_without_redis_are_refused_at_once_with_status_2(how: str) -> None:
    port = free_port()
    args = ["--workers", "2"] if how == "flag" else []
    env = {**os.environ, "ROOMCAST_WORKERS": "2"} if how == "environment" else None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast",
        "serve",
        *args,
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 2
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("roomcast serve: --workers 2 needs --redis URL")
    assert "split" in lines[0]
    assert refused(port)


async def test_a_port_another_server_listens_on_with_reuseport_is_refused_not_shared(redis_url: str) -> None:
    with socket.socket() as other:  # another server that, too, lets SO_REUSEPORT sockets join
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        async with serving("--workers", "2", "--redis", redis_url, "--port", str(port)) as serve:
            output = await serve.out.until_end()
            assert await asyncio.wait_for(serve.proc.wait(), WAIT) == 2  # as one process: a usage error
        assert f"roomcast serve: cannot listen on 127.0.0.1:{port}: address already in use" in output
        assert "worker 1 started" not in output


async def test_a_worker_that_dies_is_started_again_and_serves_the_same_rooms(redis_url: str) -> None:
    async with serving("--workers", "2", "--redis", fresh_url(redis_url), "--port", "0") as serve:
        base, (victim, survivor) = await serve.listening()
        assert not base.endswith(":0")
        serve.watched[victim].kill()
        await serve.watched[victim].gone(WAIT)

        died, death = await serve.out.find(
            re.compile(rf"worker (\d+) \(pid {victim}\) was killed by SIGKILL; starting")
        )
        _, back = await serve.out.find(re.compile(rf"worker {death[1]} listening \(pid (\d+)\)"), after=died)
        replacement = int(back[1])
        assert replacement not in (victim, survivor)
        serve.watch(replacement)

        async with contextlib.AsyncExitStack() as stack:
            held = await subscribe_on_every_worker(stack, base, [replacement, survivor], "feed")
            await everyone_gets(held, base, "feed", {"n": 1})
            code, _ = await serve.stop(signal.SIGINT)  # as Ctrl-C: the parent forwards it
        assert code == 0
        assert all(watched.ended for watched in serve.watched.values())
        assert sum(1 for line in serve.out.lines if LISTENING.search(line)) == 1  # the real port, once


async def test_workers_that_cannot_start_stop_the_parent_with_status_1() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with serving("--workers", "2", "--redis", nowhere, "--port", "0") as serve:
        output = await serve.out.until_end()
        assert await asyncio.wait_for(serve.proc.wait(), WAIT) == 1
    assert "before every worker was listening; stopping" in output
    assert "listening on" not in output
    for pid in {int(m[1]) for m in re.finditer(r"worker \d+ started \(pid (\d+)\)", output)}:
        with contextlib.suppress(FileNotFoundError):  # gone, or the pid is some newer process
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                assert b"_worker_main" not in cmdline.read()


async def test_workers_stop_by_themselves_when_the_parent_is_killed(redis_url: str) -> None:
    async with serving("--workers", "2", "--redis", redis_url, "--port", "0") as serve:
        base, pids = await serve.listening()
        started = time.monotonic()
        serve.proc.kill()  # SIGKILL: the parent cannot forward anything
        await asyncio.wait_for(serve.proc.wait(), WAIT)
        for pid in pids:
            await serve.watched[pid].gone(STOP_TIMEOUT)
        print(f"orphaned workers stopped {time.monotonic() - started:.3f} s after the parent's SIGKILL")
        output = await serve.out.until_end()  # the workers held the pipe: it ends with them
        assert output.count("the supervising process is gone; stopping") == 2
        assert refused(int(base.rsplit(":", 1)[1]))


@pytest.mark.parametrize("second_signal", [False, True], ids=["after-the-bound", "on-a-second-signal"])
async def test_a_worker_that_does_not_stop_is_killed(redis_url: str, second_signal: bool) -> None:
    """A worker frozen with SIGSTOP cannot act on the forwarded SIGTERM: the parent kills it
    after ``STOP_TIMEOUT`` past the grace, or at once when the operator signals again, and
    still exits 0."""
    async with serving("--workers", "2", "--redis", redis_url, "--port", "0", "--shutdown-grace", "1") as serve:
        _, (frozen, other) = await serve.listening()
        serve.watched[frozen].send(signal.SIGSTOP)
        started = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        await serve.watched[other].gone(WAIT)  # the other one stops gracefully meanwhile
        if second_signal:
            await serve.out.find(re.compile(r"SIGTERM: stopping 2 workers"))
            serve.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(serve.proc.wait(), STOP_TIMEOUT + WAIT)
        took = time.monotonic() - started
        print(f"a frozen worker killed {'on the second signal' if second_signal else 'after the bound'}: {took:.3f} s")
        assert code == 0
        assert serve.watched[frozen].ended
        assert (took < STOP_TIMEOUT) if second_signal else (took >= STOP_TIMEOUT)
        await serve.out.find(re.compile(rf"worker \d+ \(pid {frozen}\) did not stop in time; killing it"))
        await serve.out.find(re.compile(rf"worker \d+ \(pid {frozen}\) was killed by SIGKILL"))


EIO = "/socket.io/?EIO=4&transport=polling"


async def test_socketio_long_polling_works_whichever_worker_each_request_reaches(redis_url: str) -> None:
    """Every polling request on a new connection: the kernel hands each to either worker, and
    the one that does not own the session forwards it to the owner (the node bus). Round
    trips go on until the workers' own counters show a forwarded one (bounded), then a
    publication reaches the polling client the same way."""
    url = fresh_url(redis_url)
    async with serving("--workers", "2", "--redis", url, "--port", "0") as serve:
        base, _ = await serve.listening()
        bus = RedisCluster(url)  # a node for the test itself, to read the workers' counters
        await bus.start()
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                async with http.get(base + EIO) as response:
                    assert response.status == 200
                    sid = json.loads((await response.text())[1:])["sid"]

                async def post(packet: str) -> None:
                    async with http.post(f"{base}{EIO}&sid={sid}", data=packet) as response:
                        assert response.status == 200, await response.text()

                async def get() -> list[str]:
                    async with http.get(f"{base}{EIO}&sid={sid}") as response:
                        assert response.status == 200, await response.text()
                        return [p for p in (await response.text()).split("\x1e") if p != "2"]  # not pings

                await post("40")
                assert (await get())[0].startswith("40{")
                forwarded, trips = 0, 0
                while not forwarded:
                    trips += 1
                    assert trips <= 32, "32 round trips and every request reached the owner"
                    await post(f'42{trips}["subscribe",{{"room":"poll-{trips}"}}]')
                    [ack] = await get()
                    assert ack.startswith(f"43{trips}[")
                    answers = await bus.ask_all(stats_kind("socket.io"), None, timeout=WAIT)
                    forwarded = sum(int(a["forwarded"]) for a in answers if isinstance(a, dict))
                await Publisher(base).apublish("poll-1", "moved", {"card": 7})
                [event] = await get()
                assert event.startswith("42[") and json.loads(event[2:])[:2] == ["moved", {"card": 7}]
        finally:
            await bus.aclose()
