"""The public asyncio ``Client``: Socket.IO v5 with rooms that survive reconnects.

Owns the client's lifecycle above one connection: what goes in the namespace ``CONNECT``
(``auth``, and ``{pid, offset}`` when the server offers connection state recovery), the
reconnect loop (``Backoff`` delays, ``StateMachine`` states), events in and out with acks,
the offline buffer, rooms re-subscribed from their last position, and pause/resume/close.
One connection's Socket.IO (the namespace handshake, packets, acks) is ``client.session``,
disposable like the Engine.IO session below it (``client.connection``): one per connection.

Three tasks at most: the *supervisor* (connect, read, decide what to do when the connection
ends), the *dispatcher* (runs handlers one event at a time, in arrival order, so a handler
that awaits an ack of its own never blocks the reading of that ack), and a short-lived task
per re-subscription after a reconnect.

Rooms: roomcast sends each publication with ``{"$room", "$epoch", "$offset"}`` when the
handshake asks for it (``?roomcast=1``, always sent here; ``docs/protocol.md`` §3). That is
what lets the client drop events of rooms it never subscribed, drop duplicates, and ask for
exactly what it missed when it comes back. Events without it (direct emits, other servers)
go straight to the handlers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from roomcast.backoff import Backoff
from roomcast.client.batcher import BatchHandler, ChangeBatcher
from roomcast.client.connection import TRANSPORTS
from roomcast.client.dispatcher import Dispatcher
from roomcast.client.listeners import Handler, ListenerSets
from roomcast.client.outbox import OfflinePolicy, Outbox, Outgoing
from roomcast.client.session import ServerAck, SioSession, unpack
from roomcast.client.state import ClientState, StateChange, StateMachine
from roomcast.client.subscriptions import RoomState, Subscriptions
from roomcast.client.transport import parse_target
from roomcast.errors import (
    AckTimeout,
    ConnectionClosed,
    ConnectRefused,
    ConnectTimeout,
    LocalProtocolError,
    RemoteProtocolError,
    SubscribeRefused,
)
from roomcast.protocol import http1
from roomcast.protocol import socketio as sio
from roomcast.protocol.socketio import SioPacket, SioType
from roomcast.types import MAX_NAME_LENGTH

__all__ = ["Client", "Auth", "SnapshotHandler"]

logger = logging.getLogger("roomcast.client")

Auth: TypeAlias = Mapping[str, Any] | Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]] | None
"""A static CONNECT payload, or a (sync or async) callable returning one before each connect."""

SnapshotHandler: TypeAlias = Callable[[RoomState, Any], Awaitable[None] | None]
"""Called with a room's state and its snapshot: on a first subscribe and on every reset."""

META_QUERY = {"roomcast": "1"}
_S = ClientState


@dataclass(slots=True)
class _Held:
    """A live room event that arrived while the room's subscribe was in flight."""

    name: str
    args: list[Any]
    epoch: str
    offset: int
    ack_id: int | None


def _room_meta(args: list[Any]) -> tuple[str, str, int] | None:
    """Pop and return roomcast's trailing ``{"$room","$epoch","$offset"}``, if present."""
    if not args:
        return None
    last = args[-1]
    if type(last) is not dict or "$offset" not in last:
        return None
    room, epoch, offset = last.get("$room"), last.get("$epoch"), last.get("$offset")
    if not isinstance(room, str) or not isinstance(epoch, str) or type(offset) is not int:
        return None
    args.pop()
    return room, epoch, offset


class Client:
    """A Socket.IO v5 client that reconnects, recovers its rooms and buffers while offline.

    See ``docs/client.md`` for the whole story; in short::

        client = Client("http://127.0.0.1:8000", auth=get_token)
        client.on("chat", show)
        await client.connect()
        await client.subscribe("room:1")
        answer = await client.emit("echo", {"x": 1}, ack=True)
        await client.close()

    Args:
        url: ``http(s)://`` or ``ws(s)://host[:port]`` (no path).
        namespace: the Socket.IO namespace.
        path: the server's Engine.IO endpoint.
        auth: the CONNECT payload, or a callable (sync or async) that returns it, called
            before every connect so a fresh token goes out each time.
        transports: ``("websocket", "polling")`` (default): WebSocket, falling back to
            polling if the server refuses the upgrade; ``("polling", "websocket")``:
            polling then upgrade; ``("websocket",)`` or ``("polling",)`` only.
        reconnect: reconnect after a lost connection or a failed attempt.
        backoff_initial, backoff_max: the reconnect delays (``Backoff``: full jitter,
            never below ``backoff_initial / 4``).
        max_attempts: give up after this many failed attempts in a row; None: never.
        stable_after: seconds a connection must last before the delays start again small.
        connect_timeout: seconds for one attempt, up to the namespace's CONNECT reply.
        ack_timeout: default seconds for ``emit(..., ack=True)`` and ``subscribe``.
        offline: while not connected, ``"buffer"`` emits (up to ``offline_limit``, sent in
            order after the next connect) or ``"refuse"`` them at once.
        max_message_bytes: the largest message accepted from the server; a bigger one
            resets the connection (reason ``"message too big"``).
        headers: extra HTTP headers on every handshake request (``ValueError`` at once
            for one HTTP cannot carry: a CR or LF in a value, a name that is not a token).
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "/",
        path: str = "/socket.io/",
        auth: Auth = None,
        transports: Sequence[str] = ("websocket", "polling"),
        reconnect: bool = True,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_attempts: int | None = None,
        stable_after: float = 10.0,
        connect_timeout: float = 10.0,
        ack_timeout: float = 10.0,
        offline: OfflinePolicy = "buffer",
        offline_limit: int = 1000,
        max_message_bytes: int = 10_000_000,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not namespace.startswith("/") or "," in namespace:
            raise ValueError("namespace must start with '/' and contain no ','")
        if not transports or any(t not in TRANSPORTS for t in transports):
            raise ValueError(f"transports must be a non-empty sequence of {TRANSPORTS}")
        if connect_timeout <= 0 or ack_timeout <= 0 or stable_after < 0:
            raise ValueError("timeouts must be > 0 and stable_after >= 0")
        self._outbox = Outbox(offline, offline_limit)
        self.url = url
        self.namespace = namespace
        self.target = parse_target(url, path)
        self.transports = tuple(transports)
        self.reconnect = reconnect
        self.max_attempts = max_attempts
        self.stable_after = stable_after
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.max_message_bytes = max_message_bytes
        self.headers = dict(headers or {})
        try:
            http1.check_headers(self.headers)
        except LocalProtocolError as exc:
            raise ValueError(str(exc)) from None
        self._auth = auth
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._machine = StateMachine()
        self._listeners = ListenerSets()
        self._rooms = Subscriptions()
        self._snapshot_handlers: list[tuple[str | None, SnapshotHandler]] = []
        self._batchers: list[ChangeBatcher] = []
        self._held: dict[str, list[_Held]] = {}  # rooms whose subscribe is in flight
        self._session: SioSession | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._outcome: asyncio.Future[None] | None = None
        self._dispatcher = Dispatcher()
        self._pause_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._retries = 0
        self._refused_auth: tuple[dict[str, Any] | None, str] | None = None  # what was last refused
        self.sid: str | None = None
        self.pid: str | None = None
        self._csr_offset: str | None = None
        self.recovered: bool | None = None
        self.paused = False
        self._stopping = False

    # -- state ----------------------------------------------------------------------------
    @property
    def state(self) -> ClientState:
        """Where the connection stands."""
        return self._machine.state

    @property
    def transport(self) -> str | None:
        """``"websocket"`` or ``"polling"`` while connected, else None."""
        return self._session.transport if self._session is not None else None

    @property
    def backoff(self) -> Backoff:
        """The reconnect delays (read ``attempts``; tests seed nothing here)."""
        return self._backoff

    def on_state(self, fn: Callable[[StateChange], None]) -> Callable[[], None]:
        """Call ``fn(change)`` on every state change (synchronously); returns a remover."""
        return self._machine.add_listener(fn)

    def _move(self, new: ClientState, reason: str | None = None) -> None:
        if new is _S.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        self._machine.move(new, reason)

    # -- handlers -------------------------------------------------------------------------
    def on(self, event: str, handler: Handler | None = None, *, set: str | None = None) -> Any:
        """Register ``handler`` for ``event`` in listener set ``set`` (also a decorator).

        Handlers get the event's arguments (roomcast's room meta removed). For an event the
        server sent with an ack id, the last argument is an ``ack(*values)`` callable.
        """
        return self._listeners.on(event, handler, set=set)

    def off(self, event: str, handler: Handler | None = None, *, set: str | None = None) -> int:
        """Remove ``handler`` (or every handler) of ``event`` from set ``set``."""
        return self._listeners.off(event, handler, set=set)

    def on_any(self, handler: Handler | None = None, *, set: str | None = None) -> Any:
        """Catch-all of set ``set``: ``handler(event, *args)`` for events with no handler."""
        return self._listeners.any(handler, set=set)

    def use(self, set_name: str) -> None:
        """Switch the active listener set atomically (``ListenerSets.use``)."""
        self._listeners.use(set_name)

    @property
    def listeners(self) -> ListenerSets:
        """The listener sets, for what the shortcuts above do not cover."""
        return self._listeners

    def on_snapshot(self, handler: SnapshotHandler, *, room: str | None = None) -> Callable[[], None]:
        """Call ``handler(state, snapshot)`` whenever a room (``room``, or any) gets a snapshot.

        That is the first subscribe, and every re-subscribe that could not recover the
        missed events (``state.recovered is False``: a server restart, history expired):
        the application replaces what it holds for the room. Runs in event order, before
        the room's later events. Returns a remover.
        """
        entry = (room, handler)
        self._snapshot_handlers.append(entry)

        def remove() -> None:
            if entry in self._snapshot_handlers:
                self._snapshot_handlers.remove(entry)

        return remove

    def batcher(self, handler: BatchHandler, **options: Any) -> ChangeBatcher:
        """A ``ChangeBatcher`` owned by this client: held while paused, closed by ``close``."""
        batcher = ChangeBatcher(handler, **options)
        if self.paused:
            batcher.hold()
        self._batchers.append(batcher)
        return batcher

    # -- rooms ----------------------------------------------------------------------------
    def room(self, name: str) -> RoomState | None:
        """What the client knows of room ``name`` (position, ``recovered``), or None."""
        return self._rooms.get(name)

    @property
    def rooms(self) -> list[RoomState]:
        """Every subscribed room, in subscription order."""
        return list(self._rooms)

    async def subscribe(self, room: str, *, timeout: float | None = None) -> RoomState:
        """Subscribe to ``room`` with roomcast's built-in ``subscribe``; kept across reconnects.

        Connected: returns once the server answered (the snapshot handlers have been queued
        before this returns). Not connected: the room is recorded and subscribed on the next
        connect; the state returned then has no position yet. A connection lost during the
        request is not an error: the room is subscribed again after the reconnect.

        Raises:
            SubscribeRefused: the server said no (``{"error": ...}``); the room is dropped.
            AckTimeout: no answer in time (the room stays and is retried on reconnect).
            ConnectionClosed: the client is closed.
        """
        if not isinstance(room, str) or not 0 < len(room) <= MAX_NAME_LENGTH:
            raise ValueError("room must be a string of 1-256 characters")
        if self.state is _S.CLOSED:
            raise ConnectionClosed("client closed")
        state = self._rooms.add(room)
        session = self._session
        if session is None or self.state is not _S.CONNECTED:
            return state
        try:
            return await self._subscribe_on(session, room, timeout=timeout, raise_refusal=True)
        except ConnectionClosed:
            if self._machine.state.value == "closed":  # (re-read: the await may have closed it)
                raise
            return self._rooms.get(room) or state

    async def unsubscribe(self, room: str) -> None:
        """Forget ``room``: its events are dropped from now on; the server is told if connected."""
        self._rooms.remove(room)
        self._held.pop(room, None)
        session = self._session
        if session is not None and self.state is _S.CONNECTED:
            try:
                await self._call(session, "unsubscribe", {"room": room}, self.ack_timeout)
            except (ConnectionClosed, AckTimeout) as exc:
                logger.debug("unsubscribe %r not confirmed: %r", room, exc)

    async def _subscribe_on(
        self, session: SioSession, room: str, *, timeout: float | None = None, raise_refusal: bool
    ) -> RoomState:
        """Send ``subscribe`` for ``room`` from its last position and apply the answer."""
        self._held.setdefault(room, [])
        try:
            reply = await self._call(
                session, "subscribe", self._rooms.subscribe_payload(room), timeout or self.ack_timeout
            )
        except BaseException:
            held = self._held.pop(room, [])
            if session is self._session:
                self._release(session, room, held)
            raise
        held = self._held.pop(room, [])
        if not isinstance(reply, dict) or "error" in reply:
            message = str(reply.get("error")) if isinstance(reply, dict) else "no answer"
            logger.warning("subscribe %r refused: %s", room, message)
            self._rooms.remove(room)
            if raise_refusal:
                raise SubscribeRefused(room, message)
            return RoomState(room)
        try:
            state = self._rooms.on_subscribed(room, reply)
        except RemoteProtocolError as exc:
            logger.warning("bad subscribe reply for %r: %s", room, exc.reason)
            self._release(session, room, held)
            return self._rooms.get(room) or RoomState(room)
        if not state.recovered:
            self._queue_snapshot(state, reply.get("snapshot"))
        for publication in reply.get("publications") or ():
            if isinstance(publication, dict) and isinstance(publication.get("event"), str):
                data = publication.get("data")
                self._queue_event(publication["event"], list(data) if isinstance(data, list) else [], None)
        self._release(session, room, held)
        return self._rooms.get(room) or state

    def _release(self, session: SioSession, room: str, held: list[_Held]) -> None:
        """Deliver live events that waited for the subscribe answer, minus duplicates."""
        for event in held:
            if self._rooms.advance(room, event.epoch, event.offset):
                self._deliver(session, event.name, event.args, event.ack_id)

    def _queue_snapshot(self, state: RoomState, snapshot: Any) -> None:
        for room, handler in list(self._snapshot_handlers):
            if room is None or room == state.room:
                self._dispatcher.put(_call_handler(handler, state, snapshot, f"snapshot of {state.room!r}"))

    # -- emit -----------------------------------------------------------------------------
    async def emit(self, event: str, *args: Any, ack: bool = False, timeout: float | None = None) -> Any:
        """Send ``event`` with ``args``; with ``ack=True`` wait for the answer and return it.

        The answer: none → None, one value → it, several → a tuple. Offline, the emit is
        buffered (``offline="buffer"``, up to ``offline_limit``) and sent in order after the
        next connect — with ``ack=True`` the wait (``timeout``) starts now and covers that.

        Raises:
            AckTimeout: no answer within ``timeout`` (default ``ack_timeout``).
            OfflineRefused: offline with ``offline="refuse"``.
            OfflineBufferFull: offline with the buffer full.
            ConnectionClosed: the client is closed, or the connection was lost before the
                answer came (the server may or may not have handled the event).
            ValueError: a reserved event name or arguments JSON cannot carry.
        """
        if not isinstance(event, str) or event in sio.RESERVED_EVENTS:
            raise ValueError(f"cannot emit {event!r}: not a str, or reserved by Socket.IO")
        if self.state is _S.CLOSED:
            raise ConnectionClosed("client closed")
        future: asyncio.Future[list[Any]] | None = asyncio.get_running_loop().create_future() if ack else None
        session = self._session
        entry: Outgoing | None = None
        if session is not None and self.state is _S.CONNECTED:
            self._send_event(session, event, args, future)
        else:
            try:
                sio.encode(SioPacket(SioType.EVENT, self.namespace, [event, *args]))
            except LocalProtocolError as exc:
                raise ValueError(str(exc)) from None
            entry = Outgoing(event, args, future)
            self._outbox.add(entry, self.state.value)
        if future is None:
            return None
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.ack_timeout):
                return unpack(await future)
        except TimeoutError:
            if entry is not None:
                self._outbox.discard(entry)  # never send what the caller gave up on
            raise AckTimeout(f"no ack for {event!r} within {timeout or self.ack_timeout} s") from None

    def _send_event(
        self, session: SioSession, event: str, args: Sequence[Any], future: asyncio.Future[list[Any]] | None
    ) -> None:
        try:
            session.send_event(event, args, future)
        except LocalProtocolError as exc:
            raise ValueError(str(exc)) from None

    async def _call(self, session: SioSession, event: str, payload: Any, timeout: float) -> Any:
        try:
            return await session.call(event, payload, timeout)
        except TimeoutError:
            raise AckTimeout(f"no answer to {event!r} within {timeout} s") from None

    def _flush_offline(self, session: SioSession) -> None:
        for entry in self._outbox.drain():
            self._send_event(session, entry.event, entry.args, entry.future)

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect, and return once connected.

        With ``reconnect=True`` this keeps trying (with backoff) until connected, except
        that a refusal (``CONNECT_ERROR``) with a static ``auth`` is final.

        Raises:
            ConnectRefused: the server refused (its message); reconnecting has stopped.
            ConnectTimeout: ``reconnect=False`` and the attempt took over ``connect_timeout``.
            ConnectionClosed: ``reconnect=False`` and the connection failed, or the client
                was closed or paused meanwhile.
        """
        if self.state is _S.CLOSED:
            raise ConnectionClosed("client closed")
        if self.state is _S.CONNECTED:
            return
        self.paused = False
        outcome = self._start()
        await asyncio.shield(outcome)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the state is ``connected``.

        Raises:
            ConnectTimeout: not connected within ``timeout``.
            ConnectionClosed: the client is closed.
        """
        if self.state is _S.CLOSED:
            raise ConnectionClosed("client closed")
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise ConnectTimeout(f"not connected within {timeout} s") from None

    async def pause(self, grace: float = 0.0) -> None:
        """Go to the background: keep the connection ``grace`` seconds, then disconnect.

        Returns at once (``grace`` runs in the background; ``resume`` cancels it). At the
        end of the grace the state becomes ``disconnected`` (reason ``"paused"``) and the
        owned batchers are held: their pending changes are kept for ``resume``.
        """
        if self.state is _S.CLOSED:
            raise ConnectionClosed("client closed")
        if self._pause_task is not None:
            self._pause_task.cancel()
        if grace <= 0:
            self._pause_task = None
            await self._go_paused()
        else:
            self._pause_task = asyncio.get_running_loop().create_task(self._pause_after(grace))

    async def _pause_after(self, grace: float) -> None:
        await asyncio.sleep(grace)
        self._pause_task = None
        await self._go_paused()

    async def _go_paused(self) -> None:
        self.paused = True
        await self._stop(_S.DISCONNECTED, "paused")
        for batcher in self._batchers:
            batcher.hold()

    async def resume(self) -> None:
        """Come back to the foreground: cancel a pause in its grace, or reconnect.

        Returns without waiting for the connection (``wait_connected`` waits); the rooms
        are re-subscribed from their positions and the batchers released.
        """
        if self.state is _S.CLOSED:
            raise ConnectionClosed("client closed")
        if self._pause_task is not None:
            self._pause_task.cancel()
            self._pause_task = None
        for batcher in self._batchers:
            batcher.release()
        if self.paused or self._supervisor is None:
            self.paused = False
            self._backoff.reset()
            self._start()

    async def close(self) -> None:
        """Disconnect for good: state ``closed``; owned batchers drop their pending changes.

        Buffered emits and pending acks fail with ``ConnectionClosed``. Idempotent.
        """
        if self.state is _S.CLOSED:
            return
        if self._pause_task is not None:
            self._pause_task.cancel()
            self._pause_task = None
        await self._stop(_S.CLOSED, "closed")
        for batcher in self._batchers:
            dropped = batcher.close()
            if dropped:
                logger.info("close dropped %d pending changes", dropped)
        self._outbox.fail_all(ConnectionClosed("client closed"))
        await self._dispatcher.aclose()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _start(self) -> asyncio.Future[None]:
        """Start the supervisor if it is not running; the future of its first outcome."""
        loop = asyncio.get_running_loop()
        if self._outcome is None or self._outcome.done():
            self._outcome = loop.create_future()
            self._outcome.add_done_callback(_consume)
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = loop.create_task(self._supervise(), name="roomcast-client")
        return self._outcome

    def _settle(self, error: BaseException | None) -> None:
        outcome = self._outcome
        if outcome is not None and not outcome.done():
            if error is None:
                outcome.set_result(None)
            else:
                outcome.set_exception(error)

    async def _stop(self, final: ClientState, reason: str) -> None:
        """Stop the supervisor, say goodbye on the wire, and move to ``final``.

        The supervisor is cancelled first (``_stopping`` keeps it from tearing the session
        down), so the goodbye cannot be mistaken for a lost connection and retried.
        """
        self._stopping = True
        try:
            session = self._session
            if session is not None and self.state is _S.CONNECTED:
                session.write(SioPacket(SioType.DISCONNECT, self.namespace))
            supervisor, self._supervisor = self._supervisor, None
            if supervisor is not None:
                supervisor.cancel()
                await asyncio.gather(supervisor, return_exceptions=True)
            if session is not None:
                await session.engine.close()
                self._end_session(session, reason)
            self._move(final, reason)
            self._settle(ConnectionClosed(reason))
        finally:
            self._stopping = False

    # -- the supervisor -------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Connect, serve, and after each loss decide: retry after a delay, or stop."""
        loop = asyncio.get_running_loop()
        self._dispatcher.start()
        while True:
            self._move(_S.CONNECTING)
            error: BaseException
            try:
                async with asyncio.timeout(self.connect_timeout):
                    session, reply = await self._attempt()
            except ConnectRefused as exc:
                reason, error = f"refused: {exc.message}", exc
                if not callable(self._auth) or isinstance(exc, _CredentialsUnchanged):
                    self._give_up(reason, error)
                    return
            except TimeoutError:
                reason = "connect timeout"
                error = ConnectTimeout(f"no connection within {self.connect_timeout} s")
            except (OSError, ConnectionClosed, RemoteProtocolError) as exc:
                reason = f"connect error: {exc}"
                error = ConnectionClosed(reason)
            except Exception as exc:  # the auth callable failed: retried like a network error
                logger.exception("connect attempt failed")
                reason, error = f"connect error: {exc!r}", ConnectionClosed(repr(exc))
            else:
                self._refused_auth = None
                started = loop.time()
                ended = await self._serve(session, reply)
                if loop.time() - started >= self.stable_after:
                    self._backoff.reset()
                if ended == "io server disconnect":
                    self._give_up(ended, ConnectionClosed(ended))
                    return
                reason, error = ended, ConnectionClosed(ended)
            self._retries += 1
            if not self.reconnect:
                self._give_up(reason, error)
                return
            if self.max_attempts is not None and self._retries > self.max_attempts:
                self._give_up(f"gave up after {self.max_attempts} attempts: {reason}", error)
                return
            self._move(_S.RECONNECTING, reason)
            delay = self._backoff.next()
            logger.info("reconnecting in %.2f s (%s)", delay, reason)
            await asyncio.sleep(delay)

    def _give_up(self, reason: str, error: BaseException) -> None:
        self._supervisor = None
        self._move(_S.DISCONNECTED, reason)
        self._settle(error)

    async def _auth_payload(self) -> dict[str, Any] | None:
        auth: Any = self._auth
        if callable(auth):
            auth = auth()
            if inspect.isawaitable(auth):
                auth = await auth
        if auth is None:
            return None
        if not isinstance(auth, Mapping):
            raise TypeError("auth must be a mapping or return one")
        return dict(auth)

    async def _attempt(self) -> tuple[SioSession, dict[str, Any]]:
        """One connection: Engine.IO session, then the namespace CONNECT and its answer."""
        payload = await self._auth_payload()
        refused = self._refused_auth
        if refused is not None and payload == refused[0]:
            # The callable had nothing new: asking again would be refused again, for ever.
            raise _CredentialsUnchanged(f"{refused[1]} (the auth callable returned the same credentials)")
        payload_sent = payload
        if self.pid is not None:  # connection state recovery: as the official client does
            payload = {"pid": self.pid, "offset": self._csr_offset, **(payload or {})}
        try:
            return await SioSession.open(
                self.target,
                self.namespace,
                payload,
                transports=self.transports,
                headers=self.headers,
                query=META_QUERY,
                max_message_bytes=self.max_message_bytes,
            )
        except ConnectRefused as exc:
            self._refused_auth = (payload_sent, exc.message)
            raise

    async def _serve(self, session: SioSession, reply: dict[str, Any]) -> str:
        """Run one connection until it ends; returns the reason."""
        pid = reply.get("pid") if isinstance(reply.get("pid"), str) else None
        self.recovered = pid is not None and pid == self.pid
        if not self.recovered:
            self._csr_offset = None
        self.pid, self.sid = pid, reply["sid"]
        self._session = session
        self._retries = 0
        self._move(_S.CONNECTED, "recovered" if self.recovered else f"connected over {session.transport}")
        self._settle(None)
        early, session.early = session.early, []
        for before in early:
            self._on_packet(session, before)
        for state in self._rooms:
            session.spawn(self._resubscribe(session, state.room))
        self._flush_offline(session)
        reason = "transport close"
        try:
            while True:
                packet = await session.next_packet()
                try:
                    self._on_packet(session, packet)
                except Exception:  # a bug of ours must not end the read loop
                    logger.exception("could not handle a %s packet", packet.type.name)
        except ConnectionClosed as exc:
            reason = str(exc.args[0]) if exc.args else reason
        finally:
            if self._session is session and not self._stopping:
                self._end_session(session, reason)
        return reason

    def _end_session(self, session: SioSession, reason: str) -> None:
        if self._session is session:
            self._session = None
        session.end(reason)
        self._held.clear()

    async def _resubscribe(self, session: SioSession, room: str) -> None:
        try:
            state = await self._subscribe_on(session, room, raise_refusal=False)
            logger.info("room %r re-subscribed: %s", room, "recovered" if state.recovered else "reset")
        except (AckTimeout, ConnectionClosed) as exc:
            logger.warning("re-subscribe of %r failed: %r", room, exc)

    # -- incoming packets -----------------------------------------------------------------
    def _on_packet(self, session: SioSession, packet: SioPacket) -> None:
        """An event or the server's DISCONNECT of our namespace (``SioSession`` settled acks)."""
        kind = packet.type
        if kind is SioType.EVENT:
            self._on_event(session, packet)
        elif kind is SioType.DISCONNECT:
            logger.info("the server disconnected namespace %s", self.namespace)
            session.engine.fail("io server disconnect")
        else:
            logger.warning("unexpected %s packet dropped", kind.name)

    def _on_event(self, session: SioSession, packet: SioPacket) -> None:
        args: list[Any] = list(packet.data)
        name = args.pop(0)
        if not isinstance(name, str):
            logger.warning("event with a non-string name %r dropped", name)
            return
        if self.pid is not None and packet.id is None and args and isinstance(args[-1], str):
            self._csr_offset = args.pop()  # connection state recovery: the server's offset
        meta = _room_meta(args)
        if meta is not None:
            room, epoch, offset = meta
            if room not in self._rooms:
                logger.warning("event %r for room %r, never subscribed, dropped", name, room)
                return
            held = self._held.get(room)
            if held is not None:
                held.append(_Held(name, args, epoch, offset, packet.id))
                return
            if not self._rooms.advance(room, epoch, offset):
                logger.debug("duplicate event %r of %r at %s dropped", name, room, offset)
                return
        self._deliver(session, name, args, packet.id)

    def _deliver(self, session: SioSession, name: str, args: list[Any], ack_id: int | None) -> None:
        if ack_id is None:
            self._queue_event(name, args, None)
        else:
            self._queue_event(name, args, ServerAck(session, ack_id))

    def _queue_event(self, name: str, args: list[Any], ack: ServerAck | None) -> None:
        # The listener set is chosen when the event's turn comes in the dispatch loop, not on
        # arrival: a handler (or the app between two events) that calls ``use()`` switches
        # every later event, even ones already read from the socket, and each event is still
        # handled by exactly one set.
        if ack is None:
            self._dispatcher.put(self._dispatch(name, args))
        else:
            self._dispatcher.put(_acked(self._dispatch(name, [*args, ack]), ack))

    async def _dispatch(self, name: str, args: list[Any]) -> int:
        return await self._listeners.dispatch(name, args)

    def __repr__(self) -> str:
        return f"<Client {self.url} {self.namespace} {self.state}>"


class _CredentialsUnchanged(ConnectRefused):
    """The auth callable returned the credentials the server just refused: final, not retried."""


async def _acked(dispatch: Coroutine[Any, Any, int], ack: ServerAck) -> None:
    """Run the handlers, then send an empty ack if none of them answered."""
    try:
        await dispatch
    finally:
        if not ack.sent:
            ack()


async def _call_handler(handler: SnapshotHandler, state: RoomState, snapshot: Any, what: str) -> None:
    try:
        result = handler(state, snapshot)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("handler %r for the %s failed", handler, what)


def _consume(future: asyncio.Future[None]) -> None:
    """Mark an outcome's exception as seen: nobody may be waiting on ``connect()``."""
    if not future.cancelled():
        future.exception()
