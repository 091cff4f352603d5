"""A real redis-server for the tests: started on a free port with a temporary directory.

Debian's ``redis-server`` (installed by ``make test-deps``), ended by its PID. ``running_redis``
serves the session (no persistence); ``RedisProcess`` is one a fault test may SIGKILL and
start again on the same port and directory, with or without an append-only file. Tests that
need a clean Redis flush it (``fresh_url``).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

__all__ = ["RedisProcess", "running_redis", "fresh_url"]


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
    """

    def __init__(self, *, aof: bool = False) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is missing: make test-deps installs it"
        self.binary, self.aof = binary, aof
        self.port, self.directory = _free_port(), tempfile.mkdtemp(prefix="roomcast-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
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
def running_redis(*, aof: bool = False) -> Iterator[RedisProcess]:
    """A started redis-server, stopped at the end."""
    server = RedisProcess(aof=aof)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def fresh_url(url: str) -> str:
    """``url`` after its database was emptied: every test starts from no rooms."""
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url
