"""``AsyncServer`` details python-socketio applications rely on, and the errors for what does
not fit, with python-socketio's client on roomcast's native door."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import socketio as reference
from servers import running

from roomcast.errors import InvalidPublication
from roomcast.socketio import AsyncNamespace, AsyncServer, exceptions

WAIT_S = 15.0


@asynccontextmanager
async def connected(url: str, **kwargs: Any) -> AsyncIterator[reference.AsyncClient]:
    client = reference.AsyncClient(reconnection=False)
    await client.connect(url, transports=["websocket"], **kwargs)
    try:
        yield client
    finally:
        await client.disconnect()


class _DatetimeJson:
    @staticmethod
    def dumps(value: Any) -> str:
        return json.dumps(value, default=lambda v: v.isoformat())

    loads = staticmethod(json.loads)


async def test_environ_rooms_without_a_room_per_connection_and_json() -> None:
    sio = AsyncServer(json=_DatetimeJson)
    seen: dict[str, Any] = {}

    @sio.event
    async def connect(sid: str, environ: dict[str, Any]) -> None:  # the legacy signature
        seen["environ"] = environ

    @sio.event
    async def when(sid: str) -> None:
        await sio.emit("at", {"t": datetime.datetime(2026, 1, 2, 3, 4, 5)}, to=sid)

    async with running(sio.app) as srv, connected(srv.url + "?x=1", headers={"X-Trace": "t1"}) as client:
        got: asyncio.Queue[Any] = asyncio.Queue()
        client.on("at", got.put_nowait)
        await client.emit("when")
        async with asyncio.timeout(WAIT_S):
            assert await got.get() == {"t": "2026-01-02T03:04:05"}
        environ = seen["environ"]
        assert environ["HTTP_X_TRACE"] == "t1"
        assert "x=1" in environ["QUERY_STRING"]
        assert environ["REMOTE_ADDR"] == "127.0.0.1"
        assert environ["asgi.scope"]["path"] == "/socket.io/"
        sid = client.get_sid()
        assert sio.rooms(sid) == [sid]
        assert sio.transport(sid) == "websocket"
        assert set(srv.hub.rooms()) == {"socket.io#/"}  # one room per namespace, none per sid


async def test_call_times_out_and_bad_emits_are_refused_clearly() -> None:
    sio = AsyncServer()
    async with running(sio.app) as srv, connected(srv.url) as client:
        sid = client.get_sid()
        unanswered = asyncio.Event()

        async def never(*_: Any) -> None:
            await unanswered.wait()

        client.on("question", never)
        with pytest.raises(exceptions.TimeoutError):
            await sio.call("question", to=sid, timeout=0.2)
        unanswered.set()
        with pytest.raises(ValueError, match="broadcast"):
            await sio.call("question")
        with pytest.raises(ValueError, match="callback"):
            await sio.emit("x", room="r", callback=print)
        with pytest.raises(ValueError, match="reserved"):
            await sio.enter_room(sid, "socket.io#/")
        with pytest.raises(InvalidPublication):
            await sio.emit("disconnect", room="r")  # a reserved event name
        with pytest.raises(InvalidPublication):
            await sio.emit("x", {"t": object()})  # not JSON
        with pytest.raises(KeyError):
            await sio.get_session("nobody")


def test_options_that_do_not_fit_are_named() -> None:
    with pytest.raises(TypeError, match="pingtimeout"):
        AsyncServer(pingtimeout=3)
    with pytest.raises(TypeError, match="AsyncRedisManager"):
        AsyncServer(client_manager=reference.AsyncManager())
    with pytest.raises(ValueError, match="namespaces"):
        AsyncServer(namespaces="*")  # type: ignore[arg-type]
    sio = AsyncServer(async_mode="asgi", transports=["websocket"], cors_allowed_origins=["https://a.example"])
    assert sio.settings.cors_origins == ("https://a.example",)


async def test_disconnect_and_background_tasks() -> None:
    sio = AsyncServer()
    reasons: asyncio.Queue[str] = asyncio.Queue()

    @sio.event
    def disconnect(sid: str, reason: str) -> None:
        reasons.put_nowait(reason)

    async def later(sid: str) -> None:
        await sio.sleep(0)
        await sio.disconnect(sid)

    async with running(sio.app) as srv, connected(srv.url) as client:
        sio.start_background_task(later, client.get_sid())
        async with asyncio.timeout(WAIT_S):
            assert await reasons.get() == "server disconnect"


async def test_an_sse_client_of_the_same_room_gets_what_emit_sends() -> None:
    from sseclient import open_sse

    sio = AsyncServer()
    async with running(sio.app) as srv, open_sse(srv.url, ["project:42"]) as stream:
        assert (await stream.next()).event == "snapshot"  # subscribed from here
        await sio.emit("card_added", {"id": 7}, room="project:42")
        await sio.emit("elsewhere", 1, room="project:42", namespace="/admin")  # another namespace's room
        await sio.emit("last", 2, room="project:42")
        got = [await stream.next(), await stream.next()]
        assert [(e.event, e.json()) for e in got] == [("card_added", {"id": 7}), ("last", 2)]


async def test_star_namespace_handlers_and_unhandled_events_get_no_ack() -> None:
    sio = AsyncServer(namespaces=["/", "/b"])

    @sio.on("hello", namespace="*")
    def hello(namespace: str, sid: str, name: str) -> str:
        return f"{name} in {namespace}"

    async with running(sio.app) as srv, connected(srv.url, namespaces=["/", "/b"]) as client:
        assert await client.call("hello", "ann", namespace="/b") == "ann in /b"
        assert await client.call("hello", "bo") == "bo in /"
        with pytest.raises(reference.exceptions.TimeoutError):
            await client.call("nobody-handles-this", timeout=0.3)


async def test_a_class_based_namespace_sends_calls_and_emits_in_its_own_namespace() -> None:
    sio = AsyncServer()

    class Chat(AsyncNamespace):
        async def on_hello(self, sid: str) -> Any:
            await self.send("welcome", to=sid)  # "message" in /chat, not in /
            await self.emit("everyone", 1)  # the namespace's room: the sender too
            return await self.call("name?", to=sid, timeout=WAIT_S)

    sio.register_namespace(Chat("/chat"))
    async with running(sio.app) as srv:
        client = reference.AsyncClient(reconnection=False)
        got: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        client.on("message", lambda data: got.put_nowait(("message", data)), namespace="/chat")
        client.on("everyone", lambda data: got.put_nowait(("everyone", data)), namespace="/chat")
        client.on("name?", lambda: "ada", namespace="/chat")
        await client.connect(srv.url, transports=["websocket"], namespaces=["/chat"])
        try:
            async with asyncio.timeout(WAIT_S):
                assert await client.call("hello", namespace="/chat", timeout=WAIT_S) == "ada"
                assert [await got.get(), await got.get()] == [("message", "welcome"), ("everyone", 1)]
        finally:
            await client.disconnect()
