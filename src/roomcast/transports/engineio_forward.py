"""Engine.IO without sticky sessions: a polling request that reaches a node that does not own
its session is answered by the owner, through the node bus (``Cluster``).

Imports L0, ``cluster.base`` and ``transports.base``. ``EngineIOServer`` uses it when it
serves on a bus with other nodes (``roomcast serve --redis``); alone (``LocalCluster``) it
does not, and everything stays as it is on one process.

**Finding the owner.** A session's id carries its owner's node id: ``<node id>.<random>``.
A node that does not hold the sid reads the owner from it and asks that node directly, with
no Redis lookup first; the bus fails at once when the owner is gone (``NodeUnreachable``),
and the request is then answered like any unknown sid, 400 ``Session ID unknown``: the
client opens a new session wherever its next handshake lands.

**What crosses the bus.** The request (method, path, query, headers without the hop-by-hop
ones, body base64) and the owner's whole answer (status, headers, content type, body
base64). The owner answers it exactly as if the client had asked it, CORS included. A body
over ``max_payload`` never crosses: the receiving node forwards only the fact that it was
too big, and the owner closes the session and answers 413, as it would have itself.

**Long polls.** A GET may wait on the owner for a whole ping interval (the ping is what
releases it), and up to the pong timeout more if the client is late; so the bus is given
``ping_interval + ping_timeout + FORWARD_MARGIN`` seconds. While forwards to an owner are
pending, one watch per owner asks it a cheap ``ping`` every ``WATCH_EVERY`` seconds: an owner
that dies mid-poll (SIGKILL) releases its forwarded polls within a second instead of after
that whole timeout. When the client goes away before the answer (the front door cancels
the request), the owner is told to drop its side, so the session's pending GET does not
outlive the request that made it (a next GET would otherwise count as a second concurrent
one and close the session).

**WebSocket upgrades are refused on a node that does not own the session** (HTTP 400 on the
handshake, like the official server for a sid it does not know), and the client stays on
polling. Why not hand the session over to the node the upgrade reached: the session is more
than Engine.IO's few fields. The Socket.IO layer above holds the hub connection with its
room subscriptions, pending acks, rate limits, auth claims and whatever the application keeps
in ``Connection.state`` (arbitrary Python objects), and the client keeps polling, through
either node, while the probe is in flight. Socket.IO recovery moves a socket's rooms and
JSON data through Redis, but only once the socket is lost, for a client that opens a new
session; a hand-over would have to move a live session with its pending polls and acks and
stop both nodes mid-request, for a gain (WebSocket instead of forwarded polling) that a
client gets anyway by connecting with ``transports: ["websocket"]``, whose single TCP
connection is pinned to one node by nature. A refused probe costs nothing: the official JavaScript client (engine.io-client
``_probe``: an error on the probe transport only emits ``upgradeError``, the polling
transport was never paused) and python-engineio (``_connect_websocket`` returns ``False`` on a
handshake error and starts its polling loops) both carry on polling. The refusal is an HTTP
error rather than the accept-then-close used for unknown sids, because python-engineio
decodes a close frame received in place of ``3probe`` as a packet and fails the whole connect.
An upgrade that reaches the owner is accepted as usual.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from roomcast.cluster.base import Cluster, NodeUnreachable
from roomcast.errors import BrokerUnavailable
from roomcast.transports.base import HttpRequest, HttpResponse, build_request
from roomcast.types import JSONValue

__all__ = [
    "FORWARD_MARGIN",
    "WATCH_EVERY",
    "Forwarding",
    "ForwardStats",
    "owner_of",
    "stats_kind",
]

logger = logging.getLogger("roomcast.engineio")

FORWARD_MARGIN = 5.0
"""Seconds a forwarded request may take beyond ``ping_interval + ping_timeout``."""

WATCH_EVERY = 1.0
"""Seconds between two pings of an owner while requests forwarded to it are pending."""

WATCH_TIMEOUT = 5.0
"""Seconds an owner has to answer a watch's ping before its pending forwards fail."""

MAX_SID = 128
"""A longer sid is none of ours: it is not parsed (nor forwarded anywhere)."""

_SEPARATOR = "."  # never in secrets.token_urlsafe's alphabet: the last one ends the node id
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)


def owner_of(sid: str) -> str | None:
    """The node id a sid names as its owner, or ``None`` for a sid without one."""
    if len(sid) > MAX_SID:
        return None
    owner, separator, token = sid.rpartition(_SEPARATOR)
    return owner if separator and owner and token else None


def stats_kind(name: str) -> str:
    """The bus kind that answers a node's ``ForwardStats`` for the Engine.IO server ``name``."""
    return f"engineio:{name}.stats"


@dataclass(slots=True)
class ForwardStats:
    """What one node's Engine.IO server did for sessions owned elsewhere, and for others.

    Attributes:
        forwarded: requests this node forwarded to their owner and relayed the answer of.
        answered: requests other nodes forwarded that this node answered as the owner.
        answering: of those, how many this node is holding right now (pending long polls).
        unreachable: requests whose owner could not be reached: answered 400 here.
        refused_upgrades: WebSocket upgrades refused because another node owns the session.
    """

    forwarded: int = 0
    answered: int = 0
    answering: int = 0
    unreachable: int = 0
    refused_upgrades: int = 0


class _Watch:
    """Pings one owner while requests forwarded to it are pending; ``gone`` resolves when it
    stops answering (or the bus cannot reach it)."""

    def __init__(self, forwarding: Forwarding, owner: str) -> None:
        loop = asyncio.get_running_loop()
        self.forwarding = forwarding
        self.owner = owner
        self.users = 0
        self.gone: asyncio.Future[None] = loop.create_future()
        self.task = loop.create_task(self._run())

    async def _run(self) -> None:
        cluster, kind = self.forwarding.cluster, self.forwarding.ping_kind
        while True:
            await asyncio.sleep(self.forwarding.watch_every)
            try:
                await cluster.ask(self.owner, kind, None, timeout=self.forwarding.watch_timeout)
            except (NodeUnreachable, BrokerUnavailable) as exc:
                logger.info("node %s stopped answering (%s): failing the requests forwarded to it", self.owner, exc)
                self.gone.set_result(None)
                self.forwarding.forget(self)
                return


class Forwarding:
    """One Engine.IO server's side of the bus: forwards its strangers' requests, answers others'.

    Args:
        cluster: the node bus (not a ``LocalCluster``: alone there is nowhere to forward).
        name: the server's name (``"socket.io"``, ``"engine.io"``); requests go to the server
            of the same name on the owner.
        answer: answers a request for a session this node holds (never forwards again).
    """

    def __init__(self, cluster: Cluster, name: str, answer: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self.cluster = cluster
        self.stats = ForwardStats()
        self.watch_every = WATCH_EVERY
        self.watch_timeout = WATCH_TIMEOUT
        self._answer_here = answer
        self.kind = f"engineio:{name}"
        self.ping_kind = f"{self.kind}.ping"
        self._cancel_kind = f"{self.kind}.cancel"
        self._watches: dict[str, _Watch] = {}
        self._answering: dict[str, asyncio.Task[Any]] = {}
        self._ids = itertools.count(1)
        self._notices: set[asyncio.Task[None]] = set()
        cluster.on(self.kind, self._answer)
        cluster.on(self._cancel_kind, self._cancel)
        cluster.on(self.ping_kind, self._ping)
        cluster.on(stats_kind(name), self._stats)

    def new_sid(self) -> str:
        """A fresh sid naming this node as its owner."""
        return f"{self.cluster.node_id}{_SEPARATOR}{secrets.token_urlsafe(15)}"

    def owner_elsewhere(self, sid: str) -> str | None:
        """The other node that owns ``sid``, or ``None`` if it names this node or no node."""
        owner = owner_of(sid)
        return owner if owner is not None and owner != self.cluster.node_id else None

    # -- the receiving node -------------------------------------------------------------
    async def forward(self, owner: str, request: HttpRequest, *, too_big: bool, timeout: float) -> HttpResponse:
        """Have ``owner`` answer ``request``; its answer, as it gave it.

        Raises:
            NodeUnreachable: the owner is gone, stopped answering, or answered nonsense.
            BrokerUnavailable: the bus (Redis) cannot be reached.
        """
        ident = f"{self.cluster.node_id}:{next(self._ids)}"
        payload: dict[str, JSONValue] = {
            "id": ident,
            "method": request.method,
            "path": request.path,
            "query": request.raw_query,
            "headers": {k: v for k, v in request.headers.items() if k not in _HOP_BY_HOP},
            "client": [request.client[0], request.client[1]],
            "too_big": too_big,
        }
        if request.body and not too_big:
            payload["body"] = binascii.b2a_base64(request.body, newline=False).decode("ascii")
        watch = self._watch(owner)
        ask = asyncio.ensure_future(self.cluster.ask(owner, self.kind, payload, timeout=timeout))
        try:
            await asyncio.wait((ask, watch.gone), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the client went away: so does the owner's side
            ask.cancel()
            self._notify_cancel(owner, ident)
            raise
        finally:
            self._release(watch)
        if not ask.done():
            ask.cancel()
            raise NodeUnreachable(f"node {owner} stopped answering")
        answer = ask.result()
        try:
            response = _response(answer)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise NodeUnreachable(f"node {owner} answered a forwarded request with nonsense") from None
        self.stats.forwarded += 1
        return response

    def _watch(self, owner: str) -> _Watch:
        watch = self._watches.get(owner)
        if watch is None:
            watch = self._watches[owner] = _Watch(self, owner)
        watch.users += 1
        return watch

    def _release(self, watch: _Watch) -> None:
        watch.users -= 1
        if watch.users == 0 and self._watches.get(watch.owner) is watch:
            del self._watches[watch.owner]
            watch.task.cancel()

    def forget(self, watch: _Watch) -> None:
        """``watch``'s owner is gone: forwards from now on start a new watch (and fail fast)."""
        if self._watches.get(watch.owner) is watch:
            del self._watches[watch.owner]

    def _notify_cancel(self, owner: str, ident: str) -> None:
        async def notify() -> None:
            with contextlib.suppress(NodeUnreachable, BrokerUnavailable):
                await self.cluster.ask(owner, self._cancel_kind, ident, timeout=self.watch_timeout)

        task = asyncio.get_running_loop().create_task(notify())
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    # -- the owner --------------------------------------------------------------------
    async def _answer(self, payload: JSONValue) -> JSONValue:
        if not isinstance(payload, dict):
            raise TypeError("a forwarded request is an object")
        request = _request(payload)
        ident = str(payload["id"])
        task = asyncio.current_task()
        if task is not None:
            self._answering[ident] = task
        self.stats.answering += 1
        try:
            response = await self._answer_here(request)
        finally:
            self.stats.answering -= 1
            self._answering.pop(ident, None)
        self.stats.answered += 1
        return {
            "status": response.status,
            "content_type": response.content_type,
            "headers": [[name, value] for name, value in response.headers],
            "body": binascii.b2a_base64(response.body, newline=False).decode("ascii"),
        }

    async def _cancel(self, payload: JSONValue) -> JSONValue:
        task = self._answering.pop(str(payload), None)
        if task is not None:
            task.cancel()  # the front door's cancel, one hop later: the poll is let go
        return task is not None

    async def _ping(self, payload: JSONValue) -> JSONValue:
        return True

    async def _stats(self, payload: JSONValue) -> JSONValue:
        return {"node": self.cluster.node_id, **asdict(self.stats)}


def _request(payload: dict[str, Any]) -> HttpRequest:
    headers = payload["headers"]
    body = payload.get("body")
    host, port = payload["client"]
    return build_request(
        str(payload["method"]),
        str(payload["path"]),
        str(payload["query"]).encode("latin-1"),
        [(str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()],
        body=binascii.a2b_base64(body) if isinstance(body, str) else b"",
        client=(str(host), int(port)),
        body_too_large=bool(payload["too_big"]),
    )


def _response(answer: JSONValue) -> HttpResponse:
    if not isinstance(answer, dict):
        raise TypeError("the answer to a forwarded request is an object")
    headers = [(str(name), str(value)) for name, value in answer["headers"]]
    body = binascii.a2b_base64(str(answer["body"]))
    return HttpResponse(int(answer["status"]), body, headers, str(answer["content_type"]))
