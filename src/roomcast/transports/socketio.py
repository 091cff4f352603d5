"""Socket.IO v5 on top of the Engine.IO server: namespaces, events, acks, rooms.

Imports L0, L1, L3 (the hub) and ``transports.engineio``. Each connected namespace of an
Engine.IO session is one ``SioSocket`` — a hub ``Connection``. Application handlers come from
the hub's registry; ``subscribe``/``unsubscribe`` are built in for applications without
handlers of their own.

Fan-out: ``SioEncoder`` (one per namespace) turns a publication into the Engine.IO packets
and the ready WebSocket frames once; ``SioSocket.write`` hands those to its session, which
writes the frames to a native WebSocket or queues the packets for a poll.

Connection state recovery (``recovery_window > 0``; the official server's
``connectionStateRecovery``, bookkeeping in ``transports.recovery``) adds, on the wire: a
``pid`` in the CONNECT reply, and an offset string as the last argument of every EVENT the
server sends without an ack id (publications and ``emit``), which the official client keeps
and sends back as ``{pid, offset}`` in the auth of its next CONNECT. The offset is part of the
once-per-publication encoding; a direct ``emit`` carries the trail's head, which is exact
because fan-out is synchronous and a transport delivers in order: a client that has the emit
has every earlier publication of its rooms. Sending no offset there would let the official
client take a plain string argument for one and lose its place. With a shared session store
(Redis, ``roomcast serve --redis``) a CONNECT that names a ``pid`` waits for the store before
it is handled; packets the client sends to that namespace meanwhile are held and follow it.

Room meta (opt-in, ``docs/protocol.md`` §3): a client whose Engine.IO handshake carries
``?roomcast=1`` gets every publication with one more argument, ``{"$room", "$epoch",
"$offset"}``, after the publication's own arguments and before the recovery offset, so it
knows which room an event belongs to and where in that room's stream it stands (the Python
client resubscribes from there). It is a separate ``SioEncoder`` per namespace, so the hub
still encodes once per group of members; clients that do not ask see nothing new.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from typing import Any, Final

from roomcast import _json, disconnect
from roomcast.auth import Authenticator, token_from_request
from roomcast.disconnect import Disconnect
from roomcast.errors import (
    AuthError,
    ConnectionClosed,
    ConnectionRefused,
    InvalidPublication,
    LimitExceeded,
    RemoteProtocolError,
)
from roomcast.hub.connection import Connection
from roomcast.hub.handlers import UNHANDLED
from roomcast.hub.hub import Hub
from roomcast.protocol import socketio as sio
from roomcast.protocol import websocket as wsproto
from roomcast.protocol.socketio import SioPacket, SioType
from roomcast.transports.builtins import Builtins
from roomcast.transports.engineio import EngineIOServer, Outbound, Session
from roomcast.transports.expiry import ExpiryWatch
from roomcast.transports.ratelimit import MessageRate, TokenBucket
from roomcast.transports.recovery import (
    DEFAULT_CAPACITY,
    Recovery,
    Resume,
    TakeOnceStore,
    comeback_pid,
    presented_offset,
    strip_reserved,
)
from roomcast.types import Publication, StreamPosition, Subscription

__all__ = ["SocketIOServer", "SioSocket", "SioEncoder", "Prepared", "subscription_reply"]

logger = logging.getLogger("roomcast.socketio")

_INTERNAL_ERROR = {"error": "internal error"}

_RECOVERABLE = frozenset(
    {disconnect.TRANSPORT_CLOSE, disconnect.NORMAL, disconnect.PING_TIMEOUT, disconnect.SHUTDOWN, disconnect.SLOW}
)
"""Reasons a socket's session is saved for recovery: the transient ones.

The official server saves on "transport close", "transport error", "ping timeout", "forced
close", "forced server close" and "server shutting down"; ``NORMAL`` is the client's own
Engine.IO close (the official server calls it "transport close" too), and ``SLOW`` is a
server-side close the client comes back from. A Socket.IO-level disconnect by either side,
a protocol error or a refused connection is final, as there.
"""


class Prepared:
    """A publication encoded for one namespace: Engine.IO packets and WebSocket frames.

    ``seq`` is the publication's number in the recovery trail (0 without recovery): the
    sockets it is written to remember it, so a lost session knows what may be in flight.
    """

    __slots__ = ("packets", "frames", "seq")

    def __init__(self, packets: list[Outbound], seq: int = 0) -> None:
        self.packets = packets
        self.frames = b"".join(
            wsproto.text_frame(p) if isinstance(p, str) else wsproto.binary_frame(p) for p in packets
        )
        self.seq = seq


def _eio_packets(packet: SioPacket) -> list[Outbound]:
    """The Engine.IO packets carrying one Socket.IO packet (text first, then attachments)."""
    parts = sio.encode(packet)
    return ["4" + parts[0] if isinstance(parts[0], str) else parts[0], *parts[1:]]


META_QUERY = "roomcast"
"""The handshake query parameter that asks for room meta; ``1`` is the only version so far."""


def wants_meta(session: Session) -> bool:
    """Whether the client asked for room meta in its Engine.IO handshake (``?roomcast=1``)."""
    return session.request.query.get(META_QUERY) == "1"


class SioEncoder:
    """Encodes publications as Socket.IO events of one namespace (a hub ``Encoder``).

    With ``meta`` every publication gets a trailing ``{"$room", "$epoch", "$offset"}``
    argument (the opt-in of ``?roomcast=1``); it is still built once per publication.
    """

    __slots__ = ("namespace", "recovery", "meta")

    def __init__(self, namespace: str, recovery: Recovery | None = None, *, meta: bool = False) -> None:
        self.namespace = namespace
        self.recovery = recovery
        self.meta = meta

    def encode(self, publication: Publication) -> Prepared:
        recovery = self.recovery
        if recovery is None:
            return self.encode_at(publication, None, 0)
        seq, offset = recovery.stamp(publication)
        return self.encode_at(publication, offset, seq)

    def encode_at(self, publication: Publication, offset: str | None, seq: int) -> Prepared:
        """Encode ``publication`` with ``offset`` appended as its last argument (if any).

        Its data was serialised when it was published (``Publication.encoded``); binary
        attachments, which JSON cannot carry, go the packet way.
        """
        encoded = publication.encoded
        args: tuple[Any, ...] = publication.data if encoded is None or publication.binary else _json.embed(encoded)
        if self.meta:
            position = publication.position
            meta = {"$room": publication.room, "$epoch": position.epoch, "$offset": position.offset}
            args = (*args, meta)
        if offset is not None:
            args = (*args, offset)
        text = sio.event_packet_text(self.namespace, publication.event, args)
        if text is not None:
            return Prepared([text], seq)
        return Prepared(_eio_packets(SioPacket(SioType.EVENT, self.namespace, [publication.event, *args])), seq)


class SioSocket(Connection):
    """One connected namespace of one Engine.IO session.

    With recovery enabled: ``pid`` is the private id the client presents to come back,
    ``recovered`` tells whether this connection resumed a lost session (same ``id`` and
    ``data``; its rooms and missed publications follow when it is accepted), ``since`` and
    ``written`` are what a saved session needs (see ``transports.recovery``), as is
    ``presented``, the offset its client presented in its CONNECT (it holds it until an event
    of this stint replaces it), and ``resume`` is the claimed session until the connection
    is accepted.
    """

    __slots__ = (
        "session",
        "_acks",
        "_last_ack_id",
        "accepted",
        "_early",
        "recovery",
        "pid",
        "recovered",
        "since",
        "written",
        "presented",
        "resume",
        "expiry",
    )

    def __init__(
        self,
        hub: Hub,
        session: Session,
        namespace: str,
        auth: Any,
        encoder: SioEncoder,
        recovery: Recovery | None = None,
        resume: Resume | None = None,
        presented: str | None = None,
    ) -> None:
        sid = resume.saved.sid if resume is not None else secrets.token_urlsafe(15)
        super().__init__(sid, hub=hub, encoder=encoder, namespace=namespace, auth=auth)
        self.session = session
        # made on first use, as every per-connection container here: most connections never
        # await a client's ack, and an idle one should hold no empty dict or list for it
        self._acks: dict[int, asyncio.Future[list[Any]]] | None = None
        self._last_ack_id = -1
        self.accepted = False
        self._early: list[SioPacket] | None = None  # packets a connect handler emitted
        self.recovery = recovery
        self.resume = resume
        self.expiry: ExpiryWatch | None = None
        self.recovered = resume is not None
        self.pid: str | None = None
        self.since = self.written = 0
        self.presented = presented
        if resume is not None:
            self.pid, self.since, self.data = resume.pid, resume.since, resume.saved.data
        elif recovery is not None:
            self.pid, self.since = secrets.token_urlsafe(15), recovery.head

    @property
    def transport(self) -> str:
        return self.session.transport.value

    @property
    def transport_label(self) -> str:
        return "socketio-" + self.session.transport.value

    def write(self, encoded: Prepared) -> bool:
        self.written = encoded.seq  # an int store, no allocation, even on the hot path
        ws = self.session.ws  # the fan-out hot path: straight to the channel when it can
        if ws is not None:
            if ws.native_frames:
                return ws.send_frames(encoded.frames)
            packets = encoded.packets
            if len(packets) == 1:
                return ws.send(packets[0])
        return self.session.send_many(encoded.packets, encoded.frames)

    def _send(self, packet: SioPacket) -> None:
        if not self.accepted:
            # emitted by a connect handler: after the CONNECT reply
            if self._early is None:
                self._early = [packet]
            else:
                self._early.append(packet)
            return
        self._transmit(packet)

    @property
    def acks(self) -> dict[int, asyncio.Future[list[Any]]]:
        """The client's acks this socket awaits (``call``), by ack id; made on first use."""
        if self._acks is None:
            self._acks = {}
        return self._acks

    def _transmit(self, packet: SioPacket) -> None:
        """Send now; an event without ack id gets the recovery offset as it leaves."""
        recovery = self.recovery
        if recovery is not None and packet.type is SioType.EVENT and packet.id is None:
            packet.data.append(recovery.head_offset)  # our own list, built by emit()
        if not self.session.send_many(_eio_packets(packet)):
            self.disconnect(disconnect.SLOW)

    def emit(self, event: str, *args: Any) -> None:
        if self.closed:
            return
        self._send(SioPacket(SioType.EVENT, self.namespace, [event, *args]))

    def ask(self, event: str, *args: Any) -> asyncio.Future[list[Any]]:
        """Send ``event`` with an ack request; the future gets the ack's arguments as sent.

        It fails with ``ConnectionClosed`` if the connection ends first, and is forgotten
        once done (a caller that stops waiting cancels it).
        """
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(ConnectionClosed("connection closed"))
            return future
        ack_id = self._last_ack_id = self._last_ack_id + 1
        acks = self.acks
        acks[ack_id] = future
        future.add_done_callback(lambda _: acks.pop(ack_id, None))
        self._send(SioPacket(SioType.EVENT, self.namespace, [event, *args], ack_id))
        return future

    async def call(self, event: str, *args: Any, timeout: float = 10.0) -> Any:
        if self.closed:
            raise ConnectionClosed("connection closed")
        async with asyncio.timeout(timeout):
            result = await self.ask(event, *args)
        return result[0] if len(result) == 1 else (tuple(result) if result else None)

    def ack(self, ack_id: int, result: Any) -> None:
        """Answer the client's ack request ``ack_id`` with a handler's return value."""
        if self.closed:
            return
        args = list(result) if isinstance(result, tuple) else ([] if result is None else [result])
        self._send(SioPacket(SioType.ACK, self.namespace, args, ack_id))

    def disconnect(self, reason: Disconnect) -> None:
        """Namespace-level for ``SERVER_DISCONNECT``; otherwise the whole session closes."""
        if self.closed:
            return
        if reason is disconnect.SERVER_DISCONNECT:
            self._send(SioPacket(SioType.DISCONNECT, self.namespace))
            state: _SioState = self.session.state
            state.sockets.pop(self.namespace, None)
            _ended(self, reason)
        else:
            self.session.close(reason)


def _ended(sock: SioSocket, reason: Disconnect) -> None:
    """Tear down a socket once: leave rooms, fail pending acks, tell the application."""
    if sock.closed:
        return
    sock.closed = True
    hub = sock.hub
    hub.remove_connection(sock, reason)
    if sock.expiry is not None:
        sock.expiry.forget(sock)
    acks, sock._acks = sock._acks, None
    for future in acks.values() if acks is not None else ():
        if not future.done():
            future.set_exception(ConnectionClosed(reason.reason))
    handler = hub.handlers.disconnect_handler(sock.namespace)
    if handler is not None and sock.accepted:
        hub.handlers.dispatch(handler, (sock, reason.reason))


def _save(recovery: Recovery, sock: SioSocket) -> None:
    """Keep a transiently lost socket's session for its client to come back to."""
    if sock.accepted and sock.pid is not None and not sock.closed:
        positions = {}
        for room in sock.rooms:
            position = sock.hub.position_of(sock, room)
            if position is not None:  # a room still syncing was never answered: not the client's
                positions[room] = position
        recovery.save(
            sock.pid,
            sid=sock.id,
            namespace=sock.namespace,
            positions=positions,
            data=sock.data,
            since=sock.since,
            written=sock.written,
            presented=sock.presented,
        )
    elif sock.resume is not None:
        recovery.put_back(sock.resume)  # lost again before its comeback was accepted


def _reject(session: Session, why: str) -> None:
    """Close a session that broke the Socket.IO protocol; log at debug and count it."""
    logger.debug("sid %s: %s", session.sid, why)
    session.server.bad_requests += 1
    session.close(disconnect.BAD_REQUEST)


_MAX_HELD: Final = 16
"""Packets a client may send to a namespace whose CONNECT is still being looked up in a
shared session store; the official client sends none (it buffers until ``connect``)."""


class _SioState:
    __slots__ = ("decoder", "sockets", "connect_timer", "bucket", "claiming")

    def __init__(self, max_attachments: int, max_expanded_bytes: int, bucket: TokenBucket | None = None) -> None:
        self.decoder = sio.Decoder(max_attachments=max_attachments, max_expanded_bytes=max_expanded_bytes)
        self.sockets: dict[str, SioSocket] = {}
        self.connect_timer: asyncio.TimerHandle | None = None
        self.bucket = bucket  # the session's inbound message allowance (None: no limit)
        # namespace -> packets held while its comeback is claimed from a shared store; made
        # when a comeback is first claimed (a shared recovery store only)
        self.claiming: dict[str, list[SioPacket]] | None = None


class SocketIOServer:
    """The Socket.IO layer: an ``EngineIOApp`` that maps packets onto the hub.

    Recovery, when enabled, restores a lost socket whose client comes back within
    ``recovery_window`` seconds with its ``{pid, offset}``: the same ``id``, its ``data``
    and rooms, then every publication of those rooms it missed, in order, before anything
    newer. The namespace's connect handler still runs, with ``conn.recovered`` true and the
    ``id`` and ``data`` already restored: unlike the official server's default
    (``skipMiddlewares``), credentials are checked again on every connection, because here
    one hook is both the middleware and the ``connection`` listener; a handler that sets a
    connection up once can skip that when ``conn.recovered``. A refusal discards the saved
    session. The handler's ``auth`` (and ``conn.auth``) never holds ``pid``/``offset``:
    those keys belong to the protocol while recovery is on. A session is restored at most
    once; an unknown, expired, reused or malformed ``pid``/``offset`` gives a new session
    (the client sees ``recovered === false``).

    With a ``recovery_store`` (Redis, for ``roomcast serve --redis``) lost sessions are kept
    where every node reads them, and a client is restored on whichever node it reaches
    (``transports.recovery``, "Across nodes"). A CONNECT that names a ``pid`` then waits for
    the store before it is handled; ``aclose`` lets the last saves reach it.

    Args:
        hub: rooms and handlers.
        connect_timeout: seconds a session may stay without any connected namespace.
        max_attachments: binary attachments accepted per packet, and placeholders naming them.
        max_expanded_bytes: attachment bytes the placeholders of one packet may expand to.
        recovery_window: seconds a lost session stays restorable; 0 disables recovery.
        recovery_capacity: most publications kept for recovery.
        recovery_store: where every node keeps lost sessions (``RedisSessionStore``); this
            process's memory when None. ``aclose`` closes it.
        authenticator: when given, every namespace CONNECT needs a valid token (the
            handshake ``auth`` ``{"token": ...}``, an ``Authorization: Bearer`` header or
            ``?token=``); a bad one gets ``CONNECT_ERROR`` with the reason. Its claims'
            grants then govern the built-in ``subscribe`` and ``publish``.
        expiry: disconnects a socket whose token expired unless it sent ``refresh``.
        max_messages_per_second, message_burst: the inbound message rate of one session
            (``transports.ratelimit``), over WebSocket and polling alike: each Engine.IO
            message counts, a Socket.IO packet or one of its binary attachments. Past it the
            session is closed with ``RATE_LIMITED``; ``rate.cut`` counts them.
            ``max_messages_per_second=0`` turns it off.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        connect_timeout: float = 45.0,
        max_attachments: int = 10,
        max_expanded_bytes: int = 1_000_000,
        recovery_window: float = 0.0,
        recovery_capacity: int = DEFAULT_CAPACITY,
        recovery_store: TakeOnceStore | None = None,
        authenticator: Authenticator | None = None,
        expiry: ExpiryWatch | None = None,
        max_messages_per_second: float = 1000.0,
        message_burst: int = 2000,
    ) -> None:
        if recovery_window < 0:
            raise ValueError("recovery_window must be >= 0")
        self.hub = hub
        self.connect_timeout = connect_timeout
        self.max_attachments = max_attachments
        self.max_expanded_bytes = max_expanded_bytes
        self._encoders: dict[tuple[str, bool], SioEncoder] = {}
        self.authenticator = authenticator
        self.expiry = expiry
        self.calls = Builtins(hub, authenticator=authenticator, expiry=expiry)
        self.builtins: dict[str, Any] = {
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "publish": self._publish,
            "refresh": self._refresh,
        }
        self.engine: EngineIOServer | None = None
        self.recovery: Recovery | None = None
        if recovery_window > 0:
            self.recovery = Recovery(recovery_window, capacity=recovery_capacity, shared=recovery_store)
        self._recovery_store = recovery_store
        self._comebacks: set[asyncio.Task[None]] = set()
        self._claims: set[asyncio.Task[None]] = set()
        self.rate = MessageRate(max_messages_per_second, message_burst)

    async def aclose(self) -> None:
        """Let the sessions saved so far reach a shared store, then close it.

        Called after every session was closed (``App.shutdown``): a graceful shutdown is a
        transient loss, so its clients come back to another node and find their sessions.
        Comebacks still being claimed finish first, as they may hand theirs back.
        """
        if self._claims:
            await asyncio.wait(list(self._claims), timeout=5)
        if self.recovery is not None:
            await self.recovery.aclose()
        elif self._recovery_store is not None:
            await self._recovery_store.aclose()

    def encoder(self, namespace: str, *, meta: bool = False) -> SioEncoder:
        """The shared encoder of ``namespace`` (with or without room meta)."""
        key = (namespace, meta)
        enc = self._encoders.get(key)
        if enc is None:
            enc = self._encoders[key] = SioEncoder(namespace, self.recovery, meta=meta)
        return enc

    # -- EngineIOApp --------------------------------------------------------------------
    def on_open(self, session: Session) -> None:
        state = session.state = _SioState(self.max_attachments, self.max_expanded_bytes, self.rate.bucket())
        state.connect_timer = asyncio.get_running_loop().call_later(
            self.connect_timeout, self._connect_timeout, session
        )

    def on_upgrade(self, session: Session) -> None:
        pass

    def on_close(self, session: Session, reason: Disconnect) -> None:
        state: _SioState = session.state
        if state.connect_timer is not None:
            state.connect_timer.cancel()
        recovery = self.recovery if reason in _RECOVERABLE else None
        for sock in list(state.sockets.values()):
            if recovery is not None:
                _save(recovery, sock)  # before _ended, which empties its rooms
            _ended(sock, reason)
        state.sockets.clear()

    def on_message(self, session: Session, data: str | bytes) -> None:
        state: _SioState = session.state
        bucket = state.bucket
        if bucket is not None and not bucket.take():  # counted by the bucket, once
            logger.debug("sid %s: more than %g messages/s, cut", session.sid, bucket.rate.per_second)
            session.close(disconnect.RATE_LIMITED)
            return
        try:
            packet = state.decoder.feed(data)
        except RemoteProtocolError as exc:
            _reject(session, f"bad Socket.IO packet: {exc.reason}")
            return
        if packet is not None:
            self._dispatch(session, state, packet)

    def _dispatch(self, session: Session, state: _SioState, packet: SioPacket) -> None:
        """One decoded packet: to its namespace's socket, or held while that namespace's
        CONNECT is being claimed from a shared store (``_claim`` sends it on afterwards)."""
        sock = state.sockets.get(packet.namespace)
        kind = packet.type
        if sock is None and state.claiming:
            held = state.claiming.get(packet.namespace)
            if held is not None:  # its CONNECT is being looked up in the shared store
                if kind is SioType.CONNECT:
                    _reject(session, f"second CONNECT to {packet.namespace}")
                elif len(held) == _MAX_HELD:
                    _reject(session, f"more than {_MAX_HELD} packets before the CONNECT to {packet.namespace}")
                else:
                    held.append(packet)
                return
        if kind is SioType.CONNECT:
            if sock is not None:
                _reject(session, f"second CONNECT to {packet.namespace}")
            else:
                self._connect(session, state, packet)
        elif sock is None:
            _reject(session, f"packet for unconnected namespace {packet.namespace}")
        elif kind is SioType.EVENT:
            self._event(sock, packet)
        elif kind is SioType.ACK:
            acks = sock._acks
            future = acks.get(packet.id) if acks is not None and packet.id is not None else None
            if future is not None and not future.done():
                future.set_result(packet.data)
        elif kind is SioType.DISCONNECT:
            del state.sockets[packet.namespace]
            _ended(sock, disconnect.Disconnect(1000, "client namespace disconnect", reconnect=False))
        else:
            _reject(session, "CONNECT_ERROR from a client")

    # -- packets ------------------------------------------------------------------------
    def _connect(self, session: Session, state: _SioState, packet: SioPacket) -> None:
        namespace = packet.namespace
        if namespace not in self.hub.handlers.namespaces:
            session.send_many(
                _eio_packets(SioPacket(SioType.CONNECT_ERROR, namespace, {"message": "Invalid namespace"}))
            )
            return
        auth = packet.data if packet.data is not None else {}
        recovery = self.recovery
        if recovery is None:
            self._open(session, state, namespace, auth, None, None)
        elif recovery.shared and comeback_pid(auth) is not None:
            if state.claiming is None:
                state.claiming = {}
            state.claiming[namespace] = []
            task = asyncio.ensure_future(self._claim(session, state, namespace, auth))
            self._claims.add(task)
            task.add_done_callback(self._claims.discard)
        else:
            resume = recovery.take(namespace, auth)
            self._open(session, state, namespace, strip_reserved(auth), resume, presented_offset(auth))

    async def _claim(self, session: Session, state: _SioState, namespace: str, auth: dict[str, Any]) -> None:
        """A comeback's CONNECT, once the shared store answered: restored, or a new session.

        Packets the client sent to the namespace meanwhile follow it, in order. If the
        session closed while waiting, a claimed session is handed back for a next attempt.
        """
        recovery = self.recovery
        assert recovery is not None
        try:
            resume = await recovery.claim(namespace, auth)
        except Exception:
            logger.exception("sid %s: could not look up the session to restore", session.sid)
            resume = None
        held = state.claiming.pop(namespace, []) if state.claiming is not None else []
        if session.closed:
            if resume is not None:
                recovery.put_back(resume)
            return
        self._open(session, state, namespace, strip_reserved(auth), resume, presented_offset(auth))
        for packet in held:
            if session.closed:
                break
            self._dispatch(session, state, packet)

    def _open(
        self,
        session: Session,
        state: _SioState,
        namespace: str,
        auth: dict[str, Any],
        resume: Resume | None,
        presented: str | None,
    ) -> None:
        """Create the namespace's socket, check its credentials and run its connect handler."""
        encoder = self.encoder(namespace, meta=wants_meta(session))
        sock = SioSocket(self.hub, session, namespace, auth, encoder, self.recovery, resume, presented)
        state.sockets[namespace] = sock
        if self.authenticator is not None:
            request = session.request
            try:
                claims = self.authenticator.verify(token_from_request(request.headers, request.query, auth))
            except AuthError as exc:
                self._refuse(session, state, sock, ConnectionRefused(str(exc)))
                return
            sock.claims, sock.user, sock.expiry = claims, claims.subject, self.expiry
        handler = self.hub.handlers.connect_handler(namespace)
        if handler is None:
            self._accept(session, state, sock)
            return

        def accepted(_: Any) -> None:
            if not session.closed:
                self._accept(session, state, sock)

        def refused(exc: Exception) -> None:
            reason = exc if isinstance(exc, ConnectionRefused) else ConnectionRefused("Internal error")
            self._refuse(session, state, sock, reason)

        self.hub.handlers.dispatch(
            handler, (sock, auth), on_result=accepted, on_error=refused, expected=(ConnectionRefused,)
        )

    def _accept(self, session: Session, state: _SioState, sock: SioSocket) -> None:
        if state.connect_timer is not None:
            state.connect_timer.cancel()
            state.connect_timer = None
        self.hub.add_connection(sock)
        if sock.expiry is not None and sock.claims is not None:
            sock.expiry.watch(sock, sock.claims)
        if sock.resume is None:
            self._welcome(session, sock, ())
        else:
            task = asyncio.ensure_future(self._comeback(session, sock))
            self._comebacks.add(task)
            task.add_done_callback(self._comebacks.discard)

    async def _comeback(self, session: Session, sock: SioSocket) -> None:
        """Resubscribe a resumed socket's rooms from its positions, then welcome it.

        Each room's history gives what the client missed (``Hub.subscribe_many``, released
        as this coroutine goes on without awaiting), so the replay is exactly the gap and
        later publications follow it live. If history no longer holds part of a gap, the
        socket becomes a new session after all (new ``pid``, no rooms), and the client
        learns it from ``recovered === false``.
        """
        resume = sock.resume
        assert resume is not None
        try:
            subs = await self.hub.subscribe_many(sock, sorted(resume.positions.items()))
        except ConnectionClosed:
            return  # lost again before its comeback was accepted (saved again by on_close)
        except Exception:
            logger.exception("socket %s: could not restore its rooms", sock.id)
            subs = []
        sock.resume = None
        if session.closed or sock.closed:
            return
        if len(subs) != len(resume.positions) or not all(sub.recovered for sub in subs):
            logger.debug("socket %s: history no longer holds what it missed; new session", sock.id)
            for room in list(sock.rooms):
                sock.leave(room)
            recovery = self.recovery
            assert recovery is not None
            sock.recovered = False
            sock.pid, sock.since, sock.written = secrets.token_urlsafe(15), recovery.head, 0
            subs = []
        else:
            logger.debug("socket %s recovered: %d rooms", sock.id, len(subs))
        self._welcome(session, sock, subs)

    def _welcome(self, session: Session, sock: SioSocket, subs: Iterable[Subscription]) -> None:
        """The CONNECT reply, then what a comeback missed, then what a connect handler sent."""
        reply = {"sid": sock.id} if sock.pid is None else {"sid": sock.id, "pid": sock.pid}
        session.send_many(_eio_packets(SioPacket(SioType.CONNECT, sock.namespace, reply)))
        sock.accepted = True
        recovery = self.recovery
        if recovery is not None:
            encoder = self.encoder(sock.namespace, meta=wants_meta(session))
            ok = True
            missed = sorted((pub for sub in subs for pub in sub.publications), key=lambda pub: pub.ts)
            for pub in missed:  # in publication order across rooms, as they were first sent
                seq, offset = recovery.stamp(pub)
                ok = sock.write(encoder.encode_at(pub, offset, seq)) and ok
            if not ok:
                sock.disconnect(disconnect.SLOW)
                return
        early, sock._early = sock._early, None
        for packet in early or ():
            if sock.closed:
                break
            sock._transmit(packet)
        hook = self.hub.handlers.accepted_hook(sock.namespace)
        if hook is not None and not sock.closed:
            try:
                hook(sock)
            except Exception:
                logger.exception("the accepted hook of %s failed", sock.namespace)

    def _refuse(self, session: Session, state: _SioState, sock: SioSocket, refused: ConnectionRefused) -> None:
        state.sockets.pop(sock.namespace, None)
        sock.closed = True
        sock.resume = None  # a refused comeback discards the saved session
        body: dict[str, Any] = {"message": refused.message}
        if refused.data is not None:
            body["data"] = refused.data
        session.send_many(_eio_packets(SioPacket(SioType.CONNECT_ERROR, sock.namespace, body)))

    def _event(self, sock: SioSocket, packet: SioPacket) -> None:
        args = packet.data
        event = args[0]
        handlers = self.hub.handlers
        handler = handlers.get(sock.namespace, event) if isinstance(event, str) else None
        call_args: tuple[Any, ...] = (sock, *args[1:])
        if handler is None:
            handler = handlers.fallback(sock.namespace)
            if handler is not None:
                call_args = (sock, *args)  # a catch-all is told the event's name
            else:
                handler = self.builtins.get(event) if isinstance(event, str) else None
            if handler is None:
                logger.debug("no handler for %r on %s", event, sock.namespace)
                return
        ack_id = packet.id
        if ack_id is None:
            self.hub.handlers.dispatch(handler, call_args)
        else:
            self.hub.handlers.dispatch(
                handler,
                call_args,
                on_result=lambda result: None if result is UNHANDLED else sock.ack(ack_id, result),
                on_error=lambda _: sock.ack(ack_id, _INTERNAL_ERROR),
            )

    # -- the built-in events (transports.builtins), answered with acks ----------------------
    async def _subscribe(self, sock: SioSocket, request: Any = None, *_: Any) -> Any:
        """``subscribe {room, epoch?, offset?}``: ack with the snapshot or the recovered publications."""
        if not isinstance(request, dict):
            return {"error": "subscribe expects {room: string (1-256 chars), epoch?: string, offset?: integer}"}
        epoch, offset = request.get("epoch"), request.get("offset")
        since = None
        if isinstance(epoch, str) and isinstance(offset, int) and not isinstance(offset, bool):
            since = StreamPosition(epoch, offset)
        try:
            return subscription_reply(await self.calls.subscribe(sock, request.get("room"), since))
        except (RemoteProtocolError, AuthError, LimitExceeded) as exc:
            return {"error": _reason(exc)}
        except ConnectionClosed:
            return None  # it left while subscribing: nobody to answer

    def _unsubscribe(self, sock: SioSocket, request: Any = None, *_: Any) -> Any:
        """``unsubscribe {room}``."""
        try:
            room = self.calls.unsubscribe(sock, request.get("room") if isinstance(request, dict) else None)
        except RemoteProtocolError:
            return {"error": "unsubscribe expects {room: string}"}
        return {"room": room}

    async def _publish(self, sock: SioSocket, request: Any = None, *_: Any) -> Any:
        """``publish {room, event, data?}`` (when the application has no ``publish`` handler):
        to every member of the room, on every transport, if the token allows it."""
        if not isinstance(request, dict):
            return {"error": "publish expects {room: string, event: string, data?: any}"}
        args = (request["data"],) if "data" in request else ()
        try:
            position = await self.calls.publish(sock, request.get("room"), request.get("event"), args)
        except RemoteProtocolError:
            return {"error": "publish expects {room: string, event: string, data?: any}"}
        except (AuthError, InvalidPublication) as exc:
            return {"error": str(exc)}
        return {"room": request["room"], "epoch": position.epoch, "offset": position.offset}

    def _refresh(self, sock: SioSocket, request: Any = None, *_: Any) -> Any:
        """``refresh {token}``: a fresh token (same subject) keeps the socket open."""
        token = request.get("token") if isinstance(request, dict) else None
        try:
            self.calls.refresh(sock, token)
        except AuthError as exc:
            return {"error": str(exc)}
        return {"ok": True}

    def _connect_timeout(self, session: Session) -> None:
        state: _SioState = session.state
        state.connect_timer = None
        if not state.sockets and not session.closed:
            logger.debug("sid %s: no CONNECT within %ss", session.sid, self.connect_timeout)
            session.close(disconnect.CONNECT_TIMEOUT)


def subscription_reply(sub: Subscription) -> dict[str, Any]:
    """The built-in ``subscribe``'s ack (docs/protocol.md §1): position, then the snapshot
    and/or the publications that follow it."""
    reply: dict[str, Any] = {
        "room": sub.room,
        "epoch": sub.position.epoch,
        "offset": sub.position.offset,
        "recovered": sub.recovered,
    }
    if not sub.recovered:
        reply["snapshot"] = sub.snapshot
    if sub.recovered or sub.publications:
        reply["publications"] = [
            {"event": p.event, "data": list(p.data), "offset": p.position.offset} for p in sub.publications
        ]
    return reply


def _reason(exc: RemoteProtocolError | AuthError | LimitExceeded) -> str:
    if isinstance(exc, RemoteProtocolError):
        return "subscribe expects {room: string (1-256 chars), epoch?: string, offset?: integer}"
    return str(exc)
