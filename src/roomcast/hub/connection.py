"""``Connection``: one client on one transport, as the hub sees it; and the ``Encoder`` contract.

Imports only L0 (and, for types, ``auth``). Transports subclass ``Connection`` and implement ``write``, ``emit`` and
``close``; the hub never learns which wire a connection speaks.

The fan-out contract (DESIGN §8): for each publication the hub calls ``encoder.encode(pub)``
once per distinct encoder among a room's members, then ``connection.write(encoded)`` for every
member, synchronously. ``write`` must not allocate per call where it can help it, must not
await, and must not change room membership; it returns ``False`` when the connection's
outbound buffer is over its limit, and the hub then disconnects it as a slow consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Set
from typing import TYPE_CHECKING, Any, Final, Protocol

from roomcast.disconnect import Disconnect
from roomcast.types import ConnectionId, Publication, RoomName

if TYPE_CHECKING:
    from roomcast.auth import Claims
    from roomcast.hub.hub import Hub

__all__ = ["Connection", "Encoder"]

_NO_ROOMS: Final[frozenset[RoomName]] = frozenset()
"""The rooms of a connection that never joined one: shared, and immutable, so an idle
connection holds no empty set of its own (216 bytes each)."""


class Encoder(Protocol):
    """Turns a publication into what a family of connections writes (a frame, a packet list).

    One instance is shared by every connection that writes the same bytes, so the hub encodes
    once per instance per publication. Instances are hashable by identity.
    """

    def encode(self, publication: Publication) -> Any:
        """Encode ``publication`` for every connection that uses this encoder."""


class Connection:
    """Base class for a client connection.

    Attributes:
        id: unique within the process.
        namespace: the Socket.IO namespace (``"/"`` for other transports).
        auth: the credentials or handshake payload the client presented.
        rooms: rooms this connection is a member of (read-only: the hub keeps it, through
            ``joined`` and ``left``).
        data: free space for the application (session state ...).
        user: who is behind the connection (a token's ``sub``), for presence and for
            "disconnect this user"; ``None`` when anonymous.
        claims: the verified token's claims (its room grants); ``None`` on an open server.
        encoder: how publications are encoded for this connection.
        hub: the hub this connection belongs to.
    """

    __slots__ = ("id", "namespace", "auth", "rooms", "_data", "encoder", "hub", "closed", "user", "claims", "opened_at")

    def __init__(
        self,
        id: ConnectionId,
        *,
        hub: Hub,
        encoder: Encoder,
        namespace: str = "/",
        auth: Any = None,
    ) -> None:
        self.id = id
        self.hub = hub
        self.encoder = encoder
        self.namespace = namespace
        self.auth = auth
        self.rooms: Set[RoomName] = _NO_ROOMS  # a set of its own from the first join
        self._data: dict[str, Any] | None = None  # ``data``, made on first use
        self.closed = False
        self.user: str | None = None
        self.claims: Claims | None = None
        self.opened_at = 0.0  # time.monotonic() when the hub added it (``hub.connlog``)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.namespace}>"

    def joined(self, room: RoomName) -> None:
        """Count ``room`` among ``rooms`` (the hub's bookkeeping, when it adds a member)."""
        rooms = self.rooms
        if isinstance(rooms, set):
            rooms.add(room)
        else:
            self.rooms = {room}

    def left(self, room: RoomName) -> None:
        """Drop ``room`` from ``rooms`` (the hub's bookkeeping, when a member leaves)."""
        rooms = self.rooms
        if isinstance(rooms, set):
            rooms.discard(room)

    @property
    def data(self) -> dict[str, Any]:
        """Free space for the application; made on first use, so connections whose
        application keeps nothing on them hold no empty dict each."""
        if self._data is None:
            self._data = {}
        return self._data

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        self._data = value

    @property
    def transport_label(self) -> str:
        """The wire this connection speaks, as ``/metrics`` labels it (``sse``, ``ws``,
        ``socketio-polling`` ...): the connection log names it. Transports override it."""
        return type(self).__name__

    # -- the application's API -------------------------------------------------------
    def join(self, room: RoomName) -> asyncio.Future[None]:
        """Become a member of ``room`` and receive its publications from now on.

        Await the result to know that the broker delivers the room to this node: a handler
        that joins, awaits, then sends the room's state leaves no gap (with a broker that
        delivers later, such as Redis, publications made before that may not arrive).
        Without the await it is the plain join of code that does not care. For the state
        and the tail in one exact step, subscribe instead (``Hub.subscribe``).
        """
        return self.hub.join(self, room)

    def leave(self, room: RoomName) -> None:
        """Stop receiving ``room``'s publications."""
        self.hub.leave(self, room)

    def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` to this connection only (e.g. the initial state after a join)."""
        raise NotImplementedError

    async def call(self, event: str, *args: Any, timeout: float = 10.0) -> Any:
        """Send ``event`` and wait for the client's acknowledgement.

        Raises:
            TimeoutError: no acknowledgement within ``timeout`` seconds.
            roomcast.errors.ConnectionClosed: the connection closed first.
        """
        raise NotImplementedError

    def disconnect(self, reason: Disconnect) -> None:
        """Close this connection with ``reason``; membership is cleared by the transport."""
        raise NotImplementedError

    # -- the hub's API ----------------------------------------------------------------
    def room_terminal(self, room: RoomName) -> None:
        """``room`` will publish nothing more; transports that end streams override this."""

    def write(self, encoded: Any) -> bool:
        """Write an encoded publication; ``False`` when over the outbound buffer limit."""
        raise NotImplementedError
