"""``roomcast publish`` and ``roomcast tail`` as a user runs them: real processes, real sockets.

The servers are a real ``roomcast serve`` process, or, where a test must act on the hub
(finish a room), the test's own in-process server. Every wait is on a line the process
prints or a connection it makes, with a timeout; the one measured window (the backoff
against a refused port) is a measurement, not a synchronisation.

The recovery test puts a TCP proxy between ``tail`` and the server, cuts the connection,
publishes straight to the server meanwhile, and holds ``tail``'s reconnect at the proxy
until the gap is certain, so what ``tail`` prints afterwards can only have come from the
replay its ``Last-Event-ID`` asked for.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import jwt
from servers import running

from roomcast import Publisher
from roomcast.hub.hub import Hub
from roomcast.protocol.sse import decode_cursor
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.tasks.model import Task

KEY = "k-0123456789abcdef"
SECRET = "a-secret-long-enough-for-hs256-tokens"
WAIT = 15.0


class Cli:
    """A ``roomcast`` process whose stdout and stderr lines are read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: asyncio.Queue[str | None] = asyncio.Queue()
        self.err: asyncio.Queue[str | None] = asyncio.Queue()
        self.err_seen: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, self.out, None)),
            asyncio.create_task(self._pump(proc.stderr, self.err, self.err_seen)),
        ]

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Cli:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "roomcast",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        return cls(proc)

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, lines: asyncio.Queue[str | None], seen: list[str] | None) -> None:
        while raw := await stream.readline():
            line = raw.decode().rstrip("\n")
            if seen is not None:
                seen.append(line)
            lines.put_nowait(line)
        lines.put_nowait(None)

    async def line(self, timeout: float = WAIT) -> str | None:
        """The next stdout line; ``None`` once the process closed its stdout."""
        return await asyncio.wait_for(self.out.get(), timeout)

    async def note(self, contains: str, timeout: float = WAIT) -> str:
        """Read stderr up to the first line containing ``contains``."""
        async with asyncio.timeout(timeout):
            while (line := await self.err.get()) is not None:
                if contains in line:
                    return line
        raise AssertionError(f"stderr ended without {contains!r}: {self.err_seen}")

    async def exit_code(self, timeout: float = WAIT) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(asyncio.gather(*self._pumps), timeout)
        return code

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.exit_code()

    async def rest(self) -> list[str]:
        """Every stdout line still to come (the process must be ending)."""
        lines = []
        while (line := await self.line()) is not None:
            lines.append(line)
        return lines

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@asynccontextmanager
async def _cli(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Cli]:
    cli = await Cli.start(*args, env=env)
    try:
        yield cli
    finally:
        cli.kill()
        await cli.proc.wait()


@asynccontextmanager
async def _serve(*args: str) -> AsyncIterator[str]:
    """``roomcast serve --port 0`` as a process; yields its base URL."""
    async with _cli("serve", "--port", "0", "--log-level", "warning", *args) as server:
        while (line := await server.line()) is not None:
            if "listening on" in line:
                break
        assert line is not None, server.err_seen
        try:
            yield line.rsplit(" ", 1)[1]
        finally:
            assert await server.stop() == 0


async def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- roomcast publish ------------------------------------------------------------------------
async def test_publish_prints_where_it_landed_and_exits_0() -> None:
    async with _serve("--api-key", KEY) as url:
        env = {"ROOMCAST_URL": url, "ROOMCAST_API_KEY": KEY}
        code, out, err = await _run("publish", "news", "flash", '{"t": "hi", "n": [1, 2]}', env=env)
        assert (code, err) == (0, "")
        landed = json.loads(out)
        assert out.count("\n") == 1 and list(landed) == ["room", "epoch", "offset"]
        assert (landed["room"], landed["offset"]) == ("news", 1)
        code, out, _ = await _run("publish", "--url", url, "--api-key", KEY, "news", "bare")  # flags, no data
        assert code == 0 and json.loads(out)["offset"] == 2
        history = await asyncio.to_thread(_history, url, "news")
        assert [(p["event"], p["data"]) for p in history] == [("flash", [{"t": "hi", "n": [1, 2]}]), ("bare", [])]


def _history(url: str, room: str) -> list[dict[str, object]]:
    import urllib.request

    request = urllib.request.Request(f"{url}/api/history?room={room}", headers={"X-API-Key": KEY})
    with urllib.request.urlopen(request, timeout=10) as answer:
        publications: list[dict[str, object]] = json.loads(answer.read())["publications"]
        return publications


async def test_publish_refusals_exit_2_for_bad_json_and_1_with_the_servers_message() -> None:
    async with _serve("--api-key", KEY) as url:
        code, out, err = await _run("publish", "--url", url, "--api-key", KEY, "news", "flash", "{not json")
        assert code == 2 and out == ""
        assert "Invalid value for 'JSON': not valid JSON: Expecting property name" in err
        code, _, err = await _run("publish", "--url", url, "--api-key", KEY, "news", "flash", "NaN")
        assert code == 2 and "NaN is not JSON" in err
        code, out, err = await _run("publish", "--url", url, "news", "flash", "1", env={"ROOMCAST_API_KEY": "wrong"})
        assert (code, out, err) == (1, "", "error: invalid API key\n")
        code, _, err = await _run("publish", "--url", url, "--api-key", KEY, "", "flash")
        assert (code, err) == (1, "error: 'room' must be a string of 1 to 256 characters\n")
    closed = f"http://127.0.0.1:{_closed_port()}"
    code, _, err = await _run("publish", "--url", closed, "news", "flash")
    assert code == 1 and err.startswith(f"error: cannot reach roomcast at {closed}: ")


# -- roomcast tail -------------------------------------------------------------------------------
async def _expect(cli: Cli, *lines: str) -> None:
    for expected in lines:
        assert await cli.line() == expected, cli.err_seen


def _snapshot_line(line: str | None, room: str, offset: int) -> None:
    assert line is not None and line.startswith("snapshot "), line
    body = json.loads(line.split(" ", 1)[1])
    assert (body["room"], body["offset"], body["snapshot"]) == (room, offset, None)


async def test_tail_prints_snapshots_then_live_events_and_stops_on_sigterm() -> None:
    async with _serve() as url, _cli("tail", "--url", url, "a", "b") as tail:
        _snapshot_line(await tail.line(), "a", 0)
        _snapshot_line(await tail.line(), "b", 0)
        publisher = Publisher(url)
        await publisher.apublish("a", "chat", {"text": "héllo\nworld"})
        await publisher.apublish("b", "bare")
        await publisher.abroadcast(["a", "b"], "both", [1, 2])
        await _expect(tail, 'chat {"text":"héllo\\nworld"}', "bare null", "both [1,2]", "both [1,2]")
        assert await tail.stop() == 0
        assert await tail.rest() == []
        assert not any("Traceback" in line for line in tail.err_seen)


class Proxy:
    """A TCP proxy on 127.0.0.1:0 that can cut its connections and hold new ones at a gate.

    It reads each client's request head before the gate, so a test sees that (and with
    which ``Last-Event-ID``) the client came back, then forwards it once the gate opens.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.gate = asyncio.Event()
        self.gate.set()
        self.requests: asyncio.Queue[bytes] = asyncio.Queue()
        self.links: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        self.cut()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.links.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.put_nowait(head)
        await self.gate.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.links.append(up_writer)
        up_writer.write(head)
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def cut(self, *, abort: bool = False) -> None:
        """Close both sides of every connection (``abort``: a reset, not a FIN), gate closed."""
        self.gate.clear()
        for writer in self.links:
            if abort:
                writer.transport.abort()
            else:
                writer.close()
        self.links.clear()


def _last_event_id(head: bytes) -> str | None:
    match = re.search(rb"(?im)^last-event-id:\s*(\S+)\r$", head)
    return match.group(1).decode() if match else None


async def test_tail_reconnects_by_itself_and_prints_what_it_missed_exactly_once() -> None:
    async with _serve() as url, Proxy(int(url.rsplit(":", 1)[1])) as proxy:
        publisher = Publisher(url)  # straight to the server, never through the proxy
        async with _cli("tail", "--url", f"http://127.0.0.1:{proxy.port}", "--retry-max", "2", "a", "b") as tail:
            assert _last_event_id(await asyncio.wait_for(proxy.requests.get(), WAIT)) is None
            _snapshot_line(await tail.line(), "a", 0)
            _snapshot_line(await tail.line(), "b", 0)
            epochs = {"a": (await publisher.apublish("a", "in-a", 1)).epoch}
            epochs["b"] = (await publisher.apublish("b", "in-b", 1)).epoch
            await _expect(tail, "in-a 1", "in-b 1")

            sent = {"a": 1, "b": 1}
            for cycle, abort in enumerate((False, True), start=1):
                proxy.cut(abort=abort)
                missed = []
                for room, count in (("a", 2), ("b", 1)):  # published while tail is cut off
                    for _ in range(count):
                        sent[room] += 1
                        await publisher.apublish(room, f"in-{room}", sent[room])
                        missed.append(f"in-{room} {sent[room]}")
                head = await asyncio.wait_for(proxy.requests.get(), WAIT)  # it came back by itself
                cursor = decode_cursor(_last_event_id(head) or "")
                before = {room: n - (2 if room == "a" else 1) for room, n in sent.items()}
                assert {r: (p.epoch, p.offset) for r, p in cursor.items()} == {
                    r: (epochs[r], n) for r, n in before.items()
                }
                await tail.note("reconnecting in")
                proxy.gate.set()
                await _expect(tail, *missed)  # replayed, room by room in the stream's order
                await tail.note("resuming from the last event")
                sent["a"] += 1
                await publisher.apublish("a", "in-a", sent["a"])  # and then live again
                await _expect(tail, f"in-a {sent['a']}")
                assert proxy.requests.empty(), f"cycle {cycle}: more than one reconnect"

            assert await tail.stop() == 0
            assert await tail.rest() == []  # nothing printed twice, nothing late


async def test_tail_exits_0_when_the_rooms_are_finished() -> None:
    app = App(Hub(), Settings())
    async with running(app) as srv:
        await app.hub.publish("job:1", "progress", 100)
        async with _cli("tail", "--url", srv.url, "job:1") as tail:
            _snapshot_line(await tail.line(), "job:1", 1)
            await app.hub.mark_terminal("job:1")  # the stream ends; its reconnect gets 204
            assert await tail.exit_code() == 0
            assert await tail.rest() == []
            assert any("finished (204)" in line for line in tail.err_seen), tail.err_seen


async def test_tail_exits_1_when_the_server_ends_the_stream_for_good() -> None:
    app = App(Hub(), Settings())
    async with running(app) as srv, _cli("tail", "--url", srv.url, "a") as tail:
        _snapshot_line(await tail.line(), "a", 0)
        conn_id = next(iter(app.sse.streams)).id
        reader, writer = await asyncio.open_connection(srv.host, srv.port)  # the API, as a backend would call it
        body = json.dumps({"connection": conn_id}).encode()
        writer.write(
            b"POST /api/disconnect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
        line = await tail.line()
        assert line is not None and line.startswith("error ") and json.loads(line[6:])["reconnect"] is False
        assert await tail.exit_code() == 1
        assert any("not to reconnect" in line for line in tail.err_seen), tail.err_seen
        assert not any("reconnecting" in line for line in tail.err_seen)


async def test_tail_refused_token_exits_1_with_the_servers_message_and_no_retry() -> None:
    app = App(Hub(), Settings(jwt_secret=SECRET))
    only_b = jwt.encode({"sub": "ann", "rooms": {"subscribe": ["b"]}}, SECRET, algorithm="HS256")
    async with running(app) as srv:
        for extra, status, message in [([], 401, "token required"), (["--token", only_b], 403, "subscribe")]:
            async with _cli("tail", "--url", srv.url, *extra, "a") as tail:
                assert await tail.exit_code() == 1
                assert await tail.rest() == []
                errors = [line for line in tail.err_seen if "error:" in line]
                assert len(errors) == 1 and message in errors[0] and f"HTTP {status}" in errors[0], tail.err_seen
                assert not any("reconnecting" in line for line in tail.err_seen)
        async with _cli("tail", "--url", srv.url, "b", env={"ROOMCAST_TOKEN": only_b}) as tail:
            _snapshot_line(await tail.line(), "b", 0)
            assert await tail.stop() == 0


def _crawl_wire(task: Task) -> dict[str, object]:
    return {"progressId": task.id, "percentage": task.progress}


async def test_tail_shows_a_mapped_task_as_the_api_does_with_the_key_and_as_clients_get_it_with_view_client() -> None:
    app = App(Hub(), Settings(task_db=":memory:", api_key=KEY, task_payloads={"crawl": _crawl_wire}))
    async with running(app) as srv:
        task = await app.tasks.create("crawl")
        room = f"task:{task.id}"
        async with _cli("tail", "--url", srv.url, room, env={"ROOMCAST_API_KEY": KEY}) as tail:
            line = await tail.line()
            assert line is not None and json.loads(line.split(" ", 1)[1])["snapshot"] == task.to_json(), line
            await app.tasks.report(task.id, 40)
            started, progressed = await tail.line(), await tail.line()
            assert started is not None and started.startswith("task:updated ")
            assert progressed is not None and progressed.startswith("task:progress ")
            shown = json.loads(progressed.split(" ", 1)[1])
            assert (shown["id"], shown["progress"], "percentage" in shown) == (task.id, 40.0, False)
            assert await tail.stop() == 0
        async with _cli("tail", "--url", srv.url, "--view", "client", room) as tail:  # no key needed
            line = await tail.line()
            assert line is not None and json.loads(line.split(" ", 1)[1])["snapshot"] == {
                "progressId": task.id,
                "percentage": 40.0,
            }
            assert await tail.stop() == 0
        code, out, err = await _run("tail", "--url", srv.url, room)  # the canonical view without the key
        assert (code, out) == (1, "")
        assert "canonical view" in err and "HTTP 401" in err and "reconnecting" not in err, err


async def test_tail_backs_off_against_a_refused_port_and_never_spins() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    attempts = 7
    async with _cli("tail", "--url", url, "--retry-max", "1", "a") as tail:
        loop = asyncio.get_running_loop()
        notices = [await tail.note("reconnecting in")]  # the process is up and the first attempt failed
        started = loop.time()
        for _ in range(attempts - 1):
            notices.append(await tail.note("reconnecting in", timeout=10))
        elapsed = loop.time() - started
        assert tail.proc.returncode is None  # still trying: a refused port is not a reason to stop
        assert await tail.stop() == 0
    assert all(f"cannot connect to {url}: " in line for line in notices)
    delays = [float(re.search(r"in ([0-9.]+) s", line).group(1)) for line in notices]  # type: ignore[union-attr]
    ceilings = [min(1.0, 0.5 * 2**n) for n in range(len(delays))]
    assert all(0.0 <= d <= c + 0.005 for d, c in zip(delays, ceilings)), delays
    # It really waited what it announced between attempts: no loop at zero delay. Full jitter
    # makes each delay uniform in [0, ceiling], so the announced total is random but known.
    assert elapsed >= sum(delays[:-1]) - 0.05, (elapsed, delays)
    # and the delays are real: six draws from [0, ≤1 s] summing under 0.3 s has odds of ~1e-6
    assert sum(delays[:-1]) > 0.3, delays
