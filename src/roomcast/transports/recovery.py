"""Socket.IO connection state recovery: saved sessions, and the trail that places a comeback.

Imports only L0. This is the bookkeeping behind ``SocketIOServer(recovery_window=...)``, the
protocol the official Node server implements as ``connectionStateRecovery`` (socket.io 4.6+):

* every event the server sends carries, as its last argument, an *offset* string naming a
  point of the trail (below); the official client keeps the last one it saw;
* the CONNECT reply carries a private session id ``pid`` beside ``sid``;
* when a socket is lost for a transient reason its session (``sid``, rooms, ``data``) is saved
  under its ``pid``; a client that comes back within the window sends ``{pid, offset}`` in its
  CONNECT auth, gets the same ``sid`` and rooms back, and is sent every publication of its
  rooms that came after its offset.

Per saved session, its rooms and their ``(epoch, offset)`` positions: a comeback is a
subscribe to each room from its position, served by each room's history (``Hub.subscribe``),
so it works the same wherever history lives. What the client may lack beyond those positions
is what was written to its socket but lost in flight. The client's offset names the last
event it got: offsets are numbers of a per-server *trail* that records, once per publication
written to Socket.IO sockets (never per recipient), its room and position. A saved session
keeps the recent part of the trail for its rooms, so a comeback moves each room's position
back to just before the first of its publications the client did not get.

An offset is ``"<epoch>.<number in hex>"``, the epoch being random per server so an offset
from another process (or an earlier run) is never mistaken for a position here. The trail
is bounded by count (``capacity``), sessions by age (``window``): a comeback whose in-flight
loss reaches past what was kept is refused rather than incomplete.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from roomcast.types import Publication, RoomName, StreamPosition

__all__ = ["Recovery", "Trail", "SavedSession", "Resume", "DEFAULT_CAPACITY", "RESERVED_AUTH_KEYS", "strip_reserved"]

DEFAULT_CAPACITY: Final = 10_000
"""Publications the trail remembers (about 1 MB)."""

TRAIL_SPAN: Final = 1024
"""Trail entries a saved session examines back from its last write: the in-flight loss a
comeback can make up for (a socket's buffers hold far fewer events)."""

RESERVED_AUTH_KEYS: Final = ("pid", "offset")
"""CONNECT auth keys the official client adds on reconnection; not the application's."""

_OFFSET_DIGITS: Final = re.compile(r"[0-9a-f]{1,15}")


class Trail(NamedTuple):
    """One publication written to Socket.IO sockets: its number, room and position."""

    seq: int
    room: RoomName
    position: StreamPosition


@dataclass(slots=True)
class SavedSession:
    """A socket lost for a transient reason, kept for its client to come back to.

    Attributes:
        sid: the socket id the client gets back.
        namespace: the namespace it was connected to (a session is restored only there).
        positions: its rooms, and where it stood in each when it was lost.
        data: its ``Connection.data``, handed over as is.
        since: the trail's head when the session first connected: a floor for offsets,
            since the official client keeps its last offset across sessions.
        trail: the trail entries of its rooms up to its last write, oldest first.
        covered: offsets at or after this number can be made up for from ``trail``.
        expires: the clock reading after which it is gone.
    """

    sid: str
    namespace: str
    positions: dict[RoomName, StreamPosition]
    data: dict[str, Any]
    since: int
    trail: tuple[Trail, ...]
    covered: int
    expires: float


@dataclass(frozen=True, slots=True)
class Resume:
    """A saved session claimed by a new connection, and where each of its rooms resumes."""

    pid: str
    saved: SavedSession
    positions: dict[RoomName, StreamPosition]


class Recovery:
    """The recovery state of one Socket.IO server.

    Args:
        window: seconds a lost session stays restorable.
        capacity: publications the trail remembers.
        clock: monotonic seconds (a parameter so the bounds can be tested exactly).
    """

    def __init__(
        self,
        window: float,
        *,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window > 0 or capacity < 1:
            raise ValueError("recovery needs window > 0 and capacity >= 1")
        self.window = window
        self.clock = clock
        self.epoch = secrets.token_urlsafe(6)
        self.head = 0
        self.head_offset = self._offset(0)
        self.last: Publication | None = None
        self._trail: deque[Trail] = deque(maxlen=capacity)
        self._sessions: dict[str, SavedSession] = {}

    # -- the trail ----------------------------------------------------------------------
    def stamp(self, publication: Publication) -> tuple[int, str]:
        """The number and offset string of ``publication``, numbered on its first write.

        Every encoder of one fan-out asks in turn for the same publication, so it is
        recorded once.
        """
        if publication is not self.last:
            self.last = publication
            self.head = seq = self.head + 1
            self.head_offset = self._offset(seq)
            self._trail.append(Trail(seq, publication.room, publication.position))
        return self.head, self.head_offset

    def __len__(self) -> int:
        return len(self._trail)

    def parse_offset(self, offset: object) -> int | None:
        """The publication number ``offset`` names, or None if it is not one of ours."""
        if not isinstance(offset, str):
            return None
        epoch, dot, digits = offset.rpartition(".")
        if not dot or epoch != self.epoch or _OFFSET_DIGITS.fullmatch(digits) is None:
            return None
        seq = int(digits, 16)
        return seq if seq <= self.head else None

    def _offset(self, seq: int) -> str:
        return f"{self.epoch}.{seq:x}"

    # -- sessions -----------------------------------------------------------------------
    @property
    def saved_sessions(self) -> int:
        """How many lost sessions are held (expired ones are dropped lazily)."""
        return len(self._sessions)

    def save(
        self,
        pid: str,
        *,
        sid: str,
        namespace: str,
        positions: Mapping[RoomName, StreamPosition],
        data: dict[str, Any],
        since: int,
        written: int,
    ) -> None:
        """Keep a lost socket's session under ``pid`` for ``window`` seconds.

        ``written`` is the number of the last publication written to the socket: what
        follows it in the trail never reached the socket, so it is not in flight.
        """
        now = self.clock()
        self._purge(now)
        trail: list[Trail] = []
        covered = self.head - len(self._trail)  # older entries were dropped from the trail
        examined = 0
        for entry in reversed(self._trail):
            if entry.seq > written:
                continue
            if examined == TRAIL_SPAN:
                covered = entry.seq
                break
            examined += 1
            if entry.room in positions:
                trail.append(entry)
        trail.reverse()
        self._sessions.pop(pid, None)  # re-inserted last: the dict stays in expiry order
        self._sessions[pid] = SavedSession(
            sid, namespace, dict(positions), data, since, tuple(trail), covered, now + self.window
        )

    def take(self, namespace: str, auth: Mapping[str, Any]) -> Resume | None:
        """Claim the session a CONNECT's auth names, if its client's place can be found.

        A session is claimed at most once: whatever the outcome it leaves the store (a new
        connection that ends before it is accepted hands it back with ``put_back``). A
        missing ``offset`` means the client saw no event of that session; any other value
        that is not one of our offsets, or a ``pid`` that is not a string, is refused.
        """
        pid = auth.get("pid")
        if not isinstance(pid, str):
            return None
        now = self.clock()
        self._purge(now)
        saved = self._sessions.get(pid)
        if saved is None or saved.namespace != namespace:
            return None
        del self._sessions[pid]
        if now >= saved.expires:
            return None
        seq = self.parse_offset(auth["offset"]) if "offset" in auth else 0
        if seq is None:
            return None
        got = max(seq, saved.since)
        if got < saved.covered:
            return None  # more was lost in flight than the session kept track of
        positions = dict(saved.positions)
        behind: set[RoomName] = set()
        for entry in saved.trail:
            if entry.seq > got and entry.room not in behind:
                behind.add(entry.room)  # the first of this room's publications it lacks
                positions[entry.room] = StreamPosition(entry.position.epoch, entry.position.offset - 1)
        return Resume(pid, saved, positions)

    def put_back(self, resume: Resume) -> None:
        """Make a claimed session claimable again (its new connection never got accepted)."""
        self._sessions[resume.pid] = resume.saved

    def _purge(self, now: float) -> None:
        sessions = self._sessions
        while sessions:
            pid, saved = next(iter(sessions.items()))
            if now < saved.expires:
                return
            del sessions[pid]


def strip_reserved(auth: dict[str, Any]) -> dict[str, Any]:
    """``auth`` without the recovery keys the client added, for the application."""
    if not any(key in auth for key in RESERVED_AUTH_KEYS):
        return auth
    return {key: value for key, value in auth.items() if key not in RESERVED_AUTH_KEYS}
