"""Logs people can use (``server.logs``, ``hub.connlog``): a real ``roomcast serve`` whose
stderr is a pipe nobody reads still delivers; nothing secret ever reaches its output; the
connection lines carry what an operator needs; floods of debug lines are limited.

Why real processes and pipes: the failure this guards against (a blocking ``write`` to a
full stderr pipe on the event loop's thread) only exists with a real pipe and a real
process, and a secret leak only shows in the bytes the process actually wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import jwt
import pytest
import redis
from sseclient import open_sse

from roomcast.server.logs import LogLimiter, configure_logging

PIPE_BYTES = 4096  # the smallest pipe Linux makes: filled with a few lines


def _full_pipe() -> tuple[int, int]:
    """A pipe (read fd, write fd) already full, so the next write to its write end blocks.

    Filled through a second, non-blocking open of the write end (``/proc/self/fd``): its own
    file description, so the fd handed to the server stays blocking, as a real stderr is.
    """
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    filler = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                os.write(filler, b"#" * 512)
            except BlockingIOError:
                try:
                    os.write(filler, b"#")
                except BlockingIOError:
                    break
    finally:
        os.close(filler)
    return r, w


def _drain(fd: int, into: list[bytes]) -> threading.Thread:
    """Read ``fd`` to its end on a thread (the stalled pipe, finally read)."""

    def run() -> None:
        while chunk := os.read(fd, 65536):
            into.append(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _serve(args: list[str], *, stderr: int | IO[bytes], cwd: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``roomcast serve --port 0 ARGS``; yields the process and its base URL; SIGTERM after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", "--task-db", ":memory:", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=cwd,
    )
    lines: queue.Queue[bytes] = queue.Queue()

    def read_stdout() -> None:
        for line in proc.stdout or []:
            lines.put(line)

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        while True:
            line = lines.get(timeout=20).decode()
            if "listening on" in line:
                break
        yield proc, line.rsplit(" ", 1)[1].strip()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)


async def test_a_stalled_stderr_pipe_does_not_stall_delivery(tmp_path: Path) -> None:
    """stderr is a full pipe from the first byte: every log write blocks the writer thread.
    Subscribers still get every publication, connections still open and close (each one a
    log record), and the records come out, in order, once the pipe is read."""
    r, w = _full_pipe()
    output: list[bytes] = []
    try:
        with _serve(["--log-level", "debug"], stderr=w, cwd=tmp_path) as (proc, base):
            os.close(w)
            w = -1
            async with aiohttp.ClientSession() as http:
                for _ in range(30):  # records piling up behind the stalled pipe: open, close, requests
                    async with open_sse(base, ["churn"]) as extra:
                        assert extra.status == 200
                async with open_sse(base, ["news"]) as stream:
                    assert stream.status == 200
                    assert (await stream.next(timeout=10)).event == "snapshot"  # live from here on
                    for n in range(200):
                        body = {"room": "news", "event": "n", "data": n}
                        async with http.post(f"{base}/api/publish", json=body) as answer:
                            assert answer.status == 200
                    got: list[Any] = []
                    while len(got) < 200:
                        event = await stream.next(timeout=10)
                        if event.event == "n":
                            got.append(event.json())
                    assert got == list(range(200))
            proc.send_signal(signal.SIGTERM)
            reader = _drain(r, output)  # only now: everything above ran with the pipe full
            assert proc.wait(timeout=20) == 0
            reader.join(timeout=20)
    finally:
        if w != -1:
            os.close(w)
        os.close(r)
    text = b"".join(output).lstrip(b"#").decode()
    opened = [line for line in text.splitlines() if "connection open" in line]
    assert len(opened) == 31 and "transport=sse door=native" in opened[0]
    assert "settings: host='127.0.0.1'" in text  # the start-up line, held and then written


def test_the_log_queue_is_bounded_and_says_how_many_it_dropped(tmp_path: Path) -> None:
    """With stderr stalled, logging returns at once and drops past the queue's bound; the
    count is written as a warning when the output moves again."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    r, w = _full_pipe()
    stream = os.fdopen(w, "w", buffering=1)
    output: list[bytes] = []
    try:
        pipeline = configure_logging("info", "text", stream=stream, queue_records=5)
        log = logging.getLogger("roomcast.test")
        for n in range(100):  # would block on the 2nd line without the queue
            log.info("record %d", n)
        assert pipeline.dropped >= 100 - 5 - 1  # 5 queued, perhaps 1 taken by the blocked writer
        dropped = pipeline.dropped
        reader = _drain(r, output)
        records = pipeline.handler.queue
        assert isinstance(records, queue.Queue)
        records.join()  # the writer caught up (QueueListener marks each record done)
        log.info("after the stall")
        pipeline.stop()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        stream.close()
    reader.join(timeout=10)
    os.close(r)
    lines = b"".join(output).lstrip(b"#").decode().splitlines()
    assert "record 0" in lines[0]
    assert f"{dropped} log records dropped: the log output is not keeping up" in lines[-2]
    assert "after the stall" in lines[-1]


def test_the_limiter_lets_a_burst_through_then_counts_what_it_suppressed() -> None:
    """A flood of one kind is cut to its burst; the next line allowed reports the rest; other
    kinds have buckets of their own."""
    now = [0.0]
    limiter = LogLimiter(per_second=10, burst=3, clock=lambda: now[0])
    assert [limiter.take("refused") for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert limiter.take("request") == (True, 0)
    now[0] += 0.1  # one token back
    assert limiter.take("refused") == (True, 2)
    assert limiter.take("refused") == (False, 0)


def _redis_user(url: str, password: str) -> str:
    """``url`` for a Redis ACL user with ``password`` (the session's Redis keeps its default
    user open, so other tests are unaffected)."""
    client = redis.Redis.from_url(url)
    try:
        client.acl_setuser(
            "roomcast-logs",
            enabled=True,
            passwords=[f"+{password}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
    finally:
        client.close()
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=f"roomcast-logs:{password}@{parts.hostname}:{parts.port}").geturl()


async def test_no_secret_reaches_the_log_and_json_lines_describe_each_connection(
    tmp_path: Path, redis_url: str
) -> None:
    """Every secret set, debug on, JSON lines: tokens go in headers and query strings, on
    accepted and refused requests, over SSE, /ws and Socket.IO, plus a malformed request
    head carrying one. Not one of them appears in anything the process wrote."""
    jwt_secret = "jwt-secret-4f1c9a7e2b6d8053aa91c2e4f7b0d6e1"
    api_key = "api-key-9d2e71c04b8f"
    metrics_key = "metrics-key-51ab93e7c2"
    dashboard_key = "dashboard-key-0e6a2f84b7"
    redis_password = "redis-pw-7c3e19a0d4"
    token = jwt.encode({"sub": "alice", "rooms": {"subscribe": ["*"]}}, jwt_secret, algorithm="HS256")
    forged = jwt.encode({"sub": "mallory"}, "not-the-secret-at-all-but-long-enough-0", algorithm="HS256")
    junk = "junk-token-6e0b2f9d81"
    secrets = [jwt_secret, api_key, metrics_key, dashboard_key, redis_password, token, forged, junk]
    out = tmp_path / "stderr.log"
    args = ["--log-level", "debug", "--log-format", "json", "--jwt-secret", jwt_secret]
    args += ["--api-key", api_key, "--metrics-key", metrics_key, "--dashboard-key", dashboard_key]
    args += ["--redis", _redis_user(redis_url, redis_password)]
    with out.open("wb") as sink, _serve(args, stderr=sink, cwd=tmp_path) as (proc, base):
        async with aiohttp.ClientSession() as http:
            async with open_sse(base, ["r"], extra_query={"token": token}) as ok:
                assert ok.status == 200
                assert (await ok.next(timeout=10)).event == "snapshot"
                async with http.post(
                    f"{base}/api/publish", json={"room": "r", "event": "e"}, headers={"X-API-Key": api_key}
                ) as answer:
                    assert answer.status == 200
                while (await ok.next(timeout=10)).event != "e":
                    pass
            async with open_sse(base, ["r"], headers={"Authorization": f"Bearer {token}"}) as ok2:
                assert ok2.status == 200
            for bad in (forged, junk):
                async with open_sse(base, ["r"], extra_query={"token": bad}) as refused:
                    assert refused.status == 401
                async with open_sse(base, ["r"], headers={"Authorization": f"Bearer {bad}"}) as refused:
                    assert refused.status == 401
            ws_url = base.replace("http", "ws", 1)
            async with http.ws_connect(f"{ws_url}/ws?token={token}", protocols=["roomcast.v1"]) as ws:
                await ws.close()
            with pytest.raises(aiohttp.WSServerHandshakeError):
                async with http.ws_connect(f"{ws_url}/ws?token={forged}", protocols=["roomcast.v1"]):
                    pass
            async with http.get(f"{base}/socket.io/?EIO=4&transport=polling&token={junk}") as answer:
                assert answer.status == 200
            for key in (api_key, junk):
                async with http.post(
                    f"{base}/api/publish?token={junk}",
                    json={"room": "r", "event": "e"},
                    headers={"Authorization": f"Bearer {key}"},
                ) as answer:
                    assert answer.status == (200 if key == api_key else 401)
            for key in (metrics_key, junk):
                async with http.get(f"{base}/metrics", headers={"Authorization": f"Bearer {key}"}) as answer:
                    assert answer.status == (200 if key == metrics_key else 401)
            for key in (dashboard_key, junk):  # the login form posts the key in the body
                async with http.post(f"{base}/dashboard/login", data={"key": key}, allow_redirects=False) as answer:
                    assert answer.status == (303 if key == dashboard_key else 401)
        host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
        with socket.create_connection((host or "", port or 0), timeout=5) as raw:  # a head httptools refuses
            raw.sendall(f"GET /sse?token={token} HTTP/1.1\r\nX-Token {api_key}\r\n\r\n".encode())
            assert raw.recv(100).startswith(b"HTTP/1.1 400")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    written = out.read_text()
    for secret in secrets:
        assert secret not in written, f"a secret reached the log: {secret[:8]}..."
    lines = [json.loads(line) for line in written.splitlines()]
    settings = next(line["message"] for line in lines if line["message"].startswith("settings: "))
    for secret_setting in ("jwt_secret", "api_key", "metrics_key", "dashboard_key"):
        assert f"{secret_setting}='***'" in settings
    assert ":***@" in settings  # the Redis URL, through redact()
    closes = [line for line in lines if line.get("event") == "close"]
    sse = next(c for c in closes if c["transport"] == "sse" and c["user"] == "alice")
    assert sse["door"] == "native" and sse["rooms"] == 1 and sse["duration"] >= 0 and sse["reason"]
    assert any(c["transport"] == "ws" and c["user"] == "alice" for c in closes)
    assert any(line.get("event") == "refused" and line.get("status") == 401 for line in lines)
    assert any(line.get("event") == "refused" and line.get("what") == "bad HTTP request" for line in lines)
    assert any(line.get("event") == "request" and line.get("path") == "/api/publish" for line in lines)
