"""``App``: wires a hub, the Engine.IO/Socket.IO transports and the plain routes together.

Imports everything below it. ``App`` is the router both front doors serve: the native door
(``server.native``) calls ``http``/``websocket`` directly, the ASGI door (``server.asgi``)
adapts ASGI messages to the same two calls. So both doors pass the same tests.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import importlib.resources
import logging
from typing import TYPE_CHECKING, Any

from roomcast.auth import AuthConfig, Authenticator
from roomcast.broker.base import Broker, SupportsHealth
from roomcast.broker.memory import MemoryBroker
from roomcast.disconnect import Disconnect
from roomcast.errors import ShuttingDown, TaskError, TaskNotFound
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.server.api import ApiServer
from roomcast.server.config import Settings
from roomcast.server.dashboard import Dashboard
from roomcast.server.door_limits import DoorCounters
from roomcast.server.metrics import Metrics
from roomcast.tasks.model import Task, task_room
from roomcast.tasks.poller import TaskPoller
from roomcast.tasks.service import TaskService
from roomcast.tasks.store_sqlite import SqliteTaskStore
from roomcast.transports.base import (
    CorsPolicy,
    HttpRequest,
    HttpResponse,
    StreamAccept,
    WebSocketAccept,
    api_error,
    json_error,
)
from roomcast.transports.engineio import EngineIOServer, Session
from roomcast.transports.expiry import ExpiryWatch
from roomcast.transports.socketio import SocketIOServer
from roomcast.transports.sse import SseServer
from roomcast.transports.websocket import WsServer

if TYPE_CHECKING:  # the Redis parts import redis-py (10 MB resident): only a server run with --redis loads them
    from roomcast.broker.sessions import RedisSessionStore
    from roomcast.cluster.redis import RedisCluster
    from roomcast.tasks.store_redis import RedisTaskStore

__all__ = ["App", "EchoApp"]

logger = logging.getLogger("roomcast.server")


def _session_store(settings: Settings) -> RedisSessionStore | None:
    """Scaled out, lost Socket.IO sessions wait in Redis, so any node restores them."""
    if settings.redis_url is None or settings.recovery_window <= 0:
        return None
    from roomcast.broker.sessions import RedisSessionStore

    return RedisSessionStore(settings.redis_url)


class EchoApp:
    """A bare Engine.IO application that echoes every message (the Engine.IO suite needs it)."""

    def on_open(self, session: Session) -> None:
        pass

    def on_message(self, session: Session, data: str | bytes) -> None:
        session.send(data if isinstance(data, bytes) else "4" + data)

    def on_upgrade(self, session: Session) -> None:
        pass

    def on_close(self, session: Session, reason: Disconnect) -> None:
        pass


@functools.cache
def _browser_module() -> tuple[bytes, str]:
    """The browser module (DESIGN §7) and its ETag, read once per process from the package."""
    body = importlib.resources.files("roomcast").joinpath("static/roomcast.js").read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _serve_browser_module(request: HttpRequest) -> HttpResponse:
    """``GET /roomcast.js``: revalidated on every use (``no-cache`` + ETag), so a deploy never
    leaves a page on a stale module; public code, so any origin may import it."""
    if request.method != "GET":
        return api_error(405, "method_not_allowed", "use GET", [("Allow", "GET")])
    body, etag = _browser_module()
    headers = [("etag", etag), ("cache-control", "no-cache"), ("access-control-allow-origin", "*")]  # ASGI: lower case
    seen = {tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")}
    if etag in seen or "*" in seen:
        return HttpResponse(304, b"", headers)
    return HttpResponse(200, body, headers, "text/javascript; charset=utf-8")


def _may_stop(conn: Connection, task: Task) -> bool:
    claims = conn.claims
    if claims is None:
        return True  # an open server
    if conn.user is not None and conn.user == task.owner:
        return True
    grants = claims.raw.get("tasks")
    stoppable = grants.get("stop") if isinstance(grants, dict) else None
    patterns = [stoppable] if isinstance(stoppable, str) else stoppable if isinstance(stoppable, list) else []
    return any(isinstance(p, str) and fnmatch.fnmatchcase(task.kind, p) for p in patterns)


class App:
    """The routes of one roomcast server.

    Args:
        hub: the hub to serve; a new one by default.
        settings: server settings.
    """

    def __init__(self, hub: Hub | None = None, settings: Settings | None = None) -> None:
        self.settings = settings = settings if settings is not None else Settings()
        if hub is None:
            broker: Broker
            cluster: RedisCluster | None = None
            if settings.redis_url is not None:
                from roomcast.broker.redis import RedisBroker  # redis-py (10 MB) only with --redis
                from roomcast.cluster.redis import RedisCluster

                cluster = RedisCluster(settings.redis_url)  # one node id for the bus and the broker
                broker = RedisBroker(
                    settings.redis_url,
                    history_size=settings.history_size,
                    history_ttl=settings.history_ttl,
                    node_id=cluster.node_id,
                )
            else:
                broker = MemoryBroker(
                    history_size=settings.history_size,
                    history_ttl=settings.history_ttl,
                    history_room_bytes=settings.history_room_bytes,
                    history_bytes=settings.history_bytes,
                )
            hub = Hub(
                broker=broker,
                max_rooms_per_connection=settings.max_rooms_per_connection,
                cluster=cluster,
            )
        self.hub = hub
        cors = CorsPolicy(settings.cors_origins)
        config = AuthConfig.from_values(
            secret=settings.jwt_secret,
            public_key_file=settings.jwt_public_key_file,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
        )
        # None when open: transports then skip verification and grants altogether.
        self.authenticator = None if config.open else Authenticator(config)
        self.expiry = ExpiryWatch(leeway=settings.jwt_leeway)
        self.socketio = SocketIOServer(
            self.hub,
            connect_timeout=settings.connect_timeout,
            max_attachments=settings.max_attachments,
            max_expanded_bytes=settings.max_payload,
            recovery_window=settings.recovery_window,
            recovery_store=_session_store(settings),
            authenticator=self.authenticator,
            expiry=self.expiry,
            max_messages_per_second=settings.max_messages_per_second,
            message_burst=settings.message_burst,
        )
        self.engine = self._engine(self.socketio, cors, "socket.io")
        self.echo = self._engine(EchoApp(), cors, "engine.io") if settings.engineio_echo else None
        self.sse = SseServer(
            self.hub,
            heartbeat=settings.sse_heartbeat,
            retry_ms=settings.sse_retry_ms,
            cors=cors,
            authenticator=self.authenticator,
            expiry=self.expiry,
            default_format=settings.sse_format,
        )
        self.ws = WsServer(
            self.hub,
            cors=cors,
            authenticator=self.authenticator,
            expiry=self.expiry,
            ping_interval=settings.ws_ping_interval,
            ping_timeout=settings.ws_ping_timeout,
            max_messages_per_second=settings.max_messages_per_second,
            message_burst=settings.message_burst,
        )
        # With --redis every node shares the tasks (and --task-db is not used): a SQLite file
        # is one process's, and its startup sweep would fail the other nodes' running tasks.
        self.task_store: SqliteTaskStore | RedisTaskStore
        if settings.redis_url is not None:
            from roomcast.tasks.store_redis import RedisTaskStore

            self.task_store = RedisTaskStore(settings.redis_url)
        else:
            self.task_store = SqliteTaskStore(settings.task_db)
        self.tasks = self.hub.tasks = TaskService(
            self.hub,
            self.task_store,
            stop_grace=settings.task_stop_grace,
            events=settings.task_events,
            payloads=settings.task_payloads,
            list_rooms=settings.task_list_rooms,
            keep_days=settings.task_keep_days,
            keep_count=settings.task_keep_count,
            lease_ttl=settings.task_lease_ttl,
            cluster=self.hub.nodes.cluster,  # a stop reaches the node running the task's producer
        )
        self.pollers = TaskPoller(self.tasks)  # tasks that follow an upstream job's URL
        self.api = ApiServer(
            self.hub, api_key=settings.api_key, tasks=self.tasks, pollers=self.pollers, poll_allow=settings.poll_allow
        )
        # The canonical view (/sse?view=canonical, roomcast tail) shows what /api/tasks/{id}
        # shows, and what a task kind's payload map may hide from clients: the API's rule.
        self.sse.canonical_access = self.api.check_access
        self.door_counters = DoorCounters()  # the native door counts here (``server.runner``)
        self.metrics = Metrics(self)  # GET /metrics
        self.dashboard = Dashboard(self)  # GET / and /dashboard (after metrics: it reads them)
        if self.hub.handler("/", "task:stop") is None:  # the application's own handler wins
            self.hub.on("task:stop")(self._client_stop)
        self._ready = False
        self._shutdown: asyncio.Task[None] | None = None

    @property
    def door(self) -> str:
        """The front door serving this app (``"asgi"`` once ``RoomcastApp`` wraps it), for
        metrics and the connection log: kept in one place, the hub's ``connection_log``."""
        return self.hub.connection_log.door

    @door.setter
    def door(self, value: str) -> None:
        self.hub.connection_log.door = value

    def _engine(self, app: EchoApp | SocketIOServer, cors: CorsPolicy, name: str) -> EngineIOServer:
        s = self.settings
        return EngineIOServer(
            app,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
            max_payload=s.max_payload,
            max_buffer_bytes=s.max_buffer_bytes,
            cors=cors,
            cluster=self.hub.nodes.cluster,  # polling without sticky sessions (engineio_forward)
            name=name,
        )

    async def startup(self) -> None:
        """Start the hub, open the task store and end the tasks a previous process left.

        Raises:
            TaskError: the task database is held by another running server (one server per
                ``--task-db`` file, ``SqliteTaskStore``), or is from a newer roomcast.
        """
        if self.authenticator is None:
            logger.warning(
                "running OPEN: no JWT secret or public key configured, so every client may "
                "subscribe and publish to any room (set --jwt-secret or --jwt-public-key)"
            )
        else:
            logger.info("clients need a valid token (%s)", ", ".join(self.authenticator.algorithms))
        await self.hub.start()
        try:
            await self.task_store.open()  # first: a second server on the file stops here
            await self.tasks.open()  # tasks a previous run left running are failed, and say so
        except BaseException:
            await self.task_store.aclose()  # releases the file for the server that may follow
            await self.hub.aclose()
            raise
        self.metrics.start()
        self._ready = True

    def drain(self) -> None:
        """Answer ``/readyz`` with 503 from now on, and serve everything else as before: a
        graceful drain (``server.drain``) has begun, so load balancers stop sending clients
        here while the connected ones are moved away and tasks end."""
        self._ready = False

    async def shutdown(self, reason: Disconnect | None = None) -> None:
        """Stop accepting, then flush, then close. Idempotent: a second call waits for the first.

        Why this order: the API used to answer 200 for a publication or a task report that
        arrived after the subscribers had been disconnected, so it reached nobody, and the
        task service dropped the progress it had acknowledged but not yet written. Now:

        1. not ready, and the API refuses every POST with 503 (``ShuttingDown``): whatever is
           acknowledged from here on has nowhere to go;
        2. pollers, then the task service, end: their last changes and every pending
           coalesced progress are stored and published while subscribers still listen;
        3. then the transports disconnect every client, the hub closes, and the store
           closes (its last commit, then the lock a next server waits for).
        """
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shut_down(reason))
        await self._shutdown

    async def _shut_down(self, reason: Disconnect | None) -> None:
        from roomcast import disconnect

        self._ready = False
        self.api.stop_accepting()
        await self.pollers.aclose()  # before the service: their tasks are failed, and say why
        await self.tasks.aclose()
        for engine in (self.engine, self.echo):
            if engine is not None:
                engine.close_all(reason or disconnect.SHUTDOWN)
        self.sse.close_all(reason or disconnect.SHUTDOWN)
        self.ws.close_all(reason or disconnect.SHUTDOWN)
        await self.dashboard.aclose()  # its streams and its stats publisher, with the others
        self.expiry.close()
        await self.socketio.aclose()  # the sessions just saved reach Redis before it closes
        await self.hub.aclose()
        await self.metrics.aclose()  # after every disconnect is counted: the final figures
        await self.task_store.aclose()

    def _route(self, path: str) -> EngineIOServer | None:
        if path in ("/socket.io/", "/socket.io"):
            return self.engine
        if self.echo is not None and path in ("/engine.io/", "/engine.io"):
            return self.echo
        return None

    def opens_session(self, request: HttpRequest) -> bool:
        """Whether ``request`` is an Engine.IO handshake (no ``sid``): a new client, which a
        draining ASGI door refuses, unlike requests of a session already open here."""
        return self._route(request.path) is not None and "sid" not in request.query

    async def http(self, request: HttpRequest) -> HttpResponse | StreamAccept:
        engine = self._route(request.path)
        if engine is not None:
            return await engine.handle_http(request)
        if request.path == "/sse":
            return await self.sse.handle(request)
        if request.path.startswith("/tasks/") and request.path.endswith("/events"):
            return await self._task_events(request)
        if request.path.startswith("/api/"):
            return await self.api.handle(request)
        if request.body_too_large:
            return json_error(413, 3, "Payload too large")
        if request.path == "/healthz":
            return HttpResponse(200, b"ok")
        if request.path == "/" or request.path == "/dashboard" or request.path.startswith("/dashboard/"):
            return await self.dashboard.handle(request)
        if request.path == "/metrics":
            return await self.metrics.handle(request)
        if request.path == "/roomcast.js":
            return _serve_browser_module(request)
        if request.path == "/readyz":
            if not self._ready:
                return HttpResponse(503, b"not ready")
            broker = self.hub.broker
            if isinstance(broker, SupportsHealth) and broker.unhealthy is not None:
                return HttpResponse(503, f"not ready: {broker.unhealthy}".encode())
            return HttpResponse(200, b"ready")
        return json_error(404, 404, "Not found")

    async def _task_events(self, request: HttpRequest) -> HttpResponse | StreamAccept:
        """``GET /tasks/{id}/events``: one task's snapshot, progress and end over SSE, then the
        stream ends; a reconnect after the end gets 204 (the room is terminal).

        The SSE server decides first (method, origin, token, the right to subscribe to the
        task's room), and only a stream it would open is checked for a task behind it: a
        refused client gets the same 401 or 403 whether the task exists or not, so it cannot
        probe task ids. Nothing runs before the door starts the accepted stream.
        """
        task_id = request.path[len("/tasks/") : -len("/events")]
        answer = await self.sse.handle(request, (task_room(task_id),))
        if not isinstance(answer, StreamAccept):
            return answer  # refused, or 204 for a finished task's reconnect
        try:
            await self.tasks.get(task_id)
        except TaskError:
            return api_error(404, "not_found", f"no task {task_id!r}", self.sse.cors.headers(request))
        return answer

    async def _client_stop(self, conn: Connection, request: Any = None, *_: Any) -> Any:
        """The ``task:stop {id}`` event (Socket.IO, or ``emit`` on ``/ws``): a stop button.

        Allowed for the task's owner (the token's ``sub``), for tokens whose ``tasks.stop``
        claim lists a glob matching the task's kind, and for everyone on an open server.
        Answers with the task as it now is, in the form its kind's clients read
        (``TaskService.payload``), or ``{"error"}``.
        """
        task_id = request.get("id") if isinstance(request, dict) else None
        if not isinstance(task_id, str):
            return {"error": "task:stop expects {id: string}"}
        refused = {"error": f"no task {task_id!r} that this connection may stop"}
        try:
            task = await self.tasks.get(task_id)
            if not _may_stop(conn, task):
                return refused  # the same answer as for an unknown id: it reveals nothing
            return self.tasks.client_form(await self.tasks.request_stop(task_id, by=conn.user))
        except TaskNotFound:
            return refused
        except ShuttingDown:
            return {"error": "the server is shutting down; try again on the next one"}
        except TaskError as exc:  # already ended
            return {"error": str(exc)}

    def websocket(self, request: HttpRequest) -> WebSocketAccept | HttpResponse:
        engine = self._route(request.path)
        if engine is not None:
            return engine.handle_websocket(request)
        if request.path == "/ws":
            return self.ws.handle_websocket(request)
        if request.path.startswith("/tasks/") and request.path.endswith("/ws"):
            return self._task_ws(request)
        return json_error(404, 404, "Not found")

    def _task_ws(self, request: HttpRequest) -> WebSocketAccept | HttpResponse:
        """``/tasks/{id}/ws``: one task over the plain WebSocket protocol, as
        ``/tasks/{id}/events`` over SSE: subscribed as it opens (``?epoch=&offset=`` resumes),
        its snapshot, progress and end, then a normal close.

        The WebSocket server decides first (origin, subprotocol, token, the right to subscribe
        to the task's room); an unknown task is told once the socket is open (an ``error``
        ``not_found``, then close 3501), since a handshake answers before the store is read.
        """
        task_id = request.path[len("/tasks/") : -len("/ws")]

        async def exists() -> str | None:
            try:
                await self.tasks.get(task_id)
            except TaskError:
                return f"no task {task_id!r}"
            return None

        return self.ws.handle_websocket(request, task_room(task_id), exists)
