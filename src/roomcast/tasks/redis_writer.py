"""A worker's task changes written straight into the Redis the nodes share, with no node between.

What ``RedisPublisher``'s task calls run (a Celery worker's, through ``roomcast.celery``).
Blocking (redis-py's sync client), for worker threads without an event loop.

The rules are the nodes' own, not a copy: the model decides what may change (``Task``'s
methods), a change is one compare-and-set of ``store_redis.WRITE_SCRIPT`` over the version
read, and a refused write is read again and the change computed again from the newer value,
as ``tasks._live`` does. So a stop a node wrote a moment ago is never overwritten: a report
answers ``stopping``, a completion after a cancel is refused (``InvalidTransition``). The
changes are published to the task's room and the summary rooms with the names a node uses
(``event_for``), and a task's end marks its room finished (``TERMINATE_SCRIPT``), so a
subscriber's stream ends on every node as it does for a task a node ended.

What the worker cannot know is the nodes' configuration: give it their event aliases
(``--task-event``) and summary rooms (``--task-list-rooms``). Progress is written per call,
not coalesced: the caller throttles (``roomcast.celery`` does). The task is held by no node,
as one created through the API for an outside worker is, so no node's death fails it; the
nodes still enforce its deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from roomcast.broker.redis import TERMINATE_SCRIPT, terminate_call
from roomcast.errors import TaskError, TaskExists, TaskNotFound
from roomcast.tasks.model import DEFAULT_EVENTS, Task, TaskEvents, TaskStatus, event_for, summary_rooms, task_room
from roomcast.tasks.store import Stored
from roomcast.tasks.store_redis import DEFAULT_NAMESPACE, WRITE_SCRIPT, read_stored, task_key, write_answer, write_call
from roomcast.types import JSONValue, RoomName

__all__ = ["RedisTaskWriter"]

_ATTEMPTS = 100
"""Refused writes one change survives (as a node's): only a store that never settles gets there."""

Publish = Callable[[RoomName, str, JSONValue], object]


class RedisTaskWriter:
    """Creates and changes tasks in the nodes' Redis task store, and publishes each change.

    Args:
        redis: a sync redis-py client of the nodes' ``--redis``.
        publish: ``publish(room, event, data)`` into the same Redis (``RedisPublisher.publish``).
        history_ttl: the nodes' ``--history-ttl``: how long a finished task's room stays marked.
        events: event names per task kind, as the nodes' ``--task-event`` aliases give them.
        list_rooms: ``"kind"`` and/or ``"owner"``, as the nodes' ``--task-list-rooms``.
        namespace: the task store's namespace (the nodes' default unless they changed it).

    Raises (every method): ``TaskNotFound``, ``TaskExists``, ``InvalidTransition``,
    ``InvalidProgress``, ``TaskError``, and redis-py's errors for an unreachable Redis.
    """

    def __init__(
        self,
        redis: Any,
        publish: Publish,
        *,
        history_ttl: int,
        events: Mapping[str, TaskEvents] | None = None,
        list_rooms: Collection[str] = (),
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self._redis = redis
        self._publish = publish
        self._ttl = history_ttl
        self._events = dict(events or {})
        self._list_rooms = frozenset(list_rooms)
        self._p = "{" + namespace + "}"
        self._write = redis.register_script(WRITE_SCRIPT)
        self._terminate = redis.register_script(TERMINATE_SCRIPT)

    def get(self, task_id: str) -> Task:
        stored = self._read(task_id)
        if stored is None:
            raise TaskNotFound(task_id)
        return stored.task

    def create(self, task: Task) -> Task:
        """Store a new ``pending`` task and publish ``created``; a taken id raises ``TaskExists``."""
        keys, args = write_call(self._p, task, "swap", 0, None)
        if not write_answer(task, self._write(keys=keys, args=args)).ok:
            raise TaskExists(task.id)
        self._announce(None, task)
        return task

    def change(self, task_id: str, change: Callable[[Task, float], Task]) -> Task:
        """Apply ``change`` (one of the model's methods) over the stored task, compare-and-set.

        A change that returns the task unchanged writes and publishes nothing.
        """
        stored = self._read(task_id)
        for _ in range(_ATTEMPTS):
            if stored is None:
                raise TaskNotFound(task_id)
            old = stored.task
            new = change(old, time.time())
            if new is old:
                return old
            keys, args = write_call(self._p, new, "swap", stored.version, stored.node)
            swap = write_answer(new, self._write(keys=keys, args=args))
            if swap.ok:
                self._announce(old.status, new)
                return new
            stored = swap.stored
        raise TaskError(f"task {task_id}: gave up after {_ATTEMPTS} writes refused by newer versions")

    def _read(self, task_id: str) -> Stored | None:
        return read_stored(self._redis.hmget(task_key(self._p, task_id), "j", "v", "n"))

    def _announce(self, old: TaskStatus | None, task: Task) -> None:
        """Publish as a node does (``tasks._live``): the whole task to its room, a summary to
        the list rooms; then, at its end, mark its room finished."""
        event = event_for(old, task.status, self._events.get(task.kind, DEFAULT_EVENTS))
        self._publish(task_room(task.id), event, task.to_json())
        summary = task.summary()
        for room in summary_rooms(task, self._list_rooms):
            self._publish(room, event, summary)
        if task.is_terminal:
            keys, args = terminate_call(task_room(task.id), self._ttl)
            self._terminate(keys=keys, args=args)
