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
@click.option("--sse-heartbeat", envvar="ROOMCAST_SSE_HEARTBEAT", type=float, default=15.0, show_default=True,
              show_envvar=True, help="Seconds between heartbeat comments on SSE streams.")
@click.option("--jwt-secret", envvar="ROOMCAST_JWT_SECRET", show_envvar=True, default=None,
              help="HS256 secret: every client then needs a valid token. Without it (or a public "
                   "key) the server runs open and says so.")
@click.option("--jwt-public-key", "jwt_public_key_file", envvar="ROOMCAST_JWT_PUBLIC_KEY", show_envvar=True,
              default=None, type=click.Path(exists=True, dir_okay=False),
              help="PEM file of the public key for RS256 / ES256 tokens.")
@click.option("--jwt-audience", envvar="ROOMCAST_JWT_AUDIENCE", show_envvar=True, default=None,
              help="Required 'aud' claim.")
@click.option("--jwt-issuer", envvar="ROOMCAST_JWT_ISSUER", show_envvar=True, default=None,
              help="Required 'iss' claim.")
@click.option("--recovery-window", envvar="ROOMCAST_RECOVERY_WINDOW", type=click.FloatRange(min=0), default=0.0,
              show_default=True, show_envvar=True,
              help="Seconds a dropped Socket.IO session stays recoverable (connection state recovery, as "
                   "the official server's connectionStateRecovery); 0 turns it off.")
@click.option("--api-key", envvar="ROOMCAST_API_KEY", show_envvar=True, default=None,
              help="Key backends present to /api/ (Authorization: Bearer or X-API-Key). Without one the "
                   "API answers loopback clients only.")
def serve(
    host: str,
    port: int,
    cors_origins: tuple[str, ...],
    ping_interval: float,
    ping_timeout: float,
    max_payload: int,
    log_level: str,
    sse_heartbeat: float,
    jwt_secret: str | None,
    jwt_public_key_file: str | None,
    jwt_audience: str | None,
    jwt_issuer: str | None,
    recovery_window: float,
    api_key: str | None,
) -> None:
    """Serve Socket.IO, SSE and the plain WebSocket until Ctrl-C or SIGTERM."""
    if ping_interval <= 0 or ping_timeout <= 0 or sse_heartbeat <= 0:
        raise click.BadParameter("ping interval, ping timeout and SSE heartbeat must be > 0")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        host=host,
        port=port,
        cors_origins=cors_origins,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        max_payload=max_payload,
        log_level=log_level.lower(),
        sse_heartbeat=sse_heartbeat,
        jwt_secret=jwt_secret,
        jwt_public_key_file=jwt_public_key_file,
        jwt_audience=jwt_audience,
        jwt_issuer=jwt_issuer,
        api_key=api_key,
        recovery_window=recovery_window,
    )

    def ready(bound_host: str, bound_port: int) -> None:
        base = f"http://{bound_host}:{bound_port}"
        click.echo(f"roomcast {__version__} listening on {base}")
        click.echo(f"  Socket.IO  {base}/socket.io/")
        click.echo(f"  SSE        {base}/sse?room=...")
        click.echo(f"  WebSocket  {base.replace('http', 'ws', 1)}/ws  (roomcast.v1)")
        click.echo(f"  API        {base}/api/  (OpenAPI: {base}/api/openapi.json)")
        click.echo(f"  health     {base}/healthz")
        click.echo(f"  readiness  {base}/readyz")

    try:
        app = App(settings=settings)
    except ValueError as exc:  # an unsafe or inconsistent auth configuration
        raise click.BadParameter(str(exc)) from exc
    run(app, on_ready=ready)
