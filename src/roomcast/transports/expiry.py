"""``ExpiryWatch``: end connections whose token expired and was not refreshed in time.

Imports L0, L2 (``auth``), L3 (``hub.connection``) and ``transports.deadlines``. A
long-lived connection outlives the token it opened with; each transport files the claims it
accepted here, files them again when the client refreshes (``roomcast.v1`` ``refresh``), and
the watch disconnects with ``TOKEN_EXPIRED`` once ``exp`` plus the configured leeway has
passed. One ``DeadlineWheel`` serves every connection, as for heartbeats.
"""

from __future__ import annotations

import asyncio
import time

from roomcast import disconnect
from roomcast.auth import Claims
from roomcast.hub.connection import Connection
from roomcast.transports.deadlines import DeadlineWheel

__all__ = ["ExpiryWatch"]


class ExpiryWatch:
    """Disconnects a watched connection when its claims expire.

    Args:
        leeway: seconds past ``exp`` a token is still honoured (the authenticator's leeway).
    """

    def __init__(self, *, leeway: float = 0.0) -> None:
        self.leeway = leeway
        self._resolution = 0.05
        self._wheel: DeadlineWheel[Connection] = DeadlineWheel(self._expired, resolution=self._resolution)
        self._ticks: dict[Connection, int] = {}
        self.expired = 0

    def watch(self, conn: Connection, claims: Claims) -> None:
        """Watch ``conn`` until ``claims`` expire (replacing what was watched before)."""
        self.forget(conn)
        if claims.expires_at is None:
            return
        # a tick later than exp + leeway, since the wheel may fire up to one tick early
        left = claims.expires_at + self.leeway - time.time() + self._resolution
        self._ticks[conn] = self._wheel.file(conn, asyncio.get_running_loop().time() + max(0.0, left))

    def forget(self, conn: Connection) -> None:
        tick = self._ticks.pop(conn, None)
        if tick is not None:
            self._wheel.cancel(conn, tick)

    def _expired(self, conn: Connection, tick: int) -> None:
        if self._ticks.get(conn) != tick:
            return
        del self._ticks[conn]
        if not conn.closed:
            self.expired += 1
            conn.disconnect(disconnect.TOKEN_EXPIRED)

    def close(self) -> None:
        self._wheel.close()
        self._ticks.clear()
