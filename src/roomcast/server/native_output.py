"""The native door's outbound side: writes coalesced per loop iteration, streaming responses
and WebSockets, and the slow consumer's goodbye.

Imports L0, L1 (``protocol.websocket``), ``transports.base`` and ``server.door_limits``. Why
a module of its own: this is the fan-out's last step, one ``write`` per recipient into a
buffer flushed once per iteration, and it is the same for every kind of long-lived
connection; the HTTP side (``server.native``) only hands connections over to it.
"""

from __future__ import annotations

import asyncio
import logging

from roomcast.errors import RemoteProtocolError
from roomcast.protocol import websocket as wsproto
from roomcast.server.config import WRITE_HOLD_SECONDS
from roomcast.server.door_limits import DoorCounters
from roomcast.transports.base import StreamHandler, WebSocketHandler

__all__ = ["WriteCoalescer", "CoalescedOutput", "NativeStream", "NativeWebSocket", "SLOW_GOODBYE_SECONDS"]

logger = logging.getLogger("roomcast.native")


class WriteCoalescer:
    """Writes each connection's outbound bytes once per event-loop iteration.

    Why: on a busy server the cost of fan-out is the ``send`` system call per recipient, not
    Python (py-spy: 78 % of a 1000-subscriber fan-out sat in ``transport.write``). When
    several publications are handled in one loop iteration — a burst of publish requests in
    one read, a batch from the broker — each recipient's frames are joined into one
    ``writelines`` (one ``writev``) at the end of the iteration instead of one ``send`` each.
    A lone publication costs one list append more than writing at once, and no timer.

    On a node whose broker is Redis, its own publications come back one round trip after
    the request, and ``Hub.publish`` holds the flush meanwhile (``hold``/``release``), until
    each is fanned out here (its answer comes on another connection, maybe first). A flush
    due while they are on their way waits for them, at most ``limit`` seconds
    (``Settings.write_hold``): a burst of requests read together goes out together, with
    its answers, as in a single process, which fans a request out in the turn it reads it.
    Without the wait such a burst was written out in pieces (0.45-0.5 write calls per
    delivered message against 0.25), and the publisher's next requests, sent on those
    answers, came apart too (docs/performance.md, "Scale-out on Redis").
    """

    __slots__ = ("_dirty", "_scheduled", "counters", "limit", "_holds", "_held", "_hold_timer")

    def __init__(self, counters: DoorCounters | None = None) -> None:
        self._dirty: list[CoalescedOutput] = []
        self._scheduled = False
        self.counters = counters if counters is not None else DoorCounters()  # the server's, shared
        self.limit = WRITE_HOLD_SECONDS  # the longest a flush waits for them (``Settings.write_hold``)
        self._holds = 0  # this node's publications on their way through the broker
        self._held = False  # a flush came due while they were
        self._hold_timer: asyncio.TimerHandle | None = None

    def mark(self, output: CoalescedOutput) -> None:
        self._dirty.append(output)
        if not self._scheduled:
            self._scheduled = True
            # One callback round later than the first write: the publications handled in the
            # same read each run as a task step or two (a handler awaiting ``hub.publish``), so
            # flushing in the very next round would send a burst of four in two writes; a
            # round later they go in one (write calls per delivery 0.5 -> 0.25, analysis in
            # docs/performance.md), at the cost of one more trip through the ready queue.
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self.flush)

    def flush(self) -> None:
        if self._holds:
            if not self._held:
                self._held = True
                self._hold_timer = asyncio.get_running_loop().call_later(self.limit, self._hold_expired)
            return  # still scheduled: what is marked meanwhile waits for the same flush
        self._write_out()

    def hold(self) -> None:
        """A publication of this node is on its way through the broker, to come back here."""
        self._holds += 1

    def release(self) -> None:
        """It was fanned out here (or is not coming, or ``limit`` passed)."""
        self._holds -= 1
        if self._holds == 0 and self._held:
            self._unhold()
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._write_out)  # the answer's handler writes first

    def _hold_expired(self) -> None:
        self._hold_timer = None
        if self._held:
            self._unhold()
            self._write_out()

    def _unhold(self) -> None:
        self._held = False
        timer, self._hold_timer = self._hold_timer, None
        if timer is not None:
            timer.cancel()

    def _write_out(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for output in dirty:
            output.flush()


class CoalescedOutput:
    """Outbound bytes of one connection, written by the ``WriteCoalescer`` (a WebSocket's
    frames, a Server-Sent Events stream's events).

    ``write`` keeps a reference (or appends, when this connection already has bytes waiting
    in this loop iteration) and returns ``False`` once the last flush left the transport's
    buffer over ``high_water``: the hub then disconnects a slow consumer.
    """

    __slots__ = ("transport", "high_water", "coalescer", "closing", "_out", "_over", "_lost", "_goodbye")

    def __init__(self, transport: asyncio.Transport, *, high_water: int, coalescer: WriteCoalescer | None) -> None:
        self.transport = transport
        self.high_water = high_water
        self.coalescer = coalescer if coalescer is not None else WriteCoalescer()
        self.closing = False
        self._out: bytes | list[bytes] | None = None
        self._over = False
        self._lost = False
        self._goodbye: asyncio.TimerHandle | None = None

    def write(self, data: bytes) -> bool:
        if self.closing:
            return True
        out = self._out
        if out is None:
            self._out = data  # the common case: a reference, no allocation
            self.coalescer.mark(self)
        elif isinstance(out, list):
            out.append(data)
        else:
            self._out = [out, data]
        return not self._over

    def flush(self) -> None:
        """Write what is queued (called by the coalescer, and before closing)."""
        out = self._out
        if out is None:
            return
        self._out = None
        transport = self.transport
        if self._lost or transport.is_closing():
            return
        if isinstance(out, list):
            transport.writelines(out)
        else:
            transport.write(out)
        self._over = transport.get_write_buffer_size() > self.high_water

    def say_goodbye(self) -> None:
        """Close a slow consumer with its goodbye (already queued) behind what it has not read.

        The transport closes once the client reads it all; a client that does not read is
        aborted after ``SLOW_GOODBYE_SECONDS``, so its buffer is freed within a bounded time.
        """
        self.flush()
        self.closing = True
        self.transport.close()
        self._goodbye = asyncio.get_running_loop().call_later(SLOW_GOODBYE_SECONDS, self._abort_slow)

    def _abort_slow(self) -> None:
        self._goodbye = None
        if not self._lost:
            self.coalescer.counters.slow_aborts += 1
            self.transport.abort()

    def _ended(self) -> None:
        """The connection is gone: a pending goodbye reached the client's side."""
        if self._goodbye is not None:
            self._goodbye.cancel()
            self._goodbye = None
            self.coalescer.counters.slow_goodbyes += 1


SLOW_GOODBYE_SECONDS = 2.0
"""How long a slow consumer has to read its way to the goodbye before it is aborted."""


class NativeStream(CoalescedOutput):
    """A streaming HTTP response (a ``StreamChannel``), delimited by closing the connection."""

    __slots__ = ("handler",)

    def __init__(self, transport: asyncio.Transport, *, high_water: int, coalescer: WriteCoalescer | None) -> None:
        super().__init__(transport, high_water=high_water, coalescer=coalescer)
        self.handler: StreamHandler | None = None

    def close(self) -> None:
        if self.closing:
            return
        if self._over:
            self.say_goodbye()  # a slow consumer: its `event: error` waits behind what it has not read
            return
        self.flush()
        self.closing = True
        self.transport.close()  # after the buffer drains: the end of the response

    def connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = self.closing = True
        self._ended()
        if self.handler is not None:
            self.handler.on_close()


class NativeWebSocket(CoalescedOutput):
    """A server-side WebSocket on an asyncio transport (a ``WebSocketChannel``).

    Outbound frames wait until the ``WriteCoalescer`` flushes them at the end of the loop
    iteration (in order; a close flushes first). The outbound limit is checked at each
    flush, so ``send``/``send_frames`` report a slow consumer from the last flush on.
    """

    native_frames = True
    __slots__ = ("parser", "handler", "_close_timer")

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        max_message_bytes: int,
        high_water: int,
        coalescer: WriteCoalescer | None = None,
    ) -> None:
        super().__init__(transport, high_water=high_water, coalescer=coalescer)
        self.parser = wsproto.WebSocketParser(max_message_bytes=max_message_bytes, require_mask=True)
        self.handler: WebSocketHandler | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    def send(self, data: str | bytes) -> bool:
        if isinstance(data, str):
            return self.write(wsproto.text_frame(data))
        return self.write(wsproto.binary_frame(data))

    def send_frames(self, frames: bytes) -> bool:
        return self.write(frames)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closing:
            return
        transport = self.transport
        if transport.is_closing():
            self.closing = True
            return
        if self._over:
            self.write(wsproto.close_frame(code, reason))
            self.say_goodbye()  # a slow consumer: the close frame waits behind what it has not read
            return
        self.flush()
        self.closing = True
        transport.write(wsproto.close_frame(code, reason))
        # Wait briefly for the peer's close frame, then drop the TCP connection anyway.
        self._close_timer = asyncio.get_running_loop().call_later(2.0, self.transport.close)

    def feed(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except RemoteProtocolError as exc:
            logger.debug("websocket protocol error: %s", exc)
            code = wsproto.close_code_for(exc)
            self.close(code, exc.reason[:100])
            self.transport.close()
            return
        handler = self.handler
        for event in events:
            if isinstance(event, wsproto.Message):
                if handler is not None and not self.closing:
                    payload = event.data
                    handler.on_message(payload.decode() if event.opcode == wsproto.OP_TEXT else payload)
            elif isinstance(event, wsproto.Ping):
                if not self.closing:  # an answer the client asked for: the door's output limits hold it
                    self.transport.write(wsproto.serialize_frame(wsproto.OP_PONG, event.data))
            elif isinstance(event, wsproto.Pong):
                # the answer to a transport's keep-alive ping (``/ws``): a handler that pings
                # has ``on_pong``; the others (Engine.IO pings in its own packets) ignore it
                on_pong = getattr(handler, "on_pong", None)
                if on_pong is not None:
                    on_pong()
            elif isinstance(event, wsproto.Close):
                if not self.closing:
                    self.flush()
                    self.closing = True
                    echo = 1000 if event.code == 1005 else event.code
                    self.transport.write(wsproto.close_frame(echo))
                self.transport.close()
                return

    def connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self.closing = True
        self._ended()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.handler is not None:
            self.handler.on_close(1006)
