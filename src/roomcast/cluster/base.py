"""``Cluster``: ask one node, or every live node, to do something, and hear its answer.

Imports L0 only. Rooms travel through the broker; what does not belong to a room travels
here: a disconnect of a user wherever they are connected, a message to one connection by
id, the room listing summed over the nodes, an Engine.IO long-polling request forwarded to
the node that owns its session, a stop for a task whose producer runs on another node.

Invariants every implementation keeps:

* **Every process has one node id** (``node_id``), unique among the live nodes and never
  reused by a later process. Whatever a node owns (connections, sessions, task leases) is
  labelled with it, so any node can tell where to ask and whether the owner is alive.
* **Handlers are per kind.** ``on(kind, handler)`` registers the one handler of a kind on
  this node; a request of a kind nobody registered is answered with ``NodeUnreachable``.
* **A request to a node that is gone fails fast**, with ``NodeUnreachable``, rather than
  waiting for its timeout: the caller then answers its own client at once.
* **``ask_all`` never fails for one node**: it returns the answers of the nodes that
  answered in time (this node included), and the caller decides what partial means.
* Payloads and answers are JSON values; bytes travel base64-encoded by the caller.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol

from roomcast.errors import BrokerError
from roomcast.types import JSONValue

__all__ = ["Cluster", "LocalCluster", "NodeHandler", "NodeUnreachable", "new_node_id"]

NodeHandler = Callable[[JSONValue], Awaitable[JSONValue]]
"""Answers one request: takes its payload, returns the answer (or raises: the asker gets
``NodeUnreachable`` with the error's text)."""


class NodeUnreachable(BrokerError):
    """The node asked is not alive, did not answer in time, or failed to answer."""


def new_node_id() -> str:
    """A fresh node id: 12 URL-safe characters, never reused (72 random bits)."""
    return secrets.token_urlsafe(9)


class Cluster(Protocol):
    """The processes serving one hub, as seen from one of them."""

    @property
    def node_id(self) -> str:
        """This process's node id."""

    def on(self, kind: str, handler: NodeHandler) -> None:
        """Answer requests of ``kind`` with ``handler`` on this node (one handler per kind)."""

    async def start(self) -> None:
        """Start answering requests and announcing that this node is alive."""

    async def aclose(self) -> None:
        """Stop answering; other nodes then see this node gone. Idempotent."""

    async def ask(self, node: str, kind: str, payload: JSONValue, *, timeout: float = 5.0) -> JSONValue:
        """Ask ``node`` (this one included) and return its answer.

        Raises:
            NodeUnreachable: the node is gone, has no handler for ``kind``, failed, or took
                longer than ``timeout`` seconds.
            BrokerUnavailable: the bus itself (Redis) cannot be reached.
        """

    async def ask_all(self, kind: str, payload: JSONValue, *, timeout: float = 5.0) -> list[JSONValue]:
        """Ask every live node (this one included); the answers of those that answered in time.

        Raises:
            BrokerUnavailable: the bus itself (Redis) cannot be reached.
        """

    async def alive(self) -> frozenset[str]:
        """The ids of the nodes alive now, this one included."""


class LocalCluster:
    """One process alone: every request is answered by this process's own handlers."""

    def __init__(self, node_id: str | None = None) -> None:
        self._node_id = node_id or new_node_id()
        self._handlers: dict[str, NodeHandler] = {}

    @property
    def node_id(self) -> str:
        return self._node_id

    def on(self, kind: str, handler: NodeHandler) -> None:
        self._handlers[kind] = handler

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def ask(self, node: str, kind: str, payload: JSONValue, *, timeout: float = 5.0) -> JSONValue:
        handler = self._handlers.get(kind)
        if node != self._node_id or handler is None:
            raise NodeUnreachable(f"node {node} is not alive" if node != self._node_id else f"no handler for {kind!r}")
        return await handler(payload)

    async def ask_all(self, kind: str, payload: JSONValue, *, timeout: float = 5.0) -> list[JSONValue]:
        handler = self._handlers.get(kind)
        return [] if handler is None else [await handler(payload)]

    async def alive(self) -> frozenset[str]:
        return frozenset({self._node_id})
