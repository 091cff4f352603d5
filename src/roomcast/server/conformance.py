"""The server the official Engine.IO/Socket.IO test suites (and the interop tests) run against.

``python -m roomcast.server.conformance --port 3000`` (``make conformance-server``) serves:

* ``/engine.io/``: a bare Engine.IO server echoing every message;
* ``/socket.io/``: Socket.IO on ``/`` and ``/custom``; each connection is sent ``auth`` with
  its handshake payload; ``message`` → ``message-back`` with the same arguments;
  ``message-with-ack`` → ack with the same arguments; ``echo`` → ack with the data;
  ``join {room}`` → join, ack ``true``; ``publish {room, event, data}`` → ``event`` with
  ``data`` to the room, sender included; ``drop`` → the server closes the connection.

Settings as the suites require: ping 300/200 ms, maxPayload 1000000, any origin, connect
timeout 1 s.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from roomcast import disconnect
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.runner import run

__all__ = ["build_app", "main"]


def register_demo_events(hub: Hub) -> None:
    """The ``echo``, ``join``, ``publish`` and ``drop`` events (also used by the benchmarks)."""

    @hub.on("echo")
    def echo(conn: Connection, data: Any = None, *_: Any) -> Any:
        return data

    @hub.on("join")
    def join(conn: Connection, request: Any = None, *_: Any) -> bool:
        if not isinstance(request, dict) or not isinstance(request.get("room"), str):
            return False
        conn.join(request["room"])
        return True

    @hub.on("publish")
    async def publish(conn: Connection, request: Any = None, *_: Any) -> Any:
        if not isinstance(request, dict) or not isinstance(request.get("room"), str):
            return False
        if not isinstance(request.get("event"), str):
            return False
        position = await hub.publish(request["room"], request["event"], request.get("data"))
        return position.offset

    @hub.on("drop")
    def drop(conn: Connection, *_: Any) -> None:
        conn.disconnect(disconnect.TRANSPORT_CLOSE)


def build_app(*, host: str = "127.0.0.1", port: int = 3000) -> App:
    settings = Settings(
        host=host,
        port=port,
        cors_origins=("*",),
        task_db=":memory:",  # a test server: nothing to keep, and no file in the working directory
        ping_interval=0.3,
        ping_timeout=0.2,
        max_payload=1_000_000,
        connect_timeout=1.0,
        engineio_echo=True,
        recovery_window=0.0,  # the suites check exact CONNECT replies and event arguments
    )
    hub = Hub()
    app = App(hub, settings)

    def send_auth(conn: Connection, auth: Any) -> None:
        conn.emit("auth", auth)

    hub.on_connect()(send_auth)
    hub.on_connect(namespace="/custom")(send_auth)

    @hub.on("message")
    def message(conn: Connection, *args: Any) -> None:
        conn.emit("message-back", *args)

    @hub.on("message-with-ack")
    def message_with_ack(conn: Connection, *args: Any) -> tuple[Any, ...]:
        return args

    register_demo_events(hub)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    app = build_app(host=args.host, port=args.port)
    run(app, on_ready=lambda h, p: print(f"roomcast conformance server listening on http://{h}:{p}", flush=True))


if __name__ == "__main__":
    main()
