"""The backend HTTP API under ``/api/``: publish, broadcast, rooms, history, presence, disconnect.

Imports L0–L4. For application backends, not browsers: every route needs the API key
(``Authorization: Bearer <key>`` or ``X-API-Key``), compared in constant time. With no key
configured the API answers local programs only, so a development server is usable from the
same machine and never from the network by accident. A loopback peer address alone does not
prove that (403 otherwise, naming ``--api-key``):

* a request with forwarding headers (``X-Forwarded-For``, ``Forwarded``, ``X-Real-IP``…) came
  through a proxy on this host, e.g. an nginx that makes the server public;
* a ``Host`` other than ``localhost``, ``127.x.x.x`` or ``[::1]`` is a browser that was sent
  here by a DNS-rebinding name;
* an ``Origin`` other than a loopback one is a page on another site (CSRF).

Every ``POST`` body must be ``Content-Type: application/json`` (415 otherwise), keyed or not: a
page can send ``text/plain`` anywhere without asking, but a JSON body makes the browser ask
first (a CORS preflight, which this API never grants). Authorization comes before anything
about the resource: a refused request never learns whether a task exists.

Errors are JSON ``{"error": {"code", "message"}}`` with the status that says what went wrong;
query parameters are parsed strictly (a bad one is a 400, never a 500). The OpenAPI document
(``GET /api/openapi.json``, no key needed) describes every route.

``POST /api/tasks`` with a ``"poll"`` spec makes the server GET the URL it names
(``roomcast.tasks.poller``), so the URLs are limited to ``poll_allow`` (``--poll-allow``): URL
prefixes or ``*``. By default a keyed server follows any URL (the key holder is a trusted
backend) and a keyless one none, since any local program could otherwise make the server
fetch internal addresses for it.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from roomcast import _json, disconnect
from roomcast.errors import (
    BrokerUnavailable,
    InvalidPublication,
    InvalidTransition,
    ShuttingDown,
    TaskError,
    TaskExists,
    TaskNotFound,
)
from roomcast.hub.hub import Hub
from roomcast.server.openapi import OPENAPI
from roomcast.tasks.model import TaskStatus, check_task_fields, check_task_id
from roomcast.tasks.poller import PollSpec, TaskPoller
from roomcast.tasks.service import TaskService
from roomcast.tasks.store import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from roomcast.transports.base import HttpRequest, HttpResponse, api_error
from roomcast.types import MAX_NAME_LENGTH, MAX_OFFSET, Publication, StreamPosition

__all__ = ["ApiServer", "OPENAPI", "route_label"]

logger = logging.getLogger("roomcast.api")

MAX_BROADCAST_ROOMS = 1000

FORWARDING_HEADERS: Final = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP")
"""Headers a reverse proxy adds: their presence means the loopback peer is not the client."""

_KEYLESS = "no API key is configured (--api-key), so the API answers loopback clients only"

Route = Callable[["ApiServer", HttpRequest], Awaitable[HttpResponse]]


class BadRequest(Exception):
    """A request the API refuses with 400; ``str(exc)`` is the message."""


def _ok(body: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, _json.dumps(body), [], "application/json")


def _history_data(publication: Publication) -> Any:
    """A publication's arguments as the JSON transports carry them: binary attachments as
    ``{"$binary": "<base64>"}`` (``_json.json_safe``), embedded as serialised when published."""
    if publication.encoded is not None:
        return _json.embed(publication.encoded)
    return _json.json_safe(list(publication.data))


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise BadRequest(f"'{what}' must be a string of 1 to {MAX_NAME_LENGTH} characters")
    return value


def _body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        raise BadRequest("a JSON object body is required")
    try:
        value = _json.loads(request.body)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_authority(authority: str) -> bool:
    """Whether ``host[:port]`` (a ``Host`` header, an origin's authority) names this machine:
    ``localhost``, ``127.x.x.x`` or ``[::1]``. Anything else, even a name that resolves to
    127.0.0.1, is how a DNS-rebinding page reaches a loopback server, so it does not count.
    Parsed by hand, strictly: ``urlsplit`` lets ``[::1]x`` or ``127.0.0.1/x`` through."""
    host, port = authority, ""
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            return False
        port = rest[1:]
    elif ":" in authority:
        host, _, port = authority.partition(":")
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        return False
    return host.lower() == "localhost" or _is_loopback(host)


def _loopback_origin(origin: str) -> bool:
    """Whether a browser ``Origin`` is a page served from this machine (``null`` is not)."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and origin == f"{parts.scheme}://{parts.netloc}"
        and _loopback_authority(parts.netloc)
    )


def _is_json(content_type: str) -> bool:
    """``application/json``, with parameters (``; charset=utf-8``) or not."""
    return content_type.partition(";")[0].strip().lower() == "application/json"


def _integer(request: HttpRequest, name: str, default: int, *, minimum: int, maximum: int) -> int:
    """Query parameter ``name`` as an integer from ``minimum`` to ``maximum``; absent: ``default``.

    ASCII digits only, their count bounded before ``int`` sees them: ``str.isdigit`` accepts
    ``²`` (which ``int`` refuses) and ``int`` refuses over 4300 digits; either was a 500.
    """
    text = request.query.get(name)
    if text is None:
        return default
    digits = text.lstrip("0")
    if (
        not (text.isascii() and text.isdigit())
        or len(digits) > len(str(maximum))
        or not (minimum <= int(digits or "0") <= maximum)
    ):
        raise BadRequest(f"'{name}' must be an integer from {minimum} to {maximum}")
    return int(digits or "0")


PollPrefix = tuple[str, str, int, str]
"""An allowed poll URL prefix: scheme, host (lower case), port, path."""


def _poll_prefix(entry: str) -> PollPrefix:
    """Parse one ``--poll-allow`` entry; ``ValueError`` (naming the flag) if it is not a URL prefix."""
    refused = ValueError(
        f"--poll-allow: {entry!r} is not '*' nor an http(s) URL prefix such as https://api.example.com/jobs/"
    )
    try:
        parts = urlsplit(entry)
        port = parts.port
    except ValueError:
        raise refused from None
    host = parts.hostname
    if (
        parts.scheme not in ("http", "https")
        or not host
        or parts.username is not None
        or parts.password is not None
        or "?" in entry
        or "#" in entry
    ):
        raise refused
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), parts.path


def _under(url: str, prefixes: tuple[PollPrefix, ...]) -> bool:
    """Whether ``url`` (a valid ``PollSpec`` URL) is under one of ``prefixes``: same scheme, host
    and port, and a path that starts with the prefix's. A path with ``.`` or ``..`` segments
    (percent-encoded or behind a backslash too) is under none, as the upstream would resolve it
    out of the prefix."""
    parts = urlsplit(url)
    segments = unquote(parts.path).replace("\\", "/").split("/")
    if "." in segments or ".." in segments:
        return False
    origin = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    return any(origin == prefix[:3] and parts.path.startswith(prefix[3]) for prefix in prefixes)


class ApiServer:
    """The ``/api/`` routes.

    Args:
        hub: the hub to publish to and inspect.
        api_key: the key backends present; ``None``: local clients only (see the module).
        tasks: serves ``/api/tasks``; ``None``: no task routes.
        pollers: follows the upstream jobs of tasks created with ``"poll"``; ``None``: refused.
        poll_allow: the URL prefixes (or ``"*"``) a ``"poll"`` spec may name; ``None``: any
            with an ``api_key``, none without.

    Raises:
        ValueError: a ``poll_allow`` entry is not ``*`` nor an http(s) URL prefix.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        api_key: str | None = None,
        tasks: TaskService | None = None,
        pollers: TaskPoller | None = None,
        poll_allow: tuple[str, ...] | None = None,
    ) -> None:
        self.hub = hub
        self.api_key = api_key or None
        self.tasks = tasks
        self.pollers = pollers
        if poll_allow is None:
            poll_allow = ("*",) if self.api_key is not None else ()
        self.poll_any = "*" in poll_allow
        self.poll_prefixes = tuple(_poll_prefix(entry) for entry in poll_allow if entry != "*")
        self.refused = 0
        self.requests: dict[tuple[str, str, int], int] = {}
        """Answers by method, route and status, for operators (``route_label``: a fixed set)."""
        self.accepting = True

    def stop_accepting(self) -> None:
        """Answer every ``POST`` with 503 from now on: the server is shutting down.

        Called first by ``App.shutdown``. Why every ``POST``: each publishes or changes a
        task, and from here on a publication may reach no subscriber (they are about to be
        disconnected) and a report may be acknowledged after the task service's last write.
        A 503 tells the caller nothing was done and to retry against the next process.
        Reads still answer.
        """
        self.accepting = False

    async def handle(self, request: HttpRequest) -> HttpResponse:
        response = await self._answer(request)
        method = request.method if request.method in _METHODS else "other"
        key = (method, route_label(request.path), response.status)
        self.requests[key] = self.requests.get(key, 0) + 1
        return response

    async def _answer(self, request: HttpRequest) -> HttpResponse:
        path, method = request.path.rstrip("/") or "/", request.method
        if path == "/api/openapi.json" and method == "GET":
            return _ok(OPENAPI)
        methods: dict[str, Any] | None = ROUTES.get(path)
        task_id: str | None = None
        if methods is None and path.startswith("/api/tasks/") and self.tasks is not None:
            task_id, _, action = path[len("/api/tasks/") :].partition("/")
            methods = TASK_ROUTES.get(action)
        elif path == "/api/tasks" and self.tasks is None:
            methods = None
        if methods is None or task_id == "":
            return api_error(404, "not_found", f"no API route {path}")
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            return api_error(405, "method_not_allowed", f"use {allowed}", [("Allow", allowed)])
        refused = self._check_key(request)
        if refused is not None:
            self.refused += 1
            return refused
        if request.body_too_large:
            return api_error(413, "too_large", "the body is over the size limit")
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and request.body and not _is_json(content_type):
            return api_error(
                415,
                "unsupported_media_type",
                f"send the body as JSON with Content-Type: application/json, not {content_type[:100] or 'none'!r}",
            )
        try:
            if request.method == "POST" and not self.accepting:
                raise ShuttingDown("the server is shutting down; nothing was published or changed")
            response: HttpResponse = await (
                handler(self, request, task_id) if task_id is not None else handler(self, request)
            )
            return response
        except ShuttingDown as exc:  # here or from the task service: retry against the next process
            return api_error(503, "shutting_down", str(exc), [("Retry-After", "1")])
        except BrokerUnavailable as exc:  # nothing was published: never a 200 for an event nobody gets
            return api_error(503, "broker_unavailable", str(exc), [("Retry-After", "1")])
        except (BadRequest, InvalidPublication) as exc:  # a publication no transport could deliver
            return api_error(400, "bad_request", str(exc))
        except TaskNotFound as exc:
            return api_error(404, "not_found", str(exc))
        except (InvalidTransition, TaskExists) as exc:
            return api_error(409, "conflict", str(exc))
        except TaskError as exc:  # bad progress, a bad cursor or filter
            return api_error(400, "bad_request", str(exc))

    def _check_key(self, request: HttpRequest) -> HttpResponse | None:
        return self.check_access(request)

    def check_access(self, request: HttpRequest, *, also: str | None = None) -> HttpResponse | None:
        """The API's rule, for the routes protected like it (``/metrics``): ``None`` when
        ``request`` may pass, else the refusal to answer.

        With a key configured (the API key, or ``also``: another key accepted besides it), the
        request must present one of them (401 otherwise); with none, the keyless rule applies
        (loopback only, no proxy, 403 otherwise: the module docstring).
        """
        keys = [key for key in (self.api_key, also) if key]
        if not keys:
            return self._check_local(request)
        presented = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        if presented is None and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        if presented is None:
            return api_error(401, "unauthorized", "API key required (Authorization: Bearer <key> or X-API-Key)")
        matches = [hmac.compare_digest(presented.encode(), key.encode()) for key in keys]  # each compared
        if not any(matches):
            return api_error(401, "unauthorized", "invalid API key")
        return None

    @staticmethod
    def _check_local(request: HttpRequest) -> HttpResponse | None:
        """Without a key: a program on this machine, talking to the server directly. Each refusal
        says why, so whoever meets one behind a proxy or in a browser knows to set a key."""
        headers = request.headers
        if not _is_loopback(request.client[0]):
            problem = f"this client ({request.client[0][:64]}) is not on this machine"
        elif forwarded := [name for name in FORWARDING_HEADERS if name.lower() in headers]:
            problem = f"this request came through a proxy ({', '.join(forwarded)})"
        elif not _loopback_authority(headers.get("host", "")):
            problem = f"Host {headers.get('host', '')[:100]!r} is not localhost, 127.x.x.x or [::1]"
        elif "origin" in headers and not _loopback_origin(headers["origin"]):
            problem = f"the page at origin {headers['origin'][:100]!r} is not served from this machine"
        else:
            return None
        return api_error(403, "forbidden", f"{_KEYLESS}: {problem}; set --api-key to serve others")

    # -- routes -------------------------------------------------------------------------
    async def publish(self, request: HttpRequest) -> HttpResponse:
        body = _body(request)
        room, event = _name(body.get("room"), "room"), _name(body.get("event"), "event")
        position = await self._publish(room, event, body)
        return _ok({"room": room, "epoch": position.epoch, "offset": position.offset})

    async def broadcast(self, request: HttpRequest) -> HttpResponse:
        body = _body(request)
        rooms = body.get("rooms")
        if not isinstance(rooms, list) or not 1 <= len(rooms) <= MAX_BROADCAST_ROOMS:
            raise BadRequest(f"'rooms' must be a list of 1 to {MAX_BROADCAST_ROOMS} room names")
        names = list(dict.fromkeys(_name(r, "rooms[]") for r in rooms))
        event = _name(body.get("event"), "event")
        results = []
        for room in names:
            position = await self._publish(room, event, body)
            results.append({"room": room, "epoch": position.epoch, "offset": position.offset})
        return _ok({"results": results})

    async def _publish(self, room: str, event: str, body: dict[str, Any]) -> StreamPosition:
        if "data" in body:
            return await self.hub.publish(room, event, body["data"])
        return await self.hub.publish(room, event)

    async def rooms(self, request: HttpRequest) -> HttpResponse:
        listing = [
            {"room": name, "connections": count, "users": len(users)}
            for name, (count, users) in sorted((await self.hub.nodes.rooms()).items())
        ]
        return _ok({"rooms": listing})

    async def history(self, request: HttpRequest) -> HttpResponse:
        room = _name(request.query.get("room"), "room")
        since = _integer(request, "since", 0, minimum=0, maximum=MAX_OFFSET)
        current = await self.hub.broker.position(room)
        epoch = request.query.get("epoch") or current.epoch
        result = await self.hub.broker.history(room, since=StreamPosition(epoch, since))
        return _ok(
            {
                "room": room,
                "epoch": result.position.epoch,
                "offset": result.position.offset,
                "complete": result.complete,
                "publications": [
                    {"offset": p.position.offset, "event": p.event, "data": _history_data(p), "ts": p.ts}
                    for p in result.publications
                ],
            }
        )

    async def presence(self, request: HttpRequest) -> HttpResponse:
        presence = await self.hub.presence(_name(request.query.get("room"), "room"))
        return _ok({"room": presence.room, "connections": presence.connections, "users": list(presence.users)})

    async def disconnect(self, request: HttpRequest) -> HttpResponse:
        body = _body(request)
        connection, user = body.get("connection"), body.get("user")
        if (connection is None) == (user is None):
            raise BadRequest("give exactly one of 'connection' (an id) or 'user' (a token subject)")
        if connection is not None:
            closed = await self.hub.nodes.disconnect(
                disconnect.SERVER_DISCONNECT, connection=_name(connection, "connection")
            )
        else:
            closed = await self.hub.nodes.disconnect(disconnect.SERVER_DISCONNECT, user=_name(user, "user"))
        logger.info("API disconnected %d connection(s)", closed)
        return _ok({"disconnected": closed})

    # -- tasks ----------------------------------------------------------------------------
    def _service(self) -> TaskService:
        assert self.tasks is not None  # routed here only when the server runs tasks
        return self.tasks

    async def create_task(self, request: HttpRequest) -> HttpResponse:
        body = _body(request)
        owner, deadline, metadata = body.get("owner"), body.get("deadline"), body.get("metadata")
        title = body.get("title", "")
        kind = check_task_fields(body.get("kind"), title=title, owner=owner, deadline=deadline, metadata=metadata)
        task_id = body.get("id")
        if task_id is not None:  # the caller's own id (a Celery task's), so it can subscribe before asking
            check_task_id(task_id)  # a TaskError: 400
        poll = None
        if body.get("poll") is not None:  # checked before anything is created
            if self.pollers is None:
                raise BadRequest("this server does not follow upstream jobs ('poll')")
            poll = PollSpec.from_json(body["poll"])
            self._check_poll_url(poll.url)
        task = await self._service().create(
            kind, title=title, owner=owner, deadline=deadline, metadata=metadata, id=task_id
        )
        if poll is not None and self.pollers is not None:
            task = await self.pollers.follow(task.id, poll)
        return _ok(task.to_json(), 201)

    def _check_poll_url(self, url: str) -> None:
        """The server fetches ``url`` for whoever asked, so only URLs under ``--poll-allow``."""
        if self.poll_any or _under(url, self.poll_prefixes):
            return
        if not self.poll_prefixes:
            raise BadRequest(
                f"poll URL {url[:100]!r} is not allowed: this server follows no upstream URLs "
                "(without --api-key none by default); list the allowed prefixes with --poll-allow"
            )
        raise BadRequest(f"poll URL {url[:100]!r} is not allowed: it is under no --poll-allow prefix")

    async def list_tasks(self, request: HttpRequest) -> HttpResponse:
        query = request.query
        status = query.get("status")
        statuses = None
        if status:
            try:
                statuses = [TaskStatus(s) for s in status.split(",")]
            except ValueError:
                raise BadRequest(f"'status' must be among {', '.join(s.value for s in TaskStatus)}") from None
        limit = _integer(request, "limit", DEFAULT_PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE)
        tasks, cursor = await self._service().list(
            status=statuses,
            kind=query.get("kind"),
            owner=query.get("owner"),
            limit=limit,
            cursor=query.get("cursor"),
        )
        return _ok({"tasks": [t.to_json() for t in tasks], "next_cursor": cursor})

    async def get_task(self, request: HttpRequest, task_id: str) -> HttpResponse:
        return _ok((await self._service().get(task_id)).to_json())

    async def task_progress(self, request: HttpRequest, task_id: str) -> HttpResponse:
        body = _body(request)
        service = self._service()
        progress, step, message = body.get("progress"), body.get("step"), body.get("message")
        if progress is not None and (not isinstance(progress, (int, float)) or isinstance(progress, bool)):
            raise BadRequest("'progress' must be a number from 0 to 100")  # the range: the model's rule
        for value, what in ((step, "step"), (message, "message")):
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"'{what}' must be a string")
        task = await service.report(task_id, progress=progress, step=step, message=message)
        return _ok(task.to_json())

    async def task_complete(self, request: HttpRequest, task_id: str) -> HttpResponse:
        body = _body(request) if request.body else {}
        return _ok((await self._service().complete(task_id, body.get("result"))).to_json())

    async def task_fail(self, request: HttpRequest, task_id: str) -> HttpResponse:
        error = _body(request).get("error")
        if not isinstance(error, str) or not error:
            raise BadRequest("'error' must be a non-empty string")
        return _ok((await self._service().fail(task_id, error)).to_json())

    async def task_cancel(self, request: HttpRequest, task_id: str) -> HttpResponse:
        """A worker acknowledging a stop (or giving up): the task ends ``cancelled`` now."""
        body = _body(request) if request.body else {}
        reason = body.get("reason")
        return _ok((await self._service().cancel(task_id, reason if isinstance(reason, str) else None)).to_json())

    async def task_stop(self, request: HttpRequest, task_id: str) -> HttpResponse:
        body = _body(request) if request.body else {}
        by = body.get("by")
        return _ok((await self._service().request_stop(task_id, by=by if isinstance(by, str) else None)).to_json())


_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def route_label(path: str) -> str:
    """The route a request path falls under, as ``/metrics`` labels API requests: a route of
    ``ROUTES``, ``/api/tasks/{id}`` with its action, ``/api/openapi.json``, or ``other``. A
    fixed set, whatever paths clients send, so the labels cannot grow without bound."""
    path = path.rstrip("/") or "/"
    if path in ROUTES or path == "/api/openapi.json":
        return path
    if path.startswith("/api/tasks/"):
        task_id, _, action = path[len("/api/tasks/") :].partition("/")
        if task_id and action in TASK_ROUTES:
            return "/api/tasks/{id}" + (f"/{action}" if action else "")
    return "other"


TaskRoute = Callable[["ApiServer", HttpRequest, str], Awaitable[HttpResponse]]

TASK_ROUTES: dict[str, dict[str, TaskRoute]] = {
    "": {"GET": ApiServer.get_task},
    "progress": {"POST": ApiServer.task_progress},
    "complete": {"POST": ApiServer.task_complete},
    "fail": {"POST": ApiServer.task_fail},
    "stop": {"POST": ApiServer.task_stop},
    "cancel": {"POST": ApiServer.task_cancel},
}

ROUTES: dict[str, dict[str, Route]] = {
    "/api/tasks": {"POST": ApiServer.create_task, "GET": ApiServer.list_tasks},
    "/api/publish": {"POST": ApiServer.publish},
    "/api/broadcast": {"POST": ApiServer.broadcast},
    "/api/rooms": {"GET": ApiServer.rooms},
    "/api/history": {"GET": ApiServer.history},
    "/api/presence": {"GET": ApiServer.presence},
    "/api/disconnect": {"POST": ApiServer.disconnect},
}
