"""``AsyncServer``: python-socketio's server API as a thin adapter over roomcast's hub.

There is no second Socket.IO server here: the Socket.IO transport (``transports.socketio``)
speaks the protocol, and this class maps python-socketio's calls onto the hub:

* handlers: one catch-all per namespace on the hub's registry (``add_fallback``) resolves
  python-socketio's order itself (the event's handler, the namespace's ``"*"``, the
  ``"*"`` namespace, then a class-based namespace), and calls it with the ``sid``;
* rooms are hub rooms named per namespace (``socketio.rooms``), so an emit to a room is one
  ``Hub.publish``: encoded once, fanned out to every transport and node, kept in history;
* ``to=sid`` is a direct send to that connection, never a room per connection;
* ``skip_sid`` is the publication's ``skip`` set, checked by the fan-out and kept in
  history, so a skipped sender that recovers does not get its own event back;
* the session is a dict in ``Connection.data`` (restored with it by connection recovery).

Across nodes (``client_manager=AsyncRedisManager(url)``: the hub runs on that Redis) an emit
to a sid this node does not hold, and ``close_room``, also go through the relay room
(``socketio.rooms.RELAY_ROOM``), which every node listens to; so do emitters in other
processes (``socketio.redis_manager``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from typing import Any, Final, TypeVar, Unpack

from roomcast import disconnect
from roomcast.broker.memory import MemoryBroker
from roomcast.disconnect import Disconnect
from roomcast.errors import ConnectionClosed, ConnectionRefused
from roomcast.hub.connection import Connection
from roomcast.hub.handlers import UNHANDLED
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.socketio import exceptions
from roomcast.socketio.emit_args import EmitOptions, payload_args, relay_emit, skip_sids, targets
from roomcast.socketio.environ import environ_of
from roomcast.socketio.namespace import AsyncNamespace, call_compat
from roomcast.socketio.redis_manager import AsyncManager, AsyncRedisManager
from roomcast.socketio.rooms import RELAY_ROOM, namespace_key, room_key, room_name
from roomcast.transports.socketio import SioSocket
from roomcast.types import Publication

__all__ = ["AsyncServer"]

default_logger = logging.getLogger("roomcast.socketio.server")

F = TypeVar("F", bound=Callable[..., Any])

SESSION_KEY: Final = "socketio.session"
"""Where a connection's python-socketio session lives in ``Connection.data``."""

_RESERVED: Final = frozenset({"connect", "connect_error", "disconnect"})
"""Events a catch-all never receives (python-socketio's ``reserved_events``)."""

_IGNORED_OPTIONS: Final = frozenset(
    {
        "async_mode",
        "async_handlers",
        "allow_upgrades",
        "http_compression",
        "compression_threshold",
        "cookie",
        "cors_credentials",
        "monitor_clients",
        "transports",
        "engineio_logger",
        "max_decode_packets",
        "serializer",
    }
)
"""python-socketio / python-engineio options accepted and without effect here (see
docs/migrating-from-python-socketio.md for why each means nothing on roomcast)."""

_REASONS: Final = {
    disconnect.SERVER_DISCONNECT.reason: "server disconnect",
    disconnect.SHUTDOWN.reason: "server disconnect",
    "client namespace disconnect": "client disconnect",
    disconnect.NORMAL.reason: "client disconnect",
    disconnect.PING_TIMEOUT.reason: "ping timeout",
    disconnect.TRANSPORT_CLOSE.reason: "transport close",
}
"""roomcast's disconnect reasons as python-socketio names them (else ``transport error``)."""


class _RelayEncoder:
    """The relay connection's encoder: it reads the publication itself."""

    def encode(self, publication: Publication) -> Publication:
        return publication


_RELAY_ENCODER: Final = _RelayEncoder()


class _Relay(Connection):
    """This node's member of the relay room: what must reach a sid or a room on any node."""

    __slots__ = ("server",)

    def __init__(self, server: AsyncServer) -> None:
        super().__init__("socket.io-relay-" + secrets.token_urlsafe(9), hub=server.hub, encoder=_RELAY_ENCODER)
        self.server = server

    def write(self, encoded: Publication) -> bool:
        data = encoded.data
        self.server._relayed(data[0] if len(data) == 1 else None)
        return True

    def emit(self, event: str, *args: Any) -> None:
        pass

    def disconnect(self, reason: Disconnect) -> None:
        self.server._relay_joined = False  # dropped by the hub (lost history): join again


class AsyncServer:
    """A Socket.IO server with python-socketio's API, served by roomcast.

    Args:
        client_manager: ``AsyncRedisManager(url)`` runs the hub on that Redis (several
            processes or machines share rooms, like ``roomcast serve --redis URL``); this
            process alone by default. A ``write_only`` manager is an emitter, not a server's.
        logger: ``True`` logs at INFO, or a ``logging.Logger`` to use.
        json: a module with ``dumps``/``loads`` applied to emitted data before roomcast
            serialises it (custom types such as ``datetime`` become what it makes of them).
        always_connect: tell the client it is connected before the connect handler runs; a
            refusal then disconnects it (its disconnect handler is not called), as in
            python-socketio.
        namespaces: namespaces accepted without handlers (a list; ``"*"`` is not supported).
        cors_allowed_origins: ``"*"``, one origin or a list; same-origin only by default.
        ping_interval, ping_timeout: Engine.IO's, in seconds.
        max_http_buffer_size: the largest message or POST body, in bytes.
        settings: roomcast's own ``Settings`` (recovery window, JWT, limits ...); the
            options above are applied on top. Tasks are kept in memory unless it names a
            ``task_db``.
        **kwargs: python-engineio options that mean nothing here (``async_mode``,
            ``transports``, ``cookie`` ...) are accepted; any other name is a ``TypeError``.
    """

    reason = type(
        "reason",
        (),
        {
            "SERVER_DISCONNECT": "server disconnect",
            "CLIENT_DISCONNECT": "client disconnect",
            "PING_TIMEOUT": "ping timeout",
            "TRANSPORT_CLOSE": "transport close",
            "TRANSPORT_ERROR": "transport error",
        },
    )

    def __init__(
        self,
        client_manager: AsyncManager | AsyncRedisManager | None = None,
        logger: bool | logging.Logger = False,
        json: Any = None,
        async_handlers: bool = True,
        always_connect: bool = False,
        namespaces: list[str] | str | None = None,
        *,
        cors_allowed_origins: str | list[str] | None = None,
        ping_interval: float | tuple[float, float] = 25,
        ping_timeout: float = 20,
        max_http_buffer_size: int = 1_000_000,
        settings: Settings | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - _IGNORED_OPTIONS
        if unknown:
            raise TypeError(f"AsyncServer got unexpected options: {', '.join(sorted(unknown))}")
        if kwargs.get("serializer", "default") != "default":
            raise ValueError("only the default (JSON) serializer is supported")
        if namespaces == "*" or (namespaces is not None and "*" in namespaces):
            raise ValueError("namespaces='*' is not supported: list the namespaces to accept")
        redis_url: str | None = None
        if isinstance(client_manager, AsyncRedisManager):
            if client_manager.write_only:
                raise ValueError("a write_only manager is an emitter for other processes, not a server's")
            redis_url = client_manager.url
        elif client_manager is not None and not isinstance(client_manager, AsyncManager):
            raise TypeError(
                f"client_manager={type(client_manager).__name__} is not supported: use "
                "roomcast.socketio.AsyncRedisManager(url) (rooms shared through Redis) or none"
            )
        self.manager = client_manager if client_manager is not None else AsyncManager()
        if isinstance(logger, logging.Logger):
            self.logger = logger
        else:
            self.logger = default_logger
            if logger and self.logger.level == logging.NOTSET:
                self.logger.setLevel(logging.INFO)
        interval = ping_interval[0] if isinstance(ping_interval, tuple) else ping_interval
        if cors_allowed_origins is None:
            origins: tuple[str, ...] = ()
        elif isinstance(cors_allowed_origins, str):
            origins = (cors_allowed_origins,)
        else:
            origins = tuple(cors_allowed_origins)
        base = settings if settings is not None else Settings(task_db=":memory:")
        changes: dict[str, Any] = {
            "cors_origins": origins,
            "ping_interval": float(interval),
            "ping_timeout": float(ping_timeout),
            "max_payload": int(max_http_buffer_size),
        }
        if redis_url is not None:
            changes["redis_url"] = redis_url
        self.settings = dataclasses.replace(base, **changes)
        self.app = App(None, self.settings)
        """The roomcast application serving this server: ``ASGIApp`` mounts it, and the native
        server runs it (``roomcast.server.runner.run(sio.app)``)."""
        self.app.engine.kept_headers = None  # python-socketio apps read any HTTP_* of the environ
        self.hub = self.app.hub
        self.json = json
        self.async_handlers = async_handlers
        self.always_connect = always_connect
        self.handlers: dict[str, dict[str, Callable[..., Any]]] = {}
        self.namespace_handlers: dict[str, AsyncNamespace] = {}
        self._wired: set[str] = set()
        self._connecting: dict[str, Connection] = {}  # sid -> socket whose connect handler runs
        self._deferred: dict[str, list[str]] = {}  # sid -> hub rooms to join once accepted
        self._refused: set[str] = set()  # always_connect: accepted, then refused by the handler
        self._tasks: set[asyncio.Future[Any]] = set()
        self._relay = _Relay(self)
        self._relay_joined = False
        self._multi_node = not isinstance(self.hub.broker, MemoryBroker)
        for namespace in namespaces or ["/"]:
            self._wire(namespace)

    # -- registration -----------------------------------------------------------------
    def on(self, event: str, handler: Callable[..., Any] | None = None, namespace: str | None = None) -> Any:
        """Register ``handler`` for ``event`` (``"*"``: every event without its own handler;
        ``namespace="*"``: every namespace). As a decorator without ``handler``."""
        ns = namespace or "/"

        def set_handler(fn: F) -> F:
            self.handlers.setdefault(ns, {})[event] = fn
            if ns != "*":
                self._wire(ns)
            return fn

        if handler is None:
            return set_handler
        set_handler(handler)
        return None

    def event(self, *args: Any, **kwargs: Any) -> Any:
        """``@sio.event``: the function's name is the event; ``@sio.event(namespace=...)`` too."""
        if len(args) == 1 and not kwargs and callable(args[0]):
            return self.on(args[0].__name__)(args[0])

        def set_handler(fn: F) -> F:
            return self.on(fn.__name__, *args, **kwargs)(fn)  # type: ignore[no-any-return]

        return set_handler

    def register_namespace(self, namespace_handler: AsyncNamespace) -> None:
        """Serve a class-based namespace (``on_<event>`` methods)."""
        if not isinstance(namespace_handler, AsyncNamespace):
            raise ValueError("Not a namespace instance")
        namespace_handler._set_server(self)
        self.namespace_handlers[namespace_handler.namespace] = namespace_handler
        if namespace_handler.namespace != "*":
            self._wire(namespace_handler.namespace)

    def _wire(self, namespace: str) -> None:
        """Route ``namespace``'s connections and events on the hub to this server, once."""
        if namespace in self._wired:
            return
        self._wired.add(namespace)
        registry = self.hub.handlers
        registry.add_connect(namespace, self._on_connect)
        registry.add_disconnect(namespace, self._on_disconnect)
        registry.add_fallback(namespace, self._on_event)
        registry.add_accepted(namespace, self._on_accepted)

    def _resolve(self, event: str, namespace: str, args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        """python-socketio's order: the event's handler, the namespace's catch-all, the same in
        the ``"*"`` namespace, then the class-based namespace (``None`` when nothing fits)."""
        handlers = self.handlers.get(namespace)
        if handlers is not None:
            handler = handlers.get(event)
            if handler is not None:
                return handler, args
            if event not in _RESERVED and "*" in handlers:
                return handlers["*"], (event, *args)
        anywhere = self.handlers.get("*")
        if anywhere is not None:
            handler = anywhere.get(event)
            if handler is not None:
                return handler, (namespace, *args)
            if event not in _RESERVED and "*" in anywhere:
                return anywhere["*"], (event, namespace, *args)
        ns_handler = self.namespace_handlers.get(namespace)
        if ns_handler is not None:
            return ns_handler, args
        ns_handler = self.namespace_handlers.get("*")
        if ns_handler is not None:
            return ns_handler, (namespace, *args)
        return None, args

    async def _trigger(self, event: str, namespace: str, *args: Any) -> Any:
        handler, args = self._resolve(event, namespace, args)
        if handler is None:
            return UNHANDLED
        if isinstance(handler, AsyncNamespace):
            return await handler.trigger_event(event, *args)
        return await call_compat(handler, event, args)

    # -- the hub's calls ----------------------------------------------------------------
    async def _on_connect(self, conn: Connection, auth: Any) -> None:
        if self.always_connect:
            return  # accepted now; the handler runs once the client is told (``_connect_after``)
        await self._connect(conn, auth)

    async def _connect(self, conn: Connection, auth: Any) -> None:
        """Run the application's connect handler; raise ``ConnectionRefused`` if it refuses."""
        sid = conn.id
        self._connecting[sid] = conn
        try:
            result = await self._trigger("connect", conn.namespace, sid, self._environ(conn), auth or None)
        except BaseException as exc:
            self._deferred.pop(sid, None)
            if isinstance(exc, ConnectionRefusedError):  # the builtin one, as python-socketio treats it
                raise ConnectionRefused("Connection refused by server") from None
            raise
        finally:
            self._connecting.pop(sid, None)
        if result is False:
            self._deferred.pop(sid, None)
            raise exceptions.ConnectionRefusedError()

    def _on_accepted(self, conn: Connection) -> None:
        """The client knows it is connected: join its namespace's room and those its connect
        handler entered."""
        hub = self.hub
        hub.join(conn, namespace_key(conn.namespace))
        for key in self._deferred.pop(conn.id, ()):
            hub.join(conn, key)
        if self._multi_node and not self._relay_joined:
            self._relay_joined = True
            hub.join(self._relay, RELAY_ROOM)
        if self.always_connect:
            self.start_background_task(self._connect_after, conn)

    async def _connect_after(self, conn: Connection) -> None:
        """``always_connect``: the handler runs with the client connected; a refusal
        disconnects it without calling the disconnect handler (python-socketio's order)."""
        try:
            await self._connect(conn, conn.auth)
        except ConnectionRefused:
            self._refused.add(conn.id)
            conn.disconnect(disconnect.SERVER_DISCONNECT)
        except Exception:
            self.logger.exception("the connect handler of %s failed", conn.namespace)

    async def _on_disconnect(self, conn: Connection, reason: str) -> None:
        self._deferred.pop(conn.id, None)
        if conn.id in self._refused:
            self._refused.discard(conn.id)
            return
        await self._trigger("disconnect", conn.namespace, conn.id, _REASONS.get(reason, "transport error"))

    def _on_event(self, conn: Connection, event: Any, *args: Any) -> Any:
        if not isinstance(event, str):
            return UNHANDLED
        return self._trigger(event, conn.namespace, conn.id, *args)

    def _relayed(self, data: Any) -> None:
        """A relay publication: ``["emit", namespace, target, event, args, skip]`` or
        ``["close_room", namespace, room]``; acted on for this node's connections."""
        try:
            op, namespace, target = data[0], data[1], data[2]
            if op == "emit":
                event, args, skip = data[3], data[4], data[5]
                conn = self._local(target, namespace)
                if conn is not None and target not in (skip or ()):
                    conn.emit(event, *args)
            elif op == "close_room":
                self._close_here(room_key(namespace, target))
        except (LookupError, TypeError, ValueError):  # from an older or foreign emitter
            self.logger.warning("ignored a malformed relay publication")

    # -- connections ---------------------------------------------------------------------
    def _local(self, sid: Any, namespace: str) -> Connection | None:
        """The connection ``sid`` of ``namespace`` on this node, accepted or connecting."""
        if not isinstance(sid, str):
            return None
        conn = self.hub.connections.get(sid) or self._connecting.get(sid)
        if conn is None or conn.namespace != namespace or conn.closed:
            return None
        return conn

    def _connection(self, sid: str, namespace: str | None) -> Connection:
        conn = self._local(sid, namespace or "/")
        if conn is None:
            raise KeyError("Session is disconnected")
        return conn

    @staticmethod
    def _environ(conn: Connection) -> dict[str, Any]:
        """The handshake request's environ (made on demand: it is not kept with the
        connection's data, which recovery may store as JSON)."""
        return environ_of(conn.session.request) if isinstance(conn, SioSocket) else {}

    # -- emitting ------------------------------------------------------------------------
    def _args(self, data: Any) -> tuple[Any, ...]:
        args = payload_args(data)
        json = self.json
        if json is not None:
            args = tuple(a if isinstance(a, (bytes, bytearray)) else json.loads(json.dumps(a)) for a in args)
        return args

    async def emit(
        self,
        event: str,
        data: Any = None,
        to: Any = None,
        room: Any = None,
        skip_sid: Any = None,
        namespace: str | None = None,
        callback: Callable[..., Any] | None = None,
        ignore_queue: bool = False,
    ) -> None:
        """Emit ``event`` to a sid, a room, a list of them, or everyone in the namespace.

        Raises:
            ValueError: a ``callback`` without ``to`` naming one connection of this node, or
                a bad room name.
            roomcast.errors.InvalidPublication: ``data`` is not JSON (nor bytes), or the event
                name is reserved.
        """
        ns = namespace or "/"
        named = targets(to, room)
        args = self._args(data)
        skip = skip_sids(skip_sid)
        if named is None:
            if callback is not None:
                raise ValueError("a callback needs to= one connected sid")
            await self.hub.publish(namespace_key(ns), event, *args, skip=skip)
            return
        for one in named:
            conn = self._local(one, ns)
            if conn is not None:
                if skip is not None and one in skip:
                    continue
                if callback is None:
                    conn.emit(event, *args)
                else:
                    self._ask(conn, event, args, callback)
                continue
            if callback is not None:
                raise ValueError(f"a callback needs to= one sid connected to {ns} on this server, not {one!r}")
            await self.hub.publish(room_key(ns, one), event, *args, skip=skip)
            if self._multi_node:  # it may be a sid on another node
                await self.hub.publish(RELAY_ROOM, "relay", relay_emit(ns, one, event, args, skip))

    def _ask(self, conn: Connection, event: str, args: tuple[Any, ...], callback: Callable[..., Any]) -> None:
        if not isinstance(conn, SioSocket):
            raise ValueError(f"connection {conn.id} cannot acknowledge (not Socket.IO)")
        future = conn.ask(event, *args)

        def answered(done: asyncio.Future[list[Any]]) -> None:
            if done.cancelled() or done.exception() is not None:
                return  # the connection ended first: python-socketio never calls it either
            self.start_background_task(_run_callback, callback, done.result())

        future.add_done_callback(answered)

    async def send(self, data: Any, **options: Unpack[EmitOptions]) -> None:
        """``emit("message", data, ...)``."""
        await self.emit("message", data, **options)

    async def call(
        self,
        event: str,
        data: Any = None,
        to: str | None = None,
        sid: str | None = None,
        namespace: str | None = None,
        timeout: float = 60,
        ignore_queue: bool = False,
    ) -> Any:
        """Emit to one client and wait for its acknowledgement: one argument as is, several
        as a tuple, none as ``None``.

        Raises:
            ValueError: no ``to``/``sid``.
            socketio.exceptions.TimeoutError: no answer within ``timeout`` seconds (or the
                connection ended, or is not on this server).
        """
        target = to if to is not None else sid
        if target is None:
            raise ValueError("Cannot use call() to broadcast.")
        conn = self._local(target, namespace or "/")
        if not isinstance(conn, SioSocket):
            await asyncio.sleep(timeout)  # python-socketio waits for its timeout too
            raise exceptions.TimeoutError()
        try:
            async with asyncio.timeout(timeout):
                result = await conn.ask(event, *self._args(data))
        except (TimeoutError, ConnectionClosed):
            raise exceptions.TimeoutError() from None
        return result[0] if len(result) == 1 else (tuple(result) if result else None)

    # -- rooms ----------------------------------------------------------------------------
    async def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        """Put ``sid`` in ``room``; awaited, publications to the room reach it from then on.
        A sid not connected here is ignored (as in python-socketio)."""
        ns = namespace or "/"
        conn = self._local(sid, ns)
        if conn is None or room == sid:
            return
        key = room_key(ns, room)
        if isinstance(conn, SioSocket) and not conn.accepted:  # its connect handler runs: once accepted
            deferred = self._deferred.setdefault(sid, [])
            if key not in deferred:
                deferred.append(key)
            return
        await self.hub.join(conn, key)

    async def leave_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        ns = namespace or "/"
        conn = self._local(sid, ns)
        if conn is None:
            return
        key = room_key(ns, room)
        deferred = self._deferred.get(sid)
        if deferred is not None and key in deferred:
            deferred.remove(key)
        self.hub.leave(conn, key)

    async def close_room(self, room: str, namespace: str | None = None) -> None:
        """Take everyone out of ``room`` (on every node)."""
        ns = namespace or "/"
        self._close_here(room_key(ns, room))
        if self._multi_node:
            await self.hub.publish(RELAY_ROOM, "relay", ["close_room", ns, room])

    def _close_here(self, key: str) -> None:
        for conn in self.hub.members(key):
            self.hub.leave(conn, key)

    def rooms(self, sid: str, namespace: str | None = None) -> list[str]:
        """The rooms ``sid`` is in, its own sid first (python-socketio's answer)."""
        ns = namespace or "/"
        conn = self._local(sid, ns)
        if conn is None:
            return []
        names = [name for key in conn.rooms if (name := room_name(ns, key)) is not None]
        names.extend(n for key in self._deferred.get(sid, ()) if (n := room_name(ns, key)) is not None)
        return [sid, *sorted(set(names))]

    # -- sessions -------------------------------------------------------------------------
    async def get_session(self, sid: str, namespace: str | None = None) -> dict[str, Any]:
        """The user session of ``sid`` (a dict kept with the connection)."""
        session: dict[str, Any] = self._connection(sid, namespace).data.setdefault(SESSION_KEY, {})
        return session

    async def save_session(self, sid: str, session: dict[str, Any], namespace: str | None = None) -> None:
        self._connection(sid, namespace).data[SESSION_KEY] = session

    @contextlib.asynccontextmanager
    async def session(self, sid: str, namespace: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """``async with sio.session(sid) as session:`` reads it, then saves it."""
        session = await self.get_session(sid, namespace)
        yield session
        await self.save_session(sid, session, namespace)

    # -- connections -------------------------------------------------------------------------
    async def disconnect(self, sid: str, namespace: str | None = None, ignore_queue: bool = False) -> None:
        """Disconnect ``sid`` from the namespace, on whichever node holds it."""
        conn = self._local(sid, namespace or "/")
        if conn is not None:
            conn.disconnect(disconnect.SERVER_DISCONNECT)
        elif self._multi_node:
            await self.hub.nodes.disconnect(disconnect.SERVER_DISCONNECT, connection=sid)

    def transport(self, sid: str, namespace: str | None = None) -> str:
        """``"polling"`` or ``"websocket"``."""
        conn = self._connection(sid, namespace)
        if not isinstance(conn, SioSocket):
            raise KeyError(f"{sid} is not a Socket.IO connection")
        return conn.transport

    def get_environ(self, sid: str, namespace: str | None = None) -> dict[str, Any] | None:
        conn = self._local(sid, namespace or "/")
        return self._environ(conn) if conn is not None else None

    # -- tasks ----------------------------------------------------------------------------
    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Run ``target(*args, **kwargs)`` (a coroutine function, or a plain one in a thread)
        as a task this server keeps a reference to until it ends."""
        if asyncio.iscoroutinefunction(target):
            task: asyncio.Future[Any] = asyncio.ensure_future(target(*args, **kwargs))
        else:
            task = asyncio.ensure_future(asyncio.to_thread(target, *args, **kwargs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def sleep(self, seconds: float = 0) -> None:
        await asyncio.sleep(seconds)

    async def shutdown(self) -> None:
        """Stop serving: every client is disconnected."""
        await self.app.shutdown()

    # -- python-socketio API with no meaning here ---------------------------------------------
    def attach(self, app: Any, socketio_path: str = "socket.io") -> None:
        raise NotImplementedError("mount it with roomcast.socketio.ASGIApp(sio, your_asgi_app)")

    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("roomcast serves the requests itself: ASGIApp(sio) or run(sio.app)")

    def instrument(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("the Socket.IO admin UI is not supported; roomcast has /dashboard")


async def _run_callback(callback: Callable[..., Any], args: Collection[Any]) -> None:
    result = callback(*args)
    if isinstance(result, Coroutine):
        await result
