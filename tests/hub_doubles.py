"""Test doubles for the hub: a recording transport connection and a counting encoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from roomcast.disconnect import Disconnect
from roomcast.hub import Connection, Hub
from roomcast.types import Publication

__all__ = ["ConnFactory", "CountingEncoder", "RecordingConnection"]


class CountingEncoder:
    """An encoder double: counts ``encode`` calls and returns a fresh object for each call.

    The encoded object is a new ``list`` every time, so tests can tell with ``is`` whether
    members received the one object of one encode or separately encoded copies.
    """

    def __init__(self, name: str = "enc") -> None:
        self.name = name
        self.calls = 0

    def encode(self, publication: Publication) -> Any:
        self.calls += 1
        return [self.name, publication.event, publication.data, publication.position.offset]

    def __repr__(self) -> str:
        return f"<CountingEncoder {self.name} calls={self.calls}>"


class RecordingConnection(Connection):
    """A transport double: records what the hub writes, emits and disconnects.

    ``write`` appends the encoded object to ``written`` and returns ``accept`` (set it to
    ``False`` to play a client whose outbound buffer is full). It does not remove itself
    from rooms on ``disconnect``; like a real transport, a test calls
    ``hub.remove_connection`` for that.
    """

    def __init__(self, id: str, *, hub: Hub, encoder: Any, accept: bool = True, log: list[str] | None = None) -> None:
        super().__init__(id, hub=hub, encoder=encoder)
        self.accept = accept
        self.written: list[Any] = []
        self.emitted: list[tuple[str, tuple[Any, ...]]] = []
        self.disconnects: list[Disconnect] = []
        self.log = log  # shared, ordered record of writes/disconnects across connections

    def write(self, encoded: Any) -> bool:
        self.written.append(encoded)
        if self.log is not None:
            self.log.append(f"write {self.id}")
        return self.accept

    def emit(self, event: str, *args: Any) -> None:
        self.emitted.append((event, args))

    def disconnect(self, reason: Disconnect) -> None:
        self.disconnects.append(reason)
        self.closed = True
        if self.log is not None:
            self.log.append(f"disconnect {self.id}")


ConnFactory = Callable[..., RecordingConnection]
"""``make_conn(enc=None, *, accept=True, log=None)``: a RecordingConnection added to the hub."""
