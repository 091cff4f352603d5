"""The plain WebSocket at ``/ws`` (subprotocol ``roomcast.v1``): JSON messages, same rooms.

Imports L0, L1 (``protocol.wsjson``, ``protocol.websocket``), L3 (the hub) and
``transports.base``. docs/protocol.md is the wire specification.

Each WebSocket is one hub ``Connection``. A publication is encoded once for every plain
WebSocket (``WsEncoder``: the JSON text and its ready frame); each event carries its room's
offset, so a client that reconnects subscribes with ``{epoch, offset}`` and gets exactly what
it missed, or a fresh snapshot marked ``recovered: false``.

A ``subscribe`` is answered with the ``snapshot`` reply and any replay the moment the hub
releases the subscription (``Builtins.subscribe``); the hub held the room's live events back
until then, so they follow with nothing twice and nothing skipped. Bad messages get an ``error``
reply with the request's id and the connection carries on; bytes that are not a message at
all, or too big, close it with the code documented for that reason.

A stream URL (``/tasks/{id}/ws``, routed by the app) speaks the same protocol on a connection
subscribed to its one room as it opens, the way ``/tasks/{id}/events`` is an SSE stream on
one room: the client resumes by ``?epoch=&offset=`` instead of a ``subscribe`` of its own,
and the connection closes normally once that room is terminal.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeAlias

from roomcast import _json, disconnect
from roomcast.auth import Authenticator, Claims, token_from_request
from roomcast.disconnect import Disconnect
from roomcast.errors import AuthError, ConnectionClosed, InvalidPublication, LimitExceeded, PermissionDenied
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.protocol import websocket as wsproto
from roomcast.protocol import wsjson
from roomcast.transports.base import (
    CorsPolicy,
    HttpRequest,
    HttpResponse,
    WebSocketAccept,
    WebSocketChannel,
    json_error,
)
from roomcast.transports.builtins import Builtins
from roomcast.transports.deadlines import DeadlineWheel
from roomcast.transports.expiry import ExpiryWatch
from roomcast.transports.ratelimit import MessageRate
from roomcast.types import MAX_OFFSET, Publication, RoomName, StreamPosition

__all__ = ["WsServer", "WsConnection", "WsEncoder", "WsPrepared", "STREAM_ID", "StreamCheck"]

logger = logging.getLogger("roomcast.ws")

STREAM_ID: Final = "stream"
"""The request id of the ``snapshot`` answering the subscribe a stream URL (``/tasks/{id}/ws``)
makes on the client's behalf when it opens."""

StreamCheck: TypeAlias = Callable[[], Awaitable[str | None]]
"""Run as a stream URL's connection opens, before its subscribe: why it cannot be served
(``"no task 'x'"``), or ``None``."""

_PING = wsproto.serialize_frame(wsproto.OP_PING, b"")
"""The keep-alive ping, built once: the same bytes for every connection."""

_PING_RESOLUTION = 0.05
"""Seconds per tick of the ping wheel: pings need no finer timing, and coarser ticks wake the
loop less often when many connections are due."""


class WsPrepared:
    """A publication as every plain WebSocket writes it: JSON text and its ready frame."""

    __slots__ = ("room", "offset", "message", "frames")

    def __init__(self, room: RoomName, offset: int, message: str) -> None:
        self.room = room
        self.offset = offset
        self.message = message
        self.frames = wsproto.text_frame(message)


class WsEncoder:
    """Encodes publications as ``roomcast.v1`` event messages (a hub ``Encoder``)."""

    __slots__ = ()

    def encode(self, publication: Publication) -> WsPrepared:
        """Live and replayed alike. The data was serialised when it was published
        (``Publication.encoded``) and is embedded as it is."""
        encoded = publication.encoded
        if encoded is not None:
            data = wsjson.publication_data(_json.embed(encoded))
        else:
            data = _json.json_safe(wsjson.publication_data(publication.data))
        room, offset = publication.room, publication.position.offset
        return WsPrepared(room, offset, wsjson.event_message(publication.event, data, room=room, offset=offset))


class WsConnection(Connection):
    """One plain WebSocket client (a hub ``Connection`` and the door's ``WebSocketHandler``).

    ``bucket`` is its inbound message allowance (``None`` without a rate limit); ``heard``,
    ``ping_tick`` and ``pinged_at`` are its keep-alive state, kept by ``WsServer``.
    """

    __slots__ = ("channel", "server", "tasks", "bucket", "heard", "ping_tick", "pinged_at", "stream_room")

    transport_label = "ws"  # a constant where the base computes it

    def __init__(self, server: WsServer, channel: WebSocketChannel, auth: Any) -> None:
        super().__init__(f"{server.id_prefix}{next(server.ids)}", hub=server.hub, encoder=server.encoder, auth=auth)
        self.server = server
        self.channel = channel
        if isinstance(auth, Claims):
            self.claims, self.user = auth, auth.subject
        self.tasks: set[asyncio.Task[None]] = set()
        self.bucket = server.rate.bucket()
        self.heard = False  # a pong or a message arrived since the last ping
        self.ping_tick: int | None = None  # filed in the server's ping wheel
        self.pinged_at: float | None = None  # loop time of the ping awaiting an answer
        self.stream_room: RoomName | None = None  # the room its URL names (``/tasks/{id}/ws``)

    # -- the hub's side ---------------------------------------------------------------
    def write(self, encoded: WsPrepared) -> bool:
        channel = self.channel
        if channel.native_frames:
            return channel.send_frames(encoded.frames)
        return channel.send(encoded.message)

    def emit(self, event: str, *args: Any) -> None:
        if not self.closed:
            self._send(wsjson.event_message(event, wsjson.publication_data(args)))

    async def call(self, event: str, *args: Any, timeout: float = 10.0) -> Any:
        raise NotImplementedError("roomcast.v1 has no server-to-client requests")

    def disconnect(self, reason: Disconnect) -> None:
        if not self.closed:
            self.server.stop_pinging(self)
            self.channel.close(disconnect.websocket_close_code(reason), reason.reason)
            self.hub.remove_connection(self, reason)  # out of its rooms now, not when the close frame is read

    # -- the door's side (WebSocketHandler) ----------------------------------------------
    def on_message(self, data: str | bytes) -> None:
        self.heard = True
        bucket = self.bucket
        if bucket is not None and not bucket.take():  # counted by the bucket, once
            logger.debug("connection %s: more than %g messages/s, cut", self.id, bucket.rate.per_second)
            self.disconnect(disconnect.RATE_LIMITED)
            return
        try:
            message = wsjson.decode(data)
        except wsjson.WsJsonError as exc:
            self.server.bad_messages += 1
            self._send(wsjson.error_message(exc.code, exc.reason, exc.id))
            return
        if isinstance(message, wsjson.Ping):
            self._send(wsjson.ack_message(message.id))
        elif isinstance(message, wsjson.Subscribe):
            self._spawn(self._subscribe(message))
        elif isinstance(message, wsjson.Unsubscribe):
            self.server.calls.unsubscribe(self, message.room)
            self._send(wsjson.ack_message(message.id))
        elif isinstance(message, wsjson.Publish):
            self._spawn(self._publish(message))
        elif isinstance(message, wsjson.Emit):
            self._emit(message)
        elif isinstance(message, wsjson.Refresh):
            self._refresh(message)

    def room_terminal(self, room: RoomName) -> None:
        """The room its URL names has ended: close normally, as ``/tasks/{id}/events`` ends."""
        if room == self.stream_room:
            self.disconnect(disconnect.NORMAL)

    def on_pong(self) -> None:
        """The native door read a pong: the client is alive (see ``WsServer``'s pings)."""
        self.heard = True

    def on_close(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self.tasks:
            task.cancel()
        # The client closed (1000, or 1001 for a page that went away), or the connection broke.
        self.hub.remove_connection(self, disconnect.NORMAL if code in (1000, 1001) else disconnect.TRANSPORT_CLOSE)
        self.server.forget(self)

    # -- requests ---------------------------------------------------------------------
    async def _subscribe(self, message: wsjson.Subscribe) -> None:
        room = message.room
        since = (
            StreamPosition(message.epoch, message.offset)
            if message.epoch is not None and message.offset is not None
            else None
        )
        try:
            sub = await self.server.calls.subscribe(self, room, since)
        except AuthError as exc:
            self._send(wsjson.error_message(_auth_code(exc), str(exc), message.id))
            return
        except LimitExceeded as exc:
            self._send(wsjson.error_message(wsjson.LIMIT, str(exc), message.id))
            return
        except ConnectionClosed:
            return  # it left while subscribing
        except Exception:
            logger.exception("subscribe to %r failed", room)
            self._send(wsjson.error_message(wsjson.INTERNAL, "could not subscribe", message.id))
            return
        # Released: written before anything else, so live events follow the answer. Its
        # offset is where the client stands once it applied what follows: recovered, after
        # the replay; otherwise the snapshot's own (docs/protocol.md, recovery flow).
        position = sub.position if sub.recovered else sub.base
        self._send(
            wsjson.snapshot_message(
                message.id,
                room=room,
                epoch=position.epoch,
                offset=position.offset,
                recovered=sub.recovered,
                snapshot=None if sub.recovered else sub.snapshot,
            )
        )
        encoder = self.server.encoder
        for pub in sub.publications:
            self._send(encoder.encode(pub).message)
        if sub.terminal and room == self.stream_room:
            self.disconnect(disconnect.NORMAL)  # everything there is to say was said

    async def open_stream(self, room: RoomName, since: StreamPosition | None, ready: StreamCheck | None) -> None:
        """Subscribe the room the URL names, as if the client had sent ``subscribe`` with id
        ``STREAM_ID``; ``ready`` first, which may refuse (an unknown task: error, then close)."""
        if ready is not None:
            problem = await ready()
            if problem is not None:
                self._send(wsjson.error_message("not_found", problem, STREAM_ID))
                self.disconnect(disconnect.BAD_REQUEST)
                return
        epoch, offset = (since.epoch, since.offset) if since is not None else (None, None)
        await self._subscribe(wsjson.Subscribe(STREAM_ID, room, epoch, offset))

    async def _publish(self, message: wsjson.Publish) -> None:
        try:
            position = await self.server.calls.publish(self, message.room, message.event, (message.data,))
        except AuthError as exc:
            self._send(wsjson.error_message(_auth_code(exc), str(exc), message.id))
            return
        except InvalidPublication as exc:
            self._send(wsjson.error_message(wsjson.BAD_REQUEST, str(exc), message.id))
            return
        self._send(
            wsjson.ack_message(message.id, {"room": message.room, "epoch": position.epoch, "offset": position.offset})
        )

    def _emit(self, message: wsjson.Emit) -> None:
        handler = self.hub.handler("/", message.event)
        ack_id = message.id
        if handler is None:
            if ack_id is not None:
                self._send(wsjson.error_message("not_found", "no handler for this event", ack_id))
            return
        args = (self,) if message.data is None else (self, message.data)
        if ack_id is None:
            self.hub.handlers.dispatch(handler, args)
            return
        self.hub.handlers.dispatch(
            handler,
            args,
            on_result=lambda result: self._send(wsjson.ack_message(ack_id, result)),
            on_error=lambda _: self._send(wsjson.error_message("internal", "handler failed", ack_id)),
        )

    def _refresh(self, message: wsjson.Refresh) -> None:
        try:
            self.auth = self.server.calls.refresh(self, message.token)
        except AuthError as exc:
            self._send(wsjson.error_message(_auth_code(exc), str(exc), message.id))
            return
        self._send(wsjson.ack_message(message.id))

    # -- helpers ------------------------------------------------------------------------
    def _send(self, text: str) -> None:
        if not self.closed and not self.channel.send(text):
            self.disconnect(disconnect.SLOW)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        """A request's task ended: a failure is logged once, with the connection, and the
        client is told rather than left waiting (never "Task exception was never retrieved")."""
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("connection %s: a request failed", self.id, exc_info=exc)
            self._send(wsjson.error_message(wsjson.INTERNAL, "the request failed"))


def _auth_code(exc: AuthError) -> str:
    return "forbidden" if isinstance(exc, PermissionDenied) else "unauthorized"


class _Refused:
    """A browser's handshake whose token was refused: closed at once with 1008 and the reason."""

    __slots__ = ()

    def __init__(self, channel: WebSocketChannel, reason: str) -> None:
        channel.close(1008, reason[:120])  # a close reason must fit in a control frame

    def on_message(self, data: str | bytes) -> None:
        pass  # nothing is read from a refused connection

    def on_close(self, code: int) -> None:
        pass


class WsServer:
    """The ``/ws`` route.

    Args:
        hub: the hub whose rooms the connections use.
        cors: which browser origins may connect.
        authenticator: verifies the token at the upgrade (``Authorization: Bearer`` or
            ``?token=``) and ``refresh`` messages; grants are checked per subscribe and
            publish. Open (``auth`` stays ``None``) when not given.
        expiry: closes a connection whose token expired unless it sent a fresh one.
        ping_interval: seconds between keep-alive pings; 0 sends none.
        ping_timeout: seconds a client has to answer a ping (a pong or any message) before it
            is closed with ``PING_TIMEOUT`` (3010).
        max_messages_per_second, message_burst: the inbound message rate of one connection
            (``transports.ratelimit``); past it the connection is closed with ``RATE_LIMITED``
            (3013). ``max_messages_per_second=0`` turns it off.

    Keep-alive: a client that vanished without a close (a half-open socket) would otherwise
    hold its rooms and buffers until TCP gave up, which can be hours. Every ``ping_interval``
    the server sends a WebSocket ping; whatever the client sends next (the pong its WebSocket
    stack sends by itself, or a message) sets ``heard``, an attribute store per message; if
    nothing came within ``ping_timeout`` it is closed (so with a timeout longer than the
    interval, pings go every ``ping_timeout``: the next one follows the verdict on the last).
    Nothing is re-filed per message or pong. One ``DeadlineWheel`` serves every
    connection's next ping or answer deadline. Native door only (``native_frames``): an ASGI
    host has no ping message and pings its WebSockets itself.

    Counted for operators: ``ping_timeouts``, ``rate.cut``, ``bad_messages``.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        cors: CorsPolicy | None = None,
        authenticator: Authenticator | None = None,
        expiry: ExpiryWatch | None = None,
        ping_interval: float = 25.0,
        ping_timeout: float = 20.0,
        max_messages_per_second: float = 1000.0,
        message_burst: int = 2000,
    ) -> None:
        self.hub = hub
        self.cors = cors if cors is not None else CorsPolicy()
        self.encoder = WsEncoder()
        self.authenticator = authenticator
        self.expiry = expiry
        self.calls = Builtins(hub, authenticator=authenticator, expiry=expiry)
        self.connections: set[WsConnection] = set()
        self.ids = itertools.count(1)
        # Ids are unique across processes too: presence and "disconnect this connection" meet
        # every node's connections in one place when the rooms are shared (RedisBroker).
        self.id_prefix = f"ws-{secrets.token_hex(4)}-"
        self.bad_messages = 0
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._pings: DeadlineWheel[WsConnection] = DeadlineWheel(self._ping_due, resolution=_PING_RESOLUTION)
        self.ping_timeouts = 0
        self.rate = MessageRate(max_messages_per_second, message_burst)

    def handle_websocket(
        self, request: HttpRequest, room: RoomName | None = None, ready: StreamCheck | None = None
    ) -> WebSocketAccept | HttpResponse:
        """Accept a ``roomcast.v1`` connection; with ``room`` (a stream URL, ``/tasks/{id}/ws``)
        it is subscribed to that room as it opens, from ``?epoch=&offset=`` when the client
        resumes, after ``ready`` allows it, and closed normally once the room is terminal."""
        if not self.cors.allowed(request):
            return json_error(403, 4, "Origin not allowed")
        since: StreamPosition | None = None
        if room is not None:
            since, problem = _stream_position(request.query)
            if problem is not None:
                return json_error(400, 3, problem)
        offered = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        if offered and wsjson.SUBPROTOCOL not in offered:
            return json_error(400, 3, f"Unsupported subprotocol: this endpoint speaks {wsjson.SUBPROTOCOL}")
        auth: Claims | None = None
        if self.authenticator is not None:
            try:
                auth = self.authenticator.verify(token_from_request(request.headers, request.query))
                if room is not None:  # refused at the door, as /tasks/{id}/events is
                    self.authenticator.permit(auth, "subscribe", room)
            except AuthError as exc:
                if "origin" in request.headers:
                    # A browser: it hides the status of a refused handshake (the page sees
                    # close code 1006, as for a dead server) and would retry for ever. Open,
                    # then close with 1008 and the reason, which the page can read.
                    reason = str(exc)
                    return WebSocketAccept(
                        lambda channel: _Refused(channel, reason), subprotocol=wsjson.SUBPROTOCOL if offered else None
                    )
                return json_error(403 if isinstance(exc, PermissionDenied) else 401, 401, str(exc))
        return WebSocketAccept(
            lambda channel: self._open(channel, auth, room, since, ready),
            subprotocol=wsjson.SUBPROTOCOL if offered else None,
        )

    def _open(
        self,
        channel: WebSocketChannel,
        auth: Claims | None,
        room: RoomName | None = None,
        since: StreamPosition | None = None,
        ready: StreamCheck | None = None,
    ) -> WsConnection:
        conn = WsConnection(self, channel, auth)
        self.connections.add(conn)
        self.hub.add_connection(conn)
        if self.ping_interval > 0 and channel.native_frames:
            conn.ping_tick = self._pings.file(conn, asyncio.get_running_loop().time() + self.ping_interval)
        if self.expiry is not None and auth is not None:
            self.expiry.watch(conn, auth)
        if room is not None:
            conn.stream_room = room
            conn._spawn(conn.open_stream(room, since, ready))
        return conn

    def forget(self, conn: WsConnection) -> None:
        self.connections.discard(conn)
        self.stop_pinging(conn)
        if self.expiry is not None:
            self.expiry.forget(conn)

    def close_all(self, reason: Disconnect) -> None:
        for conn in list(self.connections):
            conn.disconnect(reason)
        self._pings.close()

    # -- keep-alive ---------------------------------------------------------------------
    def stop_pinging(self, conn: WsConnection) -> None:
        """No more pings or answer deadline for ``conn`` (it is closing or gone)."""
        if conn.ping_tick is not None:
            self._pings.cancel(conn, conn.ping_tick)
            conn.ping_tick = None

    def _ping_due(self, conn: WsConnection, tick: int) -> None:
        """The wheel's callback: send the next ping, or judge the answer to the last one."""
        if conn.ping_tick != tick or conn.closed:
            return  # superseded, or gone
        conn.ping_tick = None
        now = asyncio.get_running_loop().time()
        pinged_at = conn.pinged_at
        if pinged_at is None:
            conn.heard = False
            conn.pinged_at = now
            if not conn.channel.send_frames(_PING):
                conn.disconnect(disconnect.SLOW)
                return
            # a tick late rather than early: the wheel may fire up to one tick before the time
            conn.ping_tick = self._pings.file(conn, now + self.ping_timeout + _PING_RESOLUTION)
        elif conn.heard:
            conn.pinged_at = None
            conn.ping_tick = self._pings.file(conn, max(now, pinged_at + self.ping_interval))
        else:
            self.ping_timeouts += 1
            logger.debug("connection %s: no answer to a ping in %gs", conn.id, self.ping_timeout)
            conn.disconnect(disconnect.PING_TIMEOUT)


def _stream_position(query: Mapping[str, str]) -> tuple[StreamPosition | None, str | None]:
    """Where a stream URL's client resumes from: ``?epoch=E&offset=N`` (both or neither), as
    the last ``event`` it applied said; ``(None, None)`` for a first visit."""
    epoch, offset = query.get("epoch"), query.get("offset")
    if epoch is None and offset is None:
        return None, None
    if not epoch or offset is None or not offset.isdigit() or int(offset) > MAX_OFFSET:
        return None, "resume with both epoch and offset (a non-negative integer), or neither"
    return StreamPosition(epoch, int(offset)), None
