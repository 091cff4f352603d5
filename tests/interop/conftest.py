"""Fixtures for the interop tests: Node peers and the Socket.IO server under test.

The server is chosen by ``ROOMCAST_INTEROP_SERVER``:

* ``node`` (the default for now): the official Node socket.io server,
  ``node_reference_server.cjs`` from the shared conformance kit;
* ``roomcast``: ``python -m roomcast.server.conformance --host 127.0.0.1 --port PORT``.

Both serve the same events (see ``/work/shared/conformance/README.md``) and print a line
containing ``listening on`` once they accept connections.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"
NODE_REFERENCE_SERVER = Path(
    os.environ.get(
        "ROOMCAST_NODE_REFERENCE_SERVER",
        "/work/shared/conformance/node_reference_server.cjs",
    )
)
DEFAULT_SERVER = "roomcast"  # the roomcast team flips this to "roomcast" once the server is ready
READY_MARKER = "listening on"
STARTUP_TIMEOUT_S = 15.0
NPM_CI_TIMEOUT_S = 300.0


def _node_modules_complete() -> bool:
    """True when every dependency of node/package.json is installed in node/node_modules."""
    dependencies = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    return all((NODE_DIR / "node_modules" / name / "package.json").is_file() for name in dependencies)


def _require_executable(name: str) -> str:
    """Full path of executable `name`; fail (never skip) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name!r} is required by the interop tests but is not on PATH")
    return path


@pytest.fixture(scope="session")
def node_peers() -> Path:
    """The folder holding the Node peers, with node_modules installed (`npm ci` if missing)."""
    _require_executable("node")
    if not _node_modules_complete():
        subprocess.run(
            [_require_executable("npm"), "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            timeout=NPM_CI_TIMEOUT_S,
        )
    return NODE_DIR


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server subprocess whose combined stdout/stderr is drained by a reader thread.

    The thread forwards lines to `lines` until the ready marker is seen, and keeps the last
    lines in `tail` for error messages, so the pipe never fills up.
    """

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()  # None: output ended
        self.tail: deque[str] = deque(maxlen=50)
        threading.Thread(target=self._drain, name=f"server-output-{self.process.pid}", daemon=True).start()

    def _drain(self) -> None:
        """Read the server's output until it closes."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.tail.append(line.rstrip("\n"))
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout: float) -> None:
        """Block until a line contains the ready marker; raise if the server exits or is late."""
        try:
            while (line := self.lines.get(timeout=timeout)) is not None:
                if READY_MARKER in line:
                    return
        except queue.Empty:
            message = f"no {READY_MARKER!r} line within {timeout} s from {self.argv}"
            raise RuntimeError(f"{message}:\n{self.output()}") from None
        message = f"server exited with {self.process.wait()} before listening: {self.argv}"
        raise RuntimeError(f"{message}:\n{self.output()}")

    def output(self) -> str:
        """The last lines the server printed."""
        return "\n".join(self.tail)

    def stop(self) -> None:
        """Terminate the process by its PID and reap it (kill if it ignores SIGTERM)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def server_command(kind: str, port: int, request: pytest.FixtureRequest) -> tuple[list[str], dict[str, str]]:
    """argv and environment that start server `kind` ("node" or "roomcast") on 127.0.0.1:`port`."""
    env = dict(os.environ)
    if kind == "roomcast":
        argv = [sys.executable, "-m", "roomcast.server.conformance", "--host", "127.0.0.1", "--port", str(port)]
        return argv, env
    if kind == "node":
        node_dir: Path = request.getfixturevalue("node_peers")
        env["NODE_PATH"] = str(node_dir / "node_modules")
        return [_require_executable("node"), str(NODE_REFERENCE_SERVER), str(port)], env
    raise pytest.UsageError(f"ROOMCAST_INTEROP_SERVER must be 'node' or 'roomcast', not {kind!r}")


@pytest.fixture(scope="session")
def sio_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT``) of the running Socket.IO server under test."""
    kind = os.environ.get("ROOMCAST_INTEROP_SERVER", DEFAULT_SERVER)
    port = _free_port()
    argv, env = server_command(kind, port, request)
    server = ServerProcess(argv, env)
    try:
        server.wait_ready(STARTUP_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
