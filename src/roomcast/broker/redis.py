"""``RedisBroker``: many processes and machines share rooms through one Redis (DESIGN §6).

Imports L0, ``broker.base`` and redis-py (asyncio, with hiredis). It keeps the contract of
``broker.base`` with Redis doing the work no node could do alone:

* **Publish** is one Lua script, so it is atomic per room: it creates the room's epoch when
  the room's metadata is missing (a new room, an expired one, a flushed Redis: never reused
  offsets), advances the offset, appends to the room's stream (``XADD``, trimmed to
  ``history_size``), refreshes the keys' lifetime and publishes to the room's channel. The
  publication travels as the bytes the hub serialised once (``Publication.encoded``).
* **History and position** are one script too: the epoch (made if missing, so it is stable
  from the first read), the offset and the stream entries after a position, together.
* **Subscriptions** follow the hub: a node subscribes to the channels of the rooms it has
  members in, and ``subscribe`` returns only once Redis confirmed it ("subscribe before
  read"). A room's terminal mark travels on its channel after its last publication. The
  rooms a node follows have their lifetime renewed every third of it, so they are not freed.
* **A broken live stream** (the pub/sub connection lost) is reconnected with backoff, every
  channel subscribed again, and then reported (``on_stream_lost(None)``), so the hub reads
  history from where each room stopped.

Keys of one room share the hash tag ``{room}``: ``rc:{room}:m`` (epoch and offset),
``rc:{room}:s`` (history), ``rc:{room}:t`` (terminal), ``rc:{room}:p`` (presence), and the
channel ``rc:{room}``. A room's keys expire ``history_ttl`` seconds after its last
publication: history, epoch and terminal mark go together, and the room comes back under a
new epoch.

* **A deaf subscription** (no error, no delivery) is found by a heartbeat through Redis to the
  node itself, and treated as a lost stream; ``unhealthy`` says why meanwhile.

What it does not do yet (issue 13): sharded pub/sub, presence that expires with a dead node,
idempotent publish retries, and binary attachments across nodes (they arrive in
``json_safe``'s form).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from roomcast import _json
from roomcast.broker import redis_client
from roomcast.broker.base import BrokerEvents, HistoryResult
from roomcast.errors import BrokerUnavailable
from roomcast.types import ConnectionId, JSONValue, Presence, Publication, RoomName, StreamPosition

__all__ = ["RedisBroker", "PUBLISH_SCRIPT", "publish_call"]

logger = logging.getLogger("roomcast.broker.redis")

_TERMINAL = b"T"

_PUBLISH = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-1', 'p', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[3], epoch .. ':' .. offset .. ':' .. ARGV[4])
return {epoch, offset}
"""

_READ = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[1] .. '-1', '+')
end
return {epoch, offset, entries}
"""

_TERMINATE = """
if redis.call('SET', KEYS[1], '1', 'EX', ARGV[1], 'NX') then
  redis.call('PUBLISH', KEYS[2], 'T')
end
return 1
"""


def _keys(room: RoomName) -> tuple[str, str, str, str, str]:
    tag = f"rc:{{{room}}}"
    return f"{tag}:m", f"{tag}:s", f"{tag}:t", f"{tag}:p", tag


class RedisBroker:
    """A broker over Redis.

    Args:
        url: ``redis://`` or ``rediss://`` (TLS), with a user and password if ACLs ask.
        history_size: publications kept per room for recovery.
        history_ttl: seconds a room's history, epoch and terminal mark live after its last
            publication.
        reconnect_max: the longest wait, in seconds, between attempts to reconnect the
            subscription connection.
    """

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        reconnect_max: float = 5.0,
        heartbeat_interval: float = 2.0,
        heartbeat_timeout: float = 6.0,
    ) -> None:
        if history_size < 0 or history_ttl <= 0:
            raise ValueError("history_size must be >= 0 and history_ttl > 0")
        self._url = url
        self._history_size = history_size
        self._ttl = max(1, round(history_ttl))
        self._reconnect_max = reconnect_max
        self._redis: aioredis.Redis = redis_client.connect(url)
        self._publish = self._redis.register_script(_PUBLISH)
        self._read = self._redis.register_script(_READ)
        self._terminate = self._redis.register_script(_TERMINATE)
        self._events: BrokerEvents | None = None
        self._pubsub: Any = None
        self._channels: dict[str, RoomName] = {}  # channel name -> room, for what we follow
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None
        self._heartbeat = (heartbeat_interval, heartbeat_timeout)
        self._heard = 0.0  # loop time the node last heard itself through its subscription
        self.unhealthy: str | None = None
        """Why the live stream cannot be trusted now (``/readyz`` says it), or ``None``."""
        self.deaf_events = 0
        self._node_channel = f"rc:node:{secrets.token_urlsafe(8)}"

    def __repr__(self) -> str:
        return "<RedisBroker>"  # never the URL: it may hold a password

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, events: BrokerEvents) -> None:
        self._events = events
        if self._reader is None:
            await self._connect_pubsub()
            loop = asyncio.get_running_loop()
            self._reader = loop.create_task(self._read_forever())
            self._keeper = loop.create_task(self._keep_followed())
            self._heard = loop.time()
            self._heart = loop.create_task(self._beat())

    async def aclose(self) -> None:
        self._events = None
        for task in (self._reader, self._keeper, self._heart):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reader = self._keeper = self._heart = None
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = None
        await self._redis.aclose()

    async def _connect_pubsub(self) -> None:
        """A pub/sub connection following this node's own channel (so it always has one) and
        every room channel it followed before."""
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._node_channel, *self._channels)
        self._pubsub = pubsub

    async def _read_forever(self, *, reconnect_first: bool = False) -> None:
        """Deliver what the subscription receives; when it breaks (or is found deaf), reconnect
        with backoff and jitter, subscribe every followed room again, and report the loss."""
        delay = 0.05
        while True:
            if not reconnect_first:
                try:
                    async for message in self._pubsub.listen():
                        delay = 0.05
                        self._handle(message)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any failure: the reader must outlive it, or the node goes deaf
                    logger.warning("redis subscription lost (%s); reconnecting", type(exc).__name__)
            reconnect_first = False
            while True:
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()  # nobody reads it now: safe to close
                try:
                    await self._connect_pubsub()
                    break
                except Exception:
                    await asyncio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
                    delay = min(delay * 2, self._reconnect_max)
            events = self._events
            if events is not None:
                events.on_stream_lost(None)

    async def _beat(self) -> None:
        """Publish to this node's own channel and expect to hear it back.

        A subscription can go deaf without an error (a proxy or a half-open connection that
        still accepts writes, a Redis that stopped delivering): python-socketio's users had
        workers that received nothing for a day. Past ``heartbeat_timeout`` without hearing
        itself, the node says so (``unhealthy``, and ``/readyz`` answers 503), drops the
        subscription connection and reconnects it, which reports the lost stream so every
        room re-reads what it missed.
        """
        interval, timeout = self._heartbeat
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            silent = loop.time() - self._heard
            if silent > timeout and self.unhealthy is None:
                self.deaf_events += 1
                self.unhealthy = f"the redis subscription heard nothing for {silent:.0f}s"
                logger.warning("%s; reconnecting it", self.unhealthy)
                reader = self._reader
                if reader is not None:  # stop the reader, then let a new one reconnect and report
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                    self._reader = loop.create_task(self._read_forever(reconnect_first=True))
            with contextlib.suppress(RedisError, OSError):
                await asyncio.wait_for(self._redis.publish(self._node_channel, b"H"), timeout)

    async def _keep_followed(self) -> None:
        """Keep the rooms this node follows alive: a quiet room with members here is not
        freed (as ``MemoryBroker`` never frees a followed stream), so its subscribers are
        not reset by a new epoch just because nobody published for a while."""
        while True:
            await asyncio.sleep(self._ttl / 3)
            rooms = list(self._channels.values())
            if not rooms:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for room in rooms:
                        meta, stream, _, _, _ = _keys(room)
                        pipe.expire(meta, self._ttl)
                        pipe.expire(stream, self._ttl)
                    await pipe.execute()
            except (RedisError, OSError):
                logger.warning("could not keep %d followed rooms alive", len(rooms))

    def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        name = channel.decode() if isinstance(channel, bytes) else channel
        if kind == "subscribe":
            confirmed = self._confirmed.pop(name, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind != "message":
            return
        if name == self._node_channel:  # our own heartbeat: the subscription hears
            self._heard = asyncio.get_running_loop().time()
            if self.unhealthy is not None:
                logger.info("the redis subscription hears again")
                self.unhealthy = None
            return
        room = self._channels.get(name)
        events = self._events
        if room is None or events is None:
            return
        data: bytes = message["data"]
        if data == _TERMINAL:
            events.on_terminal(room)
            return
        epoch, offset, payload = data.split(b":", 2)
        events.on_publication(_publication(room, epoch.decode(), int(offset), payload))

    # -- publications -------------------------------------------------------------------
    async def publish(
        self,
        room: RoomName,
        event: str,
        data: tuple[JSONValue, ...],
        *,
        ts: float,
        encoded: tuple[bytes, ...] | None = None,
        binary: bool = False,
    ) -> Publication:
        if encoded is None:
            encoded = tuple(_json.dumps_checked(_json.json_safe(arg)) for arg in data)
        keys, args = publish_call(room, event, ts, encoded, binary, self._history_size, self._ttl)
        try:
            epoch, offset = await self._publish(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis is unreachable: {type(exc).__name__}") from None
        epoch_text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        return Publication(room, event, data, StreamPosition(epoch_text, int(offset)), ts, encoded, binary)

    async def subscribe(self, room: RoomName) -> None:
        channel = _keys(room)[4]
        self._channels[channel] = room
        confirmed = self._confirmed[channel] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(10):
                # Asked again each second until confirmed (SUBSCRIBE is idempotent): a request
                # that went to a connection being replaced is then made on the new one.
                while not confirmed.done():
                    with contextlib.suppress(Exception):  # best effort: the confirmation is what counts
                        await self._pubsub.subscribe(channel)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1):
                            await asyncio.shield(confirmed)
        except TimeoutError:
            self._confirmed.pop(channel, None)
            raise BrokerUnavailable("redis did not confirm the subscription") from None

    async def unsubscribe(self, room: RoomName) -> None:
        channel = _keys(room)[4]
        self._channels.pop(channel, None)
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.unsubscribe(channel)

    async def position(self, room: RoomName) -> StreamPosition:
        epoch, offset, _ = await self._read_room(room, None)
        return StreamPosition(epoch, offset)

    async def history(self, room: RoomName, *, since: StreamPosition) -> HistoryResult:
        epoch, offset, entries = await self._read_room(room, since.offset if since.offset >= 0 else None)
        current = StreamPosition(epoch, offset)
        if since.epoch != epoch or since.offset > offset or since.offset < 0:
            return HistoryResult((), current, complete=False)
        if since.offset == offset:
            return HistoryResult((), current, complete=True)
        pubs = tuple(
            _publication(room, epoch, int(entry_id.split(b"-", 1)[0]), fields[b"p"]) for entry_id, fields in entries
        )
        if not pubs or pubs[0].position.offset != since.offset + 1 or pubs[-1].position.offset != offset:
            return HistoryResult((), current, complete=False)  # trimmed, or expired
        return HistoryResult(pubs, current, complete=True)

    async def _read_room(self, room: RoomName, since: int | None) -> tuple[str, int, list[Any]]:
        meta, stream, _, _, _ = _keys(room)
        try:
            epoch, offset, entries = await self._read(
                keys=[meta, stream], args=["" if since is None else since, secrets.token_urlsafe(6), self._ttl]
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis is unreachable: {type(exc).__name__}") from None
        epoch_text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        return epoch_text, int(offset), [(e[0], dict(zip(e[1][::2], e[1][1::2]))) for e in entries]

    # -- room state ---------------------------------------------------------------------
    async def mark_terminal(self, room: RoomName) -> None:
        _, _, terminal, _, channel = _keys(room)
        await self._terminate(keys=[terminal, channel], args=[self._ttl])

    async def is_terminal(self, room: RoomName) -> bool:
        return bool(await self._redis.exists(_keys(room)[2]))

    async def add_presence(self, room: RoomName, client: ConnectionId, user: str | None) -> None:
        await self._redis.hset(_keys(room)[3], client, user or "")

    async def remove_presence(self, room: RoomName, client: ConnectionId) -> None:
        await self._redis.hdel(_keys(room)[3], client)

    async def presence(self, room: RoomName) -> Presence:
        clients = await self._redis.hgetall(_keys(room)[3])
        users = sorted({u.decode() if isinstance(u, bytes) else u for u in clients.values() if u})
        return Presence(room, len(clients), tuple(users))


PUBLISH_SCRIPT = _PUBLISH
"""The Lua script every publisher runs, a node or a worker (``RedisPublisher``)."""


def publish_call(
    room: RoomName, event: str, ts: float, encoded: tuple[bytes, ...], binary: bool, history_size: int, ttl: int
) -> tuple[list[str], list[Any]]:
    """The keys and arguments of ``PUBLISH_SCRIPT`` for one publication: the one wire form."""
    payload = _json.dumps([event, ts, binary, [raw.decode() for raw in encoded]])
    meta, stream, _, _, channel = _keys(room)
    return [meta, stream, channel], [secrets.token_urlsafe(6), history_size, ttl, payload]


def _publication(room: RoomName, epoch: str, offset: int, payload: bytes) -> Publication:
    """A publication from its wire form: decoded once per node, its bytes kept for encoders."""
    event, ts, binary, raws = _json.loads(payload)
    encoded = tuple(raw.encode() for raw in raws)
    data = tuple(_json.loads(raw) for raw in encoded)
    return Publication(room, event, data, StreamPosition(epoch, offset), ts, encoded, binary)
