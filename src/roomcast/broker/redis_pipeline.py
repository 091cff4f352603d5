"""``AutoPipeline``: script calls made while one is on its way go to Redis together.

Imports redis-py only. Why: a busy node publishes faster than Redis answers (a backend's
burst, a handler that publishes to several rooms, many clients at once). Sent one by one,
each call costs a pool checkout, a ``send`` and a reply of its own on the node, and Redis
runs them in separate event-loop turns, so it flushes each ``PUBLISH`` to the subscribed
nodes in a packet of its own: every receiving node then wakes once per publication and
writes each to its clients separately. Sent as one pipeline, Redis reads them in one turn
and the nodes receive them together, to fan out with one write per client.

The rule is Nagle's without the timer: a call made while nothing is on its way is sent at
once (a lone publication waits for nothing); calls made while a call or a batch is on its
way queue, and go as one pipeline the moment it returns. Retries are safe: every publish
carries its own idempotency key (``broker.redis.publish_call``), and redis-py retries a
pipeline whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError

__all__ = ["AutoPipeline"]

_Call = tuple[list[Any], list[Any], "asyncio.Future[Any]"]


class AutoPipeline:
    """Calls of one registered script; at most one call or batch on its way at a time.

    Args:
        redis: the asyncio client the pipelines are made from.
        script: a script registered on ``redis`` (``redis.register_script``).
    """

    def __init__(self, redis: Any, script: Any) -> None:
        self._redis = redis
        self._script = script
        self._queued: list[_Call] = []
        self._busy = False
        self._sending: set[asyncio.Task[None]] = set()
        self.batches = 0
        """Pipelines sent (calls that went alone are not counted): for benchmarks and tests."""

    async def call(self, keys: list[Any], args: list[Any]) -> Any:
        """The script's answer for ``keys`` and ``args``; raises what the call raised."""
        if not self._busy:
            self._busy = True
            try:
                return await self._script(keys=keys, args=args)
            finally:
                self._next()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((keys, args, future))
        return await future

    def _next(self) -> None:
        """The call or batch on its way returned: send what queued meanwhile, or go idle."""
        batch, self._queued = self._queued, []
        batch = [call for call in batch if not call[2].done()]  # callers cancelled meanwhile
        if not batch:
            self._busy = False
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        self.batches += 1
        try:
            answers = await self._evalsha(batch)
            if any(isinstance(answer, NoScriptError) for answer in answers):
                # Redis lost its scripts (restarted, SCRIPT FLUSH): nothing ran, so load it and
                # send the batch again (and every call carries its idempotency key anyway)
                await self._redis.script_load(self._script.script)
                answers = await self._evalsha(batch)
        except Exception as exc:  # the whole batch failed: each caller hears it
            answers = [exc] * len(batch)
        except BaseException:
            for _, _, future in batch:
                future.cancel()
            raise
        finally:
            self._next()
        for (_, _, future), answer in zip(batch, answers, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _evalsha(self, batch: list[_Call]) -> list[Any]:
        """One pipeline of ``EVALSHA`` calls, answers or errors in order. Not redis-py's
        pipelined ``Script``, which asks ``SCRIPT EXISTS`` before every pipeline: a second
        round trip per batch, during which the next batch could not start."""
        sha = self._script.sha
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(sha, len(keys), *keys, *args)
            answers: list[Any] = await pipe.execute(raise_on_error=False)
        return answers
