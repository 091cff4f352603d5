"""Client managers, python-socketio's names for "where rooms live" and "emit from elsewhere".

* ``AsyncManager()``: rooms in this process (the default).
* ``AsyncRedisManager(url)`` as ``AsyncServer(client_manager=...)``: the hub runs on that
  Redis, so several processes or machines share rooms (``roomcast serve --redis URL``).
* ``AsyncRedisManager(url, write_only=True)`` / ``RedisManager(url, write_only=True)``: an
  emitter for processes that serve no clients (a Celery worker, a cron script), the pattern
  python-socketio's docs teach. It publishes through ``RedisPublisher``, the nodes' own
  publish script, so an emit from a worker is stored, numbered and delivered exactly as one
  from a server. An emit to a room is one publication to that room; one naming something
  that may be a sid also goes to the relay room, where the node holding that sid sends it
  (python-socketio makes no difference between the two, so neither can this).

``channel`` and ``redis_options`` are accepted; roomcast's Redis keys are its own
(docs/scaling.md).
"""

from __future__ import annotations

from typing import Any, Unpack

from roomcast.publisher import RedisPublisher
from roomcast.socketio.emit_args import EmitOptions, check_emit_options, payload_args, relay_emit, skip_sids, targets
from roomcast.socketio.rooms import RELAY_ROOM, namespace_key, room_key

__all__ = ["AsyncManager", "AsyncRedisManager", "RedisManager"]


class AsyncManager:
    """Rooms in this process only (python-socketio's default manager)."""

    write_only = False


def _publications(event: str, data: Any, options: EmitOptions) -> list[tuple[str, str, tuple[Any, ...], list[str]]]:
    """``(room, event, args, skip)`` for each publication one emit makes: what
    ``AsyncServer.emit`` publishes, a possible sid on another node included."""
    check_emit_options(options)
    if options.get("callback") is not None:
        raise ValueError("a callback cannot cross processes: use call() in a handler of the server")
    ns = options.get("namespace") or "/"
    args, skip = payload_args(data), skip_sids(options.get("skip_sid"))
    listed = sorted(skip or ())
    named = targets(options.get("to"), options.get("room"))
    if named is None:
        return [(namespace_key(ns), event, args, listed)]
    out = []
    for one in named:
        out.append((room_key(ns, one), event, args, listed))
        out.append((RELAY_ROOM, "relay", (relay_emit(ns, one, event, args, skip),), []))
    return out


class AsyncRedisManager:
    """Rooms shared through Redis; with ``write_only=True``, an emitter for other processes.

    Args:
        url: the Redis the servers run with (``client_manager=AsyncRedisManager(url)``, or
            ``roomcast serve --redis URL``).
        write_only: an emitter only (no server uses it).
        history_size, history_ttl: the servers' (``--history-size``, ``--history-ttl``).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        channel: str = "socketio",
        write_only: bool = False,
        logger: Any = None,
        redis_options: dict[str, Any] | None = None,
        *,
        history_size: int = 1000,
        history_ttl: float = 300.0,
    ) -> None:
        self.url = url
        self.write_only = write_only
        self._history = (history_size, history_ttl)
        self._publisher: RedisPublisher | None = None

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"<{type(self).__name__} write_only={self.write_only}>"

    def publisher(self) -> RedisPublisher:
        if self._publisher is None:
            size, ttl = self._history
            self._publisher = RedisPublisher(self.url, history_size=size, history_ttl=ttl)
        return self._publisher

    async def emit(self, event: str, data: Any = None, **options: Unpack[EmitOptions]) -> None:
        """Emit as ``AsyncServer.emit`` does, from a process that serves no clients (the
        options by keyword: python-socketio's managers order them otherwise).

        Raises:
            roomcast.PublishError: refused (reserved name, data not JSON) or Redis unreachable.
            ValueError: a ``callback`` (acks cannot cross processes), or a bad room name.
        """
        publisher = self.publisher()
        for key, name, args, skip in _publications(event, data, options):
            await publisher.apublish_args(key, name, args, skip=skip)

    async def send(self, data: Any, **options: Unpack[EmitOptions]) -> None:
        await self.emit("message", data, **options)


class RedisManager(AsyncRedisManager):
    """``AsyncRedisManager`` for synchronous code (a Celery task): ``emit`` blocks."""

    def emit(self, event: str, data: Any = None, **options: Unpack[EmitOptions]) -> None:  # type: ignore[override]
        """Emit and return once Redis has it."""
        publisher = self.publisher()
        for key, name, args, skip in _publications(event, data, options):
            publisher.publish_args(key, name, args, skip=skip)

    def send(self, data: Any, **options: Unpack[EmitOptions]) -> None:  # type: ignore[override]
        self.emit("message", data, **options)
