"""Tokens on the plain WebSocket, SSE and Socket.IO: grants per room, refusals with reasons, expiry.

Real HS256 tokens signed with PyJWT against a server configured with the same secret.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import jwt
from rawclient import RawWebSocket, open_websocket
from servers import RunningServer, running
from sseclient import open_sse

from roomcast.auth import TOKEN_HEADERS, token_from_request
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.transports.base import build_request
from roomcast.types import Presence

SECRET = "test-secret-that-is-long-enough-for-hs256"


def token(
    *,
    sub: str = "u1",
    subscribe: list[str] | None = None,
    publish: list[str] | None = None,
    exp_in: float | None = 60.0,
    secret: str = SECRET,
) -> str:
    claims: dict[str, Any] = {"sub": sub, "rooms": {"subscribe": subscribe or [], "publish": publish or []}}
    if exp_in is not None:
        claims["exp"] = time.time() + exp_in
    return jwt.encode(claims, secret, algorithm="HS256")


def _app() -> App:
    return App(Hub(), Settings(jwt_secret=SECRET))


async def _ws(srv: RunningServer, bearer: str | None) -> RawWebSocket:
    headers = {"Sec-WebSocket-Protocol": "roomcast.v1"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return await open_websocket(srv.host, srv.port, "/ws", headers=headers)


async def _request(client: RawWebSocket, message: dict[str, Any]) -> dict[str, Any]:
    client.send(json.dumps(message))
    raw = await client.recv()
    assert isinstance(raw, str)
    reply: dict[str, Any] = json.loads(raw)
    return reply


async def test_websocket_needs_a_valid_token_and_its_grants() -> None:
    async with running(_app()) as srv:
        for bad in (None, "garbage", token(secret="another-secret-that-is-long-enough!!"), token(exp_in=-5)):
            refused = await _ws(srv, bad)
            assert refused.status == 401
            refused.close()
        client = await _ws(srv, token(subscribe=["chat:*"], publish=["chat:lobby"]))
        try:
            assert client.status == 101
            assert (await _request(client, {"type": "subscribe", "id": 1, "room": "chat:lobby"}))["type"] == "snapshot"
            denied = await _request(client, {"type": "subscribe", "id": 2, "room": "admin"})
            assert denied == {
                "type": "error",
                "id": 2,
                "code": "forbidden",
                "message": "not allowed to subscribe 'admin'",
            }
            echoed = await _request(client, {"type": "publish", "id": 3, "room": "chat:lobby", "event": "m", "data": 1})
            assert echoed["type"] == "event" and echoed["data"] == 1  # a member gets its own publication
            assert json.loads(await client.recv())["type"] == "ack"  # then the ack
            denied = await _request(client, {"type": "publish", "id": 4, "room": "chat:other", "event": "m"})
            assert denied["code"] == "forbidden"
        finally:
            client.close()


async def test_an_expiring_websocket_token_closes_the_connection_unless_refreshed() -> None:
    async with running(_app()) as srv:
        lapsing = await _ws(srv, token(subscribe=["*"], exp_in=0.5))
        refreshed = await _ws(srv, token(subscribe=["*"], exp_in=0.5))
        try:
            reply = await _request(refreshed, {"type": "refresh", "id": 1, "token": token(subscribe=["*"])})
            assert reply == {"type": "ack", "id": 1, "data": None}
            wrong_user = await _request(refreshed, {"type": "refresh", "id": 2, "token": token(sub="u2")})
            assert wrong_user["code"] == "forbidden"
            assert await lapsing.closed == 1008  # policy: the token expired
            assert srv.app.expiry.expired == 1
            assert (await _request(refreshed, {"type": "ping", "id": 3}))["type"] == "ack"  # still open
        finally:
            lapsing.close()
            refreshed.close()


async def test_a_browser_refused_on_ws_learns_why_from_a_1008_close_not_a_hidden_401() -> None:
    # Browsers hide the HTTP status of a refused handshake (the page only sees 1006, as for a
    # dead server), so a handshake with an Origin is opened and closed with 1008 and the reason.
    async with running(App(Hub(), Settings(jwt_secret=SECRET, cors_origins=("https://app.example",)))) as srv:
        for bad, reason in ((None, "token required"), (token(exp_in=-5), "token expired")):
            query = "" if bad is None else f"?token={bad}"
            page = await open_websocket(
                srv.host,
                srv.port,
                f"/ws{query}",
                headers={"Sec-WebSocket-Protocol": "roomcast.v1", "Origin": "https://app.example"},
            )
            try:
                assert page.status == 101
                assert await asyncio.wait_for(page.closed, 5) == 1008
                assert page.close_reason == reason
            finally:
                page.close()
        assert not srv.app.ws.connections  # nobody was let in
        no_origin = await _ws(srv, None)  # other clients still get the plain HTTP answer
        assert no_origin.status == 401
        no_origin.close()


async def test_sse_takes_the_token_from_the_query_and_checks_every_room() -> None:
    async with running(_app()) as srv:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{srv.url}/sse?room=a") as missing:
                assert missing.status == 401
                assert (await missing.json())["error"] == {"code": "unauthorized", "message": "token required"}
            query = {"room": ["a", "secret"], "token": token(subscribe=["a"])}
            async with http.get(
                f"{srv.url}/sse", params=[("room", "a"), ("room", "secret"), ("token", query["token"])]
            ) as partly:
                assert partly.status == 403
                assert "secret" in (await partly.json())["error"]["message"]
        async with open_sse(srv.url, ["a"], extra_query={"token": token(subscribe=["a"], exp_in=0.5)}) as stream:
            assert (await stream.next()).event == "snapshot"
            events = await stream.until_end()
            assert [(e.event, e.json()["message"]) for e in events] == [("error", "token expired")]


async def test_presence_counts_distinct_users_and_announces_first_arrivals_and_last_departures() -> None:
    app = _app()
    app.hub.track_presence("room:*")
    async with running(app) as srv:
        watcher = await _ws(srv, token(sub="watcher", subscribe=["*"]))
        tabs = [await _ws(srv, token(sub="ann", subscribe=["*"])) for _ in range(2)]
        bob = await _ws(srv, token(sub="bob", subscribe=["*"]))
        try:
            assert (await _request(watcher, {"type": "subscribe", "id": 1, "room": "room:1"}))["type"] == "snapshot"
            seen: list[tuple[str, str]] = []

            async def announced() -> None:
                message = json.loads(await watcher.recv())
                seen.append((message["event"], message["data"]["user"]))

            await announced()  # its own arrival
            for i, client in enumerate([*tabs, bob]):
                assert (await _request(client, {"type": "subscribe", "id": 1, "room": "room:1"}))["type"] == "snapshot"
                if i != 1:  # ann's second tab is not a new arrival
                    await announced()
            assert await srv.hub.presence("room:1") == Presence("room:1", 4, ("ann", "bob", "watcher"))
            gone = asyncio.Event()
            forget = app.ws.forget

            def observed(conn: Any) -> None:  # observe the server noticing the close
                forget(conn)
                gone.set()

            app.ws.forget = observed  # type: ignore[method-assign]
            tabs[0].close()
            async with asyncio.timeout(5):
                await gone.wait()
            assert (await srv.hub.presence("room:1")).connections == 3  # ann is still there in one tab
            tabs[1].close()
            await announced()
            assert seen == [
                ("presence:join", "watcher"),
                ("presence:join", "ann"),
                ("presence:join", "bob"),
                ("presence:leave", "ann"),
            ]
            assert srv.hub.users("room:1") == ["bob", "watcher"]
        finally:
            for client in [watcher, *tabs, bob]:
                client.close()


async def test_socketio_needs_a_token_in_the_handshake_and_honours_its_grants() -> None:
    import socketio

    async with running(_app()) as srv:
        refused = socketio.AsyncClient(reconnection=False)
        reasons: list[Any] = []
        refused.on("connect_error", lambda data: reasons.append(data))
        try:
            await refused.connect(srv.url, auth={"token": token(exp_in=-1)}, transports=["websocket"])
            raise AssertionError("an expired token was let in")
        except socketio.exceptions.ConnectionError:
            assert reasons == [{"message": "token expired"}]
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(
            srv.url, auth={"token": token(sub="ann", subscribe=["doc:*"], publish=["doc:1"])}, transports=["websocket"]
        )
        try:
            ok = await client.call("subscribe", {"room": "doc:1"}, timeout=5)
            assert ok["recovered"] is False and ok["offset"] == 0
            assert (await srv.hub.presence("doc:1")).users == ("ann",)
            assert await client.call("subscribe", {"room": "admin"}, timeout=5) == {
                "error": "not allowed to subscribe 'admin'"
            }
            published = await client.call("publish", {"room": "doc:1", "event": "edit", "data": 1}, timeout=5)
            assert published["offset"] == 1
            assert await client.call("publish", {"room": "doc:2", "event": "edit"}, timeout=5) == {
                "error": "not allowed to publish 'doc:2'"
            }
        finally:
            await client.disconnect()


async def test_a_socketio_token_that_expires_ends_the_session_unless_refreshed() -> None:
    import socketio

    async with running(_app()) as srv:
        lapsing, refreshed = socketio.AsyncClient(reconnection=False), socketio.AsyncClient(reconnection=False)
        gone = asyncio.Event()
        lapsing.on("disconnect", lambda *_: gone.set())
        for client in (lapsing, refreshed):
            await client.connect(srv.url, auth={"token": token(subscribe=["*"], exp_in=0.5)}, transports=["websocket"])
        try:
            assert await refreshed.call("refresh", {"token": token(subscribe=["*"])}, timeout=5) == {"ok": True}
            assert await refreshed.call("refresh", {"token": token(sub="u2")}, timeout=5) == {
                "error": "a refresh must be for the same subject"
            }
            async with asyncio.timeout(5):
                await gone.wait()
            assert srv.app.expiry.expired == 1
            assert (await refreshed.call("subscribe", {"room": "r"}, timeout=5))["offset"] == 0  # still served
        finally:
            await refreshed.disconnect()


async def test_a_socketio_connect_authenticates_with_the_handshake_bearer_header_or_query_token() -> None:
    # The namespace CONNECT comes after the Engine.IO handshake: the session keeps the
    # handshake's token headers and query (and nothing else of a browser's headers) for it.
    browser = {"Cookie": "session=" + "c" * 2000, "User-Agent": "Mozilla/5.0 " + "x" * 200}
    async with running(_app()) as srv:
        for headers, query in (
            ({"Authorization": f"Bearer {token(subscribe=['*'])}", **browser}, ""),
            (browser, f"&token={token(subscribe=['*'])}"),
            (browser, ""),
        ):
            client = await open_websocket(
                srv.host, srv.port, f"/socket.io/?EIO=4&transport=websocket{query}", headers=headers
            )
            try:
                assert str(await client.recv()).startswith("0{")  # OPEN
                client.send("40")
                reply = str(await client.recv())
                if headers is browser and not query:
                    assert reply.startswith("44{") and "token required" in reply, reply
                else:
                    assert reply.startswith("40{"), reply
            finally:
                client.close()


def test_a_kept_request_holds_its_query_and_the_named_headers_only() -> None:
    request = build_request(
        "GET",
        "/socket.io/",
        b"EIO=4&transport=websocket&token=t1",
        [(b"Authorization", b"Bearer t2"), (b"Cookie", b"a=1"), (b"User-Agent", b"ua")],
        body=b"ignored",
        client=("10.0.0.1", 5000),
    )
    kept = request.keeping_headers(TOKEN_HEADERS)
    assert dict(kept.headers) == {"authorization": "Bearer t2"}
    assert kept.query == request.query and kept.query_all == request.query_all
    assert (kept.method, kept.path, kept.client, kept.body) == ("GET", "/socket.io/", ("10.0.0.1", 5000), b"")
    assert token_from_request(kept.headers, kept.query) == "t2"
    assert dict(request.keeping_headers(["x-absent"]).headers) == {}
