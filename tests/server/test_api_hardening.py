"""The backend API against a hostile client: each test sends what an attacker would.

A real server on the native door, spoken to over real sockets on 127.0.0.1: raw HTTP where
the attack is a header a library would not let us forge (``Host``, no ``Host``), aiohttp
elsewhere. Each refusal is the API's JSON error, and the server carries on serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from servers import RunningServer, running
from sseclient import open_sse

from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings

KEY = "k-0123456789abcdef"
SECRET = "hardening-test-secret-long-enough-for-hs256"
PUBLISH = json.dumps({"room": "a", "event": "e"}).encode()
FIELDS = {"status": "state"}


async def _raw(
    srv: RunningServer,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    *,
    host: str | bool = True,
) -> tuple[int, Any]:
    """One request over a fresh socket, the headers exactly as given. ``host``: ``True`` for
    the server's own address, ``False`` for no Host header at all, or the header's value."""
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not False:
        lines.append(f"Host: {f'{srv.host}:{srv.port}' if host is True else host}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    try:
        async with asyncio.timeout(5):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload) if payload else None


async def _call(
    srv: RunningServer, method: str, path: str, *, key: str | None = None, **kwargs: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    headers.update(kwargs.pop("headers", {}))
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{srv.url}{path}", headers=headers, **kwargs) as response:
            return response.status, await response.json(content_type=None)


def _refused(answer: tuple[int, Any], status: int, code: str, *words: str) -> None:
    got, body = answer
    assert got == status, body
    assert body["error"]["code"] == code, body
    for word in words:
        assert word in body["error"]["message"], body


async def _published(srv: RunningServer, room: str = "a") -> int:
    return (await srv.hub.broker.position(room)).offset


@pytest.fixture
async def keyless() -> AsyncIterator[RunningServer]:
    async with running(App(Hub(), Settings())) as srv:
        yield srv


@pytest.fixture
async def keyed() -> AsyncIterator[RunningServer]:
    async with running(App(Hub(), Settings(api_key=KEY))) as srv:
        yield srv


# -- 1. numeric query parameters --------------------------------------------------------------

BAD_NUMBERS = {
    "5000-digits": "9" * 5000,
    "superscript-two": "%C2%B2",  # str.isdigit("²") is True, int("²") raises
    "arabic-indic": "%D9%A3",  # another digit to isdigit, not to the API
    "negative": "-1",
    "empty": "",
    "signed": "+1",
    "spaced": "%201",
    "exponent": "1e3",
    "over-int64": str(2**63),
}


@pytest.mark.parametrize("value", BAD_NUMBERS.values(), ids=BAD_NUMBERS.keys())
@pytest.mark.parametrize(
    ("path", "name"),
    [("/api/history?room=lobby&since=", "since"), ("/api/tasks?limit=", "limit")],
    ids=["since", "limit"],
)
async def test_a_bad_number_in_the_query_is_a_400_and_the_server_carries_on(
    keyed: RunningServer, path: str, name: str, value: str
) -> None:
    answer = await _raw(keyed, "GET", path + value, [("Authorization", f"Bearer {KEY}")])
    _refused(answer, 400, "bad_request", f"'{name}' must be an integer")
    status, body = await _raw(keyed, "GET", path + "1", [("Authorization", f"Bearer {KEY}")])
    assert status == 200, body  # the next request is served as ever


async def test_limit_outside_its_range_is_a_400_and_leading_zeros_are_a_number(keyed: RunningServer) -> None:
    auth = [("Authorization", f"Bearer {KEY}")]
    for limit in ("0", "1001", "0" * 5000):
        _refused(await _raw(keyed, "GET", f"/api/tasks?limit={limit}", auth), 400, "bad_request", "'limit'")
    status, body = await _raw(keyed, "GET", f"/api/tasks?limit={'0' * 5000}7", auth)
    assert status == 200 and body["tasks"] == []


# -- 2. the keyless API stays local -------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Forwarded-For", "203.0.113.9"),
        ("Forwarded", "for=203.0.113.9;proto=https"),
        ("X-Real-IP", "203.0.113.9"),
        ("X-Forwarded-Host", "roomcast.example.com"),
    ],
)
async def test_keyless_api_refuses_a_request_relayed_by_a_proxy_on_this_host(
    keyless: RunningServer, header: str, value: str
) -> None:
    """An nginx on the same machine makes every client a loopback peer; its headers give it away."""
    answer = await _raw(
        keyless, "POST", "/api/publish", [(header, value), ("Content-Type", "application/json")], PUBLISH
    )
    _refused(answer, 403, "forbidden", "--api-key", header)
    _refused(await _raw(keyless, "GET", "/api/rooms", [(header, value)]), 403, "forbidden", "--api-key")
    assert await _published(keyless) == 0
    status, _ = await _raw(keyless, "POST", "/api/publish", [("Content-Type", "application/json")], PUBLISH)
    assert status == 200 and await _published(keyless) == 1


@pytest.mark.parametrize(
    "host",
    [
        "rebind.attacker.example",
        "rebind.attacker.example:8000",
        "127.0.0.1.nip.io",
        "localhost.attacker.example",
        "127.0.0.1@attacker.example",
        "127.0.0.1/x",
        "[::1]x",
        "127.0.0.1:99999",
        "0.0.0.0",
        "",
        False,
    ],
    ids=repr,
)
async def test_keyless_api_refuses_a_host_that_is_not_a_loopback_name(keyless: RunningServer, host: str | bool) -> None:
    """DNS rebinding: a page on attacker.example re-resolves its name to 127.0.0.1 and calls
    the API as same-origin; only the Host header still says which site the browser meant."""
    answer = await _raw(keyless, "POST", "/api/publish", [("Content-Type", "application/json")], PUBLISH, host=host)
    _refused(answer, 403, "forbidden", "--api-key", "Host")
    assert await _published(keyless) == 0


async def test_keyless_api_answers_the_loopback_names(keyless: RunningServer) -> None:
    port = keyless.port
    for n, host in enumerate(
        [
            "localhost",
            f"localhost:{port}",
            f"LOCALHOST:{port}",
            f"127.0.0.1:{port}",
            "127.1.2.3",
            f"[::1]:{port}",
            "[::1]",
        ],
        start=1,
    ):
        status, body = await _raw(
            keyless, "POST", "/api/publish", [("Content-Type", "application/json")], PUBLISH, host=host
        )
        assert status == 200 and body["offset"] == n, (host, body)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://evil.example:8000",
        "null",
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.example",
        "http://127.0.0.1:8000/path",
        "file://",
        "ws://localhost",
    ],
)
async def test_keyless_api_refuses_a_page_on_another_origin(keyless: RunningServer, origin: str) -> None:
    """CSRF: a page anywhere can make the browser POST to 127.0.0.1 (text/plain needs no
    preflight, and the answer need not be readable for the harm to be done)."""
    for content_type in ("text/plain", "application/json"):
        answer = await _raw(
            keyless, "POST", "/api/publish", [("Origin", origin), ("Content-Type", content_type)], PUBLISH
        )
        _refused(answer, 403, "forbidden", "--api-key", "origin")
    _refused(await _raw(keyless, "GET", "/api/rooms", [("Origin", origin)]), 403, "forbidden")
    assert await _published(keyless) == 0


async def test_keyless_api_answers_a_page_served_from_this_machine(keyless: RunningServer) -> None:
    for n, origin in enumerate(["http://localhost:3000", "http://127.0.0.1", "https://[::1]:8443"], start=1):
        status, body = await _raw(
            keyless, "POST", "/api/publish", [("Origin", origin), ("Content-Type", "application/json")], PUBLISH
        )
        assert status == 200 and body["offset"] == n, (origin, body)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/json-seq",
        "application/jsonx",
        "text/json",
    ],
)
@pytest.mark.parametrize("with_key", [False, True], ids=["keyless", "keyed"])
async def test_every_post_body_must_be_json(content_type: str | None, with_key: bool) -> None:
    """A page may send a simple request (text/plain, a form) anywhere without asking; a JSON
    body makes the browser ask first, with a preflight this API never grants."""
    async with running(App(Hub(), Settings(api_key=KEY if with_key else None))) as srv:
        auth = [("Authorization", f"Bearer {KEY}")] if with_key else []
        typed = [("Content-Type", content_type)] if content_type is not None else []
        for path, body in [("/api/publish", PUBLISH), ("/api/tasks", b'{"kind": "k"}')]:
            answer = await _raw(srv, "POST", path, auth + typed, body)
            _refused(answer, 415, "unsupported_media_type", "Content-Type: application/json")
        assert await _published(srv) == 0
        status, listed = await _raw(srv, "GET", "/api/tasks", auth)
        assert status == 200 and listed["tasks"] == []
        for n, json_type in enumerate(
            ["application/json", "application/json; charset=utf-8", "Application/JSON ;charset=UTF-8"], start=1
        ):
            status, body = await _raw(srv, "POST", "/api/publish", [*auth, ("Content-Type", json_type)], PUBLISH)
            assert status == 200 and body["offset"] == n


async def test_with_a_key_the_key_decides_not_the_headers(keyed: RunningServer) -> None:
    hostile = [
        ("X-Forwarded-For", "203.0.113.9"),
        ("Origin", "https://app.example"),
        ("Content-Type", "application/json"),
    ]
    _refused(
        await _raw(keyed, "POST", "/api/publish", hostile, PUBLISH, host="roomcast.example.com"),
        401,
        "unauthorized",
        "API key required",
    )
    status, body = await _raw(
        keyed, "POST", "/api/publish", [*hostile, ("X-API-Key", KEY)], PUBLISH, host="roomcast.example.com"
    )
    assert status == 200 and body["offset"] == 1


# -- 3. poll URLs ---------------------------------------------------------------------------------


async def _create_polled(srv: RunningServer, url: str, key: str | None = None) -> tuple[int, Any]:
    poll = {"url": url, "interval": 60, "retries": 0, "request_timeout": 1, "fields": FIELDS}
    return await _call(srv, "POST", "/api/tasks", key=key, json={"kind": "render", "poll": poll})


async def _task_count(srv: RunningServer, key: str | None = None) -> int:
    status, listed = await _call(srv, "GET", "/api/tasks", key=key)
    assert status == 200
    return len(listed["tasks"])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/admin",  # a service that trusts its own machine
        "http://[::1]:1/",
        "http://localhost:1/jobs/1",
    ],
)
async def test_a_keyless_server_follows_no_poll_url_unless_told(keyless: RunningServer, url: str) -> None:
    """Without a key any local program (or a page that got past the checks above) could make
    the server fetch internal addresses: by default it fetches none."""
    _refused(await _create_polled(keyless, url), 400, "bad_request", "--poll-allow")
    assert await _task_count(keyless) == 0 and not keyless.app.pollers.following


async def test_poll_allow_limits_poll_urls_to_its_prefixes() -> None:
    allow = ("http://127.0.0.1:1/jobs/", "HTTPS://127.0.0.2")  # nothing listens on either
    async with running(App(Hub(), Settings(poll_allow=allow))) as srv:
        for url in [
            "http://127.0.0.1:1/admin",
            "http://127.0.0.1:1/jobs",
            "http://127.0.0.1:1/jobsX/1",
            "http://127.0.0.1:1/jobs/../admin",
            "http://127.0.0.1:1/jobs/%2e%2E/admin",
            "http://127.0.0.1:1/jobs/..%2fadmin",
            "http://127.0.0.1:1/jobs/.%2E\\admin",
            "http://127.0.0.1:2/jobs/1",
            "https://127.0.0.1:1/jobs/1",
            "http://localhost:1/jobs/1",
            "http://127.0.0.2/x",
            "https://127.0.0.20/x",
            "https://127.0.0.2:444/x",
        ]:
            _refused(await _create_polled(srv, url), 400, "bad_request", "--poll-allow")
        assert await _task_count(srv) == 0
        for url in ["http://127.0.0.1:1/jobs/7", "https://127.0.0.2:443/v1/render?id=7"]:
            status, task = await _create_polled(srv, url)
            assert status == 201 and task["status"] == "running", (url, task)
        assert await _task_count(srv) == 2


async def test_a_keyed_server_follows_any_poll_url_unless_a_list_is_given() -> None:
    async with running(App(Hub(), Settings(api_key=KEY))) as srv:
        status, _ = await _create_polled(srv, "http://127.0.0.1:1/anything", key=KEY)
        assert status == 201
    async with running(App(Hub(), Settings(api_key=KEY, poll_allow=("http://127.0.0.1:1/jobs/",)))) as srv:
        _refused(await _create_polled(srv, "http://127.0.0.1:1/anything", key=KEY), 400, "bad_request", "--poll-allow")
        assert (await _create_polled(srv, "http://127.0.0.1:1/jobs/1", key=KEY))[0] == 201
    async with running(App(Hub(), Settings(poll_allow=("*",)))) as srv:  # keyless, told: any
        assert (await _create_polled(srv, "http://127.0.0.1:1/anything"))[0] == 201


@pytest.mark.parametrize(
    "entry", ["api.example.com", "ftp://x/", "https://", "https://u:p@x/", "https://x/?q=1", "https://x:99999/", ""]
)
def test_a_bad_poll_allow_entry_is_refused_when_the_server_is_built(entry: str) -> None:
    with pytest.raises(ValueError, match="--poll-allow"):
        App(Hub(), Settings(poll_allow=(entry,)))


def test_poll_allow_from_the_command_line_and_the_environment() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", "--poll-allow", "api.example"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "--poll-allow" in bad.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "ROOMCAST_POLL_ALLOW": "http://127.0.0.1:1/a/ http://127.0.0.1:1/b/"},
    )
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # in a thread: the server never blocks on a full pipe, the test never on a mute one
        for line in proc.stdout or []:
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        base = ""
        while not base:
            line = lines.get(timeout=15)
            if "listening on" in line:
                base = line.rsplit(" ", 1)[1].strip()

        def create(url: str) -> int:
            body = json.dumps({"kind": "k", "poll": {"url": url, "interval": 60, "fields": FIELDS}}).encode()
            request = urllib.request.Request(
                f"{base}/api/tasks", data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    return int(answer.status)
            except urllib.error.HTTPError as refused:
                return refused.code

        assert [create(f"http://127.0.0.1:1/{p}/1") for p in ("a", "b", "c")] == [201, 201, 400]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- 4. authorization before existence -----------------------------------------------------------


def _token(**claims: Any) -> str:
    return jwt.encode({"sub": "ann", "exp": time.time() + 60, **claims}, SECRET, algorithm="HS256")


async def _events_status(srv: RunningServer, task_id: str, token: str | None = None) -> int:
    query = f"?token={token}" if token is not None else ""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{srv.url}/tasks/{task_id}/events{query}") as response:
            return response.status


async def test_task_events_check_the_token_before_the_task_exists() -> None:
    """A probe for task ids gets the same answer for a task that exists as for one that does
    not, until it holds a token that may read the task's room."""
    async with running(App(Hub(), Settings(jwt_secret=SECRET))) as srv:
        status, task = await _call(srv, "POST", "/api/tasks", json={"kind": "render"})
        assert status == 201
        real, ghost = task["id"], "0" * len(task["id"])
        other_rooms = _token(rooms={"subscribe": ["chat:*"]})
        wrong_secret = jwt.encode({"sub": "ann", "exp": time.time() + 60}, "x" * 40, algorithm="HS256")
        for token, refused in [(None, 401), ("not-a-jwt", 401), (wrong_secret, 401), (other_rooms, 403)]:
            assert [await _events_status(srv, real, token), await _events_status(srv, ghost, token)] == [
                refused,
                refused,
            ], token
        allowed = _token(rooms={"subscribe": ["task:*"]})
        assert await _events_status(srv, ghost, allowed) == 404
        async with open_sse(srv.url, [], path=f"/tasks/{real}/events", extra_query={"token": allowed}) as stream:
            assert stream.status == 200 and (await stream.next()).event == "snapshot"


async def test_every_task_route_checks_the_key_before_the_task_exists(keyed: RunningServer) -> None:
    status, task = await _call(keyed, "POST", "/api/tasks", key=KEY, json={"kind": "render"})
    assert status == 201
    for task_id in (task["id"], "0" * len(task["id"])):
        for method, action in [
            ("GET", ""),
            ("POST", "/progress"),
            ("POST", "/complete"),
            ("POST", "/fail"),
            ("POST", "/stop"),
            ("POST", "/cancel"),
        ]:
            for key in (None, "wrong"):
                answer = await _call(keyed, method, f"/api/tasks/{task_id}{action}", key=key, json={})
                _refused(answer, 401, "unauthorized")
