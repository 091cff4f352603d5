"""Socket.IO v5 on top of the Engine.IO server: namespaces, events, acks, rooms.

Imports L0, L1, L3 (the hub) and ``transports.engineio``. Each connected namespace of an
Engine.IO session is one ``SioSocket`` — a hub ``Connection``. Application handlers come from
the hub's registry; ``subscribe``/``unsubscribe`` are built in for applications without
handlers of their own.

Fan-out: ``SioEncoder`` (one per namespace) turns a publication into the Engine.IO packets
and the ready WebSocket frames once; ``SioSocket.write`` hands those to its session, which
writes the frames to a native WebSocket or queues the packets for a poll.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Any

from roomcast import disconnect
from roomcast.disconnect import Disconnect
from roomcast.errors import ConnectionClosed, ConnectionRefused, RemoteProtocolError
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.protocol import socketio as sio
from roomcast.protocol import websocket as wsproto
from roomcast.protocol.socketio import SioPacket, SioType
from roomcast.transports.engineio import EngineIOServer, Outbound, Session
from roomcast.types import Publication

__all__ = ["SocketIOServer", "SioSocket", "SioEncoder", "Prepared"]

logger = logging.getLogger("roomcast.socketio")

_INTERNAL_ERROR = {"error": "internal error"}

class Prepared:
    """A publication encoded for one namespace: Engine.IO packets and WebSocket frames."""

    __slots__ = ("packets", "frames")

    def __init__(self, packets: list[Outbound]) -> None:
        self.packets = packets
        self.frames = b"".join(
            wsproto.text_frame(p) if isinstance(p, str) else wsproto.binary_frame(p) for p in packets
        )

def _eio_packets(packet: SioPacket) -> list[Outbound]:
    """The Engine.IO packets carrying one Socket.IO packet (text first, then attachments)."""
    parts = sio.encode(packet)
    return ["4" + parts[0] if isinstance(parts[0], str) else parts[0], *parts[1:]]

class SioEncoder:
    """Encodes publications as Socket.IO events of one namespace (a hub ``Encoder``)."""

    __slots__ = ("namespace",)

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def encode(self, publication: Publication) -> Prepared:
        text = sio.event_packet_text(self.namespace, publication.event, publication.data)
        if text is not None:
            return Prepared([text])
        return Prepared(
            _eio_packets(
                SioPacket(SioType.EVENT, self.namespace, [publication.event, *publication.data])
            )
        )

class SioSocket(Connection):
    """One connected namespace of one Engine.IO session."""

    __slots__ = ("session", "acks", "_ack_ids", "accepted", "_early")

    def __init__(self, hub: Hub, session: Session, namespace: str, auth: Any, encoder: SioEncoder) -> None:
        super().__init__(secrets.token_urlsafe(15), hub=hub, encoder=encoder, namespace=namespace, auth=auth)
        self.session = session
        self.acks: dict[int, asyncio.Future[list[Any]]] = {}
        self._ack_ids = itertools.count()
        self.accepted = False
        self._early: list[list[Outbound]] = []

    @property
    def transport(self) -> str:
        return self.session.transport.value

    def write(self, encoded: Prepared) -> bool:
        ws = self.session.ws  # the fan-out hot path: straight to the channel when it can
        if ws is not None:
            if ws.native_frames:
                return ws.send_frames(encoded.frames)
            packets = encoded.packets
            if len(packets) == 1:
                return ws.send(packets[0])
        return self.session.send_many(encoded.packets, encoded.frames)

    def _send(self, packet: SioPacket) -> None:
        packets = _eio_packets(packet)
        if not self.accepted:
            self._early.append(packets)  # emitted by a connect handler: after the CONNECT reply
            return
        if not self.session.send_many(packets):
            self.disconnect(disconnect.SLOW)

    def emit(self, event: str, *args: Any) -> None:
        if self.closed:
            return
        self._send(SioPacket(SioType.EVENT, self.namespace, [event, *args]))

    async def call(self, event: str, *args: Any, timeout: float = 10.0) -> Any:
        if self.closed:
            raise ConnectionClosed("connection closed")
        ack_id = next(self._ack_ids)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.acks[ack_id] = future
        self._send(SioPacket(SioType.EVENT, self.namespace, [event, *args], ack_id))
        try:
            async with asyncio.timeout(timeout):
                result = await future
        finally:
            self.acks.pop(ack_id, None)
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
    hub.remove_connection(sock)
    for future in sock.acks.values():
        if not future.done():
            future.set_exception(ConnectionClosed(reason.reason))
    sock.acks.clear()
    handler = hub.handlers.disconnect_handler(sock.namespace)
    if handler is not None and sock.accepted:
        hub.handlers.dispatch(handler, (sock, reason.reason))

def _reject(session: Session, why: str) -> None:
    """Close a session that broke the Socket.IO protocol; log at debug and count it."""
    logger.debug("sid %s: %s", session.sid, why)
    session.server.bad_requests += 1
    session.close(disconnect.BAD_REQUEST)


class _SioState:
    __slots__ = ("decoder", "sockets", "connect_timer")

    def __init__(self, max_attachments: int) -> None:
        self.decoder = sio.Decoder(max_attachments=max_attachments)
        self.sockets: dict[str, SioSocket] = {}
        self.connect_timer: asyncio.TimerHandle | None = None

class SocketIOServer:
    """The Socket.IO layer: an ``EngineIOApp`` that maps packets onto the hub.

    Args:
        hub: rooms and handlers.
        connect_timeout: seconds a session may stay without any connected namespace.
        max_attachments: binary attachments accepted per packet.
    """

    def __init__(self, hub: Hub, *, connect_timeout: float = 45.0, max_attachments: int = 10) -> None:
        self.hub = hub
        self.connect_timeout = connect_timeout
        self.max_attachments = max_attachments
        self._encoders: dict[str, SioEncoder] = {}
        self.engine: EngineIOServer | None = None

    def encoder(self, namespace: str) -> SioEncoder:
        enc = self._encoders.get(namespace)
        if enc is None:
            enc = self._encoders[namespace] = SioEncoder(namespace)
        return enc

    # -- EngineIOApp --------------------------------------------------------------------
    def on_open(self, session: Session) -> None:
        state = session.state = _SioState(self.max_attachments)
        state.connect_timer = asyncio.get_running_loop().call_later(
            self.connect_timeout, self._connect_timeout, session
        )

    def on_upgrade(self, session: Session) -> None:
        pass

    def on_close(self, session: Session, reason: Disconnect) -> None:
        state: _SioState = session.state
        if state.connect_timer is not None:
            state.connect_timer.cancel()
        for sock in list(state.sockets.values()):
            _ended(sock, reason)
        state.sockets.clear()

    def on_message(self, session: Session, data: str | bytes) -> None:
        state: _SioState = session.state
        try:
            packet = state.decoder.feed(data)
        except RemoteProtocolError as exc:
            _reject(session, f"bad Socket.IO packet: {exc.reason}")
            return
        if packet is None:
            return
        sock = state.sockets.get(packet.namespace)
        kind = packet.type
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
            future = sock.acks.get(packet.id) if packet.id is not None else None
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
        sock = SioSocket(self.hub, session, namespace, auth, self.encoder(namespace))
        state.sockets[namespace] = sock
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
        session.send_many(_eio_packets(SioPacket(SioType.CONNECT, sock.namespace, {"sid": sock.id})))
        sock.accepted = True
        early, sock._early = sock._early, []
        for packets in early:
            session.send_many(packets)

    def _refuse(self, session: Session, state: _SioState, sock: SioSocket, refused: ConnectionRefused) -> None:
        state.sockets.pop(sock.namespace, None)
        sock.closed = True
        body: dict[str, Any] = {"message": refused.message}
        if refused.data is not None:
            body["data"] = refused.data
        session.send_many(_eio_packets(SioPacket(SioType.CONNECT_ERROR, sock.namespace, body)))

    def _event(self, sock: SioSocket, packet: SioPacket) -> None:
        args = packet.data
        event = args[0]
        handler = self.hub.handlers.get(sock.namespace, event) if isinstance(event, str) else None
        if handler is None:
            if event == "subscribe":
                handler = _subscribe
            elif event == "unsubscribe":
                handler = _unsubscribe
            else:
                logger.debug("no handler for %r on %s", event, sock.namespace)
                return
        ack_id = packet.id
        if ack_id is None:
            self.hub.handlers.dispatch(handler, (sock, *args[1:]))
        else:
            self.hub.handlers.dispatch(
                handler,
                (sock, *args[1:]),
                on_result=lambda result: sock.ack(ack_id, result),
                on_error=lambda _: sock.ack(ack_id, _INTERNAL_ERROR),
            )

    def _connect_timeout(self, session: Session) -> None:
        state: _SioState = session.state
        state.connect_timer = None
        if not state.sockets and not session.closed:
            logger.debug("sid %s: no CONNECT within %ss", session.sid, self.connect_timeout)
            session.close(disconnect.CONNECT_TIMEOUT)

async def _subscribe(conn: Connection, request: Any = None, *_: Any) -> Any:
    """Built-in ``subscribe {room, epoch?, offset?}``: ack with snapshot or recovered publications."""
    if not isinstance(request, dict) or not isinstance(request.get("room"), str):
        return {"error": "subscribe expects {room: string, epoch?: string, offset?: integer}"}
    epoch, offset = request.get("epoch"), request.get("offset")
    if not isinstance(epoch, str) or not isinstance(offset, int) or isinstance(offset, bool):
        epoch = offset = None
    return await conn.hub.subscribe(conn, request["room"], epoch=epoch, offset=offset)

def _unsubscribe(conn: Connection, request: Any = None, *_: Any) -> Any:
    """Built-in ``unsubscribe {room}``."""
    if not isinstance(request, dict) or not isinstance(request.get("room"), str):
        return {"error": "unsubscribe expects {room: string}"}
    conn.leave(request["room"])
    return {"room": request["room"]}
