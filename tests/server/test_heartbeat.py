"""Heartbeats on the native door: a client that answers pings stays, one that doesn't is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from rawclient import call, open_websocket, socketio_connect
from servers import running

from roomcast.hub.connection import Connection
from roomcast.server.app import App


async def test_ponging_client_stays_and_silent_client_is_dropped_with_ping_timeout(
    make_app: Callable[..., App],
) -> None:
    app = make_app(ping_interval=0.05, ping_timeout=0.1)
    reasons: list[str] = []

    @app.hub.on_disconnect()
    def gone(conn: Connection, reason: str) -> None:
        reasons.append(reason)

    async with running(app) as srv:
        alive = await socketio_connect(srv.host, srv.port)
        alive.auto_pong = True
        silent = await open_websocket(srv.host, srv.port, "/socket.io/?EIO=4&transport=websocket")
        await silent.messages.get()  # OPEN
        silent.send("40")
        assert (await silent.messages.get()).startswith("40{")  # type: ignore[union-attr]
        async with asyncio.timeout(5):
            assert await silent.messages.get() == "2"  # pinged, never answers
            await silent.closed
        assert reasons == ["ping timeout"]
        # several ping intervals pass for the client that answers; it is still served
        async with asyncio.timeout(5):
            while alive.pings < 5:
                alive.pinged.clear()
                await alive.pinged.wait()
        assert await call(alive, 1, "echo", "still alive") == ["still alive"]
        assert reasons == ["ping timeout"]
        alive.close()


async def test_polling_session_without_pong_is_gone(make_app: Callable[..., App]) -> None:
    async with running(make_app(ping_interval=0.05, ping_timeout=0.05)) as srv:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(f"{srv.url}/socket.io/?EIO=4&transport=polling") as r:
                sid = (await r.json(content_type=None, loads=lambda s: __import__("json").loads(s[1:])))["sid"]
            url = f"{srv.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
            async with http.get(url) as r:
                assert await r.text() == "2"  # the ping, never answered
            async with http.get(url) as r:  # the long poll ends with CLOSE at the timeout
                assert await r.text() == "1"
            async with http.get(url) as r:
                assert r.status == 400
