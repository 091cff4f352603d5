"""roomcast's benchmark application, in the foreground: this process is the server measured.

    .venv/bin/python bench/server.py --port N --door native|asgi [--redis URL]

Events (the same in every peer under ``bench/``): ``join {room}`` joins and acks ``true``;
``publish {room, event, data}`` emits ``event`` with ``data`` to the room, sender included,
and acks; ``echo`` acks with its data. ``--door native`` serves on roomcast's own asyncio
front door; ``--door asgi`` mounts ``RoomcastApp`` under uvicorn (uvloop, httptools), as an
application adding rooms to an existing ASGI stack would.
"""

from __future__ import annotations

import argparse
import logging

from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.conformance import register_demo_events


def build(port: int, redis_url: str | None = None) -> App:
    """The benchmark app: production defaults, any origin, the demo events; one node of
    several when ``redis_url`` is given (``roomcast serve --redis``)."""
    settings = Settings(
        host="127.0.0.1",
        port=port,
        cors_origins=("*",),
        log_level="warning",
        task_db=":memory:",
        redis_url=redis_url,
        # the harness ends every run with SIGTERM after its load generator has gone: nothing is
        # left to drain, and a drain's grace would only lengthen every run (docs/operations.md)
        shutdown_grace=1.0,
        drain_delay=0.0,
    )
    app = App(None, settings)
    register_demo_events(app.hub)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--door", choices=("native", "asgi"), default="native")
    parser.add_argument("--redis", help="serve as one node of several sharing this Redis")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = build(args.port, args.redis)
    if args.door == "native":
        from roomcast.server.runner import run

        run(app, on_ready=lambda h, p: print(f"roomcast (native) listening on http://{h}:{p}", flush=True))
    else:
        import uvicorn

        from roomcast.server.asgi import RoomcastApp

        uvicorn.run(
            RoomcastApp(app),
            host="127.0.0.1",
            port=args.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            backlog=2048,
        )


if __name__ == "__main__":
    main()
