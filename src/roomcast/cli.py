"""The ``roomcast`` command: ``roomcast serve`` runs a server on the native front door.

Every option is also read from a ``ROOMCAST_*`` environment variable (shown in ``--help``);
an explicit flag wins over the environment.
"""

from __future__ import annotations

import logging

import click

from roomcast import __version__
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.runner import run

__all__ = ["main"]


@click.group()
@click.version_option(__version__, prog_name="roomcast")
def main() -> None:
    """roomcast: rooms over Socket.IO for Python backends."""


@main.command()
@click.option("--host", envvar="ROOMCAST_HOST", default="127.0.0.1", show_default=True, show_envvar=True,
              help="Address to listen on.")
@click.option("--port", envvar="ROOMCAST_PORT", type=int, default=8000, show_default=True, show_envvar=True,
              help="TCP port (0 picks a free one).")
@click.option("--cors-origin", "cors_origins", envvar="ROOMCAST_CORS_ORIGIN", multiple=True, show_envvar=True,
              help="Browser origin allowed to connect; repeat for several, '*' for any. "
                   "None given: same-origin only. In the variable, separate origins with spaces.")
@click.option("--ping-interval", envvar="ROOMCAST_PING_INTERVAL", type=float, default=25.0, show_default=True,
              show_envvar=True, help="Seconds between Engine.IO pings.")
@click.option("--ping-timeout", envvar="ROOMCAST_PING_TIMEOUT", type=float, default=20.0, show_default=True,
              show_envvar=True, help="Seconds a client has to answer a ping.")
@click.option("--max-payload", envvar="ROOMCAST_MAX_PAYLOAD", type=click.IntRange(min=1), default=1_000_000,
              show_default=True, show_envvar=True, help="Largest message or POST body accepted, in bytes.")
@click.option("--log-level", envvar="ROOMCAST_LOG_LEVEL", default="info", show_default=True, show_envvar=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def serve(
    host: str,
    port: int,
    cors_origins: tuple[str, ...],
    ping_interval: float,
    ping_timeout: float,
    max_payload: int,
    log_level: str,
) -> None:
    """Serve Socket.IO at /socket.io/ and health at /healthz until Ctrl-C or SIGTERM."""
    if ping_interval <= 0 or ping_timeout <= 0:
        raise click.BadParameter("ping interval and timeout must be > 0")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        host=host,
        port=port,
        cors_origins=cors_origins,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        max_payload=max_payload,
        log_level=log_level.lower(),
    )

    def ready(bound_host: str, bound_port: int) -> None:
        base = f"http://{bound_host}:{bound_port}"
        click.echo(f"roomcast {__version__} listening on {base}")
        click.echo(f"  Socket.IO  {base}/socket.io/")
        click.echo(f"  health     {base}/healthz")
        click.echo(f"  readiness  {base}/readyz")

    run(App(settings=settings), on_ready=ready)
