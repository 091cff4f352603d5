"""``skip_sid`` is kept with the publication: a client that loses its connection and comes
back by offset (Socket.IO connection state recovery) is not replayed what skipped it (the
usual "tell the others I left" of a disconnect handler), while what it really missed follows."""

from __future__ import annotations

import asyncio
from typing import Any

from rawclient import RawWebSocket, call, open_websocket
from servers import running

from roomcast import _json
from roomcast.server.config import Settings
from roomcast.socketio import AsyncServer


def board() -> tuple[AsyncServer, asyncio.Queue[str]]:
    sio = AsyncServer(settings=Settings(recovery_window=120.0, task_db=":memory:"))
    gone: asyncio.Queue[str] = asyncio.Queue()

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        await sio.emit("welcome", sid, to=sid)

    @sio.event
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    @sio.event
    async def say(sid: str, text: str) -> bool:
        await sio.emit("said", text, room="r", skip_sid=sid)
        return True

    @sio.event
    async def disconnect(sid: str, reason: str) -> None:
        await sio.emit("left", sid, room="r", skip_sid=sid)
        gone.put_nowait(sid)

    return sio, gone


async def connect(port: int, auth: dict[str, Any]) -> tuple[RawWebSocket, dict[str, Any], list[Any]]:
    """A WebSocket Socket.IO client past its CONNECT reply and ``welcome`` (with its offset)."""
    client = await open_websocket("127.0.0.1", port, "/socket.io/?EIO=4&transport=websocket")
    assert isinstance(await client.recv(), str)
    client.send("40" + _json.dumps_str(auth))
    reply = await client.recv()
    assert isinstance(reply, str) and reply.startswith("40{"), reply
    welcome = await client.recv()
    assert isinstance(welcome, str) and welcome.startswith('42["welcome"'), welcome
    return client, _json.loads(reply[2:]), _json.loads(welcome[2:])


async def test_a_skipped_sender_coming_back_by_offset_gets_only_what_it_missed() -> None:
    sio, gone = board()
    async with running(sio.app) as srv:
        alice, alice_hello, alice_welcome = await connect(srv.port, {})
        bob, _, _ = await connect(srv.port, {})
        try:
            assert await call(alice, 1, "join", "r") == [True]
            assert await call(bob, 1, "join", "r") == [True]
            assert await call(alice, 2, "say", "mine") == [True]
            said = await bob.recv()
            assert isinstance(said, str) and said.startswith('42["said","mine"'), said

            alice.close()  # a transient loss: alice's session is kept for recovery
            async with asyncio.timeout(10):
                assert await gone.get() == alice_hello["sid"]
            left = await bob.recv()
            assert isinstance(left, str) and left.startswith(f'42["left","{alice_hello["sid"]}"'), left
            await sio.emit("later", 1, room="r")
            assert (await bob.recv()).startswith('42["later",1')  # type: ignore[union-attr]

            back = await open_websocket("127.0.0.1", srv.port, "/socket.io/?EIO=4&transport=websocket")
            try:
                assert isinstance(await back.recv(), str)
                offset = alice_welcome[-1]  # the last event alice had
                back.send("40" + _json.dumps_str({"pid": alice_hello["pid"], "offset": offset}))
                reply = await back.recv()
                assert isinstance(reply, str) and _json.loads(reply[2:])["sid"] == alice_hello["sid"]
                replayed = await back.recv()  # not "said" (her own) nor "left" (about her)
                assert isinstance(replayed, str) and replayed.startswith('42["later",1'), replayed
                assert sio.rooms(alice_hello["sid"]) == [alice_hello["sid"], "r"]  # rooms restored
            finally:
                back.close()
        finally:
            bob.close()
