"""``RedisTaskStore``: the ``TaskStore`` that every node of one hub shares (``serve --redis``).

Imports L0, ``tasks.model``, ``tasks.store`` and redis-py through ``broker.redis_client`` (the
one place Redis clients are opened). It keeps the whole contract of ``tasks.store`` with
several live processes writing at once, which ``SqliteTaskStore`` cannot (one process per
file): two servers sharing a ``--task-db`` file failed each other's running tasks at start.

**One Lua script per atomic write.** ``put`` and ``swap`` are one script: it checks the stored
version and status, writes the task, and moves it between every index that lists it, so no
reader ever sees a task in an index it no longer matches. Retention deletes through a
script too, which refuses to delete anything not terminal. A refused ``swap`` returns the
stored task in the same round trip, so a node that lost a race re-applies its change at once.

**Keys.** Every key starts with the hash tag ``{rc-tasks}`` (``namespace``): a script may
only touch keys of one slot, and the indexes are global (a list page spans every task), so
the whole task keyspace lives on one slot of a Redis Cluster. That is the right trade for
tasks: a few writes a second per task, coalesced, against rooms whose traffic the broker
spreads with one tag per room.

* ``{ns}:t:{id}``: a hash: ``j`` the task's JSON, ``v`` its version, ``n`` the node holding
  it, and copies of what the indexes are keyed on (``s`` status, ``k`` kind, ``o`` owner,
  ``c`` creation sort key), so a script can move a task out of its old indexes.
* ``{ns}:i`` plus ``|s=…``, ``|k=…``, ``|o=…`` in that order: one sorted set per combination of
  the ``list`` filters (8 per task, 4 without an owner), all scores 0, members
  ``{sortkey}:{id}`` where ``sortkey`` is ``created_at`` as 16 hex digits that sort like the
  number. A page is then ``ZRANGE … BYLEX REV`` from the cursor: newest first, ties broken
  by id, exactly the ``(created_at, id)`` order of SQLite; a status set merges up to seven
  of them. Kind and owner are length-prefixed in key names (``k=5:crawl``), so no value can
  forge another combination.
* ``{ns}:done`` (terminal tasks in creation order, for ``keep_newest``), ``{ns}:ended``
  (terminal tasks by end time, for ``delete_older_than``), ``{ns}:due`` (unfinished tasks by
  deadline, for ``overdue``).
* ``{ns}:held:{node}`` (the unfinished tasks a node holds), ``{ns}:holders`` (the nodes that
  hold some) and ``{ns}:lease:{node}`` (a key that expires unless the node renews it).

**What "held by a node" means.** A task is held by the node whose process runs its producer:
``TaskService.start``/``spawn`` and an upstream poller. If that process dies, nothing else
will ever end the task, so once its lease lapses any live node fails it with "node lost".
A task created over the HTTP API and reported by an external worker (``Publisher``) is held
by no node: the worker reaches it through whichever node its request lands on, so the
creating node's death says nothing about the work, and failing it would be wrong. Such a task
ends when its worker ends it, or at its deadline, which every node enforces (``overdue``),
not only the one that created it.

**Writes apply in call order** per task: a write waits for the previous write of the same
task to finish, so two writes started in order land in order even though the client's pool
may send them on different connections; writes of different tasks run concurrently. A
cancelled caller cannot recall a script Redis has received: as with SQLite, shield a write
that must not be lost.

Redis errors surface as ``BrokerUnavailable`` (the API answers 503): nothing is reported
stored that Redis did not confirm.
"""

from __future__ import annotations

import asyncio
import builtins
import struct
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from roomcast import _json
from roomcast.broker import redis_client
from roomcast.errors import BrokerUnavailable, InvalidState, TaskError
from roomcast.tasks.model import TERMINAL, Task
from roomcast.tasks.store import (
    DEFAULT_PAGE_SIZE,
    StatusFilter,
    Stored,
    Swap,
    check_count,
    check_limit,
    decode_cursor,
    encode_cursor,
    status_values,
)

__all__ = [
    "RedisTaskStore",
    "DEFAULT_NAMESPACE",
    "WRITE_SCRIPT",
    "task_key",
    "write_call",
    "write_answer",
    "read_stored",
]

_T = TypeVar("_T")
_Arg = str | int | bytes
"""What a script argument may be here (redis-py encodes each)."""

DEFAULT_NAMESPACE = "rc-tasks"

_CHUNK = 500
"""Tasks one retention script deletes at most: a long delete must not stall Redis."""

# Shared by every script: the terminal statuses (from the model, so there is one list) and
# the names of the index keys a task with these fields belongs to.
_PRELUDE = (
    """
local P = ARGV[1]
local TERMINAL = {"""
    + ", ".join(f"['{status.value}'] = true" for status in sorted(TERMINAL))
    + """}
local function indexes(status, kind, owner)
  local s = '|s=' .. status
  local k = '|k=' .. #kind .. ':' .. kind
  local keys = {P .. ':i', P .. ':i' .. s, P .. ':i' .. k, P .. ':i' .. s .. k}
  if owner then
    local o = '|o=' .. #owner .. ':' .. owner
    keys[5], keys[6], keys[7], keys[8] = P .. ':i' .. o, P .. ':i' .. s .. o, P .. ':i' .. k .. o, P .. ':i' .. s .. k .. o
  end
  return keys
end
local function drop(id)
  local key = P .. ':t:' .. id
  local h = redis.call('HMGET', key, 's', 'k', 'o', 'c')
  if not h[1] then
    redis.call('ZREM', P .. ':ended', id)
    return 0
  end
  if not TERMINAL[h[1]] then return 0 end
  local member = h[4] .. ':' .. id
  for _, index in ipairs(indexes(h[1], h[2], h[3])) do redis.call('ZREM', index, member) end
  redis.call('ZREM', P .. ':done', member)
  redis.call('ZREM', P .. ':ended', id)
  redis.call('DEL', key)
  return 1
end
"""
)

# KEYS: the task's hash. ARGV: prefix, id, 'put' | 'swap', expected version, JSON, node ('' for
# none), status, kind, has owner ('1'/'0'), owner, sort key, end time, deadline ('' for none).
# Returns {1, version, node} when written, else {0, json, version, node} or {0} if absent.
_WRITE = (
    _PRELUDE
    + """
local key, id = KEYS[1], ARGV[2]
local cur = redis.call('HMGET', key, 'v', 's', 'k', 'o', 'c', 'n', 'j')
local function refused()
  if cur[1] then return {0, cur[7], cur[1], cur[6] or ''} end
  return {0}
end
if cur[1] and TERMINAL[cur[2]] then return refused() end
local version = (cur[1] and tonumber(cur[1])) or 0
if ARGV[3] == 'swap' and tonumber(ARGV[4]) ~= version then return refused() end
version = version + 1
local node = ARGV[6]
if ARGV[3] == 'put' then node = cur[6] or '' end
local status, kind, sortkey = ARGV[7], ARGV[8], ARGV[11]
local owner = false
if ARGV[9] == '1' then owner = ARGV[10] end
local member = sortkey .. ':' .. id
if not cur[1] or cur[2] ~= status or cur[3] ~= kind or cur[4] ~= owner or cur[5] ~= sortkey then
  if cur[1] then
    local old = cur[5] .. ':' .. id
    for _, index in ipairs(indexes(cur[2], cur[3], cur[4])) do redis.call('ZREM', index, old) end
  end
  for _, index in ipairs(indexes(status, kind, owner)) do redis.call('ZADD', index, 0, member) end
end
local terminal = TERMINAL[status]
if terminal then
  redis.call('ZADD', P .. ':done', 0, member)
  redis.call('ZADD', P .. ':ended', ARGV[12], id)
  redis.call('ZREM', P .. ':due', id)
elseif ARGV[13] ~= '' then
  redis.call('ZADD', P .. ':due', ARGV[13], id)
else
  redis.call('ZREM', P .. ':due', id)
end
if cur[6] and (cur[6] ~= node or terminal) then redis.call('SREM', P .. ':held:' .. cur[6], id) end
if node ~= '' and not terminal then
  redis.call('SADD', P .. ':held:' .. node, id)
  redis.call('SADD', P .. ':holders', node)
end
redis.call('HSET', key, 'j', ARGV[5], 'v', version, 's', status, 'k', kind, 'c', sortkey)
if owner then redis.call('HSET', key, 'o', owner) else redis.call('HDEL', key, 'o') end
if node ~= '' then redis.call('HSET', key, 'n', node) else redis.call('HDEL', key, 'n') end
return {1, version, node}
"""
)

# ARGV: prefix, how many, cursor member ('' for the first page), has kind, kind, has owner,
# owner, then the statuses (none: any status). Returns the JSON of each task, newest first.
_LIST = (
    _PRELUDE
    + """
local function index(status)
  local key = P .. ':i'
  if status then key = key .. '|s=' .. status end
  if ARGV[4] == '1' then key = key .. '|k=' .. #ARGV[5] .. ':' .. ARGV[5] end
  if ARGV[6] == '1' then key = key .. '|o=' .. #ARGV[7] .. ':' .. ARGV[7] end
  return key
end
local n = tonumber(ARGV[2])
local max = '+'
if ARGV[3] ~= '' then max = '(' .. ARGV[3] end
local lists = {}
if #ARGV < 8 then
  lists[1] = redis.call('ZRANGE', index(false), max, '-', 'BYLEX', 'REV', 'LIMIT', 0, n)
else
  for i = 8, #ARGV do
    lists[#lists + 1] = redis.call('ZRANGE', index(ARGV[i]), max, '-', 'BYLEX', 'REV', 'LIMIT', 0, n)
  end
end
-- Byte order, as BYLEX sorts: Lua's own '<' on strings follows the server's locale.
local function after(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local heads, out = {}, {}
for i = 1, #lists do heads[i] = 1 end
while #out < n do
  local best = nil
  for i = 1, #lists do
    local m = lists[i][heads[i]]
    if m and (best == nil or after(m, lists[best][heads[best]])) then best = i end
  end
  if best == nil then break end
  local member = lists[best][heads[best]]
  heads[best] = heads[best] + 1
  out[#out + 1] = redis.call('HGET', P .. ':t:' .. string.sub(member, 18), 'j') or ''
end
return out
"""
)

# ARGV: prefix, time. Deletes up to _CHUNK terminal tasks that ended before it; {deleted, seen}.
_DELETE_OLDER = (
    _PRELUDE
    + """
local ids = redis.call('ZRANGEBYSCORE', P .. ':ended', '-inf', '(' .. ARGV[2], 'LIMIT', 0, """
    + str(_CHUNK)
    + """)
local deleted = 0
for _, id in ipairs(ids) do deleted = deleted + drop(id) end
return {deleted, #ids}
"""
)

# ARGV: prefix, count. Deletes up to _CHUNK of the oldest terminal tasks beyond the newest
# ``count``; {deleted, seen}.
_KEEP_NEWEST = (
    _PRELUDE
    + """
local extra = redis.call('ZCARD', P .. ':done') - tonumber(ARGV[2])
if extra <= 0 then return {0, 0} end
local members = redis.call('ZRANGE', P .. ':done', 0, math.min(extra, """
    + str(_CHUNK)
    + """) - 1)
local deleted = 0
for _, member in ipairs(members) do
  local gone = drop(string.sub(member, 18))
  if gone == 0 then redis.call('ZREM', P .. ':done', member) end
  deleted = deleted + gone
end
return {deleted, #members}
"""
)

# ARGV: prefix. The unfinished tasks of nodes without a lease, as json, version, node triples.
_ORPHANS = (
    _PRELUDE
    + """
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', P .. ':holders')) do
  if redis.call('EXISTS', P .. ':lease:' .. node) == 0 then
    local held = P .. ':held:' .. node
    local ids = redis.call('SMEMBERS', held)
    if #ids == 0 then redis.call('SREM', P .. ':holders', node) end
    for _, id in ipairs(ids) do
      local h = redis.call('HMGET', P .. ':t:' .. id, 'j', 'v', 'n', 's')
      if h[1] and h[3] == node and not TERMINAL[h[4]] then
        out[#out + 1], out[#out + 2], out[#out + 3] = h[1], h[2], h[3]
      else
        redis.call('SREM', held, id)
      end
    end
  end
end
return out
"""
)

# ARGV: prefix, now, limit. Unfinished overdue tasks no live node holds: json, version, node.
_OVERDUE = (
    _PRELUDE
    + """
local out, limit = {}, tonumber(ARGV[3])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':due', '-inf', ARGV[2], 'LIMIT', 0, 4 * limit)) do
  if #out >= 3 * limit then break end
  local h = redis.call('HMGET', P .. ':t:' .. id, 'j', 'v', 'n', 's')
  if not h[1] or TERMINAL[h[4]] then
    redis.call('ZREM', P .. ':due', id)
  elseif not h[3] or redis.call('EXISTS', P .. ':lease:' .. h[3]) == 0 then
    out[#out + 1], out[#out + 2], out[#out + 3] = h[1], h[2], h[3] or ''
  end
end
return out
"""
)


class RedisTaskStore:
    """A ``TaskStore`` (and its ``Leases``) in Redis, shared by every node of a hub.

    Args:
        url: ``redis://`` or ``rediss://``, as ``roomcast serve --redis`` takes it.
        namespace: the hash tag every key starts with; two hubs on one Redis need two.
    """

    def __init__(self, url: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not namespace or any(c in namespace for c in "{}"):
            raise ValueError(f"namespace must be a non-empty string without braces, got {namespace!r}")
        self._url = url
        self._p = "{" + namespace + "}"
        self._redis: aioredis.Redis = redis_client.connect(url)
        self._write = self._redis.register_script(_WRITE)
        self._list = self._redis.register_script(_LIST)
        self._delete_older = self._redis.register_script(_DELETE_OLDER)
        self._keep_newest = self._redis.register_script(_KEEP_NEWEST)
        self._orphans = self._redis.register_script(_ORPHANS)
        self._overdue = self._redis.register_script(_OVERDUE)
        self._tails: dict[str, asyncio.Future[None]] = {}  # the last write of each task, in flight
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisTaskStore({redis_client.redact(self._url)!r}, namespace={self._p[1:-1]!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Check that Redis answers (otherwise the first call finds out).

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        await self._call(self._redis.ping)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._redis.aclose()

    # -- TaskStore ---------------------------------------------------------------------------

    @property
    def leases(self) -> RedisTaskStore:
        """This store: a task's node and the nodes' leases live beside the tasks."""
        return self

    async def put(self, task: Task) -> bool:
        swap = await self._put(task, "put", 0, None)
        return swap.ok

    async def swap(self, task: Task, *, version: int, node: str | None) -> Swap:
        if node == "":
            raise ValueError("a node id is a non-empty string, or None")
        return await self._put(task, "swap", version, node)

    async def get(self, task_id: str) -> Task | None:
        stored = await self.read(task_id)
        return None if stored is None else stored.task

    async def read(self, task_id: str) -> Stored | None:
        return read_stored(await self._call(lambda: self._redis.hmget(self._task_key(task_id), "j", "v", "n")))

    async def list(
        self,
        *,
        status: StatusFilter = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> tuple[builtins.list[Task], str | None]:
        check_limit(limit)
        statuses = [] if status is None else status_values(status)
        if status is not None and not statuses:
            return [], None
        after = "" if cursor is None else _member(*decode_cursor(cursor))
        args: builtins.list[_Arg] = [self._p, limit + 1, after, int(kind is not None), kind or ""]
        args += [int(owner is not None), owner or "", *dict.fromkeys(statuses)]
        # One row more than asked says whether another page exists, so the last page carries
        # no cursor and a client never fetches an empty page.
        found = await self._call(lambda: self._list(keys=[self._p + ":i"], args=args))
        tasks = [_task(json) for json in found if json]
        if len(tasks) <= limit:
            return tasks, None
        del tasks[limit:]
        return tasks, encode_cursor(tasks[-1])

    async def delete_older_than(self, ts: float) -> int:
        return await self._chunked(self._delete_older, [self._p, repr(float(ts))])

    async def keep_newest(self, count: int) -> int:
        check_count(count)
        return await self._chunked(self._keep_newest, [self._p, count])

    async def mark_interrupted(self, reason: str, now: float) -> builtins.list[Task]:
        raise TaskError(
            "a Redis task store is shared by live servers: their unfinished tasks are running, not "
            "interrupted. A task whose server died is failed once that server's lease lapses"
        )

    # -- Leases ------------------------------------------------------------------------------

    async def hold(self, node: str, ttl: float) -> None:
        await self._call(lambda: self._redis.set(self._p + ":lease:" + node, b"1", px=max(1, round(ttl * 1000))))

    async def release(self, node: str) -> None:
        await self._call(lambda: self._redis.delete(self._p + ":lease:" + node))

    async def orphans(self) -> builtins.list[Stored]:
        return _triples(await self._call(lambda: self._orphans(keys=[self._p + ":holders"], args=[self._p])))

    async def overdue(self, now: float, limit: int) -> builtins.list[Stored]:
        args: builtins.list[_Arg] = [self._p, repr(float(now)), limit]
        return _triples(await self._call(lambda: self._overdue(keys=[self._p + ":due"], args=args)))

    # -- plumbing ----------------------------------------------------------------------------

    def _task_key(self, task_id: str) -> str:
        return task_key(self._p, task_id)

    async def _put(self, task: Task, mode: str, version: int, node: str | None) -> Swap:
        keys, args = write_call(self._p, task, mode, version, node)  # a bad value fails here, before ordering
        reply = await self._in_order(task.id, lambda: self._write(keys=keys, args=args))
        return write_answer(task, reply)

    async def _in_order(self, task_id: str, write: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``write`` once the previous write of this task (if any) has finished."""
        self._check_open()
        previous = self._tails.get(task_id)
        mine = self._tails[task_id] = asyncio.get_running_loop().create_future()
        try:
            if previous is not None:
                await asyncio.wait((previous,))  # not cancelled with us: it is someone else's
            return await self._call(write)
        finally:
            if previous is not None and not previous.done():
                # Cancelled while waiting: the next write must still wait for the previous.
                previous.add_done_callback(lambda _: self._finished(task_id, mine))
            else:
                self._finished(task_id, mine)

    def _finished(self, task_id: str, mine: asyncio.Future[None]) -> None:
        if not mine.done():
            mine.set_result(None)
        if self._tails.get(task_id) is mine:
            del self._tails[task_id]

    async def _chunked(self, script: AsyncScript, args: builtins.list[_Arg]) -> int:
        deleted = 0
        while True:
            gone, seen = await self._call(lambda: script(keys=[self._p + ":done"], args=args))
            deleted += int(gone)
            if seen < _CHUNK:
                return deleted

    async def _call(self, command: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis call; its errors become ``BrokerUnavailable``."""
        self._check_open()
        try:
            return await command()
        except RedisError as exc:
            raise BrokerUnavailable(f"the task store's Redis failed: {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidState(f"{self!r} is closed")


WRITE_SCRIPT = _WRITE
"""The script of every task write: a node's (``RedisTaskStore``) or a worker's (``tasks.redis_writer``)."""


def task_key(prefix: str, task_id: str) -> str:
    """The hash of one task under ``prefix`` (``{namespace}``, braces included)."""
    return f"{prefix}:t:{task_id}"


def write_call(
    prefix: str, task: Task, mode: str, version: int, node: str | None
) -> tuple[builtins.list[str], builtins.list[_Arg]]:
    """The keys and arguments of ``WRITE_SCRIPT``: ``put`` (any version) or ``swap`` (only over
    ``version``), held by ``node`` (``None``: by no node). The one wire form of a task write.

    Raises:
        TaskError: the task's result or metadata is not JSON.
    """
    ended = task.finished_at if task.finished_at is not None else task.updated_at
    args: builtins.list[_Arg] = [
        prefix,
        task.id,
        mode,
        version,
        _encode(task),
        node or "",
        task.status.value,
        task.kind,
        int(task.owner is not None),
        task.owner or "",
        _sort_key(task.created_at),
        repr(ended),
        "" if task.deadline is None else repr(task.deadline),
    ]
    return [task_key(prefix, task.id)], args


def write_answer(task: Task, reply: builtins.list[Any]) -> Swap:
    """What ``WRITE_SCRIPT`` answered, as ``swap`` returns it."""
    if reply[0] == 1:
        node = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
        return Swap(True, Stored(task, int(reply[1]), node or None))
    return Swap(False, None if len(reply) == 1 else _stored(reply[1], reply[2], reply[3]))


def read_stored(reply: builtins.list[Any]) -> Stored | None:
    """A task from ``HMGET {task_key} j v n``; ``None`` when it is not stored."""
    json, version, node = reply
    return None if json is None else _stored(json, version, node)


def _sort_key(created_at: float) -> str:
    """``created_at`` as 16 hex digits whose byte order is the numbers' order.

    The IEEE-754 bits of a double sort like the number once the sign bit is flipped for
    positives and every bit for negatives; ``+ 0.0`` makes ``-0.0`` the same key as ``0.0``.
    """
    (bits,) = struct.unpack(">Q", struct.pack(">d", created_at + 0.0))
    bits = bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits >> 63 else bits | 1 << 63
    return f"{bits:016x}"


def _member(created_at: float, task_id: str) -> str:
    return f"{_sort_key(created_at)}:{task_id}"


def _encode(task: Task) -> bytes:
    try:
        return _json.dumps(task.to_json())
    except TypeError as exc:
        raise TaskError(f"task {task.id}: result or metadata is not JSON-serialisable ({exc})") from None


def _task(json: bytes | str) -> Task:
    try:
        return Task.from_json(_json.loads(json))
    except (ValueError, TypeError, TaskError) as exc:
        raise TaskError(f"a stored task is unreadable ({exc})") from None


def _stored(json: bytes | str, version: bytes | str | int | None, node: bytes | str | None) -> Stored:
    """A ``Stored`` from the hash fields ``j``, ``v``, ``n`` (``n`` empty or absent: no node)."""
    node_id = node.decode() if isinstance(node, bytes) else node
    return Stored(_task(json), int(version or 0), node_id or None)


def _triples(flat: builtins.list[Any]) -> builtins.list[Stored]:
    return [_stored(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
