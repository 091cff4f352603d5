"""roomcast's benchmark application, in the foreground: this process is the server measured.

    .venv/bin/python bench/server.py --port N --door native|asgi|asgi-native [--redis URL]
        [--ssl-certfile F --ssl-keyfile F] [--log-level info --log-format json]

Events (the same in every peer under ``bench/``): ``join {room}`` joins and acks ``true``;
``publish {room, event, data}`` emits ``event`` with ``data`` to the room, sender included,
and acks; ``echo`` acks with its data. ``--door native`` serves on roomcast's own asyncio
front door; ``--door asgi`` mounts ``RoomcastApp`` under uvicorn (uvloop, httptools), as an
application adding rooms to an existing ASGI stack would; ``--door asgi-native`` runs that same
uvicorn (on a port of its own) with ``RoomcastApp(native_port=N)``, so the clients connect to
the native door inside the ASGI process, as a FastAPI app serving its real-time traffic
there would. ``--ssl-certfile``/``--ssl-keyfile``
serve TLS on the native door (the ``roomcast-tls`` row); ``--log-level``/``--log-format`` log
as ``roomcast serve`` does (``server.logs``: a bounded queue, a writer thread), so the
``roomcast-observed`` row pays for a connection line per open and close like production.
"""

from __future__ import annotations

import argparse
import logging

from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.conformance import register_demo_events
from roomcast.server.logs import configure_logging


def build(
    port: int,
    redis_url: str | None = None,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    log_level: str = "warning",
    log_format: str = "text",
) -> App:
    """The benchmark app: production defaults, any origin, the demo events; one node of
    several when ``redis_url`` is given (``roomcast serve --redis``)."""
    settings = Settings(
        host="127.0.0.1",
        port=port,
        cors_origins=("*",),
        log_level=log_level,
        log_format=log_format,
        task_db=":memory:",
        redis_url=redis_url,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        shutdown_grace=0,  # the bench measures serving, not stopping: no drain when a run ends
    )
    app = App(None, settings)
    register_demo_events(app.hub)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--door", choices=("native", "asgi", "asgi-native"), default="native")
    parser.add_argument("--redis", help="serve as one node of several sharing this Redis")
    parser.add_argument("--ssl-certfile", help="serve TLS with this certificate (native door)")
    parser.add_argument("--ssl-keyfile", help="the certificate's private key")
    parser.add_argument("--log-level", default=None, help="log as roomcast serve does, at this level")
    parser.add_argument("--log-format", default="text", choices=("text", "json"))
    args = parser.parse_args()
    if args.log_level is None:
        logging.basicConfig(level=logging.WARNING)
    else:
        configure_logging(args.log_level, args.log_format)
    app = build(
        args.port,
        args.redis,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        log_level=args.log_level or "warning",
        log_format=args.log_format,
    )
    if args.door == "native":
        from roomcast.server.runner import run

        run(app, on_ready=lambda h, p: print(f"roomcast (native) listening on http://{h}:{p}", flush=True))
    else:
        import uvicorn

        from roomcast.server.asgi import RoomcastApp

        in_process = args.door == "asgi-native"  # the clients' port is the native door's
        uvicorn.run(
            RoomcastApp(app, native_port=args.port if in_process else None),
            host="127.0.0.1",
            port=0 if in_process else args.port,
            lifespan="on",  # what opens the native door
            loop="uvloop",
            http="httptools",
            log_level="warning",
            backlog=2048,
        )


if __name__ == "__main__":
    main()
