"""``SqliteTaskStore``: the default ``TaskStore``, one SQLite file on local disk.

Imports L0, ``tasks.model``, ``tasks.store`` and the stdlib ``sqlite3``; nothing else.

Threading. Every SQLite call runs on one dedicated worker thread (a single-worker
``ThreadPoolExecutor``) that opens, uses and closes the one connection. Chosen over
``asyncio.to_thread`` plus a lock because:

* a ``sqlite3.Connection`` belongs to the thread that made it; with one owner thread there
  is no ``check_same_thread=False`` and no lock to forget;
* a single worker runs jobs in submission order, which is how ``TaskStore`` promises that
  writes apply in call order. ``to_thread`` plus a ``threading.Lock`` does not: the default
  pool starts jobs on any idle thread and the lock is not fair, so a stale progress write
  could land after a newer one;
* the default executor is shared with ``getaddrinfo`` and the application's own
  ``to_thread`` calls; a burst there must not stall task writes, nor the reverse;
* SQLite admits one writer at a time anyway: more threads would only queue on its lock.

A coroutine awaiting the store can be cancelled, but the statement it submitted cannot: if
it had started it completes; if it was still queued it is dropped. ``put`` of a terminal
task should therefore be shielded (``asyncio.shield``) by a caller that must not lose it.

Durability. A file database runs in WAL mode with ``synchronous=NORMAL``: a committed write
survives a crash of the process (what ``mark_interrupted`` is for) and readers never block
the writer; the last commits before a power cut may be lost, which a task list can afford.
``":memory:"`` (the default) keeps everything in this process, for tests and demos.

One process per file, enforced. ``mark_interrupted`` assumes every non-terminal task in the
file was left by a process that has exited: a second server opening a live server's file
would fail that server's running tasks. So a file store takes an exclusive, non-blocking
lock on a lock file beside the database (``tasks.db.lock``) before it opens the database,
holds it until ``aclose``, and a second store is refused at once with a ``TaskError`` that
names the holder's pid. Why this lock and not another:

* ``flock`` (``msvcrt.locking`` on Windows) belongs to the open file, so the kernel
  releases it whenever the process ends, SIGKILL included: no stale lock after a crash, no
  pid file to clean up, no "is that pid still us?" guess;
* a separate file, not the database: SQLite takes POSIX ``fcntl`` locks on the database,
  which our own descriptor on it would disturb (closing any descriptor of a file drops all
  of a process's ``fcntl`` locks on it), and over NFS Linux emulates ``flock`` with
  ``fcntl`` locks, which would then collide with SQLite's own;
* not SQLite's ``locking_mode=EXCLUSIVE``: it also shuts out readers (a ``sqlite3`` shell,
  a backup), and the second server would learn of it only when a query timed out, as
  "database is locked";
* the lock file is never deleted: removing it would let a newcomer lock a fresh file while
  the old holder still locks the unlinked one.

Versions and ``swap``. Each row carries the task's ``version`` and the ``node`` holding it
(``TaskStore``). With one process per file no other writer can race this one, so ``swap``
is a plain ``UPDATE … WHERE version = ?`` on the worker thread; it is kept so that the
service runs one code path on every store. ``leases`` is ``None``: the lock above is what
makes ``mark_interrupted`` at startup safe, and there is no other live node to outlive.

Schema versioning uses ``PRAGMA user_version``: 0 is an empty file, each entry of
``_MIGRATIONS`` moves it up by one inside one transaction, and a file from a newer roomcast
is refused rather than misread.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from roomcast import _json
from roomcast.errors import InvalidState, TaskError
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

__all__ = ["SqliteTaskStore", "SCHEMA_VERSION"]

_T = TypeVar("_T")

SCHEMA_VERSION = 2

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 → 1. Scalar fields are real columns (filters, indexes, ad-hoc ``sqlite3`` queries);
    # ``result`` and ``metadata`` are JSON text, which SQLite's json_* functions can read.
    (
        """
        CREATE TABLE tasks (
            id          TEXT PRIMARY KEY NOT NULL,
            kind        TEXT NOT NULL,
            title       TEXT NOT NULL,
            owner       TEXT,
            status      TEXT NOT NULL,
            progress    REAL,
            step        TEXT,
            message     TEXT,
            result      TEXT,
            error       TEXT,
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL,
            started_at  REAL,
            finished_at REAL,
            deadline    REAL,
            metadata    TEXT NOT NULL
        )
        """,
        # One index per list filter, each ending in the page order so that a filtered,
        # paged list is an index range scan with no sort.
        "CREATE INDEX tasks_by_created ON tasks (created_at, id)",
        "CREATE INDEX tasks_by_status ON tasks (status, created_at, id)",
        "CREATE INDEX tasks_by_kind ON tasks (kind, created_at, id)",
        "CREATE INDEX tasks_by_owner ON tasks (owner, created_at, id)",
    ),
    # 1 → 2. The compare-and-set version and the node holding the task (``TaskStore``).
    # Rows from version 1 start at 1: any number works, as long as every write adds one.
    (
        "ALTER TABLE tasks ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE tasks ADD COLUMN node TEXT",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_COLUMNS = (
    "id, kind, title, owner, status, progress, step, message, result, error, "
    "created_at, updated_at, started_at, finished_at, deadline, metadata"
)
_NAMES = tuple(name.strip() for name in _COLUMNS.split(","))
_TERMINAL_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL)) + ")"
_SET_ALL = ", ".join(f"{name} = excluded.{name}" for name in _NAMES[1:])

# Upsert that leaves a stored terminal task alone: the store half of "terminal is final".
_PUT = f"""
    INSERT INTO tasks ({_COLUMNS}) VALUES ({", ".join("?" * 16)})
    ON CONFLICT (id) DO UPDATE SET {_SET_ALL}, version = tasks.version + 1
    WHERE tasks.status NOT IN {_TERMINAL_SQL}
"""

# ``swap`` with version 0: a new task, or nothing.
_CREATE = f"""
    INSERT INTO tasks ({_COLUMNS}, version, node) VALUES ({", ".join("?" * 18)})
    ON CONFLICT (id) DO NOTHING
"""

# ``swap`` over a version: the row only if it still holds that version and has not ended.
_SWAP = f"""
    UPDATE tasks SET {", ".join(f"{name} = ?" for name in _NAMES[1:])}, node = ?, version = version + 1
    WHERE id = ? AND version = ? AND status NOT IN {_TERMINAL_SQL}
"""


class SqliteTaskStore:
    """A ``TaskStore`` in one SQLite database, driven from one worker thread.

    The database is opened lazily by the first call; ``await open()`` at startup surfaces a
    bad path, a too-new schema or a file another server holds there instead. Always ``await
    aclose()``: it closes the connection (checkpointing the WAL), releases the file's lock
    (see the module: one process per file) and lets the worker thread end.

    Args:
        path: a file (created if missing) or ``":memory:"``.
        busy_timeout_s: how long a write waits for another connection's lock (a ``sqlite3``
            shell, a backup) before failing with ``sqlite3.OperationalError``.
    """

    def __init__(self, path: str | Path = ":memory:", *, busy_timeout_s: float = 5.0) -> None:
        self._path = str(path)
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roomcast-tasks")
        self._conn: sqlite3.Connection | None = None  # only ever touched on the worker thread
        self._lock: int | None = None  # the lock file's descriptor while held; worker thread too
        self._closed = False  # only ever touched on the event loop

    def __repr__(self) -> str:
        return f"SqliteTaskStore({self._path!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the database and bring its schema up to date (otherwise the first call does).

        Raises:
            TaskError: another process has the file open (its lock is held), or the file
                holds a schema from a newer roomcast.
            sqlite3.Error: the file cannot be opened or is not a database.
            OSError: the lock file beside it cannot be created.
        """
        await self._run(lambda conn: None)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_sync)
        finally:
            self._executor.shutdown(wait=False)

    # -- TaskStore ---------------------------------------------------------------------------

    @property
    def leases(self) -> None:
        """``None``: one process per file (see the module), so nothing to lease."""
        return None

    async def put(self, task: Task) -> bool:
        row = _to_row(task)  # encode on the loop: a bad value fails at the caller's line
        return await self._run(lambda conn: conn.execute(_PUT, row).rowcount == 1)

    async def swap(self, task: Task, *, version: int, node: str | None) -> Swap:
        row = _to_row(task)

        def swap(conn: sqlite3.Connection) -> Swap:
            if version == 0:
                written = conn.execute(_CREATE, (*row, 1, node)).rowcount == 1
            else:
                written = conn.execute(_SWAP, (*row[1:], node, task.id, version)).rowcount == 1
            return Swap(written, _read(conn, task.id))

        return await self._run(swap)

    async def get(self, task_id: str) -> Task | None:
        stored = await self.read(task_id)
        return None if stored is None else stored.task

    async def read(self, task_id: str) -> Stored | None:
        return await self._run(lambda conn: _read(conn, task_id))

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
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if status is not None:
            statuses = status_values(status)
            if not statuses:
                return [], None
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if cursor is not None:
            where.append("(created_at, id) < (?, ?)")
            params.extend(decode_cursor(cursor))
        sql = f"SELECT {_COLUMNS} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # One row more than asked says whether another page exists, so the last page carries
        # no cursor and a client never fetches an empty page.
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit + 1)

        def page(conn: sqlite3.Connection) -> builtins.list[Task]:
            return [_from_row(row) for row in conn.execute(sql, params)]

        tasks = await self._run(page)
        if len(tasks) <= limit:
            return tasks, None
        del tasks[limit:]
        return tasks, encode_cursor(tasks[-1])

    async def delete_older_than(self, ts: float) -> int:
        sql = f"DELETE FROM tasks WHERE status IN {_TERMINAL_SQL} AND COALESCE(finished_at, updated_at) < ?"
        return await self._run(lambda conn: conn.execute(sql, (ts,)).rowcount)

    async def keep_newest(self, count: int) -> int:
        check_count(count)

        def trim(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                # The newest terminal task beyond ``count``: it and everything older goes.
                edge = conn.execute(
                    f"SELECT created_at, id FROM tasks WHERE status IN {_TERMINAL_SQL}"
                    " ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?",
                    (count,),
                ).fetchone()
                if edge is None:
                    return 0
                return conn.execute(
                    f"DELETE FROM tasks WHERE status IN {_TERMINAL_SQL} AND (created_at, id) <= (?, ?)",
                    edge,
                ).rowcount

        return await self._run(trim)

    async def mark_interrupted(self, reason: str, now: float) -> builtins.list[Task]:
        def interrupt(conn: sqlite3.Connection) -> builtins.list[Task]:
            with _transaction(conn):
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM tasks WHERE status NOT IN {_TERMINAL_SQL}"
                    " ORDER BY created_at DESC, id DESC"
                ).fetchall()
                # Through the model, so the table decides (every live status may fail).
                failed = [_from_row(row).fail(now, reason) for row in rows]
                conn.executemany(_PUT, [_to_row(task) for task in failed])
                return failed

        return await self._run(interrupt)

    # -- worker thread -----------------------------------------------------------------------

    async def _run(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        # Submitted before the first suspension, so calls reach the worker in call order.
        if self._closed:
            raise InvalidState(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, job)

    def _call(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._conn is None:
            if self._lock is None and self._path not in _PRIVATE:
                self._lock = _lock_exclusively(self._path)
            try:
                self._conn = _connect(self._path, self._busy_timeout_s)
            except BaseException:
                self._unlock()
                raise
        return job(self._conn)

    def _close_sync(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()  # the last commit and the WAL checkpoint, before another may open
                self._conn = None
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None


_PRIVATE = (":memory:", "")
"""Paths that name a database private to its connection: nothing to share, nothing to lock."""


def _lock_exclusively(path: str) -> int:
    """Lock ``{path}.lock`` for this process; returns its descriptor, locked while open.

    Non-blocking: a second server is told at once, not after a timeout. The holder writes
    its pid into the file so the refusal can say who it is.

    Raises:
        TaskError: another process (or another store in this one) holds the lock.
    """
    lock_path = path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        if not _try_lock(fd):
            holder = _read_holder(fd)
            by = f" (pid {holder})" if holder else ""
            raise TaskError(
                f"task database {path!r} is in use by another roomcast server{by}: one server per "
                f"task database, since a server fails every unfinished task it finds at start. Stop "
                f"that server or give this one a file of its own (lock held on {lock_path!r})"
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_holder(fd: int) -> str | None:
    """The pid the lock's holder wrote, if it can be read (Windows hides a locked byte)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks bytes from the current position
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _connect(path: str, busy_timeout_s: float) -> sqlite3.Connection:
    # Autocommit (isolation_level=None): each statement commits on its own, and multi-step
    # operations take an explicit BEGIN IMMEDIATE, so Python's implicit transactions never
    # hold a write lock between calls.
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    with _transaction(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise TaskError(
                f"task database schema version {version} is newer than this roomcast "
                f"supports ({SCHEMA_VERSION}); upgrade roomcast or use another file"
            )
        for step in _MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: a read-then-write never fails half-way with
    # SQLITE_BUSY because another connection wrote in between.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _to_row(task: Task) -> tuple[Any, ...]:
    try:
        result = None if task.result is None else _json.dumps_str(task.result)
        metadata = _json.dumps_str(task.metadata)
    except TypeError as exc:
        reason = f"task {task.id}: result or metadata is not JSON-serialisable ({exc})"
        raise TaskError(reason) from None
    return (
        task.id,
        task.kind,
        task.title,
        task.owner,
        task.status.value,
        task.progress,
        task.step,
        task.message,
        result,
        task.error,
        task.created_at,
        task.updated_at,
        task.started_at,
        task.finished_at,
        task.deadline,
        metadata,
    )


def _read(conn: sqlite3.Connection, task_id: str) -> Stored | None:
    row = conn.execute(f"SELECT {_COLUMNS}, version, node FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return None if row is None else Stored(_from_row(row[:-2]), row[-2], row[-1])


def _from_row(row: Sequence[Any]) -> Task:
    # Through ``Task.from_json`` so that a row edited by hand is checked like any input.
    data = dict(zip(_NAMES, row))
    try:
        if data["result"] is not None:
            data["result"] = _json.loads(data["result"])
        data["metadata"] = _json.loads(data["metadata"])
        return Task.from_json(data)
    except (ValueError, TypeError, TaskError) as exc:  # JSONDecodeError is a ValueError
        raise TaskError(f"stored task {data['id']!r} is unreadable ({exc})") from None
