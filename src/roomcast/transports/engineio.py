"""The Engine.IO v4 server: sessions over long-polling and WebSocket, driven by asyncio.

Imports L0, L1 and ``transports.base``. It drives the sans-I/O ``EngineIOSession`` (heartbeat,
upgrade and close rules) and carries out its decisions: timers, pending polls, frames. The
layer above (Socket.IO, or a bare echo for the conformance suite) implements
``EngineIOApp`` and sees only sessions and messages.

Error answers follow the official server (HTTP 400 with ``{code, message}``): 0 unknown
transport, 1 unknown session, 2 bad handshake method, 3 bad request, 4 forbidden, 5 unsupported
protocol version.

With other nodes on the bus (``cluster``), a session's sid names the node that owns it; a
polling request for a session owned elsewhere is answered by its owner through the bus, and a
WebSocket upgrade for one is refused, so the client stays on polling (``engineio_forward``
says how, and why not a hand-over).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol

from roomcast import disconnect
from roomcast.auth import TOKEN_HEADERS
from roomcast.cluster.base import Cluster, LocalCluster, NodeUnreachable
from roomcast.disconnect import Disconnect
from roomcast.errors import BrokerUnavailable, PayloadTooBig, RemoteProtocolError
from roomcast.protocol import engineio
from roomcast.protocol.engineio import Packet, PacketType
from roomcast.protocol.engineio_session import (
    Closed,
    EngineIOSession,
    Message,
    ProbeAccepted,
    SendPing,
    SessionEvent,
    SessionState,
    Transport,
    Upgraded,
)
from roomcast.transports.base import (
    CorsPolicy,
    HttpRequest,
    HttpResponse,
    WebSocketAccept,
    WebSocketChannel,
    WebSocketHandler,
    json_error,
)
from roomcast.transports.deadlines import DeadlineWheel
from roomcast.transports.engineio_forward import FORWARD_MARGIN, Forwarding, ForwardStats

__all__ = ["EngineIOApp", "EngineIOServer", "Session", "Outbound"]

logger = logging.getLogger("roomcast.engineio")

Outbound = str | bytes
"""One Engine.IO packet ready to go: text in WebSocket form (``"42[...]"``) or binary bytes."""


_PING = "2"
_NOOP = "6"
_CLOSE = "1"


class EngineIOApp(Protocol):
    """The layer above Engine.IO."""

    def on_open(self, session: Session) -> None:
        """A session was created (its OPEN packet is already queued)."""

    def on_message(self, session: Session, data: str | bytes) -> None:
        """A MESSAGE packet arrived."""

    def on_upgrade(self, session: Session) -> None:
        """The session moved to WebSocket."""

    def on_close(self, session: Session, reason: Disconnect) -> None:
        """The session ended; called exactly once."""


class Session:
    """One Engine.IO session and whatever carries it right now.

    ``write`` is the fan-out entry: on a native WebSocket it writes pre-built frames; on
    polling it queues packets for the next GET. ``state`` belongs to the layer above.
    ``request`` is the handshake request with its query but only the headers a token is read
    from (``auth.TOKEN_HEADERS``): an idle session holds no browser headers.
    """

    __slots__ = (
        "sid",
        "machine",
        "server",
        "request",
        "ws",
        "probe",
        "queue",
        "queued_bytes",
        "poll",
        "post_active",
        "timer_tick",
        "state",
    )

    def __init__(self, server: EngineIOServer, machine: EngineIOSession, request: HttpRequest) -> None:
        self.sid = machine.sid
        self.machine = machine
        self.server = server
        self.request = request
        self.ws: WebSocketChannel | None = None
        self.probe: WebSocketChannel | None = None
        self.queue: list[Outbound] = []
        self.queued_bytes = 0
        self.poll: asyncio.Future[None] | None = None
        self.post_active = False
        self.timer_tick: int | None = None  # filed in the server's DeadlineWheel
        self.state: Any = None

    @property
    def closed(self) -> bool:
        return self.machine.closed

    @property
    def transport(self) -> Transport:
        return self.machine.transport

    def send(self, packet: Outbound) -> bool:
        """Send one Engine.IO packet; ``False`` when the outbound buffer is over its limit."""
        ws = self.ws
        if ws is not None:
            return ws.send(packet)
        if self.machine.closed:
            return True
        self.queue.append(packet)
        self.queued_bytes += len(packet)
        poll = self.poll
        if poll is not None and not poll.done():
            poll.set_result(None)
        return self.queued_bytes <= self.server.max_buffer_bytes

    def send_many(self, packets: Iterable[Outbound], frames: bytes | None = None) -> bool:
        """Send several packets; ``frames`` is their pre-built WebSocket form, if known."""
        ws = self.ws
        if ws is not None:
            if frames is not None and ws.native_frames:
                return ws.send_frames(frames)
            ok = True
            for packet in packets:
                ok = ws.send(packet) and ok
            return ok
        ok = True
        for packet in packets:
            ok = self.send(packet)
        return ok

    def close(self, reason: Disconnect) -> None:
        """Close the session from the server side."""
        self.server.finish(self, self.machine.close(reason))


class EngineIOServer:
    """Engine.IO sessions for one path (``/socket.io/`` or ``/engine.io/``).

    Args:
        app: the layer above.
        ping_interval: seconds between pings.
        ping_timeout: seconds to wait for a pong.
        max_payload: the largest POST body / WebSocket message accepted, in bytes.
        max_buffer_bytes: outbound bytes buffered per session before it counts as slow.
        cors: which origins may connect.
        cluster: the node bus; with other nodes on it (not a ``LocalCluster``), sessions are
            labelled with this node's id and requests for other nodes' sessions forwarded.
        name: which server this is on every node (``"socket.io"``, ``"engine.io"``): a request
            is forwarded to the server of the same name on the owner.
    """

    def __init__(
        self,
        app: EngineIOApp,
        *,
        ping_interval: float = 25.0,
        ping_timeout: float = 20.0,
        max_payload: int = 1_000_000,
        max_buffer_bytes: int = 4_000_000,
        cors: CorsPolicy | None = None,
        cluster: Cluster | None = None,
        name: str = "engine.io",
    ) -> None:
        self.app = app
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_payload = max_payload
        self.max_buffer_bytes = max_buffer_bytes
        self.cors = cors if cors is not None else CorsPolicy()
        self.sessions: dict[str, Session] = {}
        self.kept_headers: tuple[str, ...] | None = TOKEN_HEADERS
        """The handshake headers a session keeps for as long as it lives: those a token is read
        from, by default; ``None`` keeps them all, for a layer above that hands them to its
        application later (``roomcast.socketio``'s ``environ``, read at each namespace connect)."""
        self._deadlines: DeadlineWheel[Session] = DeadlineWheel(self._on_timer)
        self.bad_requests = 0
        self.forwarding: Forwarding | None = None
        if cluster is not None and not isinstance(cluster, LocalCluster):
            self.forwarding = Forwarding(cluster, name, self._answer_forwarded)

    @property
    def forward_stats(self) -> ForwardStats:
        """Requests forwarded to, and answered for, other nodes (all zero on one node)."""
        return self.forwarding.stats if self.forwarding is not None else ForwardStats()

    # -- HTTP (long-polling) ---------------------------------------------------------
    async def handle_http(self, request: HttpRequest) -> HttpResponse:
        """Answer one polling request (handshake, GET, POST or preflight)."""
        if request.method == "OPTIONS":
            return self.cors.preflight(request)
        refused = self._check(request, websocket=False)
        if refused is not None:
            return refused
        cors = self.cors.headers(request)
        sid = request.query.get("sid")
        if sid is None:
            if request.method != "GET":
                return self._refuse(request, 2, "Bad handshake method", cors)
            return self._flush(self._open(request, Transport.POLLING), cors)
        session = self.sessions.get(sid)
        if session is None and self.forwarding is not None and request.method in ("GET", "POST"):
            owner = self.forwarding.owner_elsewhere(sid)
            if owner is not None:
                return await self._forward(owner, request, cors)
        return await self._poll(session, request, cors)

    async def _poll(self, session: Session | None, request: HttpRequest, cors: list[tuple[str, str]]) -> HttpResponse:
        if session is None:
            return self._refuse(request, 1, "Session ID unknown", cors)
        if session.machine.transport is not Transport.POLLING:
            return self._refuse(request, 3, "Bad request", cors)
        if request.method == "GET":
            if session.machine.state is SessionState.UPGRADING:
                # The client is pausing polling: end this poll cleanly.
                return HttpResponse(200, _NOOP.encode(), cors)
            return await self._get(session, cors)
        if request.method == "POST":
            return self._post(session, request, cors)
        return self._refuse(request, 2, "Bad handshake method", cors)

    async def _forward(self, owner: str, request: HttpRequest, cors: list[tuple[str, str]]) -> HttpResponse:
        """Have the session's owner answer; 400 ``Session ID unknown`` if it is gone."""
        assert self.forwarding is not None
        too_big = request.method == "POST" and (request.body_too_large or len(request.body) > self.max_payload)
        timeout = self.ping_interval + self.ping_timeout + FORWARD_MARGIN  # a GET may wait a ping interval
        try:
            return await self.forwarding.forward(owner, request, too_big=too_big, timeout=timeout)
        except (NodeUnreachable, BrokerUnavailable) as exc:
            self.forwarding.stats.unreachable += 1
            logger.debug("sid %s: its owner %s is unreachable: %s", request.query.get("sid"), owner, exc)
            return self._refuse(request, 1, "Session ID unknown", cors)

    async def _answer_forwarded(self, request: HttpRequest) -> HttpResponse:
        """A request another node forwarded here: answered as if it had come straight here."""
        sid = request.query.get("sid", "")
        return await self._poll(self.sessions.get(sid), request, self.cors.headers(request))

    async def _get(self, session: Session, cors: list[tuple[str, str]]) -> HttpResponse:
        if session.poll is not None:
            # A second concurrent GET breaks the protocol: close the session; the first poll
            # gets CLOSE, this one 400.
            self.bad_requests += 1
            session.close(disconnect.BAD_REQUEST)
            return json_error(400, 3, "Bad request", cors)
        if not session.queue:
            poll = session.poll = asyncio.get_running_loop().create_future()
            try:
                await poll
            finally:
                session.poll = None
        return self._flush(session, cors)

    def _flush(self, session: Session, cors: list[tuple[str, str]]) -> HttpResponse:
        packets, session.queue, session.queued_bytes = session.queue, [], 0
        if not packets:
            packets = [_CLOSE if session.machine.closed else _NOOP]
        return HttpResponse(200, engineio.encode_polling(_packets(packets)).encode(), cors)

    def _post(self, session: Session, request: HttpRequest, cors: list[tuple[str, str]]) -> HttpResponse:
        if session.post_active:
            self.bad_requests += 1
            session.close(disconnect.BAD_REQUEST)
            return json_error(400, 3, "Bad request", cors)
        if request.body_too_large or len(request.body) > self.max_payload:
            self.bad_requests += 1
            session.close(disconnect.TOO_BIG)
            return json_error(413, 3, "Payload too large", cors)
        session.post_active = True
        try:
            body = request.body.decode()
            packets = engineio.decode_polling(body)
            now = asyncio.get_running_loop().time()
            for packet in packets:
                self._dispatch(session, session.machine.receive(packet, now))
                if session.machine.closed:
                    break
        except (RemoteProtocolError, UnicodeDecodeError) as exc:
            self.bad_requests += 1
            logger.debug("sid %s: bad POST: %s", session.sid, exc)
            session.close(disconnect.BAD_REQUEST)
            return json_error(400, 3, "Bad request", cors)
        finally:
            session.post_active = False
        return HttpResponse(200, b"ok", cors)

    # -- WebSocket ----------------------------------------------------------------------
    def handle_websocket(self, request: HttpRequest) -> WebSocketAccept | HttpResponse:
        """Accept or refuse a WebSocket handshake (new session or upgrade probe)."""
        refused = self._check(request, websocket=True)
        if refused is not None:
            return refused
        sid = request.query.get("sid")
        if sid is None:
            return WebSocketAccept(lambda channel: _NewSocket(self, request, channel))
        session = self.sessions.get(sid)
        owner = self.forwarding.owner_elsewhere(sid) if session is None and self.forwarding is not None else None
        if owner is not None:
            assert self.forwarding is not None
            self.forwarding.stats.refused_upgrades += 1
            logger.debug("refused websocket for sid %s: node %s owns it, the client stays on polling", sid, owner)
            return json_error(400, 1, "Session ID unknown", self.cors.headers(request))
        if session is None or not session.machine.can_probe():
            # Like the official server: complete the handshake, then close at once, so a
            # client sees a WebSocket close rather than an HTTP error.
            self.bad_requests += 1
            logger.debug("refused websocket for sid %s: unknown or not upgradable", sid)
            return WebSocketAccept(_refused_socket)
        session.machine.start_probe()
        return WebSocketAccept(lambda channel: _ProbeSocket(self, session, channel))

    # -- shared -----------------------------------------------------------------------
    def _check(self, request: HttpRequest, *, websocket: bool) -> HttpResponse | None:
        if not self.cors.allowed(request):
            return self._refuse(request, 4, "Forbidden", [], status=403)
        if request.query.get("EIO") != "4":
            return self._refuse(request, 5, "Unsupported protocol version", self.cors.headers(request))
        transport = request.query.get("transport")
        expected = "websocket" if websocket else "polling"
        if transport != expected:
            if transport in ("polling", "websocket"):
                return self._refuse(request, 3, "Bad request", self.cors.headers(request))
            return self._refuse(request, 0, "Transport unknown", self.cors.headers(request))
        return None

    def _refuse(
        self,
        request: HttpRequest,
        code: int,
        message: str,
        cors: list[tuple[str, str]],
        *,
        status: int = 400,
    ) -> HttpResponse:
        self.bad_requests += 1
        logger.debug("refused %s %s: %s", request.method, request.path, message)
        return json_error(status, code, message, cors)

    def _open(self, request: HttpRequest, transport: Transport, ws: WebSocketChannel | None = None) -> Session:
        loop = asyncio.get_running_loop()
        sid = self.forwarding.new_sid() if self.forwarding is not None else secrets.token_urlsafe(15)
        machine = EngineIOSession(
            sid,
            transport=transport,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            now=loop.time(),
        )
        # the session outlives its handshake: it keeps the query and the token's headers, what
        # the app reads later (a namespace connect's credentials, ?roomcast=1), and no more
        kept = self.kept_headers
        session = Session(
            self, machine, request.keeping_headers(kept) if kept is not None else replace(request, body=b"")
        )
        session.ws = ws
        self.sessions[sid] = session
        upgrades = ["websocket"] if transport is Transport.POLLING else []
        session.send(
            "0"
            + engineio.open_payload(
                sid,
                upgrades=upgrades,
                ping_interval_ms=round(self.ping_interval * 1000),
                ping_timeout_ms=round(self.ping_timeout * 1000),
                max_payload=self.max_payload,
            )
        )
        self._arm(session)
        self.app.on_open(session)
        return session

    def _arm(self, session: Session) -> None:
        if session.timer_tick is not None:
            self._deadlines.cancel(session, session.timer_tick)
            session.timer_tick = None
        deadline = session.machine.next_deadline()
        if deadline is not None:
            session.timer_tick = self._deadlines.file(session, deadline)

    def _on_timer(self, session: Session, tick: int) -> None:
        if session.timer_tick != tick:
            return  # superseded or ended
        session.timer_tick = None
        # The wheel fires at the start of the deadline's tick: the deadline counts as reached,
        # and the next one (the pong timeout after a ping) runs from it, not from the clock.
        due = session.machine.next_deadline()
        now = asyncio.get_running_loop().time()
        self._dispatch(session, session.machine.on_deadline(now if due is None else max(now, due)))
        if not session.machine.closed:
            self._arm(session)

    def _dispatch(self, session: Session, events: list[SessionEvent]) -> None:
        for event in events:
            if isinstance(event, Message):
                self.app.on_message(session, event.data)
            elif isinstance(event, SendPing):
                session.send(_PING)
            elif isinstance(event, Closed):
                self.finish(session, [event])
            elif isinstance(event, ProbeAccepted):
                if session.probe is not None:
                    session.probe.send("3probe")
                poll = session.poll
                if poll is not None and not poll.done():
                    session.queue.insert(0, _NOOP)
                    poll.set_result(None)
            elif isinstance(event, Upgraded):
                poll = session.poll
                if poll is not None and not poll.done():
                    poll.set_result(None)  # finds an empty queue: answers NOOP
                session.ws, session.probe = session.probe, None
                queued, session.queue, session.queued_bytes = session.queue, [], 0
                for packet in queued:
                    session.send(packet)
                self.app.on_upgrade(session)
            if session.machine.closed and not isinstance(event, Closed):
                # A handler closed the session while events were pending: drop the rest.
                return

    def finish(self, session: Session, events: list[SessionEvent]) -> None:
        """Carry out a close decided by the machine: release transports, tell the app."""
        for event in events:
            if not isinstance(event, Closed):
                continue
            if self.sessions.pop(session.sid, None) is None:
                return
            if session.timer_tick is not None:
                self._deadlines.cancel(session, session.timer_tick)
                session.timer_tick = None
            poll = session.poll
            if poll is not None and not poll.done():
                # The client's own CLOSE releases its poll with NOOP; a server close with CLOSE.
                session.queue = [_NOOP] if event.reason is disconnect.NORMAL else []
                poll.set_result(None)
            code = disconnect.websocket_close_code(event.reason)
            for ws in (session.ws, session.probe):
                if ws is not None:
                    ws.close(code, event.reason.reason)
            self.app.on_close(session, event.reason)

    def _on_ws_message(self, session: Session, data: str | bytes) -> None:
        packet = engineio.decode_ws(data)
        machine = session.machine
        was = machine.next_deadline()
        self._dispatch(session, machine.receive(packet, asyncio.get_running_loop().time()))
        if not machine.closed and machine.next_deadline() != was:
            self._arm(session)

    def close_all(self, reason: Disconnect) -> None:
        for session in list(self.sessions.values()):
            session.close(reason)


def _packets(items: list[Outbound]) -> Iterable[Packet]:
    for item in items:
        if isinstance(item, bytes):
            yield Packet(PacketType.MESSAGE, item)
        else:
            yield Packet(PacketType(int(item[0])), item[1:])


def _receive(server: EngineIOServer, session: Session, data: str | bytes) -> None:
    """A message on the session's WebSocket; bad input closes this session only."""
    try:
        server._on_ws_message(session, data)
    except RemoteProtocolError as exc:
        server.bad_requests += 1
        logger.debug("sid %s: %s", session.sid, exc)
        reason = disconnect.TOO_BIG if isinstance(exc, PayloadTooBig) else disconnect.BAD_REQUEST
        session.close(reason)


def _lost(server: EngineIOServer, session: Session) -> None:
    """The session's WebSocket is gone: so is the session."""
    session.ws = None
    if not session.machine.closed:
        server.finish(session, session.machine.close(disconnect.TRANSPORT_CLOSE))


class _Closed:
    """The handler of a WebSocket that was closed as soon as it opened."""

    __slots__ = ()

    def on_message(self, data: str | bytes) -> None:
        pass

    def on_close(self, code: int) -> None:
        pass


def _refused_socket(channel: WebSocketChannel) -> WebSocketHandler:
    channel.close(1008, "session unknown or already upgraded")
    return _Closed()


class _NewSocket:
    """A WebSocket that opened its own session (no polling first)."""

    __slots__ = ("server", "session")

    def __init__(self, server: EngineIOServer, request: HttpRequest, channel: WebSocketChannel) -> None:
        self.server = server
        self.session = server._open(request, Transport.WEBSOCKET, channel)

    def on_message(self, data: str | bytes) -> None:
        _receive(self.server, self.session, data)

    def on_close(self, code: int) -> None:
        _lost(self.server, self.session)


class _ProbeSocket:
    """A WebSocket presenting an existing polling session's sid: the upgrade path."""

    __slots__ = ("server", "session", "channel", "upgraded")

    def __init__(self, server: EngineIOServer, session: Session, channel: WebSocketChannel) -> None:
        self.server = server
        self.session = session
        self.channel = channel
        self.upgraded = False
        session.probe = channel

    def on_message(self, data: str | bytes) -> None:
        session = self.session
        if self.upgraded:
            _receive(self.server, session, data)
            return
        try:
            packet = engineio.decode_ws(data)
            events = session.machine.receive_probe(packet, asyncio.get_running_loop().time())
        except RemoteProtocolError as exc:
            logger.debug("sid %s: bad upgrade probe: %s", session.sid, exc)
            self.server.bad_requests += 1
            session.probe = None
            session.machine.probe_failed()
            self.channel.close(1002, "bad upgrade")
            return
        self.upgraded = any(isinstance(e, Upgraded) for e in events)
        self.server._dispatch(session, events)

    def on_close(self, code: int) -> None:
        session = self.session
        if self.upgraded:
            _lost(self.server, session)
        elif session.probe is self.channel:
            session.probe = None
            session.machine.probe_failed()


# mypy checks here that each WebSocket handler class satisfies the WebSocketHandler Protocol.
_HANDLERS: tuple[type[WebSocketHandler], ...] = (_NewSocket, _ProbeSocket, _Closed)
