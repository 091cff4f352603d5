"""Helpers shared by the client tests (no tests here): recorders, waits, a TCP proxy, servers.

Every wait is an ``asyncio.timeout`` around an event or a state change, never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roomcast.client import Client, ClientState, StateChange

NODE_MODULES = Path(__file__).parents[1] / "interop" / "node" / "node_modules"
NODE_DIR = Path(__file__).parent / "node"


class Recorder:
    """Records state changes and events; ``wait_for`` blocks until a predicate holds."""

    def __init__(self, client: Client | None = None) -> None:
        self.changes: list[StateChange] = []
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()
        if client is not None:
            client.on_state(self.state)

    def state(self, change: StateChange) -> None:
        self.changes.append(change)
        self._changed.set()

    def handler(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.events.append((name, args))
            self._changed.set()

        return record

    @property
    def states(self) -> list[ClientState]:
        return [c.new for c in self.changes]

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [args for event, args in self.events if event == name]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_state(self, state: ClientState, *, count: int = 1, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.states.count(state) >= count, timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proxy:
    """A TCP proxy on 127.0.0.1 that forwards bytes and can sever every connection."""

    target_port: int
    port: int = 0
    accepted: int = 0
    refuse_websocket: bool = False  # answer WebSocket handshakes 400, as some proxies do
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        first = await reader.read(65536)
        if self.refuse_websocket and b"transport=websocket" in first.split(b"\r\n", 1)[0]:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        up_writer.write(first)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def sever(self) -> int:
        """Cut every proxied connection at once (both sides see a reset or EOF)."""
        count = len(self._writers)
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()
        return count

    async def stop(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()


@contextlib.asynccontextmanager
async def proxy_to(port: int, *, refuse_websocket: bool = False) -> AsyncIterator[Proxy]:
    proxy = Proxy(port, refuse_websocket=refuse_websocket)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


class Subprocess:
    """A server process that prints a line with its port; stopped by its PID."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def _read_until(self, marker: str) -> str:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if marker in line:
                return line
        raise RuntimeError(f"process ended before {marker!r}:\n" + "\n".join(self.lines[-30:]))

    async def wait_line(self, marker: str, timeout: float = 15.0) -> str:
        """The first output line containing ``marker`` (read in a thread: the pipe blocks)."""
        async with asyncio.timeout(timeout):
            return await asyncio.to_thread(self._read_until, marker)

    def wait_line_sync(self, marker: str, timeout: float = 15.0) -> str:
        """``wait_line`` for synchronous fixtures; the process is killed if it is late."""
        import threading

        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        try:
            return self._read_until(marker)
        finally:
            timer.cancel()

    def drain(self) -> None:
        """Keep reading the output in the background so the pipe never fills."""
        assert self.process.stdout is not None
        stdout = self.process.stdout

        def read() -> None:
            with contextlib.suppress(Exception):
                for line in stdout:
                    self.lines.append(line.rstrip())

        import threading

        threading.Thread(target=read, daemon=True).start()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def stopping(proc: Subprocess) -> Iterator[Subprocess]:
    try:
        yield proc
    finally:
        proc.stop()


def roomcast_argv(port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "roomcast",
        "serve",
        "--port",
        str(port),
        "--task-db",
        ":memory:",
        "--log-level",
        "warning",
        *extra,
    ]


def node_argv(script: str, *args: str) -> tuple[list[str], dict[str, str]]:
    return ["node", str(NODE_DIR / script), *args], {"NODE_PATH": str(NODE_MODULES)}
