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
from another process (or an earlier run) is never mistaken for a position of this one. The
trail is bounded by count (``capacity``), sessions by age (``window``): a comeback whose
in-flight loss reaches past what was kept is refused rather than incomplete.

**Across nodes** (``SharedSessions``, Redis with ``roomcast serve --redis``). A saved session
carries everything its comeback needs, so the node that restores it needs nothing from the
memory of the node that saved it: the saver's trail epoch and head, and its trail entries
for the session's rooms up to its last write, numbered as the offsets the client may present.
An offset is therefore read against the *session's* epoch, not the restoring node's. After
a comeback on another node, the client still holds the offset it presented until an event
from the new node replaces it; the session remembers that offset (``presented``), so being
lost again before then places it at the start of the new stint, exactly. The trail itself
stays per node and per publication: nothing on the fan-out path changes.

A node that crashes saves nothing: its clients get new sessions and recover room by room
through the built-in ``subscribe {room, epoch, offset}``. A session whose ``data`` Redis
cannot hold (not JSON, or the whole session over ``MAX_SESSION_BYTES``) is not saved either,
with a warning: its client gets a new session, never a half-restored one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

from roomcast import _json
from roomcast.errors import BrokerUnavailable
from roomcast.types import Publication, RoomName, StreamPosition

__all__ = [
    "Recovery",
    "Trail",
    "SavedSession",
    "Resume",
    "SessionStore",
    "MemorySessions",
    "SharedSessions",
    "TakeOnceStore",
    "encode_session",
    "decode_session",
    "DEFAULT_CAPACITY",
    "MAX_SESSION_BYTES",
    "RESERVED_AUTH_KEYS",
    "strip_reserved",
]

logger = logging.getLogger("roomcast.socketio")

DEFAULT_CAPACITY: Final = 10_000
"""Publications the trail remembers (about 1 MB)."""

TRAIL_SPAN: Final = 1024
"""Trail entries a saved session examines back from its last write: the in-flight loss a
comeback can make up for (a socket's buffers hold far fewer events)."""

MAX_SESSION_BYTES: Final = 256 * 1024
"""The largest encoded session a shared store keeps. Its trail is at most ``TRAIL_SPAN``
entries of a few bytes and its rooms at most ``max_rooms_per_connection`` names, so what
reaches this bound is the application's ``data``: such a session is not saved."""

RESERVED_AUTH_KEYS: Final = ("pid", "offset")
"""CONNECT auth keys the official client adds on reconnection; not the application's."""

MAX_PID_LENGTH: Final = 64
"""Longer ``pid`` values are nobody's (ours are 20 characters): not looked up anywhere."""

MAX_OFFSET_LENGTH: Final = 64
"""Longer ``offset`` values are nobody's (ours are under 30 characters): never kept."""

_OFFSET_DIGITS: Final = re.compile(r"[0-9a-f]{1,15}")
_FORMAT: Final = 1  # the version of ``encode_session``'s layout


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
        data: its ``Connection.data``, handed over as is (through JSON by a shared store).
        epoch: the trail epoch of the node that wrote to it: the offsets its client holds
            from this stint name it.
        head: that trail's head when it was saved: no offset of this stint names a later
            number.
        since: the trail's head when this stint began: a floor for offsets, since the
            official client keeps its last offset across sessions.
        presented: the offset its client presented when this stint began (None if none or
            not a short string), which the client still holds if no event reached it since.
        trail: the trail entries of its rooms up to its last write, oldest first.
        covered: offsets at or after this number can be made up for from ``trail``.
        expires: the clock reading after which it is gone.
    """

    sid: str
    namespace: str
    positions: dict[RoomName, StreamPosition]
    data: dict[str, Any]
    epoch: str
    head: int
    since: int
    presented: str | None
    trail: tuple[Trail, ...]
    covered: int
    expires: float


@dataclass(frozen=True, slots=True)
class Resume:
    """A saved session claimed by a new connection, and where each of its rooms resumes.

    ``since`` is the floor of the new stint's offsets: the saved one on the node that saved
    it, this node's trail head on another (the client's offsets are this node's from now on).
    """

    pid: str
    saved: SavedSession
    positions: dict[RoomName, StreamPosition]
    since: int


class SessionStore(Protocol):
    """Where lost sessions wait for their clients.

    ``shared`` stores (Redis) are read by every node and answer ``claim`` asynchronously;
    the local one answers at once, so a comeback on a single server is decided in the same
    step as its CONNECT, as it always was.
    """

    @property
    def shared(self) -> bool:
        """Whether other nodes restore from this store (then ``claim`` must be awaited)."""

    def __len__(self) -> int:
        """Sessions held by this process (a shared store: its writes still in flight)."""

    def save(self, pid: str, saved: SavedSession) -> None:
        """Keep ``saved`` under ``pid`` until ``saved.expires`` (replacing what was there)."""

    async def claim(self, pid: str, namespace: str) -> SavedSession | None:
        """Remove and return the unexpired session under ``pid`` if it belongs to ``namespace``
        (one of another namespace stays where it is)."""

    def put_back(self, pid: str, saved: SavedSession) -> None:
        """Make a claimed session claimable again, until its original deadline."""

    async def aclose(self) -> None:
        """Finish pending writes and release the store."""


class MemorySessions:
    """The sessions of one server, in its memory, dropped lazily once expired."""

    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._sessions: dict[str, SavedSession] = {}  # in expiry order

    def __len__(self) -> int:
        return len(self._sessions)

    def save(self, pid: str, saved: SavedSession) -> None:
        self._purge(self.clock())
        self._sessions.pop(pid, None)  # re-inserted last: the dict stays in expiry order
        self._sessions[pid] = saved

    def take(self, pid: str, namespace: str) -> SavedSession | None:
        """``claim``, at once."""
        now = self.clock()
        self._purge(now)
        saved = self._sessions.get(pid)
        if saved is None or saved.namespace != namespace:
            return None
        del self._sessions[pid]
        return saved if now < saved.expires else None

    async def claim(self, pid: str, namespace: str) -> SavedSession | None:
        return self.take(pid, namespace)

    def put_back(self, pid: str, saved: SavedSession) -> None:
        self._sessions[pid] = saved

    async def aclose(self) -> None:
        self._sessions.clear()

    def _purge(self, now: float) -> None:
        sessions = self._sessions
        while sessions:
            pid, saved = next(iter(sessions.items()))
            if now < saved.expires:
                return
            del sessions[pid]


class TakeOnceStore(Protocol):
    """Bytes under a name with a lifetime, each taken at most once, shared by every node
    (``broker.sessions.RedisSessionStore``). Failures raise ``BrokerUnavailable``."""

    async def put(self, name: str, value: bytes, ttl: float) -> None: ...

    async def take(self, name: str) -> tuple[bytes, float] | None: ...

    async def aclose(self) -> None: ...


class SharedSessions:
    """Sessions kept in a store every node reads, so a client may come back to any node.

    Saving is called as a socket closes, so it cannot wait: each save is encoded at once and
    written in the background (writes of one ``pid`` in order). A comeback to this node that
    overtakes its own session's write waits for it; one that reaches another node first
    finds nothing and starts a new session, which its client is told (``recovered`` false).

    Args:
        store: the shared bytes.
        clock: monotonic seconds, for the deadlines of sessions handed back.
        max_bytes: the largest encoded session saved.
    """

    shared = True

    def __init__(
        self, store: TakeOnceStore, *, clock: Callable[[], float] = time.monotonic, max_bytes: int = MAX_SESSION_BYTES
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_bytes = max_bytes
        self._writes: dict[str, asyncio.Task[None]] = {}  # the last write of each pid, while pending
        self.refused = 0
        """Sessions not saved because their data cannot be stored (see ``save``)."""

    def __len__(self) -> int:
        return len(self._writes)

    def save(self, pid: str, saved: SavedSession) -> None:
        """Write ``saved`` for the rest of its window, unless its data cannot be stored.

        ``data`` goes through JSON: a value JSON cannot carry (bytes, a set, an object,
        keys that are not strings, nesting past ``_json.MAX_DEPTH``) or a session over
        ``max_bytes`` is refused with a warning rather than saved in part. Tuples come back
        as lists.
        """
        try:
            blob = encode_session(saved)
        except (TypeError, ValueError) as exc:
            self.refused += 1
            logger.warning("socket %s: session not saved for recovery, its data is not JSON (%s)", saved.sid, exc)
            return
        if len(blob) > self.max_bytes:
            self.refused += 1
            logger.warning(
                "socket %s: session not saved for recovery, %d bytes is over %d", saved.sid, len(blob), self.max_bytes
            )
            return
        self._write(pid, blob, saved.expires - self.clock())

    async def claim(self, pid: str, namespace: str) -> SavedSession | None:
        pending = self._writes.get(pid)
        if pending is not None:
            await asyncio.wait((pending,))  # a comeback that overtook its own save, here
        try:
            found = await self.store.take(pid)
        except BrokerUnavailable as exc:
            logger.warning("session %s… not restored: %s", pid[:4], exc)
            return None
        if found is None:
            return None
        blob, remaining = found
        saved = decode_session(blob, expires=self.clock() + remaining)
        if saved is None:
            logger.warning("session %s… not restored: saved in a form this version cannot read", pid[:4])
            return None
        if saved.namespace != namespace:
            self.put_back(pid, saved)
            return None
        return saved

    def put_back(self, pid: str, saved: SavedSession) -> None:
        remaining = saved.expires - self.clock()
        if remaining > 0:
            self._write(pid, encode_session(saved), remaining)  # it came from the store: it encodes

    async def flush(self) -> None:
        """Wait until every write started so far has reached the store (or failed)."""
        while self._writes:
            await asyncio.wait(list(self._writes.values()))

    async def aclose(self) -> None:
        await self.flush()
        await self.store.aclose()

    def _write(self, pid: str, blob: bytes, ttl: float) -> None:
        task = asyncio.get_running_loop().create_task(self._put(pid, blob, ttl, self._writes.get(pid)))
        self._writes[pid] = task
        task.add_done_callback(lambda done: self._writes.pop(pid) if self._writes.get(pid) is done else None)

    async def _put(self, pid: str, blob: bytes, ttl: float, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait((previous,))
        try:
            await self.store.put(pid, blob, ttl)
        except BrokerUnavailable as exc:
            logger.warning("session %s… not saved for recovery: %s", pid[:4], exc)


def encode_session(saved: SavedSession) -> bytes:
    """``saved`` as JSON bytes (all of it but ``expires``, which the store's lifetime is).

    The trail names rooms by their index in ``rooms`` and gives an epoch only where it is not
    the room's current one, so an entry is a few bytes: ``[seq, room index, offset(, epoch)]``.

    Raises:
        TypeError, ValueError: ``data`` is not JSON within ``_json.MAX_DEPTH``.
    """
    index: dict[RoomName, int] = {}
    rooms: list[list[Any]] = []
    for room, position in saved.positions.items():
        index[room] = len(rooms)
        rooms.append([room, position.epoch, position.offset])
    trail: list[list[Any]] = []
    for seq, room, position in saved.trail:
        i = index[room]
        entry: list[Any] = [seq, i, position.offset]
        if position.epoch != rooms[i][1]:
            entry.append(position.epoch)
        trail.append(entry)
    return _json.dumps_checked(
        {
            "v": _FORMAT,
            "sid": saved.sid,
            "ns": saved.namespace,
            "epoch": saved.epoch,
            "head": saved.head,
            "since": saved.since,
            "presented": saved.presented,
            "covered": saved.covered,
            "rooms": rooms,
            "trail": trail,
            "data": saved.data,
        }
    )


def decode_session(blob: bytes, *, expires: float) -> SavedSession | None:
    """What ``encode_session`` wrote, expiring at ``expires``; None if it is not that."""
    try:
        raw = _json.loads(blob)
        if raw["v"] != _FORMAT:
            return None
        positions: dict[RoomName, StreamPosition] = {}
        epochs: list[str] = []
        names: list[RoomName] = []
        for room, epoch, offset in raw["rooms"]:
            positions[str(room)] = StreamPosition(str(epoch), int(offset))
            names.append(str(room))
            epochs.append(str(epoch))
        trail = tuple(
            Trail(int(e[0]), names[e[1]], StreamPosition(str(e[3]) if len(e) > 3 else epochs[e[1]], int(e[2])))
            for e in raw["trail"]
        )
        data, presented = raw["data"], raw["presented"]
        if not isinstance(data, dict) or not (presented is None or isinstance(presented, str)):
            return None
        return SavedSession(
            str(raw["sid"]),
            str(raw["ns"]),
            positions,
            data,
            str(raw["epoch"]),
            int(raw["head"]),
            int(raw["since"]),
            presented,
            trail,
            int(raw["covered"]),
            expires,
        )
    except (KeyError, IndexError, TypeError, ValueError):
        return None


class Recovery:
    """The recovery state of one Socket.IO server.

    Args:
        window: seconds a lost session stays restorable.
        capacity: publications the trail remembers.
        clock: monotonic seconds (a parameter so the bounds can be tested exactly).
        shared: where every node keeps lost sessions (Redis); this process's memory when None.
    """

    def __init__(
        self,
        window: float,
        *,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
        shared: TakeOnceStore | None = None,
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
        self.store: SessionStore = MemorySessions(clock) if shared is None else SharedSessions(shared, clock=clock)

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
        return _seq(offset, self.epoch, self.head)

    def _offset(self, seq: int) -> str:
        return f"{self.epoch}.{seq:x}"

    # -- sessions -----------------------------------------------------------------------
    @property
    def shared(self) -> bool:
        """Whether sessions are kept where every node restores them (claimed with ``claim``)."""
        return self.store.shared

    @property
    def saved_sessions(self) -> int:
        """How many lost sessions this process holds (expired ones are dropped lazily; a
        shared store counts only its writes still in flight)."""
        return len(self.store)

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
        presented: str | None = None,
    ) -> None:
        """Keep a lost socket's session under ``pid`` for ``window`` seconds.

        ``written`` is the number of the last publication written to the socket: what
        follows it in the trail never reached the socket, so it is not in flight.
        """
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
        saved = SavedSession(
            sid,
            namespace,
            dict(positions),
            data,
            self.epoch,
            self.head,
            since,
            presented,
            tuple(trail),
            covered,
            self.clock() + self.window,
        )
        self.store.save(pid, saved)

    def take(self, namespace: str, auth: Mapping[str, Any]) -> Resume | None:
        """Claim the session a CONNECT's auth names, at once: a store of this process only
        (a shared one is claimed with ``claim``).

        A session is claimed at most once: whatever the outcome it leaves the store (a new
        connection that ends before it is accepted hands it back with ``put_back``). A
        missing ``offset`` means the client saw no event of that session; any other value
        that is not one of its offsets, or a ``pid`` that is not a string, is refused.
        """
        pid = comeback_pid(auth)
        store = self.store
        if pid is None:
            return None
        if not isinstance(store, MemorySessions):
            raise TypeError("a shared session store is claimed with `await Recovery.claim(...)`")
        saved = store.take(pid, namespace)
        return None if saved is None else self._resume(pid, saved, auth)

    async def claim(self, namespace: str, auth: Mapping[str, Any]) -> Resume | None:
        """``take`` from any store, local or shared."""
        pid = comeback_pid(auth)
        if pid is None:
            return None
        saved = await self.store.claim(pid, namespace)
        return None if saved is None else self._resume(pid, saved, auth)

    def _resume(self, pid: str, saved: SavedSession, auth: Mapping[str, Any]) -> Resume | None:
        """Where each room of ``saved`` resumes, given the offset its client presents."""
        if self.clock() >= saved.expires:
            return None
        if "offset" in auth:
            offset = auth["offset"]
            seq = _seq(offset, saved.epoch, saved.head)
            if seq is None:
                if saved.presented is None or offset != saved.presented:
                    return None
                seq = 0  # still the offset it came back with: no event of this stint reached it
        else:
            seq = 0
        got = max(seq, saved.since)
        if got < saved.covered:
            return None  # more was lost in flight than the session kept track of
        positions = dict(saved.positions)
        behind: set[RoomName] = set()
        for entry in saved.trail:
            if entry.seq > got and entry.room not in behind:
                behind.add(entry.room)  # the first of this room's publications it lacks
                positions[entry.room] = StreamPosition(entry.position.epoch, entry.position.offset - 1)
        since = saved.since if saved.epoch == self.epoch else self.head
        return Resume(pid, saved, positions, since)

    def put_back(self, resume: Resume) -> None:
        """Make a claimed session claimable again (its new connection never got accepted)."""
        self.store.put_back(resume.pid, resume.saved)

    async def aclose(self) -> None:
        """Finish the writes of a shared store and release it."""
        await self.store.aclose()


def comeback_pid(auth: Mapping[str, Any]) -> str | None:
    """The ``pid`` a CONNECT's auth asks to come back to, if it can be one of ours."""
    pid = auth.get("pid")
    return pid if isinstance(pid, str) and len(pid) <= MAX_PID_LENGTH else None


def presented_offset(auth: Mapping[str, Any]) -> str | None:
    """The ``offset`` a CONNECT's auth presents, if it is worth remembering (``presented``)."""
    offset = auth.get("offset")
    return offset if isinstance(offset, str) and len(offset) <= MAX_OFFSET_LENGTH else None


def _seq(offset: object, epoch: str, head: int) -> int | None:
    """The number ``offset`` names in the trail of ``epoch`` whose head is ``head``, or None."""
    if not isinstance(offset, str):
        return None
    prefix, dot, digits = offset.rpartition(".")
    if not dot or prefix != epoch or _OFFSET_DIGITS.fullmatch(digits) is None:
        return None
    seq = int(digits, 16)
    return seq if seq <= head else None


def strip_reserved(auth: dict[str, Any]) -> dict[str, Any]:
    """``auth`` without the recovery keys the client added, for the application."""
    if not any(key in auth for key in RESERVED_AUTH_KEYS):
        return auth
    return {key: value for key, value in auth.items() if key not in RESERVED_AUTH_KEYS}
