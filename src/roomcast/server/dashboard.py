"""``/dashboard``: a live view of one roomcast server, for its operator (DESIGN §10).

Imports L0–L4 and, for types only, ``server.app``. The page is three static files under
``roomcast/static/`` (``dashboard.html``, ``dashboard.js``, ``dashboard.css``): no CDN, no build
step. Its script is an ES module on roomcast's own browser module (``/roomcast.js``).

**How the figures reach the page: a room, not polling.** Once a second, and only while a
dashboard watches (the room has members here), the server publishes a stats snapshot to
``STATS_ROOM``; the page follows it and the task list room (``tasks``) over SSE with
``RoomcastClient``. Why a room rather than a JSON endpoint polled by each tab: the page is
then built on what roomcast sells (a subscription that reconnects and resumes), ten open tabs
cost one snapshot a second instead of ten scrapes, and a task's change appears at once (its
summary on ``tasks``) rather than at the next poll. The snapshot holds the server's totals:
with Redis and ``--workers N`` it adds up every worker's figures as ``/metrics`` does
(``Metrics.shared``), and the rooms are every node's (``hub.nodes.rooms``).

**Who may see it.** ``STATS_ROOM`` is under ``ADMIN_ROOM_PREFIX``: the ordinary transports
refuse it to every client (``transports.builtins``), token or not. The dashboard's stream is
a separate ``SseServer`` at ``/dashboard/sse`` whose ``Builtins`` may subscribe to it, behind
the same rule as every other dashboard route:

* with ``--dashboard-key`` or ``--api-key``: a session cookie from ``POST /dashboard/login``
  (the form posts a key once; the page's script never sees it). Either key logs in: the
  dashboard key so an operator can watch the server and stop tasks without the key that
  publishes, the API key because whoever holds it can already do all the dashboard does
  through ``/api/`` (refusing it would protect nothing). The cookie is ``HttpOnly``,
  ``SameSite=Strict``, ``Path=/dashboard``, valid ``SESSION_TTL`` seconds. It is stateless:
  an expiry, a nonce and an HMAC under a key derived from both keys, so every worker
  accepts it, and changing either key ends every session;
* without a key: the API's keyless rule (loopback, no proxy headers, a loopback ``Host`` and
  ``Origin``: ``ApiServer.check_access``), and no login.

**Guessing is slow.** Failed logins are counted per client address (the one
``--forwarded-allow-ips`` resolves behind a proxy) in a bounded ``AttemptLimit``:
``LOGIN_BURST`` wrong keys at once, then one every ``1 / LOGIN_REFILL`` seconds; past that
every login from that address, right key or wrong, gets 429 with ``Retry-After`` until the
bucket refills. Other addresses log in as before.

A refused request gets 401 (the login form, for a browser) or 403. ``POST`` routes also
require a same-origin ``Origin`` when one is sent (CSRF; ``SameSite=Strict`` is the first
wall), and the Stop route a JSON body, which a cross-site form cannot send.

**What the page may do.** Its HTML is served with a ``Content-Security-Policy`` that allows
only ``'self'`` (no inline script or style, no other origin, no framing). Everything the
server does not control (room names, task titles, errors, disconnect reasons) is put into
the page with ``textContent``, never parsed as HTML.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import importlib.resources
import logging
import math
import re
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from roomcast import _json, disconnect
from roomcast.errors import InvalidTransition, ShuttingDown, TaskNotFound
from roomcast.tasks.model import LIST_ROOM, Task, TaskStatus
from roomcast.transports.base import CorsPolicy, HttpRequest, HttpResponse, StreamAccept, api_error
from roomcast.transports.builtins import ADMIN_ROOM_PREFIX
from roomcast.transports.ratelimit import AttemptLimit
from roomcast.transports.sse import SseServer

if TYPE_CHECKING:
    from roomcast.server.app import App
    from roomcast.server.metrics_redis import Snapshot

__all__ = [
    "Dashboard",
    "STATS_ROOM",
    "SESSION_COOKIE",
    "SESSION_TTL",
    "CSP",
    "STATS_EVENT",
    "LOGIN_BURST",
    "LOGIN_REFILL",
    "LOGIN_ADDRESSES",
]

logger = logging.getLogger("roomcast.dashboard")

STATS_ROOM: Final = ADMIN_ROOM_PREFIX + "dashboard"
"""Where the stats snapshot is published; reserved, so no ordinary client can follow it."""
STATS_EVENT: Final = "stats"
SESSION_COOKIE: Final = "roomcast_dashboard"
SESSION_TTL: Final = 15 * 60
"""Seconds a login lasts: short, since a stateless session cannot be revoked before it ends."""
LOGIN_BURST: Final = 10
"""Wrong keys one client address may present at once before its logins get 429."""
LOGIN_REFILL: Final = 1 / 6
"""Wrong keys an address regains per second (10 a minute): a person who mistypes waits
seconds, a guesser gets 14,400 tries a day instead of thousands a second."""
LOGIN_ADDRESSES: Final = 10_000
"""Client addresses whose failed logins are remembered at once (``AttemptLimit.max_keys``)."""
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HTML_HEADERS: Final = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),  # not no-referrer: Chromium then sends Origin: null
    ("cache-control", "no-store"),
]
_STATIC: Final = {
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
_ICON: Final = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<circle cx="8" cy="8" r="7" fill="#2f6fed"/><circle cx="8" cy="8" r="3" fill="#fff"/></svg>'
)
_ROOMS: Final = frozenset({STATS_ROOM, LIST_ROOM})
_TOP_ROOMS = 10
_TASKS_SHOWN = 30
_RECENT = 20  # disconnect and error lines kept
_IDLE_TICKS = 10  # the publisher stops after this many ticks without a watcher here
_STOP_PATH = re.compile(r"/dashboard/api/tasks/([^/]+)/stop")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@functools.cache
def _static(name: str) -> bytes:
    """A file of ``roomcast/static/``, read once per process from the package."""
    return importlib.resources.files("roomcast").joinpath(f"static/{name}").read_bytes()


def _labels(key: str) -> dict[str, str]:
    """The labels of a series key as ``metrics.series`` writes it (``name{a="x",b="y"}``)."""
    _, _, rest = key.partition("{")
    return {
        name: value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        for name, value in _LABEL.findall(rest)
    }


class Dashboard:
    """The ``/dashboard`` routes of one ``App``, and the stats publisher behind them.

    Args:
        app: the server shown.
        interval: seconds between two stats snapshots while someone watches.
    """

    def __init__(self, app: App, *, interval: float = 1.0) -> None:
        self.app = app
        self.interval = interval
        # Its own stream server: same-origin only (no CORS), no token (the login is the check),
        # and the one whose subscriptions may name the reserved stats room.
        self.sse = SseServer(
            app.hub, heartbeat=app.settings.sse_heartbeat, retry_ms=app.settings.sse_retry_ms, cors=CorsPolicy(())
        )
        self.sse.calls.admin = True
        self.logins = AttemptLimit(LOGIN_REFILL, LOGIN_BURST, LOGIN_ADDRESSES)
        """Failed logins per client address."""
        self._publisher: asyncio.Task[None] | None = None
        self._closed = False
        self._previous: tuple[float, dict[str, float]] | None = None
        self.own = {"publications": 0, "deliveries": 0}
        """The stats publications and their deliveries, left out of the figures shown: a
        dashboard that counted itself would show a publish rate of 1/s on an idle server. (With
        several workers each publishing for its own watchers, the others' are not left out.)"""
        self.disconnects: deque[dict[str, Any]] = deque(maxlen=_RECENT)
        self.errors: deque[dict[str, Any]] = deque(maxlen=_RECENT)
        app.tasks.add_listener(self._task_changed)

    # -- sessions -------------------------------------------------------------------------
    def _keys(self) -> list[str]:
        """The keys that log in: the dashboard key and the API key, those set."""
        settings = self.app.settings
        return [key for key in (settings.dashboard_key, settings.api_key) if key]

    def _session_key(self) -> bytes | None:
        keys = self._keys()
        if not keys:
            return None
        material = b"\0".join(key.encode() for key in keys)  # changing either key ends every session
        return hmac.new(material, b"roomcast dashboard session v1", hashlib.sha256).digest()

    def new_session(self, now: float | None = None) -> str:
        """A cookie value valid ``SESSION_TTL`` seconds: ``expiry.nonce.mac``."""
        key = self._session_key()
        assert key is not None, "sessions exist only with a dashboard or API key"
        body = f"{int((now or time.time()) + SESSION_TTL)}.{secrets.token_urlsafe(16)}"
        return body + "." + hmac.new(key, body.encode(), hashlib.sha256).hexdigest()

    def valid_session(self, value: str, now: float | None = None) -> bool:
        key = self._session_key()
        expiry, _, rest = value.partition(".")
        nonce, _, mac = rest.partition(".")
        if key is None or not (expiry.isascii() and expiry.isdigit() and nonce and mac):
            return False
        expected = hmac.new(key, f"{expiry}.{nonce}".encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac.encode(), expected.encode()) and int(expiry) > (now or time.time())

    def _refused(self, request: HttpRequest) -> HttpResponse | None:
        """``None`` when ``request`` may see the dashboard, else the answer that refuses it."""
        if not self._keys():
            return self.app.api.check_access(request)  # keyless: loopback only, as the API
        cookie = _cookie(request, SESSION_COOKIE)
        if cookie is not None and self.valid_session(cookie):
            return None
        return api_error(401, "unauthorized", "log in at /dashboard with the dashboard key or the API key")

    # -- routes ---------------------------------------------------------------------------
    async def handle(self, request: HttpRequest) -> HttpResponse | StreamAccept:
        path = request.path
        if path == "/":
            return HttpResponse(302, b"", [("location", "/dashboard")])  # a browser at the root lands here
        if path in ("/dashboard", "/dashboard/"):
            return self._page(request)
        if path == "/dashboard/favicon.svg":  # so the browser's icon request is no 404 in its console
            return HttpResponse(200, _ICON, [("cache-control", "max-age=86400")], "image/svg+xml")
        if path in _STATIC:
            name, content_type = _STATIC[path]
            return HttpResponse(200, _static(name), [("cache-control", "no-cache")], content_type)
        if path == "/dashboard/login":
            return self._login(request)
        if path == "/dashboard/logout":
            return self._logout(request)
        if path == "/dashboard/sse":
            return await self._stream(request)
        stop = _STOP_PATH.fullmatch(path)
        if stop is not None:
            return await self._stop(request, stop.group(1))
        return api_error(404, "not_found", f"no dashboard route {path[:100]}")

    def _page(self, request: HttpRequest) -> HttpResponse:
        if request.method != "GET":
            return api_error(405, "method_not_allowed", "use GET", [("allow", "GET")])
        refused = self._refused(request)
        if refused is None:
            return HttpResponse(200, _static("dashboard.html"), list(_HTML_HEADERS), "text/html; charset=utf-8")
        if refused.status == 401:  # a browser: the login form, with the status that says why
            return HttpResponse(401, _static("dashboard-login.html"), list(_HTML_HEADERS), "text/html; charset=utf-8")
        return refused

    def _login(self, request: HttpRequest) -> HttpResponse:
        """``POST /dashboard/login`` with ``key`` (a form, or JSON ``{"key"}``): the session cookie."""
        if request.method != "POST":
            return api_error(405, "method_not_allowed", "use POST", [("allow", "POST")])
        cross = _cross_origin(request)
        if cross is not None:
            return cross
        keys = self._keys()
        if not keys:  # nothing to log in with: the keyless rule decides every request
            return self._refused(request) or HttpResponse(303, b"", [("location", "/dashboard")])
        address = request.client[0]
        wait = self.logins.wait(address)
        if wait > 0:  # too many wrong keys from here: not even a right one is looked at
            seconds = math.ceil(wait)
            return api_error(
                429,
                "too_many_requests",
                f"too many failed logins from this address; try again in {seconds} s",
                [("retry-after", str(seconds)), ("cache-control", "no-store")],
            )
        presented = _presented_key(request)
        matches = [presented is not None and hmac.compare_digest(presented.encode(), k.encode()) for k in keys]
        if not any(matches):  # each key compared, whichever matched
            self.logins.charge(address)
            self.app.api.refused += 1  # counted with the API's refusals (auth refused)
            return HttpResponse(401, _static("dashboard-login.html"), list(_HTML_HEADERS), "text/html; charset=utf-8")
        cookie = (
            f"{SESSION_COOKIE}={self.new_session()}; Path=/dashboard; Max-Age={SESSION_TTL}; HttpOnly; SameSite=Strict"
        )
        if request.headers.get("x-forwarded-proto") == "https" or request.headers.get("origin", "").startswith(
            "https:"
        ):
            cookie += "; Secure"
        return HttpResponse(
            303, b"", [("location", "/dashboard"), ("set-cookie", cookie), ("cache-control", "no-store")]
        )

    def _logout(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return api_error(405, "method_not_allowed", "use POST", [("allow", "POST")])
        cross = _cross_origin(request)
        if cross is not None:
            return cross
        cookie = f"{SESSION_COOKIE}=; Path=/dashboard; Max-Age=0; HttpOnly; SameSite=Strict"
        return HttpResponse(303, b"", [("location", "/dashboard"), ("set-cookie", cookie)])

    async def _stream(self, request: HttpRequest) -> HttpResponse | StreamAccept:
        """``GET /dashboard/sse?room=...``: the stats room and the task list, nothing else."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        rooms = tuple(dict.fromkeys(request.query_all.get("room", [])))
        if not rooms or not set(rooms) <= _ROOMS:
            return api_error(400, "bad_request", f"the dashboard streams {sorted(_ROOMS)} only")
        answer = await self.sse.handle(request, rooms)
        if isinstance(answer, StreamAccept) and STATS_ROOM in rooms:
            self._watch()
        return answer

    async def _stop(self, request: HttpRequest, task_id: str) -> HttpResponse:
        """``POST /dashboard/api/tasks/{id}/stop``: the Stop button, as ``/api/tasks/{id}/stop``."""
        if request.method != "POST":
            return api_error(405, "method_not_allowed", "use POST", [("allow", "POST")])
        refused = self._refused(request) or _cross_origin(request)
        if refused is not None:
            return refused
        if request.headers.get("content-type", "").partition(";")[0].strip().lower() != "application/json":
            return api_error(415, "unsupported_media_type", "send Content-Type: application/json")
        try:
            task = await self.app.tasks.request_stop(task_id, by="dashboard")
        except TaskNotFound as exc:
            return api_error(404, "not_found", str(exc))
        except InvalidTransition as exc:
            return api_error(409, "conflict", str(exc))
        except ShuttingDown as exc:
            return api_error(503, "shutting_down", str(exc), [("retry-after", "1")])
        return HttpResponse(200, _json.dumps(task.to_json()), [("cache-control", "no-store")], "application/json")

    # -- the stats publisher ----------------------------------------------------------------
    def _watch(self) -> None:
        """Someone opened the stats stream: publish while anyone here watches."""
        if self._closed or (self._publisher is not None and not self._publisher.done()):
            return
        self._publisher = asyncio.ensure_future(self._publish_loop())

    async def _publish_loop(self) -> None:
        idle = 0
        while idle < _IDLE_TICKS and not self._closed:
            watchers = self.app.hub.rooms().get(STATS_ROOM, 0)
            if watchers:
                idle = 0
                try:
                    await self.app.hub.publish(STATS_ROOM, STATS_EVENT, await self.stats())
                    self.own["publications"] += 1
                    self.own["deliveries"] += watchers
                except Exception as exc:  # a broker hiccup: the next tick tries again
                    logger.warning("dashboard: could not publish the stats (%s)", type(exc).__name__)
            else:
                idle += 1
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        """Stop publishing and end the dashboard's streams (called by ``App`` at shutdown)."""
        self._closed = True
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
        self.sse.close_all(disconnect.SHUTDOWN)

    async def _figures(self) -> tuple[Snapshot, int]:
        metrics = self.app.metrics
        figures = metrics.snapshot()
        if metrics.shared is None:
            return figures, 1
        try:
            return await metrics.shared.exchange(figures)
        except Exception:  # the others as last heard, as /metrics does
            return metrics.shared.estimate(figures)

    async def stats(self) -> dict[str, Any]:
        """The snapshot the page draws: connections, rooms, rates, tasks, recent disconnects."""
        now = time.time()
        figures, nodes = await self._figures()
        counters, gauges = figures["c"], figures["g"]
        connections: dict[str, float] = {}
        for key, value in gauges.items():
            if key.startswith("roomcast_connections{"):
                transport = _labels(key).get("transport", "other")
                connections[transport] = connections.get(transport, 0) + value
        totals = {
            "publications": max(0, counters.get("roomcast_publications_total", 0) - self.own["publications"]),
            "deliveries": max(0, counters.get("roomcast_deliveries_total", 0) - self.own["deliveries"]),
        }
        rates = {name: 0.0 for name in totals}
        previous = self._previous
        if previous is not None and now > previous[0]:
            for name, value in totals.items():
                rates[name] = max(0.0, (value - previous[1].get(name, 0)) / (now - previous[0]))
        self._note_changes(now, counters, previous[1] if previous is not None else None)
        self._previous = (now, {**totals, **{k: v for k, v in counters.items() if _RECENT_FAMILIES.match(k)}})
        listing = await self.app.hub.nodes.rooms()
        rooms = sorted(
            ((name, count, len(users)) for name, (count, users) in listing.items() if name != STATS_ROOM),
            key=lambda r: (-r[1], r[0]),
        )
        tasks, _ = await self.app.tasks.list(limit=_TASKS_SHOWN)
        unfinished = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.STOPPING)
        tasks.sort(key=lambda t: t.status not in unfinished)  # stable: newest first within each
        return {
            "ts": now,
            "node": self.app.metrics.node,
            "nodes": nodes,
            "connections": connections,
            "room_count": len(rooms),
            "rooms": [{"room": n, "connections": c, "users": u} for n, c, u in rooms[:_TOP_ROOMS]],
            "totals": totals,
            "rates": rates,
            "tasks": [_task_line(t.to_json()) for t in tasks],
            "disconnects": list(self.disconnects),
            "errors": list(self.errors),
        }

    def _note_changes(self, now: float, counters: dict[str, float], before: dict[str, float] | None) -> None:
        """Disconnects, refused input and refused credentials since the last snapshot."""
        if before is None:
            return
        for key, value in counters.items():
            match = _RECENT_FAMILIES.match(key)
            if match is None:
                continue
            grew = int(value - before.get(key, 0))
            if grew <= 0:
                continue
            labels = _labels(key)
            if match.group(1) == "disconnects":
                self.disconnects.appendleft(
                    {"ts": now, "reason": labels.get("reason", "?"), "code": labels.get("code", "?"), "count": grew}
                )
            else:
                what = "bad request" if match.group(1) == "bad_requests" else "auth refused"
                self.errors.appendleft(
                    {"ts": now, "kind": f"{what}: {labels.get('kind', '?')}", "message": f"× {grew}"}
                )

    def _task_changed(self, task: Task) -> None:
        if task.status is TaskStatus.FAILED or task.status is TaskStatus.TIMED_OUT:
            message = task.error or task.status.value
            self.errors.appendleft(
                {"ts": time.time(), "kind": f"task {task.id} {task.status.value}", "message": message}
            )


_RECENT_FAMILIES: Final = re.compile(r"roomcast_(disconnects|bad_requests|auth_refusals)_total\{")


def _task_line(task: dict[str, Any]) -> dict[str, Any]:
    return {
        key: task[key] for key in ("id", "kind", "title", "owner", "status", "progress", "step", "message", "error")
    }


def _cookie(request: HttpRequest, name: str) -> str | None:
    for part in request.headers.get("cookie", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def _cross_origin(request: HttpRequest) -> HttpResponse | None:
    """A 403 for a ``POST`` a page of another origin sent (CSRF); ``None`` if same-origin or no ``Origin``."""
    origin = request.headers.get("origin")
    if origin is None:
        return None
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        netloc = ""
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    if origin == "null" or netloc.lower() != host.lower():
        return api_error(403, "forbidden", "the dashboard accepts requests from its own pages only")
    return None


def _presented_key(request: HttpRequest) -> str | None:
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    try:
        if content_type == "application/json":
            value = _json.loads(request.body)
            key = value.get("key") if isinstance(value, dict) else None
        else:
            key = parse_qs(request.body.decode(), max_num_fields=4).get("key", [None])[0]
    except ValueError:
        return None
    return key if isinstance(key, str) and key else None
