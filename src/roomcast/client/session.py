"""One Socket.IO connection of the client: the namespace ``CONNECT``, packets in and out, acks.

Owns what lives exactly as long as one connection: the Engine.IO session under it
(``client.connection``), the Socket.IO decoder, the ack ids this side handed out and the
futures waiting on them, the server's ack ids (``ServerAck``), and the short tasks started
for this connection. :meth:`SioSession.open` performs the namespace handshake;
:meth:`SioSession.next_packet` yields what the application layer must act on (events and
the server's ``DISCONNECT``), having settled acks itself; :meth:`SioSession.end` fails every
pending ack and cancels the tasks, so nothing of a lost connection outlives it.

Why apart from ``client.client``: the ``Client`` decides *whether* to connect, what to do
when a connection ends, and what rooms mean; none of that is needed to speak Socket.IO on
one connection, and a session that is dropped whole on every reconnect cannot leak an ack
or a task into the next one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from roomcast.client.connection import EngineConnection
from roomcast.client.transport import Target
from roomcast.errors import ConnectionClosed, ConnectRefused, RemoteProtocolError
from roomcast.protocol import socketio as sio
from roomcast.protocol.socketio import SioPacket, SioType

__all__ = ["SioSession", "ServerAck", "unpack"]

logger = logging.getLogger("roomcast.client")


def unpack(args: list[Any]) -> Any:
    """An ack's arguments as a value: none → None, one → it, several → a tuple."""
    if not args:
        return None
    return args[0] if len(args) == 1 else tuple(args)


class SioSession:
    """A connected Socket.IO namespace over one Engine.IO session; build it with :meth:`open`.

    Attributes:
        engine: the Engine.IO session below.
        namespace: the namespace this session joined.
        early: events the server sent before its ``CONNECT`` reply (a recovered session's
            missed events); the owner handles them right after the reply, as the official
            client does.
    """

    __slots__ = ("engine", "namespace", "early", "_decoder", "_acks", "_ack_ids", "_tasks")

    def __init__(self, engine: EngineConnection, namespace: str) -> None:
        self.engine = engine
        self.namespace = namespace
        self.early: list[SioPacket] = []
        self._decoder = sio.Decoder()
        self._acks: dict[int, asyncio.Future[list[Any]]] = {}
        self._ack_ids = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    async def open(
        cls,
        target: Target,
        namespace: str,
        payload: Mapping[str, Any] | None,
        *,
        transports: Sequence[str],
        headers: Mapping[str, str],
        query: Mapping[str, str],
        max_message_bytes: int,
    ) -> tuple[SioSession, dict[str, Any]]:
        """Open the Engine.IO session, send ``CONNECT`` with ``payload``, and wait for the answer.

        The caller bounds the time (``asyncio.timeout``). Returns the session and the
        server's ``CONNECT`` data (``sid``, and ``pid`` when it offers connection state
        recovery).

        Raises:
            ConnectRefused: the server answered ``CONNECT_ERROR`` (its message and data).
            RemoteProtocolError: a ``CONNECT`` reply without a ``sid``.
            OSError, ConnectionClosed: as ``EngineConnection.open``, or the session ended.
        """
        engine = await EngineConnection.open(
            target, transports=transports, headers=headers, query=query, max_message_bytes=max_message_bytes
        )
        session = cls(engine, namespace)
        try:
            session.write(SioPacket(SioType.CONNECT, namespace, dict(payload) if payload is not None else None))
            while True:
                packet = session._decoder.feed(await engine.recv())
                if packet is None or packet.namespace != namespace:
                    continue
                if packet.type is SioType.CONNECT:
                    if not isinstance(packet.data, dict) or not isinstance(packet.data.get("sid"), str):
                        raise RemoteProtocolError("CONNECT reply without a sid")
                    return session, packet.data
                if packet.type is SioType.CONNECT_ERROR:
                    data = packet.data
                    message = str(data.get("message", "refused")) if isinstance(data, dict) else str(data)
                    raise ConnectRefused(message, data.get("data") if isinstance(data, dict) else None)
                if packet.type is SioType.EVENT:
                    session.early.append(packet)
                else:
                    logger.debug("ignored a %s packet before CONNECT", packet.type.name)
        except BaseException:
            engine.fail("connect failed")
            raise

    @property
    def transport(self) -> str:
        return self.engine.transport

    @property
    def ended(self) -> bool:
        return self.engine.ended

    # -- out ------------------------------------------------------------------------------
    def write(self, packet: SioPacket) -> None:
        """Encode and send one packet; a dead connection is noticed by the read loop.

        Raises:
            LocalProtocolError: the packet cannot be encoded (nothing was sent).
        """
        parts = sio.encode(packet)
        try:
            for part in parts:
                self.engine.send(part)
        except ConnectionClosed:
            logger.debug("dropped a %s packet: the connection is gone", packet.type.name)

    def send_event(self, event: str, args: Sequence[Any], future: asyncio.Future[list[Any]] | None) -> None:
        """Send ``event``; with ``future``, ask for an ack and settle ``future`` with it.

        Raises:
            LocalProtocolError: arguments the wire cannot carry (``future`` is cancelled).
        """
        ack_id = None
        if future is not None:
            ack_id = next(self._ack_ids)
            self._acks[ack_id] = future
            future.add_done_callback(lambda _: self._acks.pop(ack_id, None))
        try:
            self.write(SioPacket(SioType.EVENT, self.namespace, [event, *args], ack_id))
        except BaseException:
            if future is not None:
                future.cancel()
            raise

    async def call(self, event: str, payload: Any, timeout: float) -> Any:
        """Send ``event`` with one argument and return the server's answer (``unpack``-ed).

        Raises:
            TimeoutError: no answer within ``timeout``.
            ConnectionClosed: the connection ended before the answer.
        """
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.send_event(event, (payload,), future)
        async with asyncio.timeout(timeout):
            return unpack(await future)

    def ack(self, ack_id: int, args: Sequence[Any]) -> None:
        """Answer the server's event ``ack_id``; nothing once this connection has ended
        (a reconnect makes the id meaningless)."""
        if not self.ended:
            self.write(SioPacket(SioType.ACK, self.namespace, list(args), ack_id))

    # -- in -------------------------------------------------------------------------------
    async def next_packet(self) -> SioPacket:
        """The next event or ``DISCONNECT`` of this namespace; acks are settled on the way.

        A packet that does not parse resets the connection (reason ``"parse error"``).

        Raises:
            ConnectionClosed: the session ended; ``args[0]`` is the reason.
        """
        while True:
            data = await self.engine.recv()
            try:
                packet = self._decoder.feed(data)
            except RemoteProtocolError as exc:
                logger.warning("bad Socket.IO packet from the server (%s); resetting the connection", exc.reason)
                self.engine.fail("parse error")
                continue
            if packet is None:
                continue
            if packet.namespace != self.namespace:
                logger.debug("packet for namespace %s ignored", packet.namespace)
                continue
            if packet.type is SioType.ACK:
                future = self._acks.pop(packet.id, None) if packet.id is not None else None
                if future is None:
                    logger.warning("ack for unknown id %s dropped", packet.id)
                elif not future.done():
                    future.set_result(packet.data)
                continue
            return packet

    # -- lifetime -------------------------------------------------------------------------
    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task of this connection: cancelled when it ends."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def end(self, reason: str) -> None:
        """End the connection: drop the wire, cancel its tasks, fail every pending ack."""
        self.engine.fail(reason)
        for task in list(self._tasks):
            task.cancel()
        for future in list(self._acks.values()):
            if not future.done():
                future.set_exception(ConnectionClosed(f"connection lost before the answer ({reason})"))
        self._acks.clear()


class ServerAck:
    """The last argument of an event the server wants acknowledged: call it with the answer.

    Called more than once, only the first call is sent; not called by any handler, an
    empty ack is sent once the handlers ran, so the server never waits for nothing.
    """

    __slots__ = ("_session", "_id", "sent")

    def __init__(self, session: SioSession, ack_id: int) -> None:
        self._session, self._id, self.sent = session, ack_id, False

    def __call__(self, *args: Any) -> None:
        if self.sent:
            return
        self.sent = True
        self._session.ack(self._id, args)
