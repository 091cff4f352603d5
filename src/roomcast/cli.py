"""The ``roomcast`` command: ``roomcast serve`` runs a server on the native front door;
``roomcast publish`` and ``roomcast tail`` talk to a running one (its API, its SSE stream).

Every option is also read from a ``ROOMCAST_*`` environment variable (shown in ``--help``);
an explicit flag wins over the environment. ``serve --config FILE`` reads a TOML file under
both (``server.config_file``). Value rules live in ``Settings``, not in the options' types.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from click.core import ParameterSource

from roomcast import __version__
from roomcast._speedups import speedups
from roomcast.errors import PublishError, TaskError
from roomcast.protocol.sse import CANONICAL, VIEWS
from roomcast.publisher import Publisher
from roomcast.server.app import App
from roomcast.server.config import LOG_FORMATS, LOG_LEVELS, SSE_FORMATS, Settings, SettingsError
from roomcast.server.config_file import ConfigFileError, read_config
from roomcast.server.logs import configure_logging, log_settings
from roomcast.server.proxy import ProxyTrust
from roomcast.server.runner import NEEDS_REDIS, CannotListen, run, run_workers
from roomcast.server.tls import CertificateError, server_context
from roomcast.tail import Tail
from roomcast.tasks.model import TaskEvents, TaskStatus, parse_event_aliases
from roomcast.tasks.service import PayloadMap

__all__ = ["main"]


@click.group()
@click.version_option(__version__, prog_name="roomcast")
def main() -> None:
    """roomcast: rooms over Socket.IO for Python backends."""


_DEFAULTS = Settings()  # the flags default to what Settings() holds: one source for both


@main.command()
@click.option(
    "--config",
    envvar="ROOMCAST_CONFIG",
    show_envvar=True,
    default=None,
    is_eager=True,  # read before the other options, whose defaults it sets
    expose_value=False,
    callback=lambda ctx, param, path: _read_config(ctx, path),
    metavar="FILE",
    help="TOML file of settings, keyed by these options' names with underscores (port = 8001, "
    'cors_origins = ["https://a"]); flags and ROOMCAST_* variables override it.',
)
@click.option(
    "--host",
    envvar="ROOMCAST_HOST",
    default="127.0.0.1",
    show_default=True,
    show_envvar=True,
    help="Address to listen on.",
)
@click.option(
    "--port",
    envvar="ROOMCAST_PORT",
    type=int,
    default=8000,
    show_default=True,
    show_envvar=True,
    help="TCP port (0 picks a free one).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    envvar="ROOMCAST_CORS_ORIGIN",
    multiple=True,
    show_envvar=True,
    help="Browser origin allowed to connect; repeat for several, '*' for any. "
    "None given: same-origin only. In the variable, separate origins with spaces.",
)
@click.option(
    "--ping-interval",
    envvar="ROOMCAST_PING_INTERVAL",
    type=float,
    default=25.0,
    show_default=True,
    show_envvar=True,
    help="Seconds between Engine.IO pings.",
)
@click.option(
    "--ping-timeout",
    envvar="ROOMCAST_PING_TIMEOUT",
    type=float,
    default=20.0,
    show_default=True,
    show_envvar=True,
    help="Seconds a client has to answer a ping.",
)
@click.option(
    "--max-payload",
    envvar="ROOMCAST_MAX_PAYLOAD",
    type=int,
    default=1_000_000,
    show_default=True,
    show_envvar=True,
    help="Largest message or POST body accepted, in bytes.",
)
@click.option(
    "--log-level",
    envvar="ROOMCAST_LOG_LEVEL",
    default="info",
    show_default=True,
    show_envvar=True,
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
)
@click.option(
    "--log-format",
    envvar="ROOMCAST_LOG_FORMAT",
    default=_DEFAULTS.log_format,
    show_default=True,
    show_envvar=True,
    type=click.Choice(list(LOG_FORMATS), case_sensitive=False),
    help="Log lines on stderr as text, or as one JSON object per line (connection and request "
    "fields as keys). Written off the event loop; a stalled stderr drops lines, never delivery.",
)
@click.option(
    "--sse-heartbeat",
    envvar="ROOMCAST_SSE_HEARTBEAT",
    type=float,
    default=15.0,
    show_default=True,
    show_envvar=True,
    help="Seconds between heartbeat comments on SSE streams.",
)
@click.option(
    "--sse-format",
    envvar="ROOMCAST_SSE_FORMAT",
    default=_DEFAULTS.sse_format,
    show_default=True,
    show_envvar=True,
    type=click.Choice(list(SSE_FORMATS), case_sensitive=False),
    help="How SSE streams frame events unless a stream asks with ?format=: 'events' names each "
    'event (addEventListener); \'message\' sends each unnamed with {"event": name, "data": ...} '
    "as its data, for pages that use EventSource.onmessage. Recovery is the same in both.",
)
@click.option(
    "--jwt-secret",
    envvar="ROOMCAST_JWT_SECRET",
    show_envvar=True,
    default=None,
    help="HS256 secret: every client then needs a valid token. Without it (or a public "
    "key) the server runs open and says so.",
)
@click.option(
    "--jwt-public-key",
    "jwt_public_key_file",
    envvar="ROOMCAST_JWT_PUBLIC_KEY",
    show_envvar=True,
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM file of the public key for RS256 / ES256 tokens.",
)
@click.option(
    "--jwt-audience", envvar="ROOMCAST_JWT_AUDIENCE", show_envvar=True, default=None, help="Required 'aud' claim."
)
@click.option(
    "--jwt-issuer", envvar="ROOMCAST_JWT_ISSUER", show_envvar=True, default=None, help="Required 'iss' claim."
)
@click.option(
    "--recovery-window",
    envvar="ROOMCAST_RECOVERY_WINDOW",
    type=float,
    default=0.0,
    show_default=True,
    show_envvar=True,
    help="Seconds a dropped Socket.IO session stays recoverable (connection state recovery, as "
    "the official server's connectionStateRecovery); 0 turns it off.",
)
@click.option(
    "--task-db",
    envvar="ROOMCAST_TASK_DB",
    show_envvar=True,
    default="roomcast-tasks.db",
    show_default=True,
    help="SQLite file the tasks are kept in (':memory:' keeps none across restarts); "
    "not used with --redis, where tasks live in Redis.",
)
@click.option(
    "--task-stop-grace",
    envvar="ROOMCAST_TASK_STOP_GRACE",
    type=float,
    default=5.0,
    show_default=True,
    show_envvar=True,
    help="Seconds a task's producer has to acknowledge a stop before it is marked cancelled anyway.",
)
@click.option(
    "--task-event",
    "task_events",
    envvar="ROOMCAST_TASK_EVENT",
    multiple=True,
    show_envvar=True,
    help="Alias a task event name for one kind: KIND.EVENT=NAME, e.g. crawl.progress=crawl_progress "
    "(EVENT: created, progress, stopping, cancelled, completed, failed, timed_out, updated). "
    "Repeat for several; in the variable, separate them with spaces.",
)
@click.option(
    "--task-payload",
    "task_payloads",
    envvar="ROOMCAST_TASK_PAYLOAD",
    multiple=True,
    show_envvar=True,
    help="What clients receive for one kind of task: KIND=MODULE:FUNCTION, a function task -> JSON "
    "importable from the working directory or PYTHONPATH, e.g. crawl=myapp.wire:crawl_payload. "
    "The API, the dashboard and the store keep the canonical task. Repeat for several.",
)
@click.option(
    "--task-list-room",
    "task_list_rooms",
    envvar="ROOMCAST_TASK_LIST_ROOM",
    multiple=True,
    show_envvar=True,
    type=click.Choice(["kind", "owner"]),
    help="Also publish task summaries to tasks:kind:{kind} and/or tasks:owner:{owner}.",
)
@click.option(
    "--task-keep-days",
    envvar="ROOMCAST_TASK_KEEP_DAYS",
    type=float,
    default=30.0,
    show_default=True,
    show_envvar=True,
    help="Delete finished tasks older than this many days (0 keeps them for ever).",
)
@click.option(
    "--task-keep-count",
    envvar="ROOMCAST_TASK_KEEP_COUNT",
    type=int,
    default=10_000,
    show_default=True,
    show_envvar=True,
    help="Keep at most this many finished tasks, the newest (0: no limit).",
)
@click.option(
    "--task-lease-ttl",
    envvar="ROOMCAST_TASK_LEASE_TTL",
    type=float,
    default=10.0,
    show_default=True,
    show_envvar=True,
    help="With --redis: seconds a node's running tasks outlive its last lease renewal before "
    "another node fails them as lost (renewed every third of it).",
)
@click.option(
    "--shutdown-grace",
    envvar="ROOMCAST_SHUTDOWN_GRACE",
    type=float,
    default=_DEFAULTS.shutdown_grace,
    show_default=True,
    show_envvar=True,
    help="Seconds from SIGTERM to exit: /readyz answers 503 at once, clients are told to reconnect "
    "elsewhere in jittered batches over it, in-process tasks have it to finish. 0: stop at once.",
)
@click.option(
    "--drain-delay",
    envvar="ROOMCAST_DRAIN_DELAY",
    type=float,
    default=_DEFAULTS.drain_delay,
    show_default=True,
    show_envvar=True,
    help="Seconds after SIGTERM that new connections are still accepted, so a load balancer sees "
    "/readyz fail first (at most a quarter of --shutdown-grace).",
)
@click.option(
    "--write-hold",
    envvar="ROOMCAST_WRITE_HOLD",
    type=float,
    default=_DEFAULTS.write_hold,
    show_default=True,
    show_envvar=True,
    help="With --redis: the longest (seconds) writes to clients wait for this node's own publications "
    "on their way through Redis, so a burst goes out together. 0: no wait.",
)
@click.option(
    "--max-rooms-per-connection",
    envvar="ROOMCAST_MAX_ROOMS_PER_CONNECTION",
    type=int,
    default=_DEFAULTS.max_rooms_per_connection,
    show_default=True,
    show_envvar=True,
    help="Rooms a client may subscribe to on one connection.",
)
@click.option(
    "--history-size",
    envvar="ROOMCAST_HISTORY_SIZE",
    type=int,
    default=_DEFAULTS.history_size,
    show_default=True,
    show_envvar=True,
    help="Publications kept per room for recovery (0: none).",
)
@click.option(
    "--history-ttl",
    envvar="ROOMCAST_HISTORY_TTL",
    type=float,
    default=_DEFAULTS.history_ttl,
    show_default=True,
    show_envvar=True,
    help="Seconds a publication stays in history; a quiet room nobody follows is freed after it.",
)
@click.option(
    "--history-room-bytes",
    envvar="ROOMCAST_HISTORY_ROOM_BYTES",
    type=int,
    default=_DEFAULTS.history_room_bytes,
    show_default=True,
    show_envvar=True,
    help="Bytes of history kept per room.",
)
@click.option(
    "--history-bytes",
    envvar="ROOMCAST_HISTORY_BYTES",
    type=int,
    default=_DEFAULTS.history_bytes,
    show_default=True,
    show_envvar=True,
    help="Bytes of history kept in all rooms together; past it the oldest go first.",
)
@click.option(
    "--output-high-water",
    envvar="ROOMCAST_OUTPUT_HIGH_WATER",
    type=int,
    default=_DEFAULTS.output_high_water,
    show_default=True,
    show_envvar=True,
    help="Unread output bytes past which the server stops reading from a client until it reads.",
)
@click.option(
    "--max-buffer-bytes",
    envvar="ROOMCAST_MAX_BUFFER_BYTES",
    type=int,
    default=_DEFAULTS.max_buffer_bytes,
    show_default=True,
    show_envvar=True,
    help="Unread output bytes past which a client is cut (a slow consumer, for publications).",
)
@click.option(
    "--max-request-line",
    envvar="ROOMCAST_MAX_REQUEST_LINE",
    type=int,
    default=_DEFAULTS.max_request_line,
    show_default=True,
    show_envvar=True,
    help="Longest HTTP request target, in bytes (414 past it).",
)
@click.option(
    "--max-header-bytes",
    envvar="ROOMCAST_MAX_HEADER_BYTES",
    type=int,
    default=_DEFAULTS.max_header_bytes,
    show_default=True,
    show_envvar=True,
    help="Most bytes of HTTP request headers (431 past it).",
)
@click.option(
    "--max-headers",
    envvar="ROOMCAST_MAX_HEADERS",
    type=int,
    default=_DEFAULTS.max_headers,
    show_default=True,
    show_envvar=True,
    help="Most HTTP header lines in one request (431 past it).",
)
@click.option(
    "--request-timeout",
    envvar="ROOMCAST_REQUEST_TIMEOUT",
    type=float,
    default=_DEFAULTS.request_timeout,
    show_default=True,
    show_envvar=True,
    help="Seconds an HTTP request's head and body may take to arrive (408 past it).",
)
@click.option(
    "--keepalive-timeout",
    envvar="ROOMCAST_KEEPALIVE_TIMEOUT",
    type=float,
    default=_DEFAULTS.keepalive_timeout,
    show_default=True,
    show_envvar=True,
    help="Seconds an idle keep-alive HTTP connection is kept open.",
)
@click.option(
    "--max-attachments",
    envvar="ROOMCAST_MAX_ATTACHMENTS",
    type=int,
    default=_DEFAULTS.max_attachments,
    show_default=True,
    show_envvar=True,
    help="Binary attachments one Socket.IO packet may carry (and placeholders naming them).",
)
@click.option(
    "--max-connections",
    envvar="ROOMCAST_MAX_CONNECTIONS",
    type=int,
    default=_DEFAULTS.max_connections,
    show_default=True,
    show_envvar=True,
    help="Most connections held at once; one more is answered 503 and closed (0: no limit). "
    "Keep it below the open-file limit (ulimit -n).",
)
@click.option(
    "--max-connections-per-address",
    envvar="ROOMCAST_MAX_CONNECTIONS_PER_ADDRESS",
    type=int,
    default=_DEFAULTS.max_connections_per_address,
    show_default=True,
    show_envvar=True,
    help="Most connections from one client IP address; one more is answered 429 and closed. "
    "0 (off): behind a proxy every client has the proxy's address.",
)
@click.option(
    "--ws-ping-interval",
    envvar="ROOMCAST_WS_PING_INTERVAL",
    type=float,
    default=_DEFAULTS.ws_ping_interval,
    show_default=True,
    show_envvar=True,
    help="Seconds between the WebSocket pings sent on /ws, to find clients that vanished (0: none).",
)
@click.option(
    "--ws-ping-timeout",
    envvar="ROOMCAST_WS_PING_TIMEOUT",
    type=float,
    default=_DEFAULTS.ws_ping_timeout,
    show_default=True,
    show_envvar=True,
    help="Seconds a /ws client has to answer a ping (a pong or any message) before it is closed with 3010.",
)
@click.option(
    "--max-messages-per-second",
    envvar="ROOMCAST_MAX_MESSAGES_PER_SECOND",
    type=float,
    default=_DEFAULTS.max_messages_per_second,
    show_default=True,
    show_envvar=True,
    help="Messages a client may send per second, on average, on /ws and Socket.IO; past it and "
    "--message-burst the connection is closed with 3013 (0: no limit).",
)
@click.option(
    "--message-burst",
    envvar="ROOMCAST_MESSAGE_BURST",
    type=int,
    default=_DEFAULTS.message_burst,
    show_default=True,
    show_envvar=True,
    help="Messages a client may send at once before --max-messages-per-second applies.",
)
@click.option(
    "--redis",
    "redis_url",
    envvar="ROOMCAST_REDIS_URL",
    show_envvar=True,
    default=None,
    help="Share rooms with every process and machine on this Redis (redis:// or rediss://). "
    "Without it this process serves alone.",
)
@click.option(
    "--workers",
    envvar="ROOMCAST_WORKERS",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    show_envvar=True,
    help="Processes serving the port together (SO_REUSEPORT), for more cores; needs --redis. "
    "A worker that dies is started again; SIGTERM or Ctrl-C stops them all.",
)
@click.option(
    "--api-key",
    envvar="ROOMCAST_API_KEY",
    show_envvar=True,
    default=None,
    help="Key backends present to /api/ (Authorization: Bearer or X-API-Key). Without one the "
    "API answers loopback clients only.",
)
@click.option(
    "--metrics-key",
    envvar="ROOMCAST_METRICS_KEY",
    show_envvar=True,
    default=None,
    help="Key a Prometheus server presents to GET /metrics (Authorization: Bearer), besides --api-key, "
    "so it can scrape without the key that publishes. Without either, /metrics answers loopback clients only.",
)
@click.option(
    "--dashboard-key",
    envvar="ROOMCAST_DASHBOARD_KEY",
    show_envvar=True,
    default=None,
    help="Key that logs in to /dashboard besides --api-key, so an operator can watch the server (and stop "
    "tasks) without the key that publishes. Without either, /dashboard answers loopback clients only.",
)
@click.option(
    "--poll-allow",
    "poll_allow",
    envvar="ROOMCAST_POLL_ALLOW",
    multiple=True,
    show_envvar=True,
    help="URL prefix the server may fetch for a task created with 'poll', e.g. "
    "https://api.example.com/jobs/, or '*' for any; repeat for several. None given: any "
    "with --api-key, none without. In the variable, separate them with spaces.",
)
@click.option(
    "--ssl-certfile",
    envvar="ROOMCAST_SSL_CERTFILE",
    show_envvar=True,
    default=None,
    help="PEM certificate chain: serve HTTPS and WSS only. SIGHUP reads it (and the key) again "
    "without dropping a connection.",
)
@click.option(
    "--ssl-keyfile",
    envvar="ROOMCAST_SSL_KEYFILE",
    show_envvar=True,
    default=None,
    help="PEM private key of --ssl-certfile (not needed when the certificate file holds it).",
)
@click.option(
    "--forwarded-allow-ips",
    envvar="ROOMCAST_FORWARDED_ALLOW_IPS",
    show_envvar=True,
    default=",".join(_DEFAULTS.forwarded_allow_ips),
    show_default=True,
    help="Comma-separated addresses or networks of reverse proxies (or '*') whose Forwarded / "
    "X-Forwarded-For / -Proto / -Host headers give the client's address, scheme and Host. The "
    "keyless API refuses forwarded requests whatever this says.",
)
def serve(
    host: str,
    port: int,
    cors_origins: tuple[str, ...],
    ping_interval: float,
    ping_timeout: float,
    max_payload: int,
    log_level: str,
    log_format: str,
    sse_heartbeat: float,
    sse_format: str,
    jwt_secret: str | None,
    jwt_public_key_file: str | None,
    jwt_audience: str | None,
    jwt_issuer: str | None,
    recovery_window: float,
    task_db: str,
    task_stop_grace: float,
    task_events: tuple[str, ...],
    task_payloads: tuple[str, ...],
    task_list_rooms: tuple[str, ...],
    task_keep_days: float,
    task_keep_count: int,
    task_lease_ttl: float,
    shutdown_grace: float,
    drain_delay: float,
    write_hold: float,
    max_rooms_per_connection: int,
    history_size: int,
    history_ttl: float,
    history_room_bytes: int,
    history_bytes: int,
    output_high_water: int,
    max_buffer_bytes: int,
    max_request_line: int,
    max_header_bytes: int,
    max_headers: int,
    request_timeout: float,
    keepalive_timeout: float,
    max_attachments: int,
    max_connections: int,
    max_connections_per_address: int,
    ws_ping_interval: float,
    ws_ping_timeout: float,
    max_messages_per_second: float,
    message_burst: int,
    redis_url: str | None,
    workers: int,
    api_key: str | None,
    metrics_key: str | None,
    dashboard_key: str | None,
    poll_allow: tuple[str, ...],
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    forwarded_allow_ips: str,
) -> None:
    """Serve Socket.IO, SSE and the plain WebSocket until Ctrl-C or SIGTERM."""
    if workers > 1 and redis_url is None:  # refused before anything else: nothing starts
        _usage_error(NEEDS_REDIS.format(workers=workers))
    if ssl_keyfile and not ssl_certfile:
        _usage_error("--ssl-keyfile needs --ssl-certfile")
    if ssl_certfile:
        try:  # checked here so a bad file is one line and status 2, not a traceback
            server_context(ssl_certfile, ssl_keyfile)
        except CertificateError as exc:
            _usage_error(str(exc))
    proxies = tuple(entry.strip() for entry in forwarded_allow_ips.split(",") if entry.strip())
    try:
        ProxyTrust(proxies)
    except ValueError as exc:
        _usage_error(str(exc))
    configure_logging(log_level, log_format.lower())  # stderr through a bounded queue (server.logs)
    settings = _built(  # Settings checks every value; a refusal names the flag or the file key
        Settings,
        host=host,
        port=port,
        cors_origins=cors_origins,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        max_payload=max_payload,
        log_level=log_level.lower(),
        log_format=log_format.lower(),
        sse_heartbeat=sse_heartbeat,
        sse_format=sse_format.lower(),
        jwt_secret=jwt_secret,
        jwt_public_key_file=jwt_public_key_file,
        jwt_audience=jwt_audience,
        jwt_issuer=jwt_issuer,
        max_rooms_per_connection=max_rooms_per_connection,
        history_size=history_size,
        history_ttl=history_ttl,
        history_room_bytes=history_room_bytes,
        history_bytes=history_bytes,
        output_high_water=output_high_water,
        max_buffer_bytes=max_buffer_bytes,
        max_request_line=max_request_line,
        max_header_bytes=max_header_bytes,
        max_headers=max_headers,
        request_timeout=request_timeout,
        keepalive_timeout=keepalive_timeout,
        max_attachments=max_attachments,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
        ws_ping_interval=ws_ping_interval,
        ws_ping_timeout=ws_ping_timeout,
        max_messages_per_second=max_messages_per_second,
        message_burst=message_burst,
        redis_url=redis_url,
        api_key=api_key,
        metrics_key=metrics_key,
        dashboard_key=dashboard_key,
        poll_allow=poll_allow or None,
        recovery_window=recovery_window,
        task_db=task_db,
        task_stop_grace=task_stop_grace,
        task_events=_task_aliases(task_events),
        task_payloads=_task_payloads(task_payloads),
        task_list_rooms=tuple(dict.fromkeys(task_list_rooms)),
        task_keep_days=task_keep_days or None,
        task_keep_count=task_keep_count or None,
        task_lease_ttl=task_lease_ttl,
        shutdown_grace=shutdown_grace,
        drain_delay=drain_delay,
        write_hold=write_hold,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        forwarded_allow_ips=proxies,
    )

    def ready(bound_host: str, bound_port: int) -> None:
        base = f"{'https' if ssl_certfile else 'http'}://{bound_host}:{bound_port}"
        click.echo(f"roomcast {__version__} listening on {base}")
        click.echo(f"  Socket.IO  {base}/socket.io/")
        click.echo(f"  SSE        {base}/sse?room=...")
        click.echo(f"  WebSocket  {base.replace('http', 'ws', 1)}/ws  (roomcast.v1)")
        click.echo(f"  API        {base}/api/  (OpenAPI: {base}/api/openapi.json)")
        click.echo(f"  browser    {base}/roomcast.js  (ES module for pages on /ws or SSE)")
        click.echo(f"  health     {base}/healthz")
        click.echo(f"  readiness  {base}/readyz")
        click.echo(f"  metrics    {base}/metrics  (Prometheus)")
        if settings.dashboard_key:
            login = "log in with the dashboard key" + (" or the API key" if settings.api_key else "")
        else:
            login = "log in with the API key" if settings.api_key else "this machine only: no --api-key"
        click.echo(f"  dashboard  {base}/dashboard  ({login})")
        click.echo(f"  fan-out    {speedups().describe()}")  # the compiled path or why not (roomcast._speedups)
        if workers > 1:
            click.echo(f"  workers    {workers} processes on this port (SO_REUSEPORT), rooms shared through Redis")

    try:
        app = App(settings=settings)  # with --workers too: checked once here, not N times
    except ValueError as exc:  # an unsafe or inconsistent auth configuration
        raise click.BadParameter(str(exc)) from exc
    log_settings(settings)  # the effective values, secrets masked: once, even for N workers
    if workers > 1:
        del app  # never started: each worker builds its own, with its own node identity
        try:
            code = run_workers(settings, workers, on_ready=ready)
        except CannotListen as exc:  # the port is taken, or the address is not this machine's
            _usage_error(str(exc))
        raise SystemExit(code)
    try:
        run(app, on_ready=ready)
    except CannotListen as exc:  # as with --workers: one line, status 2, no traceback
        _usage_error(str(exc))
    except TaskError as exc:  # the task database is another running server's, or unreadable
        raise click.ClickException(str(exc)) from None


def _usage_error(message: str) -> NoReturn:
    """A refused combination of options: one line on stderr and exit status 2."""
    click.echo(f"roomcast serve: {message}", err=True)
    raise SystemExit(2)


def _read_config(ctx: click.Context, path: str | None) -> None:
    """``--config``: the file's values become the other options' defaults (click's
    ``default_map``), so a flag or a ``ROOMCAST_*`` variable still wins over the file."""
    if path is None:
        return
    try:
        values = read_config(path, ctx.command.params, ctx)
    except ConfigFileError as exc:
        _usage_error(str(exc))
    ctx.default_map = {**(ctx.default_map or {}), **values}
    ctx.meta[_CONFIG_PATH] = path


_CONFIG_PATH = "roomcast.config_path"

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _built(make: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``make(...)`` (``Settings``), its ``SettingsError`` told where the user wrote each bad
    value: the flag, the ``ROOMCAST_*`` variable or the config file's key; one line, status 2."""
    try:
        return make(*args, **kwargs)
    except SettingsError as exc:
        ctx = click.get_current_context()
        options = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
        _usage_error("; ".join(f"{_where(ctx, options.get(name), name)} {reason}" for name, reason in exc.problems))


def _where(ctx: click.Context, option: click.Option | None, name: str) -> str:
    if option is None:  # a rule between settings, or a field serve has no flag for
        return name
    source = ctx.get_parameter_source(name)
    if source is ParameterSource.DEFAULT_MAP:
        return f"{ctx.meta.get(_CONFIG_PATH, 'the config file')}: {name}"
    if source is ParameterSource.ENVIRONMENT and isinstance(option.envvar, str):
        return option.envvar
    return max(option.opts, key=len)  # the long flag


def _task_aliases(specs: tuple[str, ...]) -> dict[str, TaskEvents]:
    try:
        return parse_event_aliases(specs)
    except TaskError as exc:
        raise click.BadParameter(str(exc), param_hint="--task-event") from exc


def _task_payloads(specs: tuple[str, ...]) -> dict[str, PayloadMap]:
    """``KIND=MODULE:FUNCTION`` specs as payload maps, imported the way uvicorn finds an app:
    the working directory first on the path, so ``roomcast serve`` in a project finds its
    modules. A module-level function also reaches ``--workers`` processes (by reference)."""
    maps: dict[str, PayloadMap] = {}
    for spec in specs:
        kind, sep, target = (part.strip() for part in spec.partition("="))
        module_name, colon, name = target.partition(":")
        if not (sep and colon and kind and module_name and name):
            raise click.BadParameter(
                f"{spec!r} must look like KIND=MODULE:FUNCTION (crawl=myapp.wire:crawl_payload)",
                param_hint="--task-payload",
            )
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            found: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise click.BadParameter(
                f"{spec!r}: cannot import {module_name!r} ({exc})", param_hint="--task-payload"
            ) from None
        for part in name.split("."):
            found = getattr(found, part, None)
        if not callable(found):
            raise click.BadParameter(f"{spec!r}: {target!r} is not a function", param_hint="--task-payload")
        maps[kind] = found
    return maps


_url_option = click.option(
    "--url",
    envvar="ROOMCAST_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    show_envvar=True,
    help="Base URL of the running roomcast server.",
)


_api_key_option = click.option(
    "--api-key",
    envvar="ROOMCAST_API_KEY",
    show_envvar=True,
    default=None,
    help="The server's API key; without one, only a server on this machine answers.",
)

_timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the server.",
)


def _publisher(url: str, api_key: str | None, timeout: float) -> Publisher:
    """A ``Publisher`` for the options, or a usage error naming ``--url``."""
    try:
        return Publisher(url, api_key=api_key, timeout=timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--url'") from None


def _refused(exc: PublishError) -> NoReturn:
    """The server refused or could not be reached: its message on stderr, exit 1."""
    click.echo(f"error: {exc.message}", err=True)
    raise SystemExit(1)


def _parse_json(text: str) -> Any:
    """The JSON argument, or a usage error saying why not (NaN and Infinity are not JSON)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="'JSON'") from None


@main.command()
@click.argument("room")
@click.argument("event")
@click.argument("data_json", metavar="[JSON]", required=False)
@_url_option
@_api_key_option
@_timeout_option
def publish(room: str, event: str, data_json: str | None, url: str, api_key: str | None, timeout: float) -> None:
    """Publish EVENT to ROOM; JSON is its data (left out: an event with no arguments).

    Prints where it landed as one JSON line {"room", "epoch", "offset"}; exits 1 with the
    server's message when it refuses or cannot be reached.
    """
    data = _parse_json(data_json) if data_json is not None else None
    publisher = _publisher(url, api_key, timeout)
    try:
        if data_json is None:
            result = publisher.publish(room, event)
        else:
            result = publisher.publish(room, event, data)
    except PublishError as exc:
        _refused(exc)
    click.echo(
        json.dumps(
            {"room": result.room, "epoch": result.epoch, "offset": result.offset},
            separators=(",", ":"),
            ensure_ascii=False,
        )
    )


@main.group()
def tasks() -> None:
    """List, show and stop the tasks of a running server (its /api/tasks routes)."""


_TASK_STATUSES = [status.value for status in TaskStatus]


@tasks.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(_TASK_STATUSES),
    help="Only tasks in this status; repeat for several.",
)
@click.option("--kind", default=None, help="Only tasks of this kind.")
@click.option("--owner", default=None, help="Only this owner's tasks.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many tasks.")
@_url_option
@_api_key_option
@_timeout_option
def tasks_list(
    statuses: tuple[str, ...],
    kind: str | None,
    owner: str | None,
    limit: int,
    url: str,
    api_key: str | None,
    timeout: float,
) -> None:
    """One line per task, newest first: '<id> <status> <progress or -> <kind> <title>'."""
    publisher = _publisher(url, api_key, timeout)
    try:
        page = publisher.list_tasks(status=statuses or None, kind=kind, owner=owner, limit=limit)
    except PublishError as exc:
        _refused(exc)
    for task in page["tasks"]:
        progress = task.get("progress")
        shown = "-" if progress is None else f"{progress:g}"
        click.echo(f"{task['id']} {task['status']} {shown} {task.get('kind', '')} {task.get('title') or ''}".rstrip())


@tasks.command("show")
@click.argument("task_id", metavar="ID")
@_url_option
@_api_key_option
@_timeout_option
def tasks_show(task_id: str, url: str, api_key: str | None, timeout: float) -> None:
    """Print task ID as indented JSON; exits 1 when there is no such task."""
    publisher = _publisher(url, api_key, timeout)
    try:
        task = publisher.get_task(task_id)
    except PublishError as exc:
        _refused(exc)
    click.echo(json.dumps(task, indent=2, ensure_ascii=False))


@tasks.command("stop")
@click.argument("task_id", metavar="ID")
@click.option("--by", default=None, help="Who asks (goes into the task's message).")
@_url_option
@_api_key_option
@_timeout_option
def tasks_stop(task_id: str, by: str | None, url: str, api_key: str | None, timeout: float) -> None:
    """Ask task ID to stop and print its new status (stopping, or cancelled if it was pending).

    Exits 1 when there is no such task or it has already ended.
    """
    publisher = _publisher(url, api_key, timeout)
    try:
        task = publisher.stop_task(task_id, by=by)
    except PublishError as exc:
        _refused(exc)
    click.echo(task["status"])


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops ``tail`` as Ctrl-C does: a clean exit 0, not a traceback."""
    raise KeyboardInterrupt


@main.command()
@click.argument("rooms", nargs=-1, required=True, metavar="ROOM [ROOM...]")
@_url_option
@click.option(
    "--token",
    envvar="ROOMCAST_TOKEN",
    show_envvar=True,
    default=None,
    help="JWT for a server that checks tokens (sent as ?token=).",
)
@click.option(
    "--view",
    type=click.Choice(VIEWS),
    default=CANONICAL,
    show_default=True,
    help="canonical: each event in the application's own form (a task as /api/tasks/ID shows it, "
    "not as a --task-payload map sends it to clients); needs the API's access (--api-key, or no key "
    "on a server on this machine). client: what clients receive.",
)
@_api_key_option
@click.option(
    "--retry-max",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Longest delay between reconnect attempts, in seconds (they start at 0.5 s and double, with full jitter).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Reconnect when nothing, not even a heartbeat, arrives for this many seconds.",
)
def tail(
    rooms: tuple[str, ...],
    url: str,
    token: str | None,
    view: str,
    api_key: str | None,
    retry_max: float,
    idle_timeout: float,
) -> None:
    """Print the events of ROOMs as they come, one line each: '<event> <data-json>'.

    Reconnects by itself when the connection drops and prints what was missed exactly once.
    Exits 0 when the rooms are finished or on Ctrl-C / SIGTERM, 1 when the server refuses
    (bad token, not allowed) or ends the stream for good. Diagnostics go to stderr.
    """
    try:
        follower = Tail(
            url,
            rooms,
            token=token,
            view=view,
            api_key=api_key,
            retry_max=retry_max,
            idle_timeout=idle_timeout,
            out=click.echo,
            note=lambda line: click.echo(f"roomcast tail: {line}", err=True),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--url'") from None
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = follower.run()
    except KeyboardInterrupt:
        code = 0
    except BrokenPipeError:  # `roomcast tail a | head`: the reader is gone, so are we
        code = 0
    raise SystemExit(code)
