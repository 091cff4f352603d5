"""A real redis-server for the tests: started on a free port with a temporary directory.

Debian's ``redis-server`` (installed by ``make test-deps``), no persistence, ended by its PID
when the test session ends. Tests that need a clean Redis flush it (``fresh_url``).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

__all__ = ["running_redis", "fresh_url"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def running_redis() -> Iterator[str]:
    """Start a redis-server; yields its URL."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is missing: make test-deps installs it"
    port, directory = _free_port(), tempfile.mkdtemp(prefix="roomcast-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
            "--protected-mode",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:  # wait for it to answer, bounded
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                client.connection_pool.disconnect()
                with socket.socket() as probe:  # blocks until the port accepts, or fails at once
                    probe.settimeout(0.2)
                    with contextlib.suppress(OSError):
                        probe.connect(("127.0.0.1", port))
        client.close()
        yield url
    finally:
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
