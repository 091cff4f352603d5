"""``GET /metrics``: the server's figures in the Prometheus text exposition format (0.0.4).

Imports L0–L4 to read them, ``server.looplag``, ``server.metrics_redis`` (with Redis only) and, for types only,
``server.app``. Nothing here runs on the fan-out path: the hub, the transports, the API and the
native door keep plain integer counters where their decisions are made (``Hub.delivered`` is
one addition per publication and room, never per recipient), and a scrape reads them, the
sizes of the transports' connection sets and the task store. The only timer is the event-loop
lag monitor (``server.looplag``), one callback every half second.

**Why the exposition format is written here, not with prometheus-client** (which DESIGN §11
names): every figure already exists as an ``int`` attribute or a container's length, so the
library's ``Counter``/``Gauge`` objects would be a second copy kept by an ``inc()`` with a
lock on paths that now do one attribute increment; to avoid that, one writes a custom
collector, and the library is left doing only the formatting: the ~40 lines of ``render``
(escaping, numbers, ``HELP``/``TYPE``), held to the format by a strict parser in
``tests/server/test_metrics.py``. Its multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, mmap
files per process) does not see a custom collector's values and stops at one machine,
while the workers of a roomcast server already share a Redis: they add up their figures
there (``server.metrics_redis``). So no dependency is added for it.

**Across processes:** with ``--redis`` and ``--workers N`` every worker writes its figures
to Redis, and a scrape on any worker shows the server's totals (``metrics_redis``): counters
and connection counts summed over the workers (a dead worker's counters stay in the totals),
per-process figures (event-loop lag, rooms, the broker's state) one series per worker with
a ``node`` label, and ``roomcast_nodes`` saying how many workers are summed. One process alone
shows its own figures the same way, with its own ``node``. If Redis does not answer at
scrape time, the scrape adds this worker's figures of now to the others' as last heard,
rather than fail or show totals that drop.

**Who may scrape:** ``/metrics`` is protected like the API (``ApiServer.check_access``): with
``--api-key`` or ``--metrics-key`` configured, one of them (``Authorization: Bearer`` or
``X-API-Key``; the metrics key lets a Prometheus server scrape without the key that
publishes); with neither, loopback clients only, never through a proxy.

``FAMILIES`` lists every metric with its help text; docs/metrics.md is the operator's table.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from typing import TYPE_CHECKING

from roomcast import disconnect
from roomcast.broker.base import SupportsHealth
from roomcast.cluster.base import LocalCluster
from roomcast.disconnect import Disconnect
from roomcast.protocol.engineio_session import Transport
from roomcast.server.looplag import LoopLag
from roomcast.tasks.model import Task, TaskStatus
from roomcast.tasks.store import MAX_PAGE_SIZE
from roomcast.transports.base import HttpRequest, HttpResponse, api_error

if TYPE_CHECKING:
    from roomcast.server.app import App
    from roomcast.server.metrics_redis import SharedMetrics, Snapshot

__all__ = ["Metrics", "FAMILIES", "CONTENT_TYPE", "render", "series", "metrics_group"]

logger = logging.getLogger("roomcast.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

FAMILIES: dict[str, tuple[str, str]] = {
    "roomcast_connections": ("gauge", "Client connections open now, by transport and front door."),
    "roomcast_door_connections": (
        "gauge",
        "TCP connections the native door holds now (keep-alive and polling included).",
    ),
    "roomcast_rooms": ("gauge", "Rooms with members on this process."),
    "roomcast_publications_total": ("counter", "Publications accepted (given a position in their room)."),
    "roomcast_fanouts_total": (
        "counter",
        "Publications fanned out to local members (once per process with members in the room).",
    ),
    "roomcast_deliveries_total": ("counter", "Publications written to a member connection."),
    "roomcast_slow_consumer_disconnects_total": (
        "counter",
        "Members cut during a fan-out because their outbound buffer was full.",
    ),
    "roomcast_disconnects_total": ("counter", "Connections ended, by reason and code (docs/protocol.md table)."),
    "roomcast_bad_requests_total": ("counter", "Malformed or refused input, by where it was refused."),
    "roomcast_auth_refusals_total": (
        "counter",
        "Refused credentials: token (invalid, expired, missing), grant (a room the token does not allow), "
        "api (API key or keyless rule), metrics (this endpoint).",
    ),
    "roomcast_door_refused_connections_total": ("counter", "Connections turned away at accept, by limit."),
    "roomcast_door_accepted_connections_total": (
        "counter",
        "TCP connections the native door admitted since it started (clients without keep-alive show here).",
    ),
    "roomcast_api_requests_total": ("counter", "Backend API requests, by method, route and status."),
    "roomcast_tasks_ended_total": ("counter", "Tasks this server ended, by final status."),
    "roomcast_tasks": ("gauge", "Unfinished tasks in the task store, by status (shared by every node on one Redis)."),
    "roomcast_broker_up": ("gauge", "1 when the broker's live stream is trusted (Redis reachable, not deaf), else 0."),
    "roomcast_broker_deaf_events_total": ("counter", "Times the Redis subscription was found deaf by its heartbeat."),
    "roomcast_broker_resubscribes_total": (
        "counter",
        "Times the Redis subscription was reconnected and every room subscribed again.",
    ),
    "roomcast_event_loop_lag_seconds": ("histogram", "How late the event loop ran a timer due every half second."),
    "roomcast_node_start_time_seconds": ("gauge", "When this process started, in UNIX seconds."),
    "roomcast_nodes": ("gauge", "Processes whose figures this scrape adds up (the workers of this server)."),
}

BAD_REQUEST_KINDS = ("http", "http_limit", "http_timeout", "engineio", "sse", "ws", "api")
AUTH_REFUSAL_KINDS = ("token", "grant", "api", "metrics")
_UNFINISHED = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.STOPPING)
_TASK_PAGES = 10  # unfinished tasks counted at most: 10 pages of MAX_PAGE_SIZE
_TIMEOUT = 2.0  # seconds a scrape waits for Redis or the task store before leaving them out


def series(name: str, **labels: str) -> str:
    """One series as the exposition format names it: ``name{label="value",...}``."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _family(name: str) -> str:
    if name in FAMILIES:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and FAMILIES.get(name[: -len(suffix)], ("",))[0] == "histogram":
            return name[: -len(suffix)]
    raise KeyError(f"{name!r} is not in FAMILIES")


def render(*parts: dict[str, float]) -> str:
    """The exposition text of every series in ``parts``, family by family in ``FAMILIES`` order.

    Each family gets its ``HELP`` and ``TYPE`` once, before its samples; a family without
    samples is left out. A series' samples keep their order within a family (a histogram's
    buckets, then its sum and count).
    """
    grouped: dict[str, list[tuple[str, float]]] = {}
    for part in parts:
        for key, value in part.items():
            grouped.setdefault(_family(key.partition("{")[0]), []).append((key, value))
    lines = []
    for name, (kind, text) in FAMILIES.items():
        samples = grouped.get(name)
        if not samples:
            continue
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        if kind != "histogram":
            samples = sorted(samples)
        lines.extend(f"{key} {_number(value)}" for key, value in samples)
    return "\n".join(lines) + "\n"


def metrics_group(port: int) -> str | None:
    """The workers whose figures a scrape adds up: this machine's processes serving ``port``
    (``None`` for port 0, where every process has a port of its own)."""
    return f"{socket.gethostname()}:{port}" if port else None


class Metrics:
    """The figures of one ``App``, and its ``/metrics`` route.

    Args:
        app: the server to read.
        lag_interval: seconds between two event-loop lag measurements.
        push_interval: with Redis, seconds between two writes of this worker's figures.

    Counted here: ``refused`` (scrapes refused) and ``tasks_ended`` (by final status, through
    the task service's listener). ``start`` and ``aclose`` follow the app's.
    """

    def __init__(self, app: App, *, lag_interval: float = 0.5, push_interval: float = 5.0) -> None:
        self.app = app
        self.node = app.hub.nodes.cluster.node_id
        self.started = time.time()
        self.lag = LoopLag(lag_interval)
        self.refused = 0
        self.tasks_ended: dict[str, int] = {}
        app.tasks.add_listener(self._task_changed)
        settings = app.settings
        group = metrics_group(settings.port)
        self.shared: SharedMetrics | None = None
        if settings.redis_url is not None and group is not None and not isinstance(app.hub.nodes.cluster, LocalCluster):
            from roomcast.server.metrics_redis import SharedMetrics  # redis-py only with --redis

            self.shared = SharedMetrics(
                settings.redis_url, group=group, node=self.node, snapshot=self.snapshot, interval=push_interval
            )

    def start(self) -> None:
        self.started = time.time()
        self.lag.start()
        if self.shared is not None:
            self.shared.start()

    async def aclose(self) -> None:
        """Stop measuring; with Redis, this worker's final figures join its server's totals."""
        self.lag.close()
        if self.shared is not None:
            await self.shared.aclose()

    def _task_changed(self, task: Task) -> None:
        if task.is_terminal:  # a task ends once, so it is counted once
            status = task.status.value
            self.tasks_ended[status] = self.tasks_ended.get(status, 0) + 1

    # -- the route ----------------------------------------------------------------------
    async def handle(self, request: HttpRequest) -> HttpResponse:
        """``GET /metrics``, for whoever may call the API (see the module docstring)."""
        if request.method != "GET":
            return api_error(405, "method_not_allowed", "use GET", [("allow", "GET")])
        refused = self.app.api.check_access(request, also=self.app.settings.metrics_key)
        if refused is not None:
            self.refused += 1
            return refused
        return HttpResponse(200, (await self.scrape()).encode(), [("cache-control", "no-store")], CONTENT_TYPE)

    async def scrape(self) -> str:
        """The exposition text: this server's figures, summed over its workers with Redis."""
        figures, nodes = self.snapshot(), 1
        if self.shared is not None:
            try:
                figures, nodes = await self.shared.exchange(figures)
            except Exception as exc:  # the others as last heard, with this worker's own of now
                logger.warning(
                    "metrics: Redis did not answer (%s); the other workers' are as last heard", type(exc).__name__
                )
                figures, nodes = self.shared.estimate(figures)
        scope = {series("roomcast_nodes"): float(nodes), **await self._unfinished_tasks()}
        return render(figures["c"], figures["g"], figures["p"], scope)

    # -- the figures --------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """This process's figures now: counters, gauges and per-node series (``metrics_redis``)."""
        app = self.app
        hub, door, api = app.hub, app.door_counters, app.api
        counters: dict[str, float] = {
            "roomcast_publications_total": hub.accepted,
            "roomcast_fanouts_total": hub.published,
            "roomcast_deliveries_total": hub.delivered,
            "roomcast_slow_consumer_disconnects_total": hub.slow_disconnects,
            "roomcast_broker_resubscribes_total": hub.stream_losses,  # each lost stream is a resubscribe
            "roomcast_broker_deaf_events_total": getattr(hub.broker, "deaf_events", 0),  # a Redis broker's
        }
        counts: dict[Disconnect | None, int] = dict.fromkeys(disconnect.ALL, 0)
        counts.update(hub.disconnects)
        for reason, n in counts.items():
            if reason is None:
                code, text = "0", "unknown"
            else:  # roomcast's own reasons are fixed texts; an application's (4000-4999) may not be
                code, text = str(reason.code), reason.reason if reason.code < 4000 else "application"
            key = series("roomcast_disconnects_total", reason=text, code=code)
            counters[key] = counters.get(key, 0) + n
        api_bad = sum(n for (_, _, status), n in api.requests.items() if status == 400)
        bad = {
            "http": door.bad_requests,
            "http_limit": door.refused_heads,
            "http_timeout": door.timeouts,
            "engineio": app.engine.bad_requests,
            "sse": app.sse.bad_requests,
            "ws": app.ws.bad_messages,
            "api": api_bad,
        }
        for kind in BAD_REQUEST_KINDS:
            counters[series("roomcast_bad_requests_total", kind=kind)] = bad[kind]
        auth = app.authenticator
        refusals = {
            "token": auth.refused if auth is not None else 0,
            "grant": auth.denied if auth is not None else 0,
            "api": api.refused,
            "metrics": self.refused,
        }
        for kind in AUTH_REFUSAL_KINDS:
            counters[series("roomcast_auth_refusals_total", kind=kind)] = refusals[kind]
        counters[series("roomcast_door_refused_connections_total", limit="max_connections")] = door.refused_connections
        counters[series("roomcast_door_refused_connections_total", limit="max_connections_per_address")] = (
            door.refused_per_address
        )
        for (method, route, answered), n in api.requests.items():
            counters[series("roomcast_api_requests_total", method=method, route=route, status=str(answered))] = n
        for status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT):
            key = series("roomcast_tasks_ended_total", status=status.value)
            counters[key] = self.tasks_ended.get(status.value, 0)

        polling = sum(1 for s in app.engine.sessions.values() if s.transport is Transport.POLLING)
        transports = {
            "socketio-polling": polling,
            "socketio-websocket": len(app.engine.sessions) - polling,
            "sse": len(app.sse.streams),
            "ws": len(app.ws.connections),
        }
        gauges: dict[str, float] = {
            series("roomcast_connections", transport=transport, door=app.door): n for transport, n in transports.items()
        }
        if app.door in ("native", "asgi+native"):  # a native door serves (alone, or in-process)
            gauges[series("roomcast_door_connections", door="native")] = door.open_connections
            counters[series("roomcast_door_accepted_connections_total", door="native")] = door.accepted_connections

        node = self.node
        broker = hub.broker
        healthy = not (isinstance(broker, SupportsHealth) and broker.unhealthy is not None)
        kind = type(broker).__name__.removesuffix("Broker").lower()  # "redis", "memory"
        per_node: dict[str, float] = {
            series("roomcast_rooms", node=node): len(hub.rooms()),
            series("roomcast_broker_up", node=node, broker=kind): 1 if healthy else 0,
            series("roomcast_node_start_time_seconds", node=node): self.started,
        }
        lag = self.lag
        for bound, n in lag.cumulative():
            per_node[series("roomcast_event_loop_lag_seconds_bucket", node=node, le=_number(bound))] = n
        per_node[series("roomcast_event_loop_lag_seconds_sum", node=node)] = lag.sum
        per_node[series("roomcast_event_loop_lag_seconds_count", node=node)] = lag.count
        return {"c": counters, "g": gauges, "p": per_node}

    async def _unfinished_tasks(self) -> dict[str, float]:
        """Unfinished tasks in the store by status, read at scrape time (the store is the truth,
        and with Redis it is every node's); left out if the store does not answer in time."""
        counts = dict.fromkeys(_UNFINISHED, 0)
        cursor: str | None = None
        try:
            async with asyncio.timeout(_TIMEOUT):
                for _ in range(_TASK_PAGES):
                    tasks, cursor = await self.app.tasks.list(
                        status=list(_UNFINISHED), limit=MAX_PAGE_SIZE, cursor=cursor
                    )
                    for task in tasks:
                        counts[task.status] += 1
                    if cursor is None:
                        break
        except Exception as exc:
            logger.warning("metrics: could not count unfinished tasks (%s)", type(exc).__name__)
            return {}
        return {series("roomcast_tasks", status=status.value): n for status, n in counts.items()}
