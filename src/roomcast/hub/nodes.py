"""``NodeOps``: what the hub does on every node at once, through the node bus (``cluster``).

Imports L0, ``cluster.base`` and ``hub.connection``. Rooms reach every node through the
broker; connections do not: each lives on the node that accepted it. So a disconnect of a
user, a message to one connection by id and the listing of rooms are asked of every live
node (``Cluster.ask_all``), and each node answers for its own connections. With one process
(``LocalCluster``) the same calls are answered locally, so callers never care which.

The payloads are JSON: a message to a connection on another node carries JSON arguments
only (binary attachments do not cross nodes here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from roomcast import _json
from roomcast.cluster.base import Cluster
from roomcast.disconnect import Disconnect
from roomcast.hub.connection import Connection
from roomcast.types import ConnectionId, JSONValue, RoomName

__all__ = ["NodeOps", "RoomListing"]

RoomListing = dict[RoomName, tuple[int, list[str]]]
"""Room → (connections in it on every node, the distinct users among them)."""


class NodeOps:
    """The hub's cross-node calls, and this node's answers to other nodes' calls.

    Args:
        cluster: the node bus; its handlers for ``hub.*`` kinds are registered here.
        connections: this node's connections by id (the hub's own dict).
        rooms: this node's rooms with their member counts and users: ``name -> (n, users)``.
    """

    def __init__(
        self,
        cluster: Cluster,
        connections: Mapping[ConnectionId, Connection],
        rooms: Callable[[], RoomListing],
    ) -> None:
        self.cluster = cluster
        self._connections = connections
        self._rooms = rooms
        cluster.on("hub.disconnect", self._disconnect_here)
        cluster.on("hub.emit", self._emit_here)
        cluster.on("hub.rooms", self._rooms_here)

    async def disconnect(
        self, reason: Disconnect, *, connection: ConnectionId | None = None, user: str | None = None
    ) -> int:
        """Close the connection with this id, or every connection of this user, on every node.

        Returns how many were closed. Exactly one of ``connection`` and ``user`` is given.
        """
        if (connection is None) == (user is None):
            raise ValueError("give exactly one of connection and user")
        payload = {"connection": connection, "user": user, "code": reason.code, "reason": reason.reason}
        payload["reconnect"] = reason.reconnect
        answers = await self.cluster.ask_all("hub.disconnect", payload)
        return sum(a for a in answers if isinstance(a, int))

    async def emit_to(self, connection: ConnectionId, event: str, *args: JSONValue) -> bool:
        """Send ``event`` to one connection by id, wherever it is; ``False`` if none has it.

        Raises:
            roomcast.errors.InvalidPublication: ``args`` are not JSON (or too deep).
        """
        local = self._connections.get(connection)
        if local is not None:
            local.emit(event, *args)
            return True
        for arg in args:
            _json.dumps_checked(arg)  # refuse here, with the caller's error, not on the other node
        answers = await self.cluster.ask_all("hub.emit", {"connection": connection, "event": event, "args": list(args)})
        return any(a is True for a in answers)

    async def rooms(self) -> RoomListing:
        """Every room with members on any node that answered, with counts and users summed."""
        listing: dict[RoomName, tuple[int, set[str]]] = {}
        for answer in await self.cluster.ask_all("hub.rooms", None):
            if not isinstance(answer, dict):
                continue
            for room, entry in answer.items():
                count, users = entry
                have = listing.get(room, (0, set()))
                listing[room] = (have[0] + int(count), have[1] | set(users))
        return {room: (count, sorted(users)) for room, (count, users) in listing.items()}

    # -- this node's answers ----------------------------------------------------------
    async def _disconnect_here(self, payload: JSONValue) -> JSONValue:
        request: dict[str, Any] = payload
        reason = Disconnect(int(request["code"]), str(request["reason"]), bool(request["reconnect"]))
        if request["connection"] is not None:
            found = self._connections.get(request["connection"])
            targets = [found] if found is not None else []
        else:
            targets = [c for c in self._connections.values() if c.user == request["user"]]
        for conn in targets:
            conn.disconnect(reason)
        return len(targets)

    async def _emit_here(self, payload: JSONValue) -> JSONValue:
        request: dict[str, Any] = payload
        conn = self._connections.get(request["connection"])
        if conn is None:
            return False
        conn.emit(request["event"], *request["args"])
        return True

    async def _rooms_here(self, payload: JSONValue) -> JSONValue:
        return {room: [count, users] for room, (count, users) in self._rooms().items()}
