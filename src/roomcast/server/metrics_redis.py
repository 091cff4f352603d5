"""``SharedMetrics``: the worker processes of one server add up their figures through Redis.

Imports L0, ``broker.redis_client``, ``cluster.redis`` (the liveness key) and redis-py. Under
``--workers N`` (or ``uvicorn --workers N`` on the ASGI door) each worker is a whole server with
its own counters, and the kernel hands a scrape of ``/metrics`` to any one of them. So each
worker writes its figures into one Redis hash shared by the workers of that server, and a
scrape on any worker answers their sum: the server's totals, not one random worker's.

**Which processes are summed:** the workers of one server on one machine, named by the
*group* ``<hostname>:<port>`` (``Settings.port``: ``run_workers`` gives every worker the same
one). Other machines on the same Redis are other groups: Prometheus scrapes each machine as
its own target and ``sum()`` over them counts nothing twice.

**How:** one Lua script (``EXCHANGE``) writes this node's snapshot (``n:<node>`` in the hash
``rc:metrics:<group>``) and reads every other's, in one round trip. Each worker runs it every
``interval`` seconds, and a scrape runs it with the scraping worker's figures of the moment.
A snapshot holds three kinds of series (``server.metrics``): *counters*, summed; *gauges*,
summed over the live workers; *per-node* series (event-loop lag, the broker's state), kept
apart under a ``node`` label.

**A worker that is gone** (its ``rc:alive:<node>`` key, renewed by ``RedisCluster``, expired:
it was killed, or it stopped) has its last counters folded into the group's ``r`` field by
the same script, atomically, so the totals never go down when a worker dies and its
replacement starts from zero: a Prometheus ``rate()`` sees no counter reset. Its gauges and
per-node series go with it. A worker that stops gracefully folds its own final figures
(``aclose``). A worker taken for gone that comes back (its loop stalled past the liveness
key's lifetime) takes back what was folded for it (kept as ``f:<node>`` for ``FOLDED_KEEP``
seconds), so it is not counted twice. The last worker's figures live ``ttl`` seconds after
its last write: a server stopped for longer starts its counters again from zero, as a
Prometheus target that restarted.

What it costs: one ``EVALSHA`` per worker every ``interval`` (5 s), and one per scrape; a
snapshot is a few kilobytes of JSON. Nothing on the fan-out path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from roomcast import _json
from roomcast.broker import redis_client
from roomcast.cluster.redis import alive_key

__all__ = ["SharedMetrics", "Snapshot", "EXCHANGE", "FOLDED_KEEP", "merge"]

logger = logging.getLogger("roomcast.metrics")

Snapshot = dict[str, dict[str, float]]
"""``{"c": counters, "g": gauges, "p": per-node series}``, each ``series -> value``."""

FOLDED_KEEP = 3600
"""Seconds what was folded for a gone worker is remembered, in case it was only stalled."""

EXCHANGE = """
-- KEYS[1]: the group's hash. ARGV: this node's id, its snapshot (JSON), '1' if it is leaving,
-- the liveness key prefix, the hash's lifetime (s), now (s, this machine's clock: the group is
-- one machine), how long a gone node's folded counters are remembered (s).
-- Returns the counters of the gone nodes, then every live node's snapshot (this one's too).
local hash, me, snap = KEYS[1], ARGV[1], ARGV[2]
local leaving, prefix = ARGV[3] == '1', ARGV[4]
local ttl, now, keep = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])

local function add(into, from, sign)
  for series, value in pairs(from) do
    into[series] = (into[series] or 0) + sign * value
  end
end

local stored = redis.call('HGET', hash, 'r')
local retired = stored and cjson.decode(stored) or {}
local changed = false
local folded = redis.call('HGET', hash, 'f:' .. me)
if folded then  -- taken for gone, yet here: its snapshot holds again what was folded for it
  add(retired, cjson.decode(folded)['c'], -1)
  redis.call('HDEL', hash, 'f:' .. me)
  changed = true
end
redis.call('HSET', hash, 'n:' .. me, snap)
local live = {}
local fields = redis.call('HGETALL', hash)
for i = 1, #fields, 2 do
  local field, value = fields[i], fields[i + 1]
  local kind, node = string.sub(field, 1, 2), string.sub(field, 3)
  if kind == 'n:' then
    local gone
    if node == me then
      gone = leaving
    else
      gone = redis.call('EXISTS', prefix .. node) == 0
    end
    if gone then
      local counters = cjson.decode(value)['c']
      add(retired, counters, 1)
      redis.call('HDEL', hash, field)
      if node ~= me then
        redis.call('HSET', hash, 'f:' .. node, cjson.encode({c = counters, t = now}))
      end
      changed = true
    else
      live[#live + 1] = value
    end
  elseif kind == 'f:' and now - cjson.decode(value)['t'] > keep then
    redis.call('HDEL', hash, field)
  end
end
if changed then
  redis.call('HSET', hash, 'r', cjson.encode(retired))
end
redis.call('EXPIRE', hash, ttl)
local out = {cjson.encode(retired)}
for _, value in ipairs(live) do
  out[#out + 1] = value
end
return out
"""


def merge(retired: dict[str, float], snapshots: list[Snapshot]) -> Snapshot:
    """Add up ``snapshots`` (the live nodes') and the gone nodes' counters ``retired``."""
    counters, gauges, per_node = dict(retired), dict[str, float](), dict[str, float]()
    for snapshot in snapshots:
        for series, value in snapshot.get("c", {}).items():
            counters[series] = counters.get(series, 0) + value
        for series, value in snapshot.get("g", {}).items():
            gauges[series] = gauges.get(series, 0) + value
        per_node.update(snapshot.get("p", {}))
    return {"c": counters, "g": gauges, "p": per_node}


class SharedMetrics:
    """This worker's place in its group's figures (the module docstring says how).

    Args:
        url: the ``--redis`` URL.
        group: the server this worker is one process of (``<hostname>:<port>``).
        node: this worker's node id (``Cluster.node_id``, whose liveness key Redis holds).
        snapshot: returns this worker's figures now.
        interval: seconds between two writes of them.
        timeout: seconds one exchange with Redis may take.
    """

    def __init__(
        self,
        url: str,
        *,
        group: str,
        node: str,
        snapshot: Callable[[], Snapshot],
        interval: float = 5.0,
        timeout: float = 2.0,
    ) -> None:
        self.key = f"rc:metrics:{group}"
        self.node = node
        self.interval = interval
        self.timeout = timeout
        self.ttl = max(60, round(12 * interval))
        self._snapshot = snapshot
        # No retries of its own: a write that fails is simply made again at the next interval.
        self._redis: Any = redis_client.connect(url, retry=False)
        self._exchange = self._redis.register_script(EXCHANGE)
        self._pusher: asyncio.Task[None] | None = None
        self._failing = False
        self._others: Snapshot = {"c": {}, "g": {}, "p": {}}  # the rest of the group, as last heard
        self._nodes = 1

    def __repr__(self) -> str:
        return f"<SharedMetrics {self.key} node={self.node}>"  # never the URL: it may hold a password

    def start(self) -> None:
        """Write this worker's figures now and every ``interval`` seconds. Idempotent."""
        if self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_forever())

    async def exchange(self, own: Snapshot, *, leaving: bool = False) -> tuple[Snapshot, int]:
        """Write ``own`` as this worker's figures; the group's sum and how many workers are in it.

        ``leaving``: this worker stops, and its counters are folded into the group's at once.

        Raises:
            redis.exceptions.RedisError, OSError, TimeoutError: Redis did not answer in time.
        """
        args: list[Any] = [self.node, _json.dumps(own), "1" if leaving else "0", alive_key("")]
        args += [self.ttl, time.time(), FOLDED_KEEP]
        async with asyncio.timeout(self.timeout):
            answer = await self._exchange(keys=[self.key], args=args)
        retired, *snapshots = (_json.loads(raw) for raw in answer)
        group = merge(_plain(retired), snapshots)
        self._others = _without(group, own)
        self._nodes = len(snapshots)
        return group, len(snapshots)

    def estimate(self, own: Snapshot) -> tuple[Snapshot, int]:
        """The group's figures from this worker's ``own`` and the others' as the last exchange
        heard them: what a scrape answers while Redis does not, so that the totals it shows
        do not drop (a drop reads as a counter reset to Prometheus)."""
        return merge({}, [self._others, own]), self._nodes

    async def push(self) -> None:
        """Write this worker's figures now (what it does every ``interval`` seconds)."""
        await self.exchange(self._snapshot())

    async def _push_forever(self) -> None:
        while True:
            try:
                await self.push()
                if self._failing:
                    logger.info("metrics reach Redis again")
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next interval tries again; say so once per outage
                if not self._failing:
                    logger.warning("could not write this worker's metrics to Redis (%s)", type(exc).__name__)
                self._failing = True
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        """Stop writing, fold this worker's final figures into the group's, and disconnect."""
        pusher, self._pusher = self._pusher, None
        if pusher is not None:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher
            with contextlib.suppress(Exception):  # Redis gone: the others fold it once its key lapses
                await self.exchange(self._snapshot(), leaving=True)
        with contextlib.suppress(Exception):
            await self._redis.aclose()


def _without(group: Snapshot, own: Snapshot) -> Snapshot:
    """``group`` less this worker's ``own`` part."""
    mine = own["p"]
    return {
        "c": {series: value - own["c"].get(series, 0) for series, value in group["c"].items()},
        "g": {series: value - own["g"].get(series, 0) for series, value in group["g"].items()},
        "p": {series: value for series, value in group["p"].items() if series not in mine},
    }


def _plain(value: Any) -> dict[str, float]:
    """Lua's cjson writes an empty table as ``{}`` or ``[]``; both mean no counters."""
    return value if isinstance(value, dict) else {}
