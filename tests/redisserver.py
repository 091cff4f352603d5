"""A real redis-server for the tests: started on a free port with a temporary directory.

Debian's ``redis-server`` (installed by ``make test-deps``), ended by its PID. ``running_redis``
serves the session (no persistence); ``RedisProcess`` is one a fault test may SIGKILL and
start again on the same port and directory, with or without an append-only file. Tests that
need a clean Redis flush it (``fresh_url``). ``RedisProxy`` stands between a client and a
redis-server and cuts the client's connection at an exact point (after Redis answered a
command, before the answer arrives), the fault a retried write has to survive.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import redis

__all__ = ["RedisProcess", "RedisProxy", "running_redis", "running_sentinel", "fresh_url"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisProcess:
    """One redis-server we started: ``start``, ``kill`` (SIGKILL), ``start`` again.

    Args:
        aof: persist every write to an append-only file (``appendfsync always``), so a
            SIGKILL loses nothing; without it, a restart starts empty.
        rdb: keep snapshots in ``dump.rdb`` (``--save 3600 1``: none is taken during a
            test by itself). A test takes one with ``SAVE`` at a known point; a restart then
            loads it, older than what was written after it, as a Redis restored from a
            backup would.
        tls: a certificate and its key file: then it listens for TLS only, and ``url`` is
            ``rediss://`` with the certificate as the one to trust (``ssl_ca_certs``).
    """

    def __init__(self, *, aof: bool = False, rdb: bool = False, tls: tuple[str, str] | None = None) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is missing: make test-deps installs it"
        self.binary, self.aof, self.rdb, self.tls = binary, aof, rdb, tls
        self.port, self.directory = _free_port(), tempfile.mkdtemp(prefix="roomcast-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        if tls is not None:
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(tls[0], safe='/')}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        snapshots = ["--save", "3600 1", "--dbfilename", "dump.rdb"] if self.rdb else ["--save", ""]
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            cert, key = self.tls
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key]
            listen += ["--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(
            [
                self.binary,
                *listen,
                "--bind",
                "127.0.0.1",
                *snapshots,
                *persistence,
                "--dir",
                self.directory,
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        try:
            while True:  # wait for it to answer, bounded
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise
                    client.connection_pool.disconnect()
                    with socket.socket() as probe:  # waits for the port, or fails at once
                        probe.settimeout(0.2)
                        with contextlib.suppress(OSError):
                            probe.connect(("127.0.0.1", self.port))
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no time to write anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_redis(*, aof: bool = False, rdb: bool = False) -> Iterator[RedisProcess]:
    """A started redis-server, stopped at the end."""
    server = RedisProcess(aof=aof, rdb=rdb)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_sentinel(master: RedisProcess, *, name: str = "main", password: str | None = None) -> Iterator[int]:
    """A Redis Sentinel (``redis-server --sentinel``) watching ``master`` under ``name``;
    yields its port once it names the master. ``password``: the sentinel's own
    ``requirepass``."""
    port, directory = _free_port(), tempfile.mkdtemp(prefix="roomcast-sentinel-")
    config = f"{directory}/sentinel.conf"  # the sentinel rewrites it: its own copy, in its directory
    with open(config, "w") as file:
        file.write(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {directory}\n")
        file.write(f"sentinel monitor {name} 127.0.0.1 {master.port} 1\n")
        if password is not None:
            file.write(f"requirepass {password}\n")
    proc = subprocess.Popen([master.binary, config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        deadline = time.monotonic() + 10
        while True:  # wait for it to answer, bounded
            try:
                if client.sentinel_get_master_addr_by_name(name) is not None:
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                client.connection_pool.disconnect()
                with socket.socket() as probe:  # waits for the port, or fails at once
                    probe.settimeout(0.2)
                    with contextlib.suppress(OSError):
                        probe.connect(("127.0.0.1", port))
        yield port
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def fresh_url(url: str) -> str:
    """``url`` after its database was emptied: every test starts from no rooms."""
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


# -- a proxy that cuts connections on cue -------------------------------------------------------
_AGGREGATES = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2}
_BLOBS = frozenset(b"$=!")


def _resp_end(buffer: bytes, start: int = 0) -> int | None:
    """Where the RESP value that starts at ``start`` ends, or ``None`` while it is incomplete.

    RESP2 and RESP3 without attributes: what redis-py sends and Redis answers. A line that
    is no RESP type (an inline command) is one value.
    """
    line = buffer.find(b"\r\n", start)
    if line < 0:
        return None
    kind, after = buffer[start], line + 2
    if kind in _BLOBS:
        size = int(buffer[start + 1 : line])
        end = after + size + 2 if size >= 0 else after
        return end if end <= len(buffer) else None
    per = _AGGREGATES.get(kind)
    if per is None:
        return after
    position: int | None = after
    for _ in range(max(int(buffer[start + 1 : line]), 0) * per):
        assert position is not None
        position = _resp_end(buffer, position)
        if position is None:
            return None
    return position


def _command_name(command: bytes) -> str:
    """The upper-cased name of one command as a client sends it (a RESP array, or inline)."""
    if not command.startswith(b"*"):
        return command.split(None, 1)[0].decode().upper()
    size_at = command.index(b"\r\n") + 2
    name_at = command.index(b"\r\n", size_at) + 2
    size = int(command[size_at + 1 : name_at - 2])
    return command[name_at : name_at + size].decode().upper()


class RedisProxy:
    """A TCP proxy in front of a redis-server that cuts a client's connection on cue.

    It reads the commands clients send and the replies Redis gives, so a test can drop a
    connection at an exact point: after Redis ran a command and answered, before the answer
    reaches the client (``cut_after_reply``). That is the fault a retried write must survive:
    the client cannot tell whether its command ran. ``commands`` counts what was forwarded,
    by name. Run it in the test's event loop (``async with RedisProxy(url) as proxy``);
    blocking clients then use it from a thread.
    """

    def __init__(self, upstream_url: str) -> None:
        target = urlsplit(upstream_url)
        self._upstream = (target.hostname or "127.0.0.1", target.port or 6379)
        self._path = target.path
        self._server: asyncio.Server | None = None
        self._cuts: collections.Counter[str] = collections.Counter()
        self._links: set[asyncio.Task[None]] = set()
        self.commands: collections.Counter[str] = collections.Counter()
        """Commands forwarded to Redis, by upper-cased name."""
        self.cut = 0
        """Connections cut so far."""
        self.url = ""
        """The URL clients use to reach Redis through the proxy (set by ``start``)."""

    def cut_after_reply(self, command: str, times: int = 1) -> None:
        """Forward the next ``times`` ``command`` s, let Redis run and answer each, then close
        that client's connection instead of passing the answer on."""
        self._cuts[command.upper()] += times

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}{self._path}"

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> RedisProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        link = asyncio.get_running_loop().create_task(self._link(client_reader, client_writer))
        self._links.add(link)
        link.add_done_callback(self._links.discard)

    async def _link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        armed: collections.deque[bool] = collections.deque()  # one per forwarded command: cut at its reply?
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_writer.transport.abort()  # Redis is down: so is the way to it
            return
        pumps = (
            asyncio.create_task(self._commands(client_reader, upstream_writer, armed)),
            asyncio.create_task(self._replies(upstream_reader, client_writer, armed)),
        )
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)  # a reset connection ends the link, no more
            client_writer.transport.abort()
            upstream_writer.transport.abort()

    async def _commands(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, armed: collections.deque[bool]
    ) -> None:
        buffer = b""
        while data := await reader.read(65536):
            buffer += data
            while (end := _resp_end(buffer)) is not None:
                command, buffer = buffer[:end], buffer[end:]
                name = _command_name(command)
                self.commands[name] += 1
                armed.append(self._cuts[name] > 0)
                if armed[-1]:
                    self._cuts[name] -= 1
                writer.write(command)
            await writer.drain()

    async def _replies(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, armed: collections.deque[bool]
    ) -> None:
        buffer = b""
        while data := await reader.read(65536):
            buffer += data
            passed = 0
            while (end := _resp_end(buffer, passed)) is not None:
                if armed and armed.popleft():  # Redis ran it and answered: the client never hears
                    writer.write(buffer[:passed])
                    self.cut += 1
                    return
                passed = end
            writer.write(buffer[:passed])
            buffer = buffer[passed:]
            await writer.drain()
