"""Bad input of every kind: the request or connection at fault is refused with a reason,
every other connection carries on (checked each time with a healthy client's echo)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from rawclient import RawWebSocket, call, open_websocket, socketio_connect
from servers import RunningServer, running

from roomcast.protocol import websocket as wsproto
from roomcast.server.app import App


@pytest.fixture
async def srv(make_app: Callable[..., App]) -> AsyncIterator[RunningServer]:
    async with running(make_app(max_payload=10_000, cors_origins=("https://good.example",))) as s:
        yield s


@pytest.fixture
async def healthy(srv: RunningServer) -> AsyncIterator[RawWebSocket]:
    client = await socketio_connect(srv.host, srv.port)
    yield client
    assert await call(client, 99, "echo", "unaffected") == ["unaffected"]
    client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def _handshake(http: aiohttp.ClientSession, srv: RunningServer) -> str:
    async with http.get(f"{srv.url}/socket.io/?EIO=4&transport=polling") as r:
        body = await r.text()
    assert r.status == 200 and body.startswith("0{")
    sid: str = __import__("json").loads(body[1:])["sid"]
    return sid


async def _status(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


@pytest.mark.parametrize(
    ("query", "code", "message"),
    [
        ("transport=polling", 5, "Unsupported protocol version"),
        ("EIO=3&transport=polling", 5, "Unsupported protocol version"),
        ("EIO=4", 0, "Transport unknown"),
        ("EIO=4&transport=carrier-pigeon", 0, "Transport unknown"),
        ("EIO=4&transport=polling&sid=nope", 1, "Session ID unknown"),
    ],
)
async def test_bad_handshake_query_is_400_with_the_official_code(
    srv: RunningServer, healthy: RawWebSocket, http: aiohttp.ClientSession, query: str, code: int, message: str
) -> None:
    assert await _status(http, "GET", f"{srv.url}/socket.io/?{query}") == (400, {"code": code, "message": message})


async def test_wrong_method_is_400(srv: RunningServer, healthy: RawWebSocket, http: aiohttp.ClientSession) -> None:
    url = f"{srv.url}/socket.io/?EIO=4&transport=polling"
    assert await _status(http, "POST", url, data="40") == (400, {"code": 2, "message": "Bad handshake method"})
    sid = await _handshake(http, srv)
    assert (await _status(http, "PUT", f"{url}&sid={sid}", data="40"))[0] == 400


async def test_malformed_post_closes_that_session_only(
    srv: RunningServer, healthy: RawWebSocket, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    sid = await _handshake(http, srv)
    url = f"{srv.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
    with caplog.at_level(logging.DEBUG, logger="roomcast.engineio"):
        assert (await _status(http, "POST", url, data="abc"))[0] == 400
    assert any("bad POST" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert await _status(http, "GET", url) == (400, {"code": 1, "message": "Session ID unknown"})


async def test_oversize_post_is_413_and_closes_the_session(
    srv: RunningServer, healthy: RawWebSocket, http: aiohttp.ClientSession
) -> None:
    sid = await _handshake(http, srv)
    url = f"{srv.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
    status, body = await _status(http, "POST", url, data="4" + "x" * 20_000)
    assert status == 413 and body["message"] == "Payload too large"
    assert (await _status(http, "GET", url))[0] == 400


async def test_bad_origin_is_403_and_a_good_one_gets_cors_headers(
    srv: RunningServer, healthy: RawWebSocket, http: aiohttp.ClientSession
) -> None:
    url = f"{srv.url}/socket.io/?EIO=4&transport=polling"
    status, body = await _status(http, "GET", url, headers={"Origin": "https://evil.example"})
    assert status == 403 and body == {"code": 4, "message": "Forbidden"}
    async with http.get(url, headers={"Origin": "https://good.example"}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "https://good.example"
    ws = await open_websocket(
        srv.host, srv.port, "/socket.io/?EIO=4&transport=websocket", headers={"Origin": "https://evil.example"}
    )
    assert ws.status == 403
    ws.close()


async def test_same_origin_only_when_no_origin_is_configured(
    make_app: Callable[..., App], http: aiohttp.ClientSession
) -> None:
    async with running(make_app()) as s:
        url = f"{s.url}/socket.io/?EIO=4&transport=polling"
        assert (await _status(http, "GET", url, headers={"Origin": "https://elsewhere.example"}))[0] == 403
        assert (await _status(http, "GET", url, headers={"Origin": s.url}))[0] == 200
        assert (await _status(http, "GET", url))[0] == 200  # non-browser clients send no Origin


@pytest.mark.parametrize(
    "packet",
    ["4abc", "42{}", '42abc["echo",1]', "49", '42["connect"]', "45-[]", "x"],
)
async def test_malformed_socketio_packet_closes_that_connection(
    srv: RunningServer, healthy: RawWebSocket, packet: str
) -> None:
    client = await socketio_connect(srv.host, srv.port)
    client.send(packet)
    async with asyncio.timeout(5):
        await client.closed
    assert srv.app.engine.bad_requests >= 1


async def test_event_before_connect_closes_the_session(srv: RunningServer, healthy: RawWebSocket) -> None:
    client = await open_websocket(srv.host, srv.port, "/socket.io/?EIO=4&transport=websocket")
    await client.recv()
    client.send('42["echo",1]')
    async with asyncio.timeout(5):
        await client.closed


async def test_oversize_websocket_message_closes_with_1009(srv: RunningServer, healthy: RawWebSocket) -> None:
    client = await socketio_connect(srv.host, srv.port)
    client.send('42["echo","' + "x" * 20_000 + '"]')
    async with asyncio.timeout(5):
        assert await client.closed == 1009


async def test_unmasked_client_frame_closes_with_1002(srv: RunningServer, healthy: RawWebSocket) -> None:
    client = await socketio_connect(srv.host, srv.port)
    client.send_raw(wsproto.serialize_frame(wsproto.OP_TEXT, b'42["echo",1]'))  # no mask
    async with asyncio.timeout(5):
        assert await client.closed == 1002


async def test_unknown_namespace_is_refused_like_the_official_server(srv: RunningServer, healthy: RawWebSocket) -> None:
    client = await open_websocket(srv.host, srv.port, "/socket.io/?EIO=4&transport=websocket")
    await client.recv()
    client.send("40/nope,")
    assert await client.recv() == '44/nope,{"message":"Invalid namespace"}'
    client.close()


async def test_garbage_http_is_400(srv: RunningServer, healthy: RawWebSocket) -> None:
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n" + os.urandom(64))
    async with asyncio.timeout(5):
        response = await reader.read()
    assert response.startswith(b"HTTP/1.1 400")
    writer.close()


async def test_no_connect_within_the_timeout_closes_the_session(make_app: Callable[..., App]) -> None:
    async with running(make_app(connect_timeout=0.2)) as s:
        client = await open_websocket(s.host, s.port, "/socket.io/?EIO=4&transport=websocket")
        await client.recv()
        async with asyncio.timeout(5):
            await client.closed


async def test_unknown_path_is_404(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await _status(http, "GET", f"{srv.url}/nope"))[0] == 404
    assert await _status(http, "GET", f"{srv.url}/healthz") == (200, "ok")
