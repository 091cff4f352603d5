"""A healthy client on every transport, and a server to attack, for the hostile-client tests.

Each attack test shows two things: the attacker is refused or cut, and ``Healthy`` (one
subscriber on SSE, ``/ws`` and Socket.IO) keeps getting every event meanwhile.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from rawclient import call, open_websocket, socketio_connect
from servers import RunningServer, running
from sseclient import open_sse

from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings

__all__ = ["Healthy", "server", "WS_HEADERS"]

WS_HEADERS = {"Sec-WebSocket-Protocol": "roomcast.v1"}


@contextlib.asynccontextmanager
async def server(**settings: Any) -> AsyncIterator[RunningServer]:
    async with running(App(Hub(), Settings(**settings))) as srv:
        yield srv


class Healthy:
    """A subscriber on every transport (SSE, ``/ws``, Socket.IO): 3 connections from 127.0.0.1.

    Its WebSocket clients answer pings as real ones do; each sent one message (a subscribe).
    """

    def __init__(self, srv: RunningServer) -> None:
        self.srv = srv
        self.stack = contextlib.AsyncExitStack()
        self.n = 0

    async def __aenter__(self) -> Healthy:
        self.sse = await self.stack.enter_async_context(open_sse(self.srv.url, ["news"]))
        assert (await self.sse.next()).event == "snapshot"
        self.ws = await open_websocket(self.srv.host, self.srv.port, "/ws", headers=WS_HEADERS)
        self.ws.send(json.dumps({"type": "subscribe", "id": 1, "room": "news"}))
        assert json.loads(await self.ws.recv())["type"] == "snapshot"
        self.sio = await socketio_connect(self.srv.host, self.srv.port)
        self.sio.auto_pong = True
        [reply] = await call(self.sio, 1, "subscribe", {"room": "news"})
        assert reply["room"] == "news"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.ws.close()
        self.sio.close()
        await self.stack.aclose()

    async def still_served(self) -> None:
        self.n += 1
        await self.srv.hub.publish("news", "n", self.n)
        assert (await self.sse.next()).json() == self.n
        assert json.loads(await self.ws.recv())["data"] == self.n
        assert json.loads((await self.sio.recv())[2:]) == ["n", self.n]
        assert not self.ws.closed.done() and not self.sio.closed.done()
