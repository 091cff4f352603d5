"""`roomcast serve` as a user runs it: a real process, flags and ROOMCAST_* variables."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request


def _serve(
    *args: str, env: dict[str, str] | None = None, seen: list[str] | None = None
) -> tuple[subprocess.Popen[str], str]:
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
        if seen is not None:
            seen.append(line)
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
        ("--sse-heartbeat", "ROOMCAST_SSE_HEARTBEAT"),
        ("--jwt-secret", "ROOMCAST_JWT_SECRET"),
        ("--jwt-public-key", "ROOMCAST_JWT_PUBLIC_KEY"),
    ]:
        assert flag in out and var in out


def test_bad_flag_value_is_refused_with_a_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--max-payload", "0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "max-payload" in result.stderr


def test_serve_without_a_key_says_it_runs_open_and_with_one_refuses_clients_without_a_token() -> None:
    seen: list[str] = []
    proc, base = _serve(seen=seen)
    try:
        assert any("running OPEN" in line for line in seen)
        with urllib.request.urlopen(f"{base}/sse?room=a", timeout=5) as r:  # open: no token needed
            assert r.status == 200
    finally:
        _stop(proc)
    seen.clear()
    proc, base = _serve(env={"ROOMCAST_JWT_SECRET": "a-secret-long-enough-for-hs256-tokens"}, seen=seen)
    try:
        assert not any("running OPEN" in line for line in seen)
        assert any("clients need a valid token (HS256)" in line for line in seen)
        try:
            urllib.request.urlopen(f"{base}/sse?room=a", timeout=5)
            raise AssertionError("a client without a token was let in")
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
            assert json.loads(refused.read())["error"]["message"] == "token required"
    finally:
        assert _stop(proc) == 0
