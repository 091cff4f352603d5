"""``ConnectionLog``: one info line when a connection opens and one when it closes.

Imports only the stdlib and, for types, ``hub.connection`` and ``disconnect``. Why here and
not in each transport: every transport already tells the hub both moments
(``Hub.add_connection`` / ``Hub.remove_connection``, the second with the close reason), so the
hub is the one place that sees every connection of every transport behind either door. The
transport names itself (``Connection.transport_label``, the label ``/metrics`` uses) and the
front door is set once by whoever serves the hub (``server.app.App.door``).

Cost: two records per connection, never one per message, and nothing at all when ``INFO`` is
off for ``roomcast.connections`` (one cached ``isEnabledFor``). The records carry their values
twice: in the message, for text logs and for embedders with their own handlers, and as
``fields`` (a dict), which ``server.logs``'s JSON formatter turns into keys. Never a token:
only the user a verified token names (its ``sub``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from roomcast.disconnect import Disconnect
    from roomcast.hub.connection import Connection

__all__ = ["ConnectionLog"]

logger = logging.getLogger("roomcast.connections")


def _user(conn: Connection) -> str:
    """The user as one safe token: ``-`` when anonymous, ``repr`` otherwise, so a ``sub`` with
    a newline or a space cannot forge a line or a field in a text log."""
    return "-" if conn.user is None else repr(conn.user)


class ConnectionLog:
    """Writes the open and close lines; the hub calls it, transports never do.

    Attributes:
        door: the front door serving the hub's connections, ``"native"`` or ``"asgi"``.
    """

    __slots__ = ("door",)

    def __init__(self, door: str = "native") -> None:
        self.door = door

    def opened(self, conn: Connection) -> None:
        """``conn`` was just added to the hub: stamp its start and log it."""
        conn.opened_at = time.monotonic()
        if not logger.isEnabledFor(logging.INFO):
            return
        transport, user, rooms = conn.transport_label, _user(conn), len(conn.rooms)
        logger.info(
            "connection open id=%s transport=%s door=%s user=%s rooms=%d",
            conn.id,
            transport,
            self.door,
            user,
            rooms,
            extra={
                "fields": {
                    "event": "open",
                    "id": conn.id,
                    "transport": transport,
                    "door": self.door,
                    "user": conn.user,
                    "rooms": rooms,
                }
            },
        )

    def closed(self, conn: Connection, reason: Disconnect | None) -> None:
        """``conn`` just left the hub (called once, before its rooms are cleared)."""
        if not logger.isEnabledFor(logging.INFO):
            return
        duration = time.monotonic() - conn.opened_at if conn.opened_at else 0.0
        transport, user, rooms = conn.transport_label, _user(conn), len(conn.rooms)
        code, why = (reason.code, reason.reason) if reason is not None else (None, "unknown")
        logger.info(
            "connection closed id=%s transport=%s door=%s user=%s rooms=%d duration=%.3fs reason=%r code=%s",
            conn.id,
            transport,
            self.door,
            user,
            rooms,
            duration,
            why,
            code,
            extra={
                "fields": {
                    "event": "close",
                    "id": conn.id,
                    "transport": transport,
                    "door": self.door,
                    "user": conn.user,
                    "rooms": rooms,
                    "duration": round(duration, 3),
                    "reason": why,
                    "code": code,
                }
            },
        )
