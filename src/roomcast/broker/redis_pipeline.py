"""``AutoPipeline``: calls of one script pipelined on one connection, a turn's calls together.

Imports redis-py only. Why: a busy node publishes faster than Redis answers (a backend's
burst, a handler that publishes to several rooms, many clients at once). Sent one by one,
each call costs a pool checkout, a ``send`` and a reply of its own on the node, and Redis
runs them in separate event-loop turns, so it flushes each ``PUBLISH`` to the subscribed
nodes in a packet of its own: every receiving node then wakes once per publication and
writes each to its clients separately. The number of writes per delivered message is what
a fan-out costs (kernel time), so how publications travel together decides it.

Two rules:

* The calls made in one event-loop turn go out together at its end, in one write (a node
  that reads four publish requests in one read sends them as one pipeline, and every
  subscribed node receives the four publications in one read, to write each client once
  for all of them). A lone call waits for nothing but the end of its turn.
* Nothing waits for an answer before sending: the connection is the node's own (not one of
  the pool's), so batches follow each other on it while earlier ones are on their way,
  and Redis answers them in the order they were sent. Waiting for each batch's answer
  before the next (what a pool connection per pipeline forces, to keep the order) splits
  a burst into a first call and the rest, and the split persists: every receiving node
  then writes twice as often.

A broken connection is opened again and the calls it had not answered are sent once more,
in their order; a call that fails twice fails for its caller. Retries are safe: every
publish carries its own idempotency key (``broker.redis.publish_call``). A call answered
NOSCRIPT (``SCRIPT FLUSH``; a new connection loads the script first, so a restarted Redis
does not get that far) did not run: the script is loaded and such calls are sent again, in
their order (a call sent behind them that another client's load let through runs before
them: the window is one round trip after the script cache was flushed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

__all__ = ["AutoPipeline"]


class _Call:
    __slots__ = ("args", "future", "sent")

    def __init__(self, args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        self.args = args  # the whole EVALSHA command
        self.future = future
        self.sent = 0  # times it went out


class AutoPipeline:
    """Calls of one registered script, pipelined on a connection of their own.

    Args:
        redis: the asyncio client whose pool opens the connection (its URL, TLS, password
            and Sentinel lookup are the client's).
        script: a script registered on ``redis`` (``redis.register_script``).
    """

    def __init__(self, redis: Any, script: Any) -> None:
        self._redis = redis
        self._script = script
        self._queued: list[_Call] = []  # made this turn, not sent yet
        self._waiting: collections.deque[_Call] = collections.deque()  # sent; answers come in this order
        self._conn: Any = None
        self._lock = asyncio.Lock()  # one send or reconnection at a time, in the order asked
        self._reader: asyncio.Task[None] | None = None
        self._unknown: list[_Call] = []  # answered NOSCRIPT: sent again once it is loaded
        self._sending: set[asyncio.Task[None]] = set()
        self.batches = 0
        """Writes of more than one call: for benchmarks and tests."""

    async def call(self, keys: list[Any], args: list[Any]) -> Any:
        """The script's answer for ``keys`` and ``args``; raises what the call raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append(_Call(("EVALSHA", self._script.sha, len(keys), *keys, *args), future))
        if len(self._queued) == 1:  # the turn's first call: the turn's calls go at its end
            loop.call_soon(self._flush)
        return await future

    async def aclose(self) -> None:
        """Stop reading and give the connection back; unanswered callers are cancelled."""
        for task in (self._reader, *self._sending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for call in (*self._queued, *self._waiting):
            call.future.cancel()
        self._queued.clear()
        self._waiting.clear()
        if self._conn is not None:
            await self._conn.disconnect()
            await self._redis.connection_pool.release(self._conn)
            self._conn = None

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        batch = [call for call in batch if not call.future.done()]  # callers cancelled meanwhile
        if batch:
            self._start(self._send(batch))

    def _start(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        async with self._lock:
            await self._write(batch)

    async def _write(self, batch: list[_Call]) -> None:
        """Write ``batch`` behind what is on its way (lock held)."""
        for call in batch:
            call.sent += 1
        self._waiting.extend(batch)
        self.batches += len(batch) > 1
        if self._conn is None:
            try:  # (again): Redis may have restarted without its scripts
                await self._redis.script_load(self._script.script)
                self._conn = await self._redis.connection_pool.get_connection()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redis-py's retry policy already tried: nothing was sent
                self._fail_waiting(exc)
                return
        conn = self._conn
        try:
            await conn.send_packed_command(conn.pack_commands([call.args for call in batch]), check_health=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._broken(exc)
            return
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        """Answer the waiting calls in order, while any waits, from the current connection."""
        while self._waiting and self._conn is not None:
            conn = self._conn
            try:
                answer: Any = await conn.read_response(disable_decoding=True)
            except NoScriptError:  # did not run: again, in order, once the script is loaded
                self._unknown.append(self._waiting.popleft())
                if len(self._unknown) == 1:
                    self._start(self._load_and_resend())
                continue
            except ResponseError as exc:  # the script's own error: this call's answer
                answer = exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                async with self._lock:
                    if conn is self._conn:  # not yet seen broken by a write
                        await self._broken(exc)
                continue
            call = self._waiting.popleft()
            if call.future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(answer, Exception):
                call.future.set_exception(answer)
            else:
                call.future.set_result(answer)

    async def _load_and_resend(self) -> None:
        try:
            await self._redis.script_load(self._script.script)
        except Exception as exc:
            failed, self._unknown = self._unknown, []
            for call in failed:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        async with self._lock:
            batch, self._unknown = self._unknown, []
            batch = [call for call in batch if not call.future.done()]
            if batch:
                await self._write(batch)

    async def _broken(self, error: Exception) -> None:
        """The connection broke (lock held): drop it, and send what it had not answered once
        more on a new one, in order; what already went twice fails with ``error``."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            await self._redis.connection_pool.release(conn)
        again = [call for call in self._waiting if call.sent < 2]
        self._waiting = collections.deque(call for call in self._waiting if call.sent >= 2)
        self._fail_waiting(error)
        again = [call for call in again if not call.future.done()]
        if again:
            await self._write(again)

    def _fail_waiting(self, error: Exception) -> None:
        for call in self._waiting:
            if not call.future.done():
                call.future.set_exception(error)
        self._waiting.clear()
