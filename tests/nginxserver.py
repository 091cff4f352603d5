"""A real nginx for the tests, running the configuration that docs/deploy.md shows.

Debian's ``nginx`` (installed by ``make test-deps``), started in the foreground on a free port
with a temporary directory for its pid file, logs and buffers, and ended by its PID. The
``server``/``upstream`` configuration is not written here: ``deploy_config`` reads the block
marked as tested in docs/deploy.md and changes only what a test must (the listening port,
the upstream addresses, the log path), each change checked to apply exactly once, so the page
and the test cannot drift apart silently.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["DEPLOY_DOC", "NginxProcess", "deploy_config", "fastapi_config", "running_nginx"]

DEPLOY_DOC = Path(__file__).parents[1] / "docs" / "deploy.md"
_TESTED_BLOCK = re.compile(r"<!-- tested: [^>]*-->\n```nginx\n(.*?)```", re.S)
_FASTAPI_BLOCK = re.compile(r"<!-- tested-fastapi: [^>]*-->\n```nginx\n(.*?)```", re.S)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _replace_once(text: str, old: str, new: str) -> str:
    count = text.count(old)
    assert count == 1, f"docs/deploy.md's nginx block should hold {old!r} once, holds it {count} times"
    return text.replace(old, new)


def deploy_config(upstreams: list[str], port: int, access_log: Path) -> str:
    """The tested nginx block of docs/deploy.md, listening on ``port`` and proxying to
    ``upstreams`` (``host:port`` each), its access log at ``access_log``."""
    found = _TESTED_BLOCK.search(DEPLOY_DOC.read_text())
    assert found, "docs/deploy.md lost its tested nginx block"
    config = found.group(1)
    servers = "".join(f"    server {upstream};\n" for upstream in upstreams)
    config = _replace_once(config, "    server 127.0.0.1:8000;\n    server 127.0.0.1:8001;\n", servers)
    config = _replace_once(config, "listen 80;", f"listen 127.0.0.1:{port};")
    return _replace_once(config, "/var/log/nginx/roomcast.access.log", str(access_log))


def fastapi_config(upstreams: list[str], port: int, access_log: Path) -> str:
    """docs/deploy.md's block for a FastAPI app with the in-process native door: ``upstreams``
    is ``[uvicorn, native door]`` (``host:port`` each)."""
    found = _FASTAPI_BLOCK.search(DEPLOY_DOC.read_text())
    assert found, "docs/deploy.md lost its tested FastAPI nginx block"
    api, native = upstreams
    config = _replace_once(found.group(1), "    server 127.0.0.1:8000;\n", f"    server {api};\n")
    config = _replace_once(config, "    server 127.0.0.1:8001;\n", f"    server {native};\n")
    config = _replace_once(config, "listen 80;", f"listen 127.0.0.1:{port};")
    return _replace_once(config, "/var/log/nginx/roomcast.access.log", str(access_log))


class NginxProcess:
    """One nginx master we started (``daemon off``), with its workers.

    Attributes:
        url: ``http://127.0.0.1:PORT``, where it listens.
        access_log: the file the deploy config's access log goes to.
    """

    def __init__(self, upstreams: list[str], config: Callable[[list[str], int, Path], str] = deploy_config) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        assert os.access(binary, os.X_OK), "nginx is missing: make test-deps installs it"
        self.binary = binary
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = Path(tempfile.mkdtemp(prefix="roomcast-nginx-"))
        self.access_log = self.directory / "access.log"
        self.error_log = self.directory / "error.log"
        temp = self.directory / "temp"
        temp.mkdir()
        user = "user root root;\n" if os.geteuid() == 0 else ""  # workers can write the temp dir
        (self.directory / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.directory}/nginx.pid;\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
            f"  fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
            + config(upstreams, self.port, self.access_log)
            + "}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = str(self.directory / "nginx.conf")
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.directory), "-c", conf, "-e", str(self.error_log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:  # wait for the port, bounded; a config error ends the process first
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None
                raise AssertionError(f"nginx exited: {self.proc.stderr.read().decode()}{self.errors()}")
            with socket.socket() as probe:
                probe.settimeout(0.2)
                try:
                    probe.connect(("127.0.0.1", self.port))
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    # connect() refused at once: the next attempt is bounded by the deadline
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(timeout=0.05)

    def errors(self) -> str:
        return self.error_log.read_text() if self.error_log.exists() else ""

    def access_lines(self) -> list[str]:
        """The access log so far. nginx writes each line as the request ends, unbuffered."""
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def access_lines_once(self, *paths: str, timeout: float = 10.0) -> list[str]:
        """The access log once it has a line for each of ``paths``: a proxied WebSocket's line
        is written when nginx has seen both sides close, a moment after the client has."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_lines()
            if all(any(f" {path}" in line for line in lines) for path in paths) or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)  # nginx says nothing when it writes its log: the file is read again

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers end with the master
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_nginx(
    upstreams: list[str], config: Callable[[list[str], int, Path], str] = deploy_config
) -> Iterator[NginxProcess]:
    """nginx with a deploy config (``deploy_config`` unless told) in front of ``upstreams``,
    stopped at the end."""
    server = NginxProcess(upstreams, config)
    try:
        server.start()
        yield server
    finally:
        server.stop()
