"""``ASGIApp(sio, other_asgi_app, socketio_path=...)`` mounts the server as python-socketio's
does: Socket.IO under its path, every other path to the host application, whose lifespan
starts and stops roomcast with it."""

from __future__ import annotations

from typing import Any

import aiohttp
import socketio as reference
from servers import uvicorn_running

from roomcast.socketio import ASGIApp, AsyncServer


class HostApp:
    """A minimal ASGI application with a lifespan, as FastAPI or Starlette would be."""

    def __init__(self) -> None:
        self.lifespan: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"host " + scope["path"].encode()})


async def test_socketio_path_and_the_host_app_share_one_server() -> None:
    sio = AsyncServer()

    @sio.event
    def hello(sid: str, name: str) -> str:
        return "hi " + name

    host = HostApp()
    started: list[str] = []
    app = ASGIApp(sio, host, socketio_path="live", on_startup=lambda: started.append("up"))
    async with uvicorn_running(app) as url:
        assert host.lifespan == ["lifespan.startup"] and started == ["up"]  # after roomcast started
        async with aiohttp.ClientSession() as http, http.get(url + "/api/anything") as response:
            assert await response.text() == "host /api/anything"
        client = reference.AsyncClient(reconnection=False)
        await client.connect(url, socketio_path="live", transports=["polling", "websocket"])
        try:
            assert await client.call("hello", "ann") == "hi ann"
        finally:
            await client.disconnect()
    assert host.lifespan == ["lifespan.startup", "lifespan.shutdown"]
