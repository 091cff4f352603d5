"""Socket.IO connection state recovery: the record of recent publications and saved sessions.

Imports only L0. This is the bookkeeping behind ``SocketIOServer(recovery_window=...)``, the
protocol the official Node server implements as ``connectionStateRecovery`` (socket.io 4.6+):

* every event the server sends carries, as its last argument, an *offset* string naming a
  position in this record; the official client keeps the last one it saw;
* the CONNECT reply carries a private session id ``pid`` beside ``sid``;
* when a socket is lost for a transient reason its session (``sid``, rooms, ``data``) is saved
  under its ``pid``; a client that comes back within the window sends ``{pid, offset}`` in its
  CONNECT auth, gets the same ``sid`` and rooms back, and is sent every publication of its
  rooms that came after its offset.

One record per server, not per namespace: hub rooms are shared by every namespace, and the
hub reports each publication once (``Hub.add_publication_listener``), so an entry is made once
per publication and never per recipient. Entries are numbered 1, 2, 3 ...; an offset is
``"<epoch>.<number in hex>"``, the epoch being random per server so an offset from another
process (or an earlier run) is never mistaken for a position here.

The record is bounded by count (``capacity``) and by age (``window``): after that, recovery
is refused rather than incomplete. What a returning socket needs is smaller than "everything
after its offset": besides the offset, a saved session remembers the number of the last
publication *written* to the socket and the record's head when it was lost. Publications of
its rooms up to the last written one may have been lost in flight and need the record from
the offset on; after that, only what came after the loss is needed. So a client of a quiet
room whose last event is older than the record still recovers on a busy server, as long as
nothing it may have missed was evicted.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final, NamedTuple

from roomcast.types import Publication, RoomName

__all__ = [
    "Recovery", "Entry", "SavedSession", "Resume", "DEFAULT_CAPACITY", "RESERVED_AUTH_KEYS", "strip_reserved"
]

DEFAULT_CAPACITY: Final = 10_000
"""Publications kept for recovery when nothing else bounds them first (about 2-3 MB)."""

RESERVED_AUTH_KEYS: Final = ("pid", "offset")
"""CONNECT auth keys the official client adds on reconnection; not the application's."""

_OFFSET_DIGITS: Final = re.compile(r"[0-9a-f]{1,15}")


class Entry(NamedTuple):
    """One recorded publication: its number, when it was recorded, and its offset string."""

    seq: int
    at: float
    publication: Publication
    offset: str


@dataclass(slots=True)
class SavedSession:
    """A socket lost for a transient reason, kept for its client to come back to.

    Attributes:
        sid: the socket id the client gets back.
        namespace: the namespace it was connected to (a session is restored only there).
        rooms: its rooms when it was lost.
        data: its ``Connection.data``, handed over as is.
        since: the record's head when the session first connected: a floor for offsets,
            since the official client keeps its last offset across sessions.
        written: the number of the last publication written to the socket.
        left: the record's head when the socket was lost.
        expires: the clock reading after which it is gone.
    """

    sid: str
    namespace: str
    rooms: frozenset[RoomName]
    data: dict[str, Any]
    since: int
    written: int
    left: int
    expires: float


@dataclass(frozen=True, slots=True)
class Resume:
    """A saved session claimed by a new connection, and where its replay starts."""

    pid: str
    saved: SavedSession
    floor: int


class Recovery:
    """The recovery state of one Socket.IO server.

    Args:
        window: seconds a lost session stays restorable, and a publication recorded.
        capacity: most publications recorded.
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
        self.capacity = capacity
        self.clock = clock
        self.epoch = secrets.token_urlsafe(6)
        self.head = 0
        self.head_offset = self._offset(0)
        self.last: Publication | None = None
        self._entries: deque[Entry] = deque()
        self._sessions: dict[str, SavedSession] = {}

    # -- the record ---------------------------------------------------------------------
    def record(self, publication: Publication) -> None:
        """Record ``publication`` (the hub's publication listener: once, before fan-out)."""
        now = self.clock()
        self.head = seq = self.head + 1
        self.head_offset = offset = self._offset(seq)
        self.last = publication
        entries = self._entries
        entries.append(Entry(seq, now, publication, offset))
        if len(entries) > self.capacity:
            entries.popleft()
        self._trim(now)

    @property
    def first(self) -> int:
        """The number of the oldest publication still recorded (``head + 1`` when none)."""
        entries = self._entries
        return entries[0].seq if entries else self.head + 1

    def __len__(self) -> int:
        return len(self._entries)

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

    def _trim(self, now: float) -> None:
        entries = self._entries
        horizon = now - self.window
        while entries and entries[0].at < horizon:
            entries.popleft()

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
        rooms: Iterable[RoomName],
        data: dict[str, Any],
        since: int,
        written: int,
    ) -> None:
        """Keep a lost socket's session under ``pid`` for ``window`` seconds."""
        now = self.clock()
        self._purge(now)
        self._sessions.pop(pid, None)  # re-inserted last: the dict stays in expiry order
        self._sessions[pid] = SavedSession(
            sid, namespace, frozenset(rooms), data, since, written, self.head, now + self.window
        )

    def take(self, namespace: str, auth: Mapping[str, Any]) -> Resume | None:
        """Claim the session a CONNECT's auth names, if it can be restored completely.

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
        self._trim(now)
        resume = Resume(pid, saved, max(seq, saved.since))
        return resume if self._complete(resume) else None

    def put_back(self, resume: Resume) -> None:
        """Make a claimed session claimable again (its new connection never got accepted)."""
        self._sessions[resume.pid] = resume.saved

    def missed(self, resume: Resume) -> list[Entry] | None:
        """The publications ``resume``'s client missed, oldest first; None if some are gone.

        Called when the new connection is accepted, so publications made while an ``async``
        connect handler ran are included.
        """
        self._trim(self.clock())
        if not self._complete(resume):
            return None
        rooms = resume.saved.rooms
        skip = max(0, resume.floor - self.first + 1)
        return [e for e in islice(self._entries, skip, None) if e.publication.room in rooms]

    def _complete(self, resume: Resume) -> bool:
        """Whether the record still holds every publication ``resume``'s client may lack."""
        saved, floor = resume.saved, resume.floor
        start = floor if floor < saved.written else max(floor, saved.left)
        return start >= self.first - 1

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
