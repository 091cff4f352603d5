"""The Python peer: python-socketio's ``AsyncServer`` under uvicorn (uvloop, httptools).

    .venv/bin/python bench/peers/pysio_server.py --port N

The same events as ``bench/server.py`` and ``bench/node/server.mjs``, written the way the
python-socketio documentation shows them; library defaults otherwise.
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvicorn


def build() -> socketio.ASGIApp:
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")

    @sio.on("join")
    async def join(sid: str, request: Any = None) -> bool:
        if not isinstance(request, dict) or not isinstance(request.get("room"), str):
            return False
        await sio.enter_room(sid, request["room"])
        return True

    @sio.on("publish")
    async def publish(sid: str, request: Any = None) -> bool:
        if not isinstance(request, dict) or not isinstance(request.get("room"), str):
            return False
        if not isinstance(request.get("event"), str):
            return False
        await sio.emit(request["event"], request.get("data"), room=request["room"])
        return True

    @sio.on("echo")
    async def echo(sid: str, data: Any = None) -> Any:
        return data

    return socketio.ASGIApp(sio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    uvicorn.run(
        build(), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", log_level="warning", backlog=2048
    )


if __name__ == "__main__":
    main()
