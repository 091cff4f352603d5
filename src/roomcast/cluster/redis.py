"""``RedisCluster``: the node bus over Redis pub/sub, for ``roomcast serve --redis``.

Imports L0, ``cluster.base``, ``broker.redis_client`` and redis-py. Each node listens on its
own channel ``rc:n:<node id>``; a request is one ``PUBLISH`` to the asked node's channel, its
answer one ``PUBLISH`` back to the asker's. Why pub/sub and not a stream per node: a
request only matters while its asker waits, so nothing needs to outlive a node, and
``PUBLISH`` answers how many listeners got the message, so a request to a node that is
gone fails at once (0) instead of at its timeout.

Which nodes are alive: each node renews ``rc:alive:<id>`` (a key with a lifetime of
``alive_ttl`` seconds) every ``beat`` seconds and is a member of the set ``rc:nodes``.
A node that dies without a word stops renewing, and its key expires: ``alive()`` then
leaves it out (and drops it from the set). The lifetime is measured by Redis, so the nodes'
clocks need not agree.

Handlers run in their own asyncio task per request: one may wait (an Engine.IO long-poll
holds its answer for up to a ping interval) without holding up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

from redis.exceptions import RedisError

from roomcast import _json
from roomcast.backoff import Backoff
from roomcast.broker import redis_client
from roomcast.broker.redis import ALIVE_PREFIX
from roomcast.cluster.base import NodeHandler, NodeUnreachable, new_node_id
from roomcast.errors import BrokerUnavailable
from roomcast.types import JSONValue

__all__ = ["RedisCluster", "alive_key", "NODES_KEY"]

logger = logging.getLogger("roomcast.cluster")

NODES_KEY = "rc:nodes"
"""The set of node ids that announced themselves; liveness is their ``alive_key``."""


def alive_key(node: str) -> str:
    """The key a live node renews; gone once the node stops renewing it. The broker's heartbeat
    renews the same key (``broker.redis.ALIVE_PREFIX``): either keeps the node alive."""
    return f"{ALIVE_PREFIX}{node}"


def _channel(node: str) -> str:
    return f"rc:n:{node}"


class RedisCluster:
    """The nodes sharing one Redis.

    Args:
        url: the ``--redis`` URL.
        node_id: this node's id (a new one by default).
        beat: seconds between two renewals of this node's liveness.
        alive_ttl: seconds a node is taken for alive after its last renewal.
    """

    def __init__(self, url: str, *, node_id: str | None = None, beat: float = 2.0, alive_ttl: float = 6.0) -> None:
        if not 0 < beat < alive_ttl:
            raise ValueError("beat must be > 0 and shorter than alive_ttl")
        self._node_id = node_id or new_node_id()
        self._redis: Any = redis_client.connect(url)
        self._beat_every = beat
        self._ttl_ms = round(alive_ttl * 1000)
        self._handlers: dict[str, NodeHandler] = {}
        self._waiting: dict[int, asyncio.Future[JSONValue]] = {}
        self._ids = itertools.count(1)
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._serving: set[asyncio.Task[None]] = set()
        self.listens = 0
        """Times Redis confirmed this node's subscription to its channel: 1 once started, one
        more each time a lost subscription is made again."""
        self._confirmed = asyncio.Event()  # set, and replaced, at each confirmation

    def __repr__(self) -> str:
        return f"<RedisCluster node={self._node_id}>"  # never the URL: it may hold a password

    @property
    def node_id(self) -> str:
        return self._node_id

    def on(self, kind: str, handler: NodeHandler) -> None:
        self._handlers[kind] = handler

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks:
            return
        await self._listen()
        await self._renew()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_forever()), loop.create_task(self._keep_alive())]

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in [*tasks, *self._serving]:
            task.cancel()
        for task in [*tasks, *self._serving]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(NodeUnreachable("this node is shutting down"))
        self._waiting.clear()
        if tasks:
            with contextlib.suppress(RedisError, OSError):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.delete(alive_key(self._node_id))
                    pipe.srem(NODES_KEY, self._node_id)
                    await pipe.execute()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        await self._redis.aclose()

    async def listened(self, times: int) -> None:
        """Return once Redis has confirmed this node's subscription ``times`` times in all
        (``listens``): from then on a request published to this node reaches it."""
        while self.listens < times:
            await self._confirmed.wait()

    def _on_confirmed(self) -> None:
        self.listens += 1
        confirmed, self._confirmed = self._confirmed, asyncio.Event()
        confirmed.set()

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(_channel(self._node_id))
        self._pubsub = pubsub

    async def _renew(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(alive_key(self._node_id), b"1", px=self._ttl_ms)
            pipe.sadd(NODES_KEY, self._node_id)
            await pipe.execute()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._beat_every)
            try:
                await self._renew()
            except (RedisError, OSError) as exc:
                logger.warning("could not renew this node's liveness: %s", type(exc).__name__)

    async def _read_forever(self) -> None:
        """Read requests and answers; when the connection breaks, listen again with backoff.

        Requests published while this node was not listening are lost: their askers time out,
        or were told at once that nobody listened.
        """
        backoff = Backoff(0.05, 5.0)
        while True:
            try:
                async for message in self._pubsub.listen():
                    backoff.reset()
                    if message["type"] == "message":
                        self._received(message["data"])
                    elif message["type"] == "subscribe":
                        self._on_confirmed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the reader must outlive any failure, or the node goes deaf
                logger.warning("node bus subscription lost (%s); listening again", type(exc).__name__)
            while True:
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()
                try:
                    await self._listen()
                    break
                except Exception:
                    await asyncio.sleep(backoff.next())

    def _received(self, raw: bytes) -> None:
        try:
            message = _json.loads(raw)
            ident = message["i"]
        except Exception:
            logger.warning("node bus: dropped a message that is not ours (%d bytes)", len(raw))
            return
        if "k" in message:
            job = asyncio.get_running_loop().create_task(self._serve(message))
            self._serving.add(job)
            job.add_done_callback(self._serving.discard)
            return
        waiter = self._waiting.pop(ident, None)
        if waiter is None or waiter.done():
            return  # its asker gave up
        if "e" in message:
            waiter.set_exception(NodeUnreachable(str(message["e"])))
        else:
            waiter.set_result(message.get("a"))

    async def _serve(self, message: dict[str, Any]) -> None:
        handler = self._handlers.get(message["k"])
        reply: dict[str, Any] = {"i": message["i"]}
        if handler is None:
            reply["e"] = f"node {self._node_id} has no handler for {message['k']!r}"
        else:
            try:
                reply["a"] = await handler(message.get("p"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("node bus: a %r request failed", message["k"])
                reply["e"] = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(RedisError, OSError):
            await self._redis.publish(_channel(message["r"]), _json.dumps(reply))

    # -- asking -------------------------------------------------------------------------
    async def ask(self, node: str, kind: str, payload: JSONValue, *, timeout: float = 5.0) -> JSONValue:
        if node == self._node_id:
            handler = self._handlers.get(kind)
            if handler is None:
                raise NodeUnreachable(f"no handler for {kind!r}")
            return await handler(payload)
        ident = next(self._ids)
        waiter = self._waiting[ident] = asyncio.get_running_loop().create_future()
        request = _json.dumps({"i": ident, "k": kind, "p": payload, "r": self._node_id})
        try:
            try:
                listeners = await self._redis.publish(_channel(node), request)
            except (RedisError, OSError) as exc:
                raise BrokerUnavailable(f"redis is unreachable: {type(exc).__name__}") from None
            if not listeners:
                raise NodeUnreachable(f"node {node} is not alive")
            try:
                async with asyncio.timeout(timeout):
                    return await waiter
            except TimeoutError:
                raise NodeUnreachable(f"node {node} did not answer within {timeout:g}s") from None
        finally:
            self._waiting.pop(ident, None)

    async def ask_all(self, kind: str, payload: JSONValue, *, timeout: float = 5.0) -> list[JSONValue]:
        nodes = await self.alive()
        answers = await asyncio.gather(
            *(self.ask(node, kind, payload, timeout=timeout) for node in sorted(nodes)), return_exceptions=True
        )
        for node, answer in zip(sorted(nodes), answers):
            if isinstance(answer, NodeUnreachable):
                logger.debug("node %s did not answer %r: %s", node, kind, answer)
            elif isinstance(answer, BaseException):
                raise answer
        return [answer for answer in answers if not isinstance(answer, BaseException)]

    async def alive(self) -> frozenset[str]:
        try:
            members = sorted(m.decode() if isinstance(m, bytes) else m for m in await self._redis.smembers(NODES_KEY))
            if not members:
                return frozenset({self._node_id})
            async with self._redis.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.exists(alive_key(member))
                found = await pipe.execute()
            live = [m for m, f in zip(members, found) if f]
            gone = [m for m in members if m not in live and m != self._node_id]
            if gone:
                await self._redis.srem(NODES_KEY, *gone)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis is unreachable: {type(exc).__name__}") from None
        return frozenset({*live, self._node_id})
