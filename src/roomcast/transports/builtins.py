"""The requests every transport offers a client: subscribe, unsubscribe, publish, refresh.

Imports L0, L2 (``auth``) and L3 (the hub). One place decides what these requests mean:
the grants they need, the names they accept, and what the hub is asked. A transport only
decodes its wire into a call here and encodes the answer (a ``Subscription``, a position,
or one of the errors below) back onto its wire:

* ``RemoteProtocolError``: the request is malformed (a room name that is not one);
* ``PermissionDenied`` / ``Unauthorized``: the token does not allow it;
* ``LimitExceeded``: too many rooms on the connection;
* ``ConnectionClosed``: the connection ended (or left the room) while it was subscribing;
  nobody is left to answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from roomcast.auth import Authenticator, Claims, require
from roomcast.errors import PermissionDenied, RemoteProtocolError
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.transports.expiry import ExpiryWatch
from roomcast.types import MAX_NAME_LENGTH, JSONValue, RoomName, StreamPosition, Subscription

__all__ = ["Builtins", "valid_name", "ADMIN_ROOM_PREFIX", "is_admin_room"]

ADMIN_ROOM_PREFIX = "$roomcast:"
"""Rooms the server keeps for itself (the dashboard's stats, ``server.dashboard``). No client
may subscribe or publish to one, whatever its token grants and on an open server too: only a
``Builtins`` whose ``admin`` is set (the dashboard's own stream, behind its login) may subscribe."""


def is_admin_room(room: str) -> bool:
    """Whether ``room`` is reserved for the server (``ADMIN_ROOM_PREFIX``)."""
    return room.startswith(ADMIN_ROOM_PREFIX)


def valid_name(value: object) -> bool:
    """Whether ``value`` can name a room or an event: a string of 1 to 256 characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_LENGTH


def _check_name(value: object, what: str) -> str:
    if not valid_name(value):
        raise RemoteProtocolError(f"{what} must be a string of 1 to {MAX_NAME_LENGTH} characters")
    assert isinstance(value, str)
    return value


def _refuse_admin_room(action: str, room: RoomName) -> None:
    if is_admin_room(room):
        raise PermissionDenied(f"not allowed to {action} {room!r}: {ADMIN_ROOM_PREFIX}* rooms are the server's")


class Builtins:
    """The built-in requests, shared by the Socket.IO, ``/ws`` and SSE transports.

    Args:
        hub: the rooms.
        authenticator: verifies refreshed tokens; ``None`` on an open server.
        expiry: restarts a connection's expiry watch from a refreshed token.

    Attributes:
        admin: may subscribe to the server's reserved rooms (``ADMIN_ROOM_PREFIX``); only the
            dashboard's own stream sets it, after its login.
    """

    def __init__(
        self, hub: Hub, *, authenticator: Authenticator | None = None, expiry: ExpiryWatch | None = None
    ) -> None:
        self.hub = hub
        self.authenticator = authenticator
        self.expiry = expiry
        self.admin = False

    async def subscribe(self, conn: Connection, room: object, since: StreamPosition | None = None) -> Subscription:
        """Join ``room`` in sync: write the answer before awaiting anything else."""
        (sub,) = await self.subscribe_many(conn, ((room, since),))
        return sub

    async def subscribe_many(
        self, conn: Connection, requests: Sequence[tuple[object, StreamPosition | None]], *, canonical: bool = False
    ) -> list[Subscription]:
        """Join every room in sync, released together (SSE's one cursor resumes them all);
        ``canonical``: snapshots in the canonical view (``Hub.subscribe_many``)."""
        checked = [(_check_name(room, "room"), since) for room, since in requests]
        if not self.admin:
            for room, _ in checked:
                _refuse_admin_room("subscribe", room)
        claims = conn.claims
        if claims is not None:
            for room, _ in checked:
                self._permit(claims, "subscribe", room)
        return await self.hub.subscribe_many(conn, checked, canonical=canonical)

    def unsubscribe(self, conn: Connection, room: object) -> RoomName:
        """Leave ``room`` (nothing happens if ``conn`` was not in it)."""
        name = _check_name(room, "room")
        conn.leave(name)
        return name

    async def publish(
        self, conn: Connection, room: object, event: object, args: tuple[JSONValue, ...]
    ) -> StreamPosition:
        """Publish for a client: to every member of ``room``, on every transport and node."""
        name = _check_name(room, "room")
        event_name = _check_name(event, "event")
        _refuse_admin_room("publish", name)  # never from a client, admin or not: the server writes them
        claims = conn.claims
        if claims is not None:
            self._permit(claims, "publish", name)
        return await self.hub.publish(name, event_name, *args)

    def _permit(self, claims: Claims, action: Literal["subscribe", "publish"], room: RoomName) -> None:
        """``require``, through the authenticator when there is one, which counts a refusal."""
        if self.authenticator is not None:
            self.authenticator.permit(claims, action, room)
        else:
            require(claims, action, room)

    def refresh(self, conn: Connection, token: object) -> Claims | None:
        """Take a fresh token for ``conn`` (same subject); its expiry watch restarts from it.

        Raises:
            AuthError: the token is not valid, or names another subject.
        """
        if self.authenticator is None:
            return conn.claims  # an open server: nothing expires
        claims = self.authenticator.verify(token if isinstance(token, str) else None)
        old = conn.claims
        if old is not None and old.subject != claims.subject:
            raise PermissionDenied("a refresh must be for the same subject")
        conn.claims = claims
        if self.expiry is not None:
            self.expiry.watch(conn, claims)
        return claims
