"""``RedisBroker``: many processes and machines share rooms through one Redis (DESIGN §6).

Imports L0, ``broker.base``, ``broker.redis_client`` and redis-py (asyncio, with hiredis). It
keeps the contract of ``broker.base`` with Redis doing the work no node could do alone:

* **Publish** is one Lua script, so it is atomic per room: it creates the room's epoch when
  the room's metadata is missing (a new room, an expired one, a flushed Redis: never reused
  offsets), advances the offset, appends to the room's stream (``XADD``, trimmed to
  ``history_size``), refreshes the keys' lifetime and publishes to the room's channel. The
  publication travels as the bytes the hub serialised once (``Publication.encoded``).
* **A publish is applied once.** Each call carries an idempotency key made once
  (``publish_call``); redis-py's automatic retries resend it, and a publish whose answer
  was lost on the way back is answered from ``rc:{room}:i:<key>`` (kept
  ``IDEMPOTENCY_WINDOW`` seconds) instead of being appended a second time.
* **History and position** are one script too: the epoch (made if missing, so it is stable
  from the first read), the offset and the stream entries after a position, together.
* **A Redis that restarted** is told by its run id, which the scripts read themselves
  (``INFO server``), so no node can act on a stale one. A room records the run id its epoch
  was made under. Under another run id its history is trusted only if the server keeps an
  append-only file (``aof_enabled:1``); otherwise it may be an older RDB snapshot than what
  nodes delivered, and the room starts again under a new epoch, its stream dropped.
* **Subscriptions** follow the hub: a node subscribes to the channels of the rooms it has
  members in, and ``subscribe`` returns only once Redis confirmed it ("subscribe before
  read"). Sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``) on Redis 7 and later, classic
  before. A room's terminal mark travels on its channel after its last publication. The
  rooms a node follows have their lifetime renewed every third of it, so they are not freed.
* **A broken live stream** (the pub/sub connection lost) is reconnected with backoff, every
  channel subscribed again, and then reported (``on_stream_lost(None)``), so the hub reads
  history from where each room stopped. The subscription's client never retries by itself:
  a reconnect redis-py made quietly would be a gap nobody heard of.
* **A deaf subscription** (no error, no delivery) is found by a heartbeat through Redis to the
  node itself, on the same kind of subscription as the rooms, and treated as a lost stream;
  ``unhealthy`` says why meanwhile.
* **Presence lives as long as its node.** An entry is ``<node_id>|<user>``; the node renews
  ``rc:alive:<node_id>`` at each heartbeat (it lives three), and ``presence`` drops the
  entries of nodes whose key expired. A node that finds its key gone, or that reconnected,
  writes its own entries back. Its joins and leaves reach Redis in batches
  (``broker.redis_presence``): one round trip for every change made while the last was on
  its way.

Keys of one room share the hash tag ``{room}``: ``rc:{room}:m`` (epoch, offset, run id),
``rc:{room}:s`` (history), ``rc:{room}:t`` (terminal), ``rc:{room}:p`` (presence),
``rc:{room}:i:<key>`` (a publication's answer), and the channel ``rc:{room}``. A room's keys
expire ``history_ttl`` seconds after its last publication: history, epoch and terminal mark
go together, and the room comes back under a new epoch. A node has ``rc:alive:<node_id>``
and the channel ``rc:node:<node_id>``.

**Binary attachments** cross nodes as bytes: a publication's wire form is its serialised
data (``json_safe``'s form, where bytes are ``{"$binary": "<base64>"}``) and, in place of
the ``binary`` flag, the path to each of those objects that stood for bytes. A receiving
node turns exactly those back into bytes, once per publication, so Socket.IO sends them as
attachments on every node, while SSE and ``/ws`` embed the serialised data as they are.

What it does not do yet: Redis Cluster (it talks to one Redis, or the master a Sentinel
names; ``presence`` reads liveness keys outside the room's slot).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from roomcast import _json
from roomcast.backoff import Backoff
from roomcast.broker import redis_client
from roomcast.broker.base import BrokerEvents, HistoryResult
from roomcast.broker.redis_pipeline import AutoPipeline
from roomcast.broker.redis_presence import PresenceWriter, presence_key
from roomcast.errors import BrokerUnavailable
from roomcast.types import ConnectionId, JSONValue, Presence, Publication, RoomName, StreamPosition

__all__ = [
    "RedisBroker",
    "ALIVE_PREFIX",
    "IDEMPOTENCY_WINDOW",
    "PUBLISH_SCRIPT",
    "TERMINATE_SCRIPT",
    "publish_call",
    "terminate_call",
]

logger = logging.getLogger("roomcast.broker.redis")

_TERMINAL = b"T"

_SERVER = """
-- What this Redis is: its run id (new at every start) and the publish command room
-- channels use: SPUBLISH from Redis 7 (sharded pub/sub, the node subscribes with
-- SSUBSCRIBE), PUBLISH before. Read inside the script, so it is this server's answer.
local function server()
  local info = redis.call('INFO', 'server')
  local major = tonumber(string.match(info, 'redis_version:(%d+)'))
  return string.match(info, 'run_id:(%x+)'), (major >= 7) and 'SPUBLISH' or 'PUBLISH'
end

-- The room's epoch; made (offset 0, no history) when the room is missing, or when Redis
-- restarted since the epoch was made and keeps no append-only file: then its history may
-- be an older snapshot than what nodes delivered, and its offsets would be given again.
local function room_epoch(meta, stream, fresh, ttl, run)
  local known = redis.call('HMGET', meta, 'e', 'r')
  local epoch = known[1]
  if epoch and known[2] ~= run then
    if string.find(redis.call('INFO', 'persistence'), 'aof_enabled:1', 1, true) then
      redis.call('HSET', meta, 'r', run)
    else
      redis.call('DEL', meta, stream)
      epoch = false
    end
  end
  if not epoch then
    epoch = fresh
    redis.call('HSET', meta, 'e', epoch, 'o', 0, 'r', run)
    redis.call('EXPIRE', meta, ttl)
  end
  return epoch
end
"""

_PUBLISH = (
    _SERVER
    + """
local done = redis.call('GET', KEYS[4])
if done then
  local epoch, offset = string.match(done, '^(.+):(%d+)$')
  return {epoch, tonumber(offset)}
end
local run, publish = server()
local epoch = room_epoch(KEYS[1], KEYS[2], ARGV[1], ARGV[3], run)
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-1', 'p', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call(publish, KEYS[3], epoch .. ':' .. offset .. ':' .. ARGV[4])
redis.call('SET', KEYS[4], epoch .. ':' .. offset, 'EX', ARGV[5])
return {epoch, offset}
"""
)

_READ = (
    _SERVER
    + """
local run = server()
local epoch = room_epoch(KEYS[1], KEYS[2], ARGV[2], ARGV[3], run)
local offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[1] .. '-1', '+')
end
return {epoch, offset, entries}
"""
)

_PRESENCE = """
local entries = redis.call('HGETALL', KEYS[1])
local alive, users = {}, {}
for i = 1, #entries, 2 do
  local node, user = string.match(entries[i + 1], '^([^|]*)|(.*)$')
  if not node then
    users[#users + 1] = entries[i + 1]
  else
    if alive[node] == nil then
      alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1
    end
    if alive[node] then
      users[#users + 1] = user
    else
      redis.call('HDEL', KEYS[1], entries[i])
    end
  end
end
return users
"""

_TERMINATE = (
    _SERVER
    + """
if redis.call('SET', KEYS[1], '1', 'EX', ARGV[1], 'NX') then
  local _, publish = server()
  redis.call(publish, KEYS[2], 'T')
end
return 1
"""
)


def _keys(room: RoomName) -> tuple[str, str, str, str, str]:
    tag = f"rc:{{{room}}}"
    return f"{tag}:m", f"{tag}:s", f"{tag}:t", presence_key(room), tag


class RedisBroker:
    """A broker over Redis.

    Args:
        url: ``redis://`` or ``rediss://`` (TLS), with a user and password if ACLs ask.
        history_size: publications kept per room for recovery.
        history_ttl: seconds a room's history, epoch and terminal mark live after its last
            publication.
        reconnect_max: the longest wait, in seconds, between attempts to reconnect the
            subscription connection.
        heartbeat_interval: seconds between two heartbeats (the node publishing to itself,
            and renewing its liveness key, which lives three intervals).
        heartbeat_timeout: seconds without hearing its own heartbeat after which the node
            takes its subscription for deaf.
        node_id: this process's node id, the one ``roomcast.cluster`` uses when the server
            passes it; a new one by default. Its presence entries carry it.
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
        node_id: str | None = None,
    ) -> None:
        if history_size < 0 or history_ttl <= 0:
            raise ValueError("history_size must be >= 0 and history_ttl > 0")
        if node_id is not None and (not node_id or "|" in node_id):
            raise ValueError("a node id is a non-empty string without '|'")
        self._url = url
        self._history_size = history_size
        self._ttl = max(1, round(history_ttl))
        self._reconnect_max = reconnect_max
        self._redis: aioredis.Redis = redis_client.connect(url)
        self._subscriber: aioredis.Redis = redis_client.connect(url, retry=False)  # every break reported
        self._publish = AutoPipeline(self._redis, self._redis.register_script(_PUBLISH))
        self._read = self._redis.register_script(_READ)
        self._terminate = self._redis.register_script(_TERMINATE)
        self._presence = self._redis.register_script(_PRESENCE)
        self._events: BrokerEvents | None = None
        self._pubsub: Any = None
        self._sharded = False  # the subscription uses SSUBSCRIBE (Redis >= 7), decided per connection
        self._run_id: str | None = None  # the Redis process the subscription last reached
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
        # cluster.base.new_node_id's form; this layer may not import roomcast.cluster.
        self.node_id: str = node_id if node_id is not None else secrets.token_urlsafe(9)
        """This node's id: its presence entries and liveness key carry it."""
        self._node_channel = f"rc:node:{self.node_id}"
        self._own = PresenceWriter(
            self._redis, f"{ALIVE_PREFIX}{self.node_id}", max(1, round(3000 * heartbeat_interval))
        )
        self._resubscribe_backoff = Backoff(0.1, max(0.1, reconnect_max))
        self._rejoining = False  # subscribed again, Redis's confirmation not heard yet
        self._lost_reason: str | None = None  # what the reader put in ``unhealthy``, to take back
        self._chores: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return "<RedisBroker>"  # never the URL: it may hold a password

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, events: BrokerEvents) -> None:
        self._events = events
        if self._reader is None:
            try:
                await self._connect_pubsub()
                await self._own.renew()
            except (
                RedisError,
                OSError,
                BrokerUnavailable,
            ) as exc:  # the operator's first sight of a wrong URL or password
                raise BrokerUnavailable(redis_client.describe(exc, self._url)) from None
            loop = asyncio.get_running_loop()
            self._reader = loop.create_task(self._read_forever())
            self._keeper = loop.create_task(self._keep_followed())
            self._heard = loop.time()
            self._heart = loop.create_task(self._beat())

    async def aclose(self) -> None:
        self._events = None
        for task in (self._reader, self._keeper, self._heart, *self._chores):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reader = self._keeper = self._heart = None
        await self._publish.aclose()
        await self._own.leave(timeout=2)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = None
        await self._subscriber.aclose()
        await self._redis.aclose()

    async def _connect_pubsub(self) -> None:
        """A pub/sub connection following this node's own channel (so it always has one) and
        every room channel it followed before.

        Sharded pub/sub (``SSUBSCRIBE``) when the server is Redis 7 or later, decided for each
        new connection from the server it reaches: the publish scripts make the same choice
        from the same server (``_SERVER``), and the heartbeat travels the same way, so it
        tells whether the subscription the rooms use hears.
        """
        info = await self._subscriber.info("server")
        sharded = int(str(info["redis_version"]).split(".", 1)[0]) >= 7
        run_id = str(info["run_id"])
        if self._run_id is not None and run_id != self._run_id:
            logger.warning("redis restarted (a new run id): its rooms are checked against it as they are read")
        self._run_id = run_id
        pubsub = self._subscriber.pubsub()
        await (pubsub.ssubscribe if sharded else pubsub.subscribe)(self._node_channel, *self._channels)
        self._pubsub, self._sharded = pubsub, sharded

    async def _read_forever(self, *, reconnect_first: bool = False) -> None:
        """Deliver what the subscription receives; when it breaks (or is found deaf), reconnect
        with backoff and jitter, subscribe every followed room again, and report the loss.

        While the subscription is down the node says so (``unhealthy``: ``/readyz`` answers
        503 with the reason) until Redis has confirmed the new subscription (``_rejoined``):
        redis-py's ``subscribe`` only sends the command, and a refusal (an ACL, a Redis still
        loading) comes back later on the connection. A load balancer meanwhile sends new
        clients elsewhere, and the node's own clients recover once it reports the loss.
        """
        backoff = self._resubscribe_backoff
        while True:
            if not reconnect_first:
                try:
                    async for message in self._pubsub.listen():
                        self._handle(message)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any failure: the reader must outlive it, or the node goes deaf
                    logger.warning("redis subscription lost (%s); reconnecting", type(exc).__name__)
                    if self.unhealthy is None:
                        self._lost_reason = f"the redis subscription was lost ({type(exc).__name__}); subscribing again"
                        self.unhealthy = self._lost_reason
                if self._rejoining:  # the last subscription was never confirmed: not at once again
                    await asyncio.sleep(backoff.next())
            reconnect_first = False
            while True:
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()  # nobody reads it now: safe to close
                try:
                    await self._connect_pubsub()
                    break
                except Exception:
                    await asyncio.sleep(backoff.next())
            self._rejoining = True  # until Redis confirms this node's own channel (``_handle``)

    def _rejoined(self) -> None:
        """Redis confirmed the subscription made again (the node's channel comes first in its
        ``SSUBSCRIBE``, and Redis runs the command whole, so every room is followed): the node
        is ready again, and every room re-reads what it missed (``_report_loss``). Not before:
        a room re-read before Redis took the subscription could miss a publication made in
        between."""
        self._rejoining = False
        self._resubscribe_backoff.reset()
        if self._lost_reason is not None and self.unhealthy is self._lost_reason:
            self.unhealthy = None  # (a deaf verdict is cleared by hearing itself)
        self._lost_reason = None
        chore = asyncio.get_running_loop().create_task(self._report_loss())
        self._chores.add(chore)
        chore.add_done_callback(self._chores.discard)

    async def _report_loss(self) -> None:
        """Write this node's presence back (Redis may have restarted empty), then report the
        broken stream, so the rooms re-read what they missed."""
        with contextlib.suppress(BrokerUnavailable):
            await self._own.renew(rewrite=True)
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
            with contextlib.suppress(RedisError, OSError, TimeoutError, BrokerUnavailable):
                async with asyncio.timeout(timeout):
                    await (self._redis.spublish if self._sharded else self._redis.publish)(self._node_channel, b"H")
                    await self._own.renew()

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
        if kind == "subscribe" or kind == "ssubscribe":
            confirmed = self._confirmed.pop(name, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            if name == self._node_channel and self._rejoining:
                self._rejoined()
            return
        if kind != "message" and kind != "smessage":
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
        skip: frozenset[ConnectionId] | None = None,
        canonical: tuple[bytes, ...] | None = None,
    ) -> Publication:
        if encoded is None:
            encoded = tuple(_json.dumps_checked(_json.json_safe(arg)) for arg in data)
        keys, args = publish_call(
            room, event, ts, data, encoded, binary, self._history_size, self._ttl, skip, canonical=canonical
        )
        try:
            epoch, offset = await self._publish.call(keys, args)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(redis_client.describe(exc)) from None
        epoch_text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        position = StreamPosition(epoch_text, int(offset))
        return Publication(room, event, data, position, ts, encoded, binary, skip, canonical)

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
                        pubsub = self._pubsub
                        await (pubsub.ssubscribe if self._sharded else pubsub.subscribe)(channel)
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
            pubsub = self._pubsub
            await (pubsub.sunsubscribe if self._sharded else pubsub.unsubscribe)(channel)

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
            raise BrokerUnavailable(redis_client.describe(exc)) from None
        epoch_text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        return epoch_text, int(offset), [(e[0], dict(zip(e[1][::2], e[1][1::2]))) for e in entries]

    # -- room state ---------------------------------------------------------------------
    async def mark_terminal(self, room: RoomName) -> None:
        keys, args = terminate_call(room, self._ttl)
        try:
            await self._terminate(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(redis_client.describe(exc)) from None

    async def is_terminal(self, room: RoomName) -> bool:
        try:
            return bool(await self._redis.exists(_keys(room)[2]))
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(redis_client.describe(exc)) from None

    async def add_presence(self, room: RoomName, client: ConnectionId, user: str | None) -> None:
        await self._own.add(room, client, f"{self.node_id}|{user or ''}")

    async def remove_presence(self, room: RoomName, client: ConnectionId) -> None:
        await self._own.remove(room, client)

    async def presence(self, room: RoomName) -> Presence:
        """Who is in ``room``: the entries of live nodes. Those of a node whose liveness key
        expired (it died without a word) are dropped on the way, in the same script, so a
        node that renews its key and writes its entries back cannot lose them to a reader
        that saw the key gone a moment before. This node's own changes are counted: their
        writes are awaited first."""
        await self._own.settled()
        try:
            users = await self._presence(keys=[_keys(room)[3]], args=[ALIVE_PREFIX])
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(redis_client.describe(exc)) from None
        named = {u.decode() if isinstance(u, bytes) else u for u in users}
        return Presence(room, len(users), tuple(sorted(named - {""})))


ALIVE_PREFIX = "rc:alive:"
"""A live node's key is this prefix and its node id, as ``roomcast.cluster.redis`` keeps it."""

PUBLISH_SCRIPT = _PUBLISH
"""The Lua script every publisher runs, a node or a worker (``RedisPublisher``)."""

TERMINATE_SCRIPT = _TERMINATE
"""The Lua script that marks a room finished (a task's, at its end), a node's or a worker's."""


def terminate_call(room: RoomName, ttl: int) -> tuple[list[str], list[Any]]:
    """The keys and arguments of ``TERMINATE_SCRIPT``: the mark lives ``ttl`` seconds, as history does."""
    _, _, terminal, _, channel = _keys(room)
    return [terminal, channel], [ttl]


IDEMPOTENCY_WINDOW = 300
"""Seconds a publication's answer is kept under its idempotency key (Centrifugo's window)."""


def publish_call(
    room: RoomName,
    event: str,
    ts: float,
    data: tuple[JSONValue, ...],
    encoded: tuple[bytes, ...],
    binary: bool,
    history_size: int,
    ttl: int,
    skip: frozenset[ConnectionId] | None = None,
    *,
    canonical: tuple[bytes, ...] | None = None,
) -> tuple[list[str], list[Any]]:
    """The keys and arguments of ``PUBLISH_SCRIPT`` for one publication: the one wire form.

    The payload is ``[event, ts, attachments, [each argument's JSON text]]``: the texts are
    ``encoded`` as the hub serialised them (``hub.publication.prepare``), and
    ``attachments`` is ``false``, or for a publication with binary attachments (``binary``)
    the path from ``data`` to each of them (``[argument index, key or index, ...]``), which
    in the texts is ``json_safe``'s ``{"$binary": "<base64>"}``. The bytes travel once, in
    the base64 the JSON transports embed anyway, so a receiving node encodes nothing again
    and the payload stays one JSON text; the paths tell bytes from application data that
    merely looks like ``{"$binary": ...}``. A node of the previous release, which had
    ``true`` there, reads a list as true and delivers the JSON form as it did.

    A publication with ``skip`` (``Publication.skip``) has a fifth element, the skipped
    connection ids, sorted: stored in the stream with the rest, so a node that replays
    history honours it as the live fan-out does. A publication with ``canonical``
    (``Publication.canonical``) has a sixth, its JSON texts as the fourth has them, and then
    the fifth is ``null`` when nothing is skipped. Without either the payload keeps four; a
    node of a release before the sixth element delivers such a publication as it did, in the
    client form only.

    Made once per publish call, so redis-py's automatic retries resend the same idempotency
    key: a publish whose answer was lost on the way back (the connection cut after Redis ran
    it) is answered from ``rc:{room}:i:<key>`` when retried, never appended twice.
    """
    attachments: list[list[int | str]] | bool = False
    if binary:
        attachments = []
        for index, arg in enumerate(data):
            _find_binary(arg, [index], attachments)
    wire: list[Any] = [event, ts, attachments or binary, [raw.decode() for raw in encoded]]
    if skip or canonical is not None:
        wire.append(sorted(skip) if skip else None)
    if canonical is not None:
        wire.append([raw.decode() for raw in canonical])
    payload = _json.dumps(wire)
    meta, stream, _, _, channel = _keys(room)
    done = f"rc:{{{room}}}:i:{secrets.token_urlsafe(12)}"
    return [meta, stream, channel, done], [secrets.token_urlsafe(6), history_size, ttl, payload, IDEMPOTENCY_WINDOW]


def _find_binary(value: Any, path: list[int | str], out: list[list[int | str]]) -> None:
    """Append to ``out`` the path to each binary leaf of ``value`` (at ``path``), with keys as
    ``json_safe`` writes them."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        out.append(path.copy())
    elif isinstance(value, dict):
        for key, item in value.items():
            path.append(_json.json_safe(key) if isinstance(key, str) and not key.isascii() else key)
            _find_binary(item, path, out)
            path.pop()
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            path.append(index)
            _find_binary(item, path, out)
            path.pop()


def _publication(room: RoomName, epoch: str, offset: int, payload: bytes) -> Publication:
    """A publication from its wire form: decoded once per node, its bytes kept for encoders,
    its binary attachments made bytes again (see ``publish_call``)."""
    wire = _json.loads(payload)
    event, ts, attachments, raws = wire[:4]
    skip = frozenset(wire[4]) if len(wire) > 4 and wire[4] else None
    canonical = tuple(raw.encode() for raw in wire[5]) if len(wire) > 5 and type(wire[5]) is list else None
    encoded = tuple(raw.encode() for raw in raws)
    data = [_json.loads(raw) for raw in encoded]
    if type(attachments) is list:
        for path in attachments:
            _restore(data, path)
    position = StreamPosition(epoch, offset)
    return Publication(room, event, tuple(data), position, ts, encoded, bool(attachments), skip, canonical)


def _restore(data: list[Any], path: Any) -> None:
    """Replace the ``{"$binary": "<base64>"}`` at ``path`` in ``data`` by its bytes. A path
    that leads to nothing of that form (a stream entry not written by ``publish_call``) is
    left alone: one odd entry must not stop a node's delivery."""
    try:
        node: Any = data
        for step in path[:-1]:
            node = node[step]
        leaf = path[-1]
        blob = node[leaf]
        if type(blob) is dict and len(blob) == 1 and type(blob.get("$binary")) is str:
            node[leaf] = base64.b64decode(blob["$binary"], validate=True)
    except (LookupError, TypeError, ValueError):  # binascii.Error is a ValueError
        pass
