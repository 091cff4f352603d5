"""`roomcast serve` as a user runs it: a real process, flags and ROOMCAST_* variables."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request


def _serve(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    while True:
        line = lines.get(timeout=15)
        if "listening on" in line:
            return proc, line.rsplit(" ", 1)[1].strip()


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=10)


def test_serve_reads_flags_and_environment_and_stops_on_sigterm() -> None:
    proc, base = _serve("--ping-timeout", "9", env={"ROOMCAST_PING_INTERVAL": "7", "ROOMCAST_MAX_PAYLOAD": "5000"})
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200 and r.read() == b"ok"
        with urllib.request.urlopen(f"{base}/socket.io/?EIO=4&transport=polling", timeout=5) as r:
            handshake = json.loads(r.read()[1:])
        assert (handshake["pingInterval"], handshake["pingTimeout"], handshake["maxPayload"]) == (7000, 9000, 5000)
    finally:
        assert _stop(proc) == 0


def test_help_lists_every_option_with_its_environment_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for flag, var in [
        ("--host", "ROOMCAST_HOST"),
        ("--port", "ROOMCAST_PORT"),
        ("--cors-origin", "ROOMCAST_CORS_ORIGIN"),
        ("--ping-interval", "ROOMCAST_PING_INTERVAL"),
        ("--ping-timeout", "ROOMCAST_PING_TIMEOUT"),
        ("--max-payload", "ROOMCAST_MAX_PAYLOAD"),
        ("--log-level", "ROOMCAST_LOG_LEVEL"),
    ]:
        assert flag in out and var in out


def test_bad_flag_value_is_refused_with_a_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--max-payload", "0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "max-payload" in result.stderr
