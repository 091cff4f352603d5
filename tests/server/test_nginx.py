"""roomcast behind a real nginx running the configuration docs/deploy.md shows.

``tests/nginxserver.py`` starts Debian's nginx on a free port with the page's tested block
(round-robin ``upstream``, no ``ip_hash``) in front of two ``roomcast serve --redis``
processes on the session's redis-server. What an operator relies on is checked through it:

* Socket.IO with the official ``socket.io-client``, over polling (its requests alternate
  between the nodes: the access log's ``upstream=`` shows both, and forwarding between nodes
  keeps the session) and upgraded to WebSocket;
* SSE, unbuffered: the heartbeats and a publication arrive while the stream stays open;
* ``/ws`` with a browser ``Origin`` of the nginx address: nginx sends ``Host: roomcast``, and
  the same-origin check passes only because ``X-Forwarded-Host`` from a trusted proxy counts;
* the API with its key, and without one: refused, naming the original client address taken
  from ``X-Forwarded-For``;
* the access log holds no ``?token=`` value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nginxserver import NginxProcess, running_nginx
from redisserver import fresh_url
from test_no_sticky_sessions import CLIENT, SCENARIO
from test_task_restart import serving

from roomcast import Publisher

WAIT = 20.0
KEY = "nginx-test-key"


@contextlib.asynccontextmanager
async def deployment(tmp_path: Path, redis_url: str, *extra: str) -> AsyncIterator[tuple[NginxProcess, list[str]]]:
    """Two nodes sharing Redis behind nginx; yields nginx and the nodes' direct URLs."""
    url = fresh_url(redis_url)
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(serving(tmp_path / f"node-{n}.db", "--redis", url, *extra))
            for n in range(2)
        ]
        bases = [base for _, base in nodes]
        nginx = stack.enter_context(_nginx([base.removeprefix("http://") for base in bases]))
        yield nginx, bases


@contextlib.contextmanager
def _nginx(upstreams: list[str]) -> Iterator[NginxProcess]:
    with running_nginx(upstreams) as nginx:
        yield nginx


async def _scenario(options: dict[str, Any]) -> list[dict[str, Any]]:
    if not CLIENT.is_file():
        pytest.fail("needs tests/interop/node/node_modules (run `make test-deps`)")
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(SCENARIO),
        "rooms",
        json.dumps({"timeoutMs": 15_000, **options}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ),
    )
    output, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, output.decode()
    return [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("transports", [["polling"], ["polling", "websocket"]], ids=["polling", "upgrade"])
async def test_socketio_through_nginx_round_robin_over_two_nodes(
    tmp_path: Path, redis_url: str, transports: list[str]
) -> None:
    async with deployment(tmp_path, redis_url, "--api-key", KEY) as (nginx, bases):
        seen = await _scenario(
            {"url": nginx.url, "apis": bases, "room": "behind-nginx", "transports": transports, "apiKey": KEY}
        )
        assert [o["data"] for o in seen if o["type"] == "received"] == [1, 2, 3, 4, 5]
        final = next(o["transport"] for o in seen if o["type"] == "final-transport")
        assert final == transports[-1]
        polls = [line for line in nginx.access_lines() if "/socket.io/" in line]
        served_by = {line.rsplit("upstream=", 1)[1] for line in polls}
        assert served_by == {base.removeprefix("http://") for base in bases}, polls  # round-robin: both nodes
        assert all(" 200 " in line or " 101 " in line for line in polls), polls


async def test_sse_streams_unbuffered_through_nginx_with_heartbeats(tmp_path: Path, redis_url: str) -> None:
    async with (
        deployment(tmp_path, redis_url, "--api-key", KEY, "--sse-heartbeat", "0.3") as (nginx, bases),
        aiohttp.ClientSession() as http,
        http.get(f"{nginx.url}/sse?room=sse-room", headers={"Accept": "text/event-stream"}) as stream,
    ):
        assert stream.status == 200
        async with asyncio.timeout(WAIT):
            seen = b""
            while seen.count(b": ping") < 2:  # two heartbeats through nginx, as they are sent
                seen += await stream.content.readany()
            await Publisher(nginx.url, api_key=KEY).apublish("sse-room", "news", {"via": "nginx"})
            while b'"via":"nginx"' not in seen.replace(b" ", b""):
                seen += await stream.content.readany()


async def test_ws_with_the_pages_own_origin_passes_the_same_origin_check(tmp_path: Path, redis_url: str) -> None:
    """nginx sends ``Host: roomcast`` (``$proxy_host``); the browser's ``Origin`` names nginx."""
    async with deployment(tmp_path, redis_url, "--api-key", KEY) as (nginx, _), aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{nginx.url}/ws", protocols=["roomcast.v1"], origin=nginx.url) as ws:
            assert ws.protocol == "roomcast.v1"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{nginx.url}/ws", protocols=["roomcast.v1"], origin="http://evil.example")
        assert refused.value.status == 403
        async with http.get(
            f"{nginx.url}/socket.io/?EIO=4&transport=polling", headers={"Origin": nginx.url}
        ) as response:
            assert response.status == 200 and (await response.text()).startswith("0")


async def test_the_api_through_nginx_needs_its_key_and_sees_the_original_client(tmp_path: Path, redis_url: str) -> None:
    async with deployment(tmp_path, redis_url, "--api-key", KEY) as (nginx, _):
        position = await Publisher(nginx.url, api_key=KEY).apublish("api-room", "news", 1)
        assert position.offset == 1
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{nginx.url}/api/publish", json={"room": "api-room", "event": "e"}) as response:
                assert response.status == 401
    async with deployment(tmp_path, redis_url) as (nginx, _), aiohttp.ClientSession() as http:
        # Keyless: refused through nginx even though nginx connects from loopback, and the
        # address the server sees is the client's, from the trusted X-Forwarded-For chain.
        headers = {"X-Forwarded-For": "203.0.113.9"}
        async with http.post(f"{nginx.url}/api/publish", json={"room": "r", "event": "e"}, headers=headers) as response:
            assert response.status == 403
            message = (await response.json())["error"]["message"]
        assert "this client (203.0.113.9) is not on this machine" in message


async def test_the_access_log_holds_no_token(tmp_path: Path, redis_url: str) -> None:
    secret = "eyJhbGciOiJIUzI1NiJ9.secret-token-value"
    async with deployment(tmp_path, redis_url, "--api-key", KEY) as (nginx, _), aiohttp.ClientSession() as http:
        for path in (f"/sse?room=r&token={secret}", f"/socket.io/?EIO=4&transport=polling&token={secret}"):
            async with http.get(nginx.url + path) as response:
                if path.startswith("/socket.io/"):
                    await response.read()
        async with http.ws_connect(f"{nginx.url}/ws?token={secret}", protocols=["roomcast.v1"]):
            pass
        async with asyncio.timeout(WAIT):
            while not any("/ws " in line for line in nginx.access_lines()):  # written as the request ends
                await asyncio.sleep(0)
        log = "\n".join(nginx.access_lines())
    assert "/sse " in log and "/socket.io/ " in log and "/ws " in log
    assert "secret-token-value" not in log and "token=" not in log
