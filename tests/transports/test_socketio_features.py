"""roomcast's own Socket.IO features, seen through python-socketio's AsyncClient (a real peer):
connect handlers that refuse, server→client acks, built-in subscribe with snapshot and
recovery, handler failures, namespaces, and the same behaviour over polling and websocket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import socketio
from servers import RunningServer, running

from roomcast import ConnectionRefused
from roomcast.hub.connection import Connection
from roomcast.server.app import App

TRANSPORTS = [["websocket"], ["polling"]]


@pytest.fixture
async def srv(make_app: Callable[..., App]) -> AsyncIterator[RunningServer]:
    app = make_app()
    hub = app.hub

    @hub.on_connect()
    def check(conn: Connection, auth: Any) -> None:
        if auth.get("token") != "letmein":
            raise ConnectionRefused("bad token", {"hint": "use letmein"})
        conn.data["user"] = auth.get("user")
        conn.emit("welcome", conn.data["user"])  # sent after the CONNECT reply

    @hub.on("ask")
    async def ask(conn: Connection, question: Any) -> Any:
        return await conn.call("question", question, timeout=5)

    @hub.on("boom")
    def boom(conn: Connection, *_: Any) -> None:
        raise RuntimeError("handler bug")

    @hub.snapshot("project:*")
    async def project_state(room: str) -> dict[str, Any]:
        return {"project": room.removeprefix("project:"), "tasks": ["a", "b"]}

    @hub.on("join", namespace="/admin")
    def join_admin(conn: Connection, request: dict[str, str]) -> bool:
        conn.join(request["room"])
        return True

    async with running(app) as s:
        yield s


async def _client(srv: RunningServer, transports: list[str], **kw: Any) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(srv.url, transports=transports, auth={"token": "letmein", "user": "ann"}, wait_timeout=5, **kw)
    return client


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_connect_handler_refuses_with_its_message(srv: RunningServer, transports: list[str]) -> None:
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(srv.url, transports=transports, auth={"token": "wrong"}, wait_timeout=5)
    assert errors == [{"message": "bad token", "data": {"hint": "use letmein"}}]
    assert srv.hub.connections == {}
    await client.disconnect()


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_connect_handler_emits_after_the_connect_reply(srv: RunningServer, transports: list[str]) -> None:
    welcomed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    client = socketio.AsyncClient(reconnection=False)
    client.on("welcome", lambda user: welcomed.set_result(user))
    try:
        await client.connect(srv.url, transports=transports, auth={"token": "letmein", "user": "ann"}, wait_timeout=5)
        async with asyncio.timeout(5):
            assert await welcomed == "ann"
    finally:
        await client.disconnect()


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_server_to_client_ack(srv: RunningServer, transports: list[str]) -> None:
    client = await _client(srv, transports)

    @client.on("question")
    def answer(question: Any) -> Any:
        return {"answer": question * 2}

    try:
        assert await client.call("ask", 21, timeout=5) == {"answer": 42}
    finally:
        await client.disconnect()


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_a_failing_handler_acks_an_error_and_the_connection_lives(
    srv: RunningServer, transports: list[str]
) -> None:
    client = await _client(srv, transports)
    try:
        assert await client.call("boom", timeout=5) == {"error": "internal error"}
        assert await client.call("echo", "alive", timeout=5) == "alive"
        assert srv.hub.handlers.failures == 1
    finally:
        await client.disconnect()


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_subscribe_gives_the_snapshot_then_every_later_publication(
    srv: RunningServer, transports: list[str]
) -> None:
    await srv.hub.publish("project:7", "task_created", {"id": 1})  # before: in the snapshot's world
    client = await _client(srv, transports)
    got: asyncio.Queue[Any] = asyncio.Queue()
    client.on("task_updated", got.put_nowait)
    try:
        ack = await client.call("subscribe", {"room": "project:7"}, timeout=5)
        assert ack["recovered"] is False
        assert ack["snapshot"] == {"project": "7", "tasks": ["a", "b"]}
        assert ack["offset"] == 1 and isinstance(ack["epoch"], str)
        await srv.hub.publish("project:7", "task_updated", {"id": 1, "n": 2})
        async with asyncio.timeout(5):
            assert await got.get() == {"id": 1, "n": 2}
        # leave, miss two, come back with the position: exactly the missed ones, in order
        assert await client.call("unsubscribe", {"room": "project:7"}, timeout=5) == {"room": "project:7"}
        await srv.hub.publish("project:7", "task_updated", {"n": 3})
        await srv.hub.publish("project:7", "task_updated", {"n": 4})
        back = await client.call("subscribe", {"room": "project:7", "epoch": ack["epoch"], "offset": 2}, timeout=5)
        assert back["recovered"] is True and back["offset"] == 4
        assert [p["data"] for p in back["publications"]] == [[{"n": 3}], [{"n": 4}]]
        assert got.empty()
        stale = await client.call("subscribe", {"room": "project:7", "epoch": "gone", "offset": 2}, timeout=5)
        assert stale["recovered"] is False and stale["snapshot"]["project"] == "7"
    finally:
        await client.disconnect()


async def test_subscribe_with_bad_arguments_acks_an_error(srv: RunningServer) -> None:
    client = await _client(srv, ["websocket"])
    try:
        assert "error" in await client.call("subscribe", "not-an-object", timeout=5)
        assert "error" in await client.call("unsubscribe", {"room": 5}, timeout=5)
    finally:
        await client.disconnect()


async def test_rooms_are_shared_across_namespaces_and_transports(srv: RunningServer) -> None:
    ws = await _client(srv, ["websocket"], namespaces=["/", "/admin"])
    polling = await _client(srv, ["polling"])
    loop = asyncio.get_running_loop()
    on_admin: asyncio.Future[Any] = loop.create_future()
    on_polling: asyncio.Future[Any] = loop.create_future()
    ws.on("alert", on_admin.set_result, namespace="/admin")
    polling.on("alert", on_polling.set_result)
    try:
        assert await ws.call("join", {"room": "ops"}, timeout=5, namespace="/admin") is True
        assert await polling.call("join", {"room": "ops"}, timeout=5) is True
        assert srv.hub.rooms() == {"ops": 2}
        await srv.hub.publish("ops", "alert", "disk full")
        async with asyncio.timeout(5):
            assert await on_admin == "disk full"
            assert await on_polling == "disk full"
    finally:
        await ws.disconnect()
        await polling.disconnect()
