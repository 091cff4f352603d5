"""``NodeDuties``: what one node owes the others when several share a task store.

Imports L0, ``cluster.base`` and ``tasks.*``. Package-private, driven by ``TaskService``.
With one process per store (``TaskStore.leases`` is ``None``) only the stop handler is
registered and nothing else runs: ``mark_interrupted`` at startup does the rest. With a
shared store (``RedisTaskStore``):

* **This node's lease.** Renewed every third of ``lease_ttl``. The tasks whose producer runs
  here are stored with this node's id; while the lease lives, no other node touches them.
  Closing releases it, so tasks left unfinished by a shutdown are handed over at once.
* **Other nodes' lapsed leases.** Every beat, the unfinished tasks of nodes whose lease has
  lapsed (``Leases.orphans``) are failed with ``NODE_LOST_REASON``: published in their rooms
  and the rooms marked terminal, as ``mark_interrupted`` does for one process. Every live node
  sweeps; the compare-and-set write lets exactly one of them fail each task and publish it.
  A node sweeps only after ``lease_ttl`` of renewing its own lease without error: a Redis
  outage stops every node's renewals at once, and right after it a lapsed lease says nothing
  about its node. Each node had that whole ``ttl`` to renew, so a lease still missing then is
  a node that is gone.
* **Deadlines nobody else watches.** The same beat times out overdue tasks that no live node
  holds (``Leases.overdue``): a worker's task whose creating node died has no timer anywhere.
* **Stops for producers here.** ``TaskService.request_stop`` on another node writes
  ``stopping`` and asks the holding node (``cluster.ask(node, STOP_KIND, {"id": ...})``);
  ``_stop_here`` then does what a local stop does: cancel the producer, tell the listeners
  (a poller), give it ``stop_grace``.

How long until "node lost": the dead node's last renewal plus ``lease_ttl`` for its lease to
lapse, plus up to one beat (``lease_ttl / 3``) for a survivor to sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from roomcast.cluster.base import Cluster, NodeUnreachable
from roomcast.errors import BrokerError, InvalidTransition, ShuttingDown, TaskError, TaskNotFound
from roomcast.tasks._live import LiveTasks
from roomcast.tasks.model import Task, TaskStatus
from roomcast.tasks.store import Leases, Stored
from roomcast.types import JSONValue

__all__ = ["NodeDuties", "NODE_LOST_REASON", "STOP_KIND", "DEFAULT_LEASE_TTL"]

logger = logging.getLogger("roomcast.tasks")

NODE_LOST_REASON = "node lost"
"""The ``error`` of a task whose node (the process running its producer) died and stayed gone."""

STOP_KIND = "task.stop"
"""The node-bus request that tells a task's holding node to stop its producer."""

DEFAULT_LEASE_TTL = 10.0
"""Seconds a node's tasks outlive its last lease renewal: long enough for a loop stall or a
Redis failover not to fail healthy work, short enough for a dashboard to show the truth soon."""

_OVERDUE_PER_BEAT = 100


class NodeDuties:
    """The lease, the sweep and the stop handler of one ``TaskService``.

    Args:
        tasks: the service's live tasks (writes, publications, stop effects).
        cluster: the node bus; ``STOP_KIND`` is answered here.
        leases: the store's leases, or ``None`` for a store this process has alone.
        lease_ttl: seconds a lease lives unrenewed.
    """

    def __init__(self, tasks: LiveTasks, cluster: Cluster, leases: Leases | None, *, lease_ttl: float) -> None:
        if not lease_ttl > 0:
            raise ValueError("lease_ttl must be > 0")
        self._tasks = tasks
        self._cluster = cluster
        self._leases = leases
        self._ttl = lease_ttl
        self._healthy_since: float | None = None  # monotonic time of the first renewal in a row
        self._beating: asyncio.Task[None] | None = None
        cluster.on(STOP_KIND, self._stop_here)

    @property
    def node_id(self) -> str:
        return self._cluster.node_id

    async def open(self) -> None:
        """Take this node's lease and start renewing it (a shared store only)."""
        if self._leases is None:
            return
        await self._leases.hold(self.node_id, self._ttl)
        self._healthy_since = time.monotonic()
        self._beating = asyncio.create_task(self._beat_forever())

    async def stop_beating(self) -> None:
        """Stop renewing and sweeping (a closing service writes nothing new); the lease stays."""
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
            self._beating = None

    async def aclose(self) -> None:
        """Stop renewing and release the lease: what is still held here is handed over."""
        await self.stop_beating()
        if self._leases is not None:
            try:
                await self._leases.release(self.node_id)
            except BrokerError as exc:  # it lapses by itself within lease_ttl
                logger.warning("could not release the task lease of node %s: %s", self.node_id, exc)

    # -- the beat ----------------------------------------------------------------------------

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self.beat()
            except Exception:  # a bug in one beat must not end the lease for good
                logger.exception("task lease beat failed on node %s", self.node_id)

    async def beat(self) -> int:
        """Renew the lease, forget idle records, and end what dead nodes left; how many ended."""
        assert self._leases is not None
        try:
            await self._leases.hold(self.node_id, self._ttl)
        except BrokerError as exc:
            if self._healthy_since is not None:
                logger.warning("could not renew the task lease of node %s: %s", self.node_id, exc)
            self._healthy_since = None
            return 0
        now = time.monotonic()
        if self._healthy_since is None:
            self._healthy_since = now
        self._tasks.drop_idle()
        if now - self._healthy_since < self._ttl:
            return 0  # right after an outage a lapsed lease says nothing yet
        try:
            return await self.sweep()
        except BrokerError as exc:
            logger.warning("task sweep failed on node %s: %s", self.node_id, exc)
            return 0

    async def sweep(self) -> int:
        """Fail the tasks of nodes whose lease lapsed; time out unwatched overdue tasks."""
        assert self._leases is not None
        ended = 0
        for stored in await self._leases.orphans():
            ended += await self._end(stored, lambda t, now: t if t.is_terminal else t.fail(now, NODE_LOST_REASON))
        for stored in await self._leases.overdue(time.time(), _OVERDUE_PER_BEAT):
            ended += await self._end(stored, lambda t, now: t if t.is_terminal else t.time_out(now))
        if ended:
            logger.info("node %s ended %d tasks left by lost nodes or past their deadline", self.node_id, ended)
        return ended

    async def _end(self, stored: Stored, change: Callable[[Task, float], Task]) -> int:
        """Apply ``change`` through the usual write path; 1 if this node's write ended it."""
        made = False

        def end(task: Task, now: float) -> Task:
            nonlocal made
            new = change(task, now)
            made = new is not task  # the last call is the one written (or found already ended)
            return new

        try:
            await self._tasks.change(self._tasks.adopt(stored), end)
        except (InvalidTransition, TaskNotFound, ShuttingDown):
            return 0  # another node ended it first, or we are closing: it is not ours to end
        except TaskError:
            logger.exception("could not end task %s", stored.task.id)
            return 0
        return int(made)

    # -- stops -------------------------------------------------------------------------------

    async def forward_stop(self, node: str, task_id: str) -> bool:
        """Ask ``node``, which holds the task, to stop its producer; whether it took it.

        A node that cannot be reached is not waited for: the caller's grace timer ends the
        task, or the node's lease lapses and a survivor fails it.
        """
        try:
            await self._cluster.ask(node, STOP_KIND, {"id": task_id}, timeout=max(1.0, min(5.0, self._tasks.grace)))
        except (NodeUnreachable, BrokerError) as exc:
            logger.info("task %s: node %s did not take the stop (%s)", task_id, node, exc)
            return False
        return True

    async def _stop_here(self, payload: JSONValue) -> JSONValue:
        task_id = payload.get("id") if isinstance(payload, dict) else None
        if not isinstance(task_id, str):
            raise ValueError(f"{STOP_KIND} expects {{id: string}}")
        live = self._tasks.live.get(task_id)
        if live is None or live.node != self.node_id:
            return {"held": False}  # ended here already, or never ran here
        await self._tasks.refresh(live)  # learn the ``stopping`` the asker wrote
        if live.task.status is TaskStatus.STOPPING:
            self._tasks.stopped_elsewhere(live)
        return {"held": True, "status": live.task.status.value}
