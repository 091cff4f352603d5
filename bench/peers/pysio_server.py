"""The Python peer: python-socketio's ``AsyncServer`` under uvicorn (uvloop, httptools).

    .venv/bin/python bench/peers/pysio_server.py --port N [--facade]

The same events as ``bench/server.py`` and ``bench/node/server.mjs``, written the way the
python-socketio documentation shows them; library defaults otherwise.

``--facade`` runs this very file on ``roomcast.socketio`` (the only change a migrating
application makes is its import) served by roomcast's native door: the ``roomcast-facade``
row, whose ``emit(room=...)`` is measured beside ``roomcast``'s own ``hub.publish``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

if "--facade" in sys.argv:
    from roomcast import socketio
else:
    import socketio  # type: ignore[no-redef]


def build() -> Any:
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
    parser.add_argument("--facade", action="store_true", help="on roomcast.socketio, roomcast's native door")
    args = parser.parse_args()
    app = build()
    if args.facade:
        import dataclasses

        from roomcast.server.runner import run

        logging.basicConfig(level=logging.WARNING)
        roomcast_app = app.server.app  # the ASGIApp's AsyncServer's roomcast App
        roomcast_app.settings = dataclasses.replace(roomcast_app.settings, port=args.port, log_level="warning")
        run(roomcast_app, on_ready=lambda h, p: print(f"facade listening on http://{h}:{p}", flush=True))
        return
    import uvicorn

    uvicorn.run(
        app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", log_level="warning", backlog=2048
    )


if __name__ == "__main__":
    main()
