"""One Engine.IO v4 session seen from the client: handshake, heartbeat, polling, upgrade.

Owns everything between the wire (``client.transport``) and Socket.IO: the ``OPEN``
handshake over WebSocket or long-polling, answering the server's pings and noticing a
server that stopped pinging (``pingInterval + pingTimeout``), the polling GET and POST
loops, and the polling → WebSocket upgrade (probe, pause, ``UPGRADE``). What comes out is
an ordered stream of ``MESSAGE`` payloads (:meth:`EngineConnection.recv`); what goes in is
:meth:`EngineConnection.send`.

A session ends exactly once, with a reason in the official client's words where one exists
(``"transport close"``, ``"ping timeout"``, ``"parse error"``, ``"transport error"``) plus
``"message too big"``; :meth:`recv` then raises ``ConnectionClosed(reason)``. Nothing here
reconnects: the session is disposable, the Socket.IO client above decides what comes next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from roomcast import _json
from roomcast.client.transport import Target, UpgradeRefused, WebSocket, http_request
from roomcast.errors import ConnectionClosed, PayloadTooBig, RemoteProtocolError
from roomcast.protocol import engineio as eio
from roomcast.protocol.engineio import Packet, PacketType

__all__ = ["Handshake", "EngineConnection", "TRANSPORTS"]

logger = logging.getLogger("roomcast.client")

TRANSPORTS = ("websocket", "polling")
_PROBE_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Handshake:
    """The server's ``OPEN`` packet: session id, upgrades and heartbeat timing (seconds)."""

    sid: str
    upgrades: tuple[str, ...]
    ping_interval: float
    ping_timeout: float
    max_payload: int

    @classmethod
    def parse(cls, packet: Packet) -> Handshake:
        """Validate an ``OPEN`` packet; a server that sends anything else is not Engine.IO v4.

        Raises:
            RemoteProtocolError: not an ``OPEN`` packet, not JSON, or missing/mistyped keys.
        """
        if packet.type is not PacketType.OPEN or not isinstance(packet.data, str):
            raise RemoteProtocolError("expected the Engine.IO OPEN packet")
        try:
            data: Any = _json.loads(packet.data)
        except ValueError:
            raise RemoteProtocolError("handshake is not JSON") from None
        if not isinstance(data, dict):
            raise RemoteProtocolError("handshake is not a JSON object")
        sid, upgrades = data.get("sid"), data.get("upgrades", [])
        interval, timeout, max_payload = (data.get(key) for key in ("pingInterval", "pingTimeout", "maxPayload"))
        if not isinstance(sid, str) or not sid or not isinstance(upgrades, list):
            raise RemoteProtocolError("handshake without a sid")
        if not (_count(interval) and _count(timeout)):
            raise RemoteProtocolError("handshake without ping timing")
        return cls(
            sid,
            tuple(u for u in upgrades if isinstance(u, str)),
            interval / 1000,
            timeout / 1000,
            max_payload if _count(max_payload) and max_payload > 0 else 1_000_000,
        )


def _count(value: object) -> TypeGuard[int]:
    """A non-negative JSON integer (``True`` is not one)."""
    return type(value) is int and value >= 0


class EngineConnection:
    """An open Engine.IO session; build it with :meth:`open`.

    Attributes:
        handshake: what the server said in ``OPEN``.
        transport: ``"websocket"`` or ``"polling"`` (changes once, on upgrade).
        reason: why the session ended; ``None`` while it is open.
    """

    def __init__(
        self,
        target: Target,
        handshake: Handshake,
        *,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        max_message_bytes: int,
    ) -> None:
        self.target = target
        self.handshake = handshake
        self.transport = "polling"
        self.reason: str | None = None
        self._headers = headers
        self._query = dict(query)
        self._max = max_message_bytes
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._ws: WebSocket | None = None
        self._outbox: list[Packet] = []
        self._out_ready = asyncio.Event()
        self._pausing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._poll_task: asyncio.Task[None] | None = None
        self._post_task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    # -- opening ------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        target: Target,
        *,
        transports: Sequence[str] = TRANSPORTS,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        max_message_bytes: int = 10_000_000,
    ) -> EngineConnection:
        """Open a session with the first transport that works.

        ``transports[0] == "websocket"``: a WebSocket handshake first; if the server answers
        HTTP but refuses the upgrade and ``"polling"`` is allowed, long-polling instead.
        ``transports[0] == "polling"``: long-polling, then an upgrade to WebSocket when both
        sides allow it. The caller bounds the time (``asyncio.timeout``).

        Raises:
            OSError: no TCP connection. ConnectionClosed: the server hung up or refused.
            RemoteProtocolError: the server does not speak Engine.IO v4.
        """
        if not transports or any(t not in TRANSPORTS for t in transports):
            raise ValueError(f"transports must be a non-empty sequence of {TRANSPORTS}")
        args: dict[str, Any] = {
            "headers": dict(headers or {}),
            "query": dict(query or {}),
            "max_message_bytes": max_message_bytes,
        }
        if transports[0] == "websocket":
            try:
                return await cls._open_websocket(target, **args)
            except UpgradeRefused as exc:
                if "polling" not in transports:
                    raise
                logger.info("%s; falling back to long-polling", exc)
        return await cls._open_polling(target, upgrade="websocket" in transports, **args)

    @classmethod
    async def _open_websocket(
        cls, target: Target, *, headers: dict[str, str], query: dict[str, str], max_message_bytes: int
    ) -> EngineConnection:
        params = {"EIO": "4", "transport": "websocket", **query}
        ws = await WebSocket.connect(
            target, target.resource(params), headers=headers, max_message_bytes=max_message_bytes
        )
        try:
            handshake = Handshake.parse(eio.decode_ws(await ws.recv()))
        except BaseException:
            ws.abort()
            raise
        conn = cls(target, handshake, headers=headers, query=query, max_message_bytes=max_message_bytes)
        conn._use_websocket(ws)
        conn._arm_watchdog()
        return conn

    @classmethod
    async def _open_polling(
        cls,
        target: Target,
        *,
        upgrade: bool,
        headers: dict[str, str],
        query: dict[str, str],
        max_message_bytes: int,
    ) -> EngineConnection:
        params = {"EIO": "4", "transport": "polling", **query}
        answer = await http_request(target, "GET", target.resource(params), headers=headers, limit=max_message_bytes)
        if answer.status != 200:
            raise ConnectionClosed(f"polling handshake answered {answer.status}")
        packets = _decode_body(answer.body)
        handshake = Handshake.parse(packets[0])
        conn = cls(target, handshake, headers=headers, query=query, max_message_bytes=max_message_bytes)
        for packet in packets[1:]:
            conn._on_packet(packet)
        conn._poll_task = conn._spawn(conn._poll())
        conn._post_task = conn._spawn(conn._post())
        conn._arm_watchdog()
        if upgrade and "websocket" in handshake.upgrades:
            conn._spawn(conn._upgrade())
        return conn

    # -- the API ------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self.reason is not None

    async def recv(self) -> str | bytes:
        """The next ``MESSAGE`` payload from the server, in order.

        Raises:
            ConnectionClosed: the session ended; its ``args[0]`` is the reason.
        """
        item = await self._inbox.get()
        if item is None:
            self._inbox.put_nowait(None)  # every later call ends the same way
            raise ConnectionClosed(self.reason or "closed")
        return item

    def send(self, data: str | bytes) -> None:
        """Queue one ``MESSAGE`` (a Socket.IO packet or attachment) for the server.

        Raises:
            ConnectionClosed: the session has ended.
        """
        self._send_packet(Packet(PacketType.MESSAGE, data))

    async def close(self) -> None:
        """Say goodbye (an Engine.IO ``CLOSE``) and end the session; never raises."""
        if self.ended:
            return
        ws = self._ws
        try:
            if ws is not None:
                ws.send(eio.encode_ws(Packet(PacketType.CLOSE)))
                await ws.close()
            else:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await self._post_body(eio.encode_polling([*self._outbox, Packet(PacketType.CLOSE)]))
        except Exception as exc:  # best effort: the peer may already be gone
            logger.debug("close of session %s: %r", self.handshake.sid, exc)
        self.fail("io client disconnect")

    def fail(self, reason: str) -> None:
        """End the session now with ``reason`` (idempotent): stop the loops, drop the wire."""
        if self.reason is not None:
            return
        self.reason = reason
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._inbox.put_nowait(None)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self._ws is not None:
            self._ws.abort()

    # -- internals ----------------------------------------------------------------------
    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        return task

    def _arm_watchdog(self) -> None:
        """(Re)start the dead-server timer: the next ping is due within interval + timeout."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.reason is None:
            delay = self.handshake.ping_interval + self.handshake.ping_timeout
            self._watchdog = asyncio.get_running_loop().call_later(delay, self.fail, "ping timeout")

    def _send_packet(self, packet: Packet) -> None:
        if self.reason is not None:
            raise ConnectionClosed(self.reason)
        ws = self._ws
        if ws is not None:
            try:
                ws.send(eio.encode_ws(packet))
            except ConnectionClosed:
                self.fail("transport close")
                raise ConnectionClosed("transport close") from None
            return
        self._outbox.append(packet)
        self._out_ready.set()

    def _on_packet(self, packet: Packet) -> None:
        kind = packet.type
        if kind is PacketType.MESSAGE:
            self._inbox.put_nowait(packet.data)
        elif kind is PacketType.PING:
            self._arm_watchdog()
            self._send_packet(Packet(PacketType.PONG, packet.data))
        elif kind is PacketType.CLOSE:
            self.fail("transport close")
        elif kind is PacketType.NOOP or kind is PacketType.PONG:
            pass
        else:
            raise RemoteProtocolError(f"unexpected Engine.IO {kind.name} packet")

    def _use_websocket(self, ws: WebSocket) -> None:
        self._ws = ws
        self.transport = "websocket"
        self._spawn(self._read_ws(ws))

    async def _read_ws(self, ws: WebSocket) -> None:
        try:
            while self.reason is None:
                self._on_packet(eio.decode_ws(await ws.recv()))
        except PayloadTooBig as exc:
            logger.warning("session %s: %s; resetting the connection", self.handshake.sid, exc)
            self.fail("message too big")
        except RemoteProtocolError as exc:
            logger.warning("session %s: bad packet from the server (%s); resetting", self.handshake.sid, exc)
            self.fail("parse error")
        except ConnectionClosed:
            self.fail("transport close")

    def _resource(self, transport: str) -> str:
        params = {"EIO": "4", "transport": transport, **self._query, "sid": self.handshake.sid}
        return self.target.resource(params)

    async def _poll(self) -> None:
        """The long-polling GET loop; stops after the GET in flight when an upgrade pauses it."""
        resource = self._resource("polling")
        try:
            while self.reason is None:
                answer = await http_request(self.target, "GET", resource, headers=self._headers, limit=self._max)
                if answer.status != 200:
                    self.fail("transport error")
                    return
                for packet in _decode_body(answer.body):
                    self._on_packet(packet)
                if self._pausing:
                    return
        except PayloadTooBig as exc:
            logger.warning("session %s: %s; resetting the connection", self.handshake.sid, exc)
            self.fail("message too big")
        except RemoteProtocolError as exc:
            logger.warning("session %s: bad payload from the server (%s); resetting", self.handshake.sid, exc)
            self.fail("parse error")
        except (OSError, ConnectionClosed):
            self.fail("transport error")

    async def _post(self) -> None:
        """The POST loop: one request at a time, batching whatever queued meanwhile."""
        try:
            while self.reason is None:
                await self._out_ready.wait()
                if self._pausing:
                    return  # what is queued goes over the WebSocket after the upgrade
                self._out_ready.clear()
                while self._outbox:
                    batch = self._take_batch()
                    await self._post_body(eio.encode_polling(batch))
        except (OSError, ConnectionClosed, RemoteProtocolError):
            self.fail("transport error")

    def _take_batch(self) -> list[Packet]:
        """Packets from the outbox that fit the server's ``maxPayload`` (at least one)."""
        limit = self.handshake.max_payload
        size, count = 0, 0
        for packet in self._outbox:
            size += len(packet.data) + 2
            if count and size > limit:
                break
            count += 1
        batch, self._outbox = self._outbox[:count], self._outbox[count:]
        return batch

    async def _post_body(self, body: str) -> None:
        answer = await http_request(
            self.target,
            "POST",
            self._resource("polling"),
            headers=self._headers,
            body=body.encode("utf-8"),
            limit=65536,
        )
        if answer.status != 200:
            raise ConnectionClosed(f"POST answered {answer.status}")

    async def _upgrade(self) -> None:
        """Probe a WebSocket beside the polling session, then move the session onto it.

        A failed probe leaves the session on polling (the server may sit behind a proxy that
        drops WebSockets); only a failure after the switch began ends the session.
        """
        try:
            ws = await WebSocket.connect(
                self.target, self._resource("websocket"), headers=self._headers, max_message_bytes=self._max
            )
        except (OSError, ConnectionClosed, RemoteProtocolError) as exc:
            logger.info("session %s stays on polling: %s", self.handshake.sid, exc)
            return
        try:
            ws.send(eio.encode_ws(Packet(PacketType.PING, "probe")))
            async with asyncio.timeout(_PROBE_TIMEOUT):
                reply = eio.decode_ws(await ws.recv())
            if reply != Packet(PacketType.PONG, "probe"):
                raise RemoteProtocolError("unexpected answer to the upgrade probe")
            self._pausing = True
            self._out_ready.set()
            for task in (self._poll_task, self._post_task):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self.reason is not None:
                ws.abort()
                return
            ws.send(eio.encode_ws(Packet(PacketType.UPGRADE)))
        except (OSError, TimeoutError, ConnectionClosed, RemoteProtocolError) as exc:
            ws.abort()
            if self._pausing:
                self.fail("transport error")
            else:
                logger.info("session %s stays on polling: upgrade probe failed (%r)", self.handshake.sid, exc)
            return
        self._use_websocket(ws)
        pending, self._outbox = self._outbox, []
        for packet in pending:
            self._send_packet(packet)
        logger.debug("session %s upgraded to websocket", self.handshake.sid)


def _decode_body(body: bytes) -> list[Packet]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("polling payload is not UTF-8") from None
    return eio.decode_polling(text)
