"""Server-Sent Events at ``/sse?room=a&room=b``: subscribe, recover by cursor, tail.

Imports L0, L1 (``protocol.sse``), L3 (the hub) and ``transports.base``. A stream is one hub
``Connection``; the door gives it a ``StreamChannel`` to write to.

The cursor (the SSE ``id``) resumes every room of a stream, so it names a position in each
of them. Fan-out stays one encoding per publication per *group*: streams subscribed to the
same set of rooms in the same format (``?format=events|message``) share one ``SseEncoder``,
and once a stream is in sync it has everything up to the current position of every room in
its set — so the cursor after a publication is the same for every member of the group and
is built once, not per recipient.

A stream may ask for the canonical view (``?view=canonical``, ``roomcast tail``): where a
publication carries the application's own form besides the one clients are sent
(``Publication.canonical``: a task kind's payload map), that form is embedded instead. It is
one more part of the group's key, so each group still encodes a publication once. Since it
can show what a payload map hides from clients, only a request the API would allow gets it
(``SseServer(canonical_access=...)``); it is asked for, never a fallback.

Opening a stream (``SseServer.handle``): bad rooms or a ``Last-Event-ID`` that does not
parse → 400 with a JSON error; a reconnect whose rooms are all terminal and whose cursor
already holds their last publication → 204 (so ``EventSource`` stops). Then every room is
subscribed at once with the cursor's position (``Builtins.subscribe_many``): the missed
publications (``recovered``), an explicit ``event: reset`` with a fresh snapshot when history
no longer holds them (never a silent gap), or ``event: snapshot`` for a room the cursor does
not name. The hub holds live publications back until every room's answer is written, so
they follow it with nothing twice and nothing skipped, and every ``id`` the client sees
resumes correctly. A stream whose rooms are all terminal ends once it has written that.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Any

from roomcast import _json, disconnect
from roomcast.auth import Authenticator, Claims, token_from_request
from roomcast.disconnect import Disconnect
from roomcast.errors import AuthError, ConnectionClosed, LocalProtocolError, PermissionDenied, RemoteProtocolError
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.protocol import sse
from roomcast.protocol.wsjson import publication_data
from roomcast.transports.base import CorsPolicy, HttpRequest, HttpResponse, StreamAccept, StreamChannel, api_error
from roomcast.transports.builtins import ADMIN_ROOM_PREFIX, Builtins, is_admin_room, valid_name
from roomcast.transports.expiry import ExpiryWatch
from roomcast.types import MAX_NAME_LENGTH, Publication, RoomName, StreamPosition, Subscription

__all__ = ["SseServer", "SseConnection", "SseEncoder", "SseFrame", "event_body", "framed"]

logger = logging.getLogger("roomcast.sse")

_HEARTBEAT = sse.comment("ping")
_WIDEST = StreamPosition("e" * 32, 2**63)


class SseFrame:
    """One publication as a group of streams writes it: the bytes, and where it sits."""

    __slots__ = ("room", "position", "data")

    def __init__(self, room: RoomName, position: StreamPosition, data: bytes) -> None:
        self.room = room
        self.position = position
        self.data = data


def framed(event: str, data: Any, form: str) -> bytes:
    """One event without its ``id`` in the stream's format (``protocol.sse.FORMATS``): named
    with its data, or unnamed with ``{"event": name, "data": data}`` as its data."""
    if form == sse.MESSAGE:
        return sse.event_frame(_json.dumps_str({"event": event, "data": data}))
    return sse.event_frame(_json.dumps_str(data), event=event)


def event_body(publication: Publication, form: str = sse.EVENTS, canonical: bool = False) -> bytes:
    """A publication as an SSE event without its ``id`` (live and replayed alike).

    Its data was serialised when it was published (``Publication.encoded``, or with
    ``canonical`` its ``Publication.canonical`` where it has one) and is embedded as it is,
    in either format.
    """
    encoded = publication.encoded
    if canonical and publication.canonical is not None:
        encoded = publication.canonical
    if encoded is not None:
        return framed(publication.event, publication_data(_json.embed(encoded)), form)
    return framed(publication.event, _json.json_safe(publication_data(publication.data)), form)


def _newer(position: StreamPosition, than: StreamPosition | None) -> bool:
    return than is None or position.epoch != than.epoch or position.offset > than.offset


class SseEncoder:
    """Encodes publications for the streams subscribed to one set of rooms in one format and
    view (a hub ``Encoder``): a page on ``onmessage``, one on named events and a ``tail`` in
    the canonical view are three groups, each encoded once per publication.

    ``positions`` is the current position of every room of the set as far as this group has
    seen it: from each publication it encodes and from each member's subscribe result.
    """

    __slots__ = ("rooms", "form", "canonical", "positions", "members")

    def __init__(self, rooms: tuple[RoomName, ...], form: str = sse.EVENTS, canonical: bool = False) -> None:
        self.rooms = rooms
        self.form = form
        self.canonical = canonical
        self.positions: dict[RoomName, StreamPosition] = {}
        self.members = 0

    def advance(self, room: RoomName, position: StreamPosition) -> None:
        if _newer(position, self.positions.get(room)):
            self.positions[room] = position

    def encode(self, publication: Publication) -> SseFrame:
        self.advance(publication.room, publication.position)
        body = event_body(publication, self.form, self.canonical)
        cursor = sse.encode_cursor(self.positions)
        return SseFrame(publication.room, publication.position, sse.id_line(cursor) + body)


class SseConnection(Connection):
    """One open event stream (a hub ``Connection`` and the door's ``StreamHandler``)."""

    __slots__ = ("channel", "server", "stream_rooms", "form", "canonical", "cursor", "finished", "sync_task")

    transport_label = "sse"  # a constant where the base computes it

    def __init__(
        self,
        server: SseServer,
        channel: StreamChannel,
        encoder: SseEncoder,
        rooms: tuple[RoomName, ...],
        cursor: dict[RoomName, StreamPosition],
        auth: Any,
    ) -> None:
        super().__init__(f"{server.id_prefix}{next(server.ids)}", hub=server.hub, encoder=encoder, auth=auth)
        self.server = server
        self.channel = channel
        if isinstance(auth, Claims):
            self.claims, self.user = auth, auth.subject
        self.stream_rooms = rooms
        self.form = encoder.form
        self.canonical = encoder.canonical
        # What this client holds, room by room, while it syncs: the cursor it came back with.
        self.cursor: dict[RoomName, StreamPosition] = {r: cursor[r] for r in rooms if r in cursor}
        self.finished: set[RoomName] = set()
        self.sync_task: asyncio.Task[None] | None = None

    # -- the hub's side ---------------------------------------------------------------
    def write(self, encoded: SseFrame) -> bool:
        return self.channel.write(encoded.data)

    def emit(self, event: str, *args: Any) -> None:
        """An event for this stream alone; it carries no ``id``, so the cursor is unchanged."""
        if not self.closed:
            self.channel.write(framed(event, publication_data(args), self.form))

    async def call(self, event: str, *args: Any, timeout: float = 10.0) -> Any:
        raise NotImplementedError("an SSE stream cannot acknowledge: it only receives")

    def disconnect(self, reason: Disconnect) -> None:
        """End the stream, saying why in a final ``event: error`` (the client may reconnect)."""
        if self.closed:
            return
        self._error("disconnect", reason.reason, reconnect=reason.reconnect)
        self.channel.close()
        self.hub.remove_connection(self, reason)  # out of its rooms now, not when the goodbye is read

    def room_terminal(self, room: RoomName) -> None:
        self.finished.add(room)
        if self.finished.issuperset(self.stream_rooms):
            self.channel.close()  # everything there is to say was said

    # -- the door's side (StreamHandler) -----------------------------------------------
    def on_close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sync_task is not None:
            self.sync_task.cancel()
        self.server.forget(self)

    # -- opening ------------------------------------------------------------------------
    async def sync(self) -> None:
        """Subscribe every room from the cursor, then write each room's answer at once."""
        try:
            requests = [(r, self.cursor.get(r)) for r in self.stream_rooms]
            subs = await self.server.calls.subscribe_many(self, requests, canonical=self.canonical)
        except (asyncio.CancelledError, ConnectionClosed):
            return  # the stream ended while it synced
        except Exception:
            logger.exception("could not open the SSE stream %s", self.id)
            self._error("internal", "could not subscribe", reconnect=True)
            self.channel.close()
            return
        # Released: from here to the end nothing awaits, so live frames follow these.
        encoder = self.encoder
        assert isinstance(encoder, SseEncoder)
        for sub in subs:
            self._write_subscription(sub)
            if sub.terminal:
                self.finished.add(sub.room)
            delivered = self.hub.delivered_position(sub.room)
            if delivered is not None and delivered.epoch == sub.position.epoch:
                # The group's cursor moves on only as far as this node has delivered the room,
                # so no other member is told it holds what is still on its way here.
                encoder.advance(sub.room, min(delivered, sub.position, key=lambda p: p.offset))
        if self.finished.issuperset(self.stream_rooms):
            self.channel.close()  # finished rooms: everything there is was said; a reconnect gets 204

    def _write_subscription(self, sub: Subscription) -> None:
        room, held = sub.room, self.cursor.get(sub.room)
        if not sub.recovered:  # the first time here, or history no longer holds what was missed
            base = sub.base
            self.cursor[room] = base
            body = {"room": room, "epoch": base.epoch, "offset": base.offset, "snapshot": sub.snapshot}
            self._write_own(framed("reset" if held is not None else "snapshot", body, self.form))
        for pub in sub.publications:
            self.cursor[room] = pub.position
            self._write_own(event_body(pub, self.form, self.canonical))
        self.cursor[room] = sub.position

    def _write_own(self, body: bytes) -> None:
        """Write ``body`` with this stream's own cursor (during sync it differs from the group's)."""
        self.channel.write(sse.id_line(sse.encode_cursor(self.cursor)) + body)

    def _error(self, code: str, message: str, *, reconnect: bool) -> None:
        body = {"code": code, "message": message, "reconnect": reconnect}
        self.channel.write(framed("error", body, self.form))


class SseServer:
    """The ``/sse`` route.

    Args:
        hub: the hub whose rooms the streams follow.
        heartbeat: seconds between ``: ping`` comments (proxies close silent connections).
        retry_ms: the reconnection delay suggested to ``EventSource``.
        cors: which browser origins may open a stream.
        authenticator: verifies the token (``Authorization: Bearer`` or ``?token=``, as
            ``EventSource`` cannot set headers) and its grants for every room; open when
            ``None``.
        expiry: ends a stream when its token expires (``EventSource`` cannot refresh one
            in-band: it reconnects, and a new URL carries a new token).
        default_format: how a stream that does not ask (``?format=events|message``) frames
            its events (``protocol.sse.FORMATS``).
        canonical_access: who may ask for the canonical view (``?view=canonical``): ``None``
            when the request may, else the refusal to answer (the API's rule,
            ``ApiServer.check_access``). Without it nobody may.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        heartbeat: float = 15.0,
        retry_ms: int = 2000,
        cors: CorsPolicy | None = None,
        authenticator: Authenticator | None = None,
        expiry: ExpiryWatch | None = None,
        default_format: str = sse.EVENTS,
        canonical_access: Callable[[HttpRequest], HttpResponse | None] | None = None,
    ) -> None:
        if default_format not in sse.FORMATS:
            raise ValueError(f"default_format must be one of {', '.join(sse.FORMATS)}, not {default_format!r}")
        self.hub = hub
        self.default_format = default_format
        self.canonical_access = canonical_access
        self.heartbeat = heartbeat
        self.retry = sse.retry_frame(retry_ms)
        self.cors = cors if cors is not None else CorsPolicy()
        self.authenticator = authenticator
        self.expiry = expiry
        self.calls = Builtins(hub, authenticator=authenticator, expiry=expiry)
        self.streams: set[SseConnection] = set()
        self.encoders: dict[tuple[str, bool, tuple[RoomName, ...]], SseEncoder] = {}
        self.ids = itertools.count(1)
        # Ids are unique across processes too: presence and "disconnect this connection" meet
        # every node's connections in one place when the rooms are shared (RedisBroker).
        self.id_prefix = f"sse-{secrets.token_hex(4)}-"
        self.bad_requests = 0  # streams refused with 400 (bad rooms or Last-Event-ID), for operators
        self._beat: asyncio.TimerHandle | None = None

    async def handle(
        self, request: HttpRequest, rooms: tuple[RoomName, ...] | None = None
    ) -> HttpResponse | StreamAccept:
        """Open a stream on the ``room`` query parameters, or on ``rooms`` when a route fixes them
        (``/tasks/{id}/events``)."""
        if request.method != "GET":
            return api_error(405, "method_not_allowed", "use GET", [("Allow", "GET")])
        if not self.cors.allowed(request):
            return api_error(403, "forbidden", "origin not allowed")
        cors = self.cors.headers(request)
        if rooms is None:
            rooms = tuple(dict.fromkeys(request.query_all.get("room", [])))
        form = request.query.get("format", self.default_format)
        view = request.query.get("view", sse.CLIENT)
        problem = (
            self._check_rooms(rooms)
            or (None if form in sse.FORMATS else f"format must be one of {', '.join(sse.FORMATS)}")
            or (None if view in sse.VIEWS else f"view must be one of {', '.join(sse.VIEWS)}")
        )
        if problem:
            self.bad_requests += 1
            return api_error(400, "bad_request", problem, cors)
        canonical = view == sse.CANONICAL
        if canonical:
            refused = self._refuse_canonical(request)
            if refused is not None:
                refused.headers.extend(cors)
                return refused
        if not self.calls.admin and any(is_admin_room(r) for r in rooms):  # refused before a stream opens
            return api_error(403, "forbidden", f"{ADMIN_ROOM_PREFIX}* rooms are the server's", cors)
        last_id = request.headers.get("last-event-id") or request.query.get("last_event_id")
        try:
            cursor = sse.decode_cursor(last_id) if last_id else {}
        except RemoteProtocolError as exc:
            self.bad_requests += 1
            return api_error(400, "bad_request", exc.reason, cors)
        auth: Claims | None = None
        if self.authenticator is not None:
            try:
                auth = self.authenticator.verify(token_from_request(request.headers, request.query))
                for room in rooms:
                    self.authenticator.permit(auth, "subscribe", room)
            except PermissionDenied as exc:
                return api_error(403, "forbidden", str(exc), cors)
            except AuthError as exc:
                return api_error(401, "unauthorized", str(exc), cors)
        if last_id and await self._finished(rooms, cursor):
            return HttpResponse(204, b"", cors)  # it has everything and nothing more will come
        return StreamAccept(
            lambda channel: self._open(channel, rooms, cursor, auth, form, canonical),
            content_type=sse.CONTENT_TYPE,
            headers=[*cors, ("X-Accel-Buffering", "no")],
        )

    def _refuse_canonical(self, request: HttpRequest) -> HttpResponse | None:
        """``None`` when ``request`` may have the canonical view, else the refusal, saying that
        it is the view that was refused (the rooms alone may be allowed)."""
        how = "or follow with view=client, what clients receive"
        if self.canonical_access is None:
            return api_error(403, "forbidden", f"this server offers no canonical view (view=canonical); {how}")
        refused = self.canonical_access(request)
        if refused is None:
            return None
        try:
            error = _json.loads(refused.body)["error"]
            code, why = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, why = "forbidden", f"HTTP {refused.status}"
        message = f"the canonical view (view=canonical) needs the API's access: {why}; {how}"
        return api_error(refused.status, code, message, refused.headers)

    async def _finished(self, rooms: tuple[RoomName, ...], cursor: dict[RoomName, StreamPosition]) -> bool:
        """Whether every room is terminal and the cursor already holds its last publication."""
        hub = self.hub
        for room in rooms:
            if not await hub.is_terminal(room) or cursor.get(room) != await hub.broker.position(room):
                return False
        return True

    def _check_rooms(self, rooms: tuple[RoomName, ...]) -> str | None:
        if not rooms:
            return "name at least one room: /sse?room=a&room=b"
        limit = self.hub.max_rooms_per_connection
        if len(rooms) > limit:
            return f"at most {limit} rooms per connection"
        if not all(valid_name(r) for r in rooms):
            return f"room names are 1 to {MAX_NAME_LENGTH} characters"
        try:  # the cursor naming every room at its largest must still fit a Last-Event-ID
            sse.encode_cursor({r: _WIDEST for r in rooms})
        except LocalProtocolError:
            return "these rooms' names are too long together to resume by one Last-Event-ID"
        return None

    def _open(
        self,
        channel: StreamChannel,
        rooms: tuple[RoomName, ...],
        cursor: dict[RoomName, StreamPosition],
        auth: Claims | None,
        form: str,
        canonical: bool = False,
    ) -> SseConnection:
        key = (form, canonical, tuple(sorted(rooms)))
        encoder = self.encoders.get(key)
        if encoder is None:
            encoder = self.encoders[key] = SseEncoder(key[2], form, canonical)
        encoder.members += 1
        conn = SseConnection(self, channel, encoder, rooms, cursor, auth)
        self.streams.add(conn)
        self.hub.add_connection(conn)
        if self.expiry is not None and isinstance(auth, Claims):
            self.expiry.watch(conn, auth)
        channel.write(self.retry)
        conn.sync_task = asyncio.ensure_future(conn.sync())
        if self._beat is None:
            self._beat = asyncio.get_running_loop().call_later(self.heartbeat, self._heartbeat)
        return conn

    def forget(self, conn: SseConnection) -> None:
        """A stream ended: drop it from the hub, its group and the heartbeat."""
        self.streams.discard(conn)
        finished = conn.finished.issuperset(conn.stream_rooms)  # it ended the stream, or the client left
        self.hub.remove_connection(conn, disconnect.NORMAL if finished else disconnect.TRANSPORT_CLOSE)
        if self.expiry is not None:
            self.expiry.forget(conn)
        encoder = conn.encoder
        assert isinstance(encoder, SseEncoder)
        encoder.members -= 1
        key = (encoder.form, encoder.canonical, encoder.rooms)
        if encoder.members == 0 and self.encoders.get(key) is encoder:
            del self.encoders[key]

    def _heartbeat(self) -> None:
        """One timer for every stream: a comment each keeps proxies from closing it."""
        self._beat = None
        slow = [conn for conn in self.streams if not conn.channel.write(_HEARTBEAT)]
        for conn in slow:
            conn.disconnect(disconnect.SLOW)
        if self.streams:
            self._beat = asyncio.get_running_loop().call_later(self.heartbeat, self._heartbeat)

    def close_all(self, reason: Disconnect) -> None:
        for conn in list(self.streams):
            conn.disconnect(reason)
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
