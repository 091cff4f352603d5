"""The ASGI floor: the least an ASGI app under uvicorn can do to serve the benchmark.

    .venv/bin/python bench/peers/bare_asgi.py --port N

Not a product and not a Socket.IO server: just enough of the wire for the load generator
(WebSocket transport only; Engine.IO open, Socket.IO CONNECT to ``/``, ``join`` and
``publish`` with acks, no heartbeat, no validation). ``publish`` encodes the event once and
awaits ``send`` for each member in turn. Every ASGI door pays at least this per message
(one ASGI dict and one host ``send`` each), so its row says what "as fast as ASGI allows"
means on the machine at hand.
"""

from __future__ import annotations

import argparse
import json
import secrets
from typing import Any

import uvicorn

Send = Any
rooms: dict[str, list[Send]] = {}

OPEN = "0" + json.dumps({"sid": "", "upgrades": [], "pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 1000000})


async def app(scope: dict[str, Any], receive: Any, send: Send) -> None:
    if scope["type"] != "websocket":
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": OPEN})
    joined: list[str] = []
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text") or ""
            if text == "40":
                await send({"type": "websocket.send", "text": '40{"sid":"%s"}' % secrets.token_urlsafe(12)})
            elif text.startswith("42"):
                end = 2
                while text[end].isdigit():
                    end += 1
                ack, (event, request) = text[2:end], json.loads(text[end:])
                if event == "join":
                    rooms.setdefault(request["room"], []).append(send)
                    joined.append(request["room"])
                    await send({"type": "websocket.send", "text": f"43{ack}[true]"})
                elif event == "publish":
                    frame = "42" + json.dumps([request["event"], request.get("data")], separators=(",", ":"))
                    for member in rooms.get(request["room"], ()):
                        await member({"type": "websocket.send", "text": frame})
                    await send({"type": "websocket.send", "text": f"43{ack}[true]"})
    finally:
        for room in joined:
            rooms[room].remove(send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", log_level="warning", backlog=2048
    )


if __name__ == "__main__":
    main()
