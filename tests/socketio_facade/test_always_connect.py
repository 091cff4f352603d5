"""``always_connect=True`` behaves as in python-socketio: the client is connected first, and a
refusal by the connect handler then disconnects it (the disconnect handler is not called).
The same small application runs on both libraries and the client sees the same."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import pytest
import socketio as reference
from servers import uvicorn_running

import roomcast.socketio

WAIT_S = 15.0


def build(socketio: ModuleType, disconnects: asyncio.Queue[str]) -> Any:
    sio = socketio.AsyncServer(async_mode="asgi", always_connect=True)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        await sio.emit("hello", "before the verdict", to=sid)
        if not (isinstance(auth, dict) and auth.get("ok")):
            raise socketio.exceptions.ConnectionRefusedError("no")

    @sio.event
    def disconnect(sid: str, reason: str) -> None:
        disconnects.put_nowait(sid)

    return socketio.ASGIApp(sio)


@pytest.mark.parametrize("library", [reference, roomcast.socketio], ids=["python-socketio", "roomcast"])
async def test_a_refused_client_is_connected_then_disconnected(library: ModuleType) -> None:
    disconnects: asyncio.Queue[str] = asyncio.Queue()
    async with uvicorn_running(build(library, disconnects)) as url:
        client = reference.AsyncClient(reconnection=False)
        seen: list[Any] = []
        ended = asyncio.Event()
        client.on("hello", lambda text: seen.append(["hello", text]))
        client.on("connect", lambda: seen.append(["connect"]))
        client.on("disconnect", lambda *_: ended.set())
        await client.connect(url, auth={"ok": False}, transports=["websocket"])
        async with asyncio.timeout(WAIT_S):
            await ended.wait()
        assert seen == [["connect"], ["hello", "before the verdict"]]
        await client.disconnect()

        welcome = reference.AsyncClient(reconnection=False)
        greeted = asyncio.Event()
        welcome.on("hello", lambda _: greeted.set())
        await welcome.connect(url, auth={"ok": True}, transports=["websocket"])
        async with asyncio.timeout(WAIT_S):
            await greeted.wait()
        sid = welcome.get_sid()
        await welcome.disconnect()
        async with asyncio.timeout(WAIT_S):  # the accepted one's, and only it: not the refused one's
            assert await disconnects.get() == sid
        assert disconnects.empty()
