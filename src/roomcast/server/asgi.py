"""The ASGI front door: ``RoomcastApp``, a plain ASGI 3 callable serving an ``App``.

Imports L0–L4 and ``server.app``. It owns the translation of ASGI messages into the router's
two calls (``App.http`` and ``App.websocket`` get an ``HttpRequest``; an accepted WebSocket is
offered to the transport as an ``AsgiWebSocket`` channel), so transports never see ASGI. It
also owns the lifespan: the ``lifespan`` scope when the host forwards it, else a lazy start on
the first request (Starlette/FastAPI ``mount()`` does not forward lifespan), plus
``lifespan(host)`` for ``FastAPI(lifespan=rt.lifespan)``. Mounted with
``api.mount("/rt", rt)``, it routes on the path relative to the mount point. Once started it
drains on the host's SIGTERM as the native door does (``server.asgi_drain``), and after the
drain delay answers new clients 503. ``native_port=`` also opens roomcast's native door in the
same process and loop, sharing the hub (``server.asgi_native``), at the lifespan startup.

Why it is slower than the native door, and allowed to be: each outbound message is an ASGI dict
and a call into the host server's WebSocket layer, so fan-out cannot write one pre-built frame
per recipient (``native_frames`` is ``False``) nor coalesce writes. This door is for adding rooms to an existing ASGI app in a few
lines; deployments that need fan-out throughput run the native door.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import types
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, MutableMapping
from typing import Any

from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.asgi_drain import SignalDrain
from roomcast.server.asgi_native import NEEDS_LIFESPAN, InProcessDoor
from roomcast.server.config import Settings
from roomcast.transports.base import (
    HttpRequest,
    HttpResponse,
    StreamAccept,
    WebSocketHandler,
    api_error,
    build_request,
    json_error,
)

__all__ = [
    "RoomcastApp",
    "AsgiSender",
    "InlineRunner",
    "AsgiWebSocket",
    "AsgiStream",
    "Scope",
    "Message",
    "Receive",
    "Send",
]

logger = logging.getLogger("roomcast.asgi")

Scope = MutableMapping[str, Any]  # the shapes Starlette's ``types`` uses, so mypy accepts a mount
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WS_1008_POLICY_VIOLATION = 1008
WS_1009_MESSAGE_TOO_BIG = 1009
WS_1011_INTERNAL_ERROR = 1011


def _request(scope: Scope, method: str, body: bytes = b"", body_too_large: bool = False) -> HttpRequest:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"  # route relative to the mount point
    client = scope.get("client")
    return build_request(
        method,
        path,
        scope.get("query_string", b""),
        scope.get("headers", ()),
        body=body,
        client=(str(client[0]), int(client[1])) if client else ("", 0),
        body_too_large=body_too_large,
    )


def _headers(response: HttpResponse) -> list[tuple[bytes, bytes]]:
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers]
    if response.status != 204:
        headers.append((b"content-type", response.content_type.encode("latin-1")))
        headers.append((b"content-length", str(len(response.body)).encode()))
    return headers


_IDLE: Any = object()
"""What a runner yields between sends: the last one finished, it waits for the next."""
_COROUTINE = types.CoroutineType


@types.coroutine
def _running() -> Generator[Any, Awaitable[None], None]:
    """Host ``send`` coroutines run to their end: ``runner.send(pending)`` returns ``_IDLE``
    once ``pending`` finished, or what it waits on if the host suspended it."""
    pending = yield _IDLE
    while True:
        yield from (pending if type(pending) is _COROUTINE else pending.__await__())  # type: ignore[misc]
        pending = yield _IDLE


@types.coroutine
def _until_idle(runner: Generator[Any, Any, None], yielded: Any) -> Generator[Any, Any, None]:
    """Finish, under a drain task, the host's ``send`` that ``runner`` was suspended in."""
    while yielded is not _IDLE:
        try:
            sent = yield yielded
        except BaseException as exc:  # cancellation and errors go into the host's send
            yielded = runner.throw(exc)
        else:
            yielded = runner.send(sent)


class InlineRunner:
    """Runs the host's ``send`` coroutines inline, for every connection of one door.

    Why a generator, and one per door: stepping each host coroutine by hand with
    ``coroutine.send(None)`` ends every message with a ``StopIteration`` raised and caught
    (0.4 µs per recipient of a fan-out), while ``yield from`` inside a running generator
    finishes it the way ``await`` does, with no exception. One generator per connection
    saved that on one socket, but on a 5000-subscriber fan-out each one was cold in the CPU
    cache when its turn came (py-spy: 7 % of the samples on resuming it); one shared
    generator stays warm. When a host's send suspends, that generator goes with it to the
    connection's drain task (``detach``) and the door takes a fresh one.
    """

    __slots__ = ("runner",)

    def __init__(self) -> None:
        self.runner = self._fresh()

    @staticmethod
    def _fresh() -> Generator[Any, Awaitable[None], None]:
        runner = _running()
        runner.send(None)  # type: ignore[arg-type]  # primed: at its first ``yield _IDLE``
        return runner

    def detach(self) -> Generator[Any, Awaitable[None], None]:
        """The runner, suspended in a host's send or ended by its error: it is the caller's
        now; the door carries on with a fresh one."""
        runner, self.runner = self.runner, self._fresh()
        return runner


class AsgiSender:
    """Messages to an ASGI host's ``send``, in order, inline whenever the host allows.

    Why it runs the host's ``send`` by hand: with uvicorn (and hosts like it) ``await
    send(message)`` writes to the transport and returns without ever suspending, unless the
    host is applying backpressure. Each message therefore goes through the door's
    ``InlineRunner`` at once; if the host's send finishes, the message is written with no
    task, no queue and no loop iteration (on a 1000-subscriber fan-out, 16.1 µs per delivery
    with a writer task per connection became 12-13 µs). If it suspends, a drain task
    finishes it and then sends, in order, whatever was queued meanwhile; past ``high_water``
    queued bytes a send returns ``False`` (a slow consumer), and finishing then drops what
    is queued instead of flushing. Slotted: a fan-out reads a few of these fields per
    recipient from thousands of connections, and an instance dict would be one more place in
    memory each.
    """

    __slots__ = (
        "_asgi_send",
        "_inline_runner",
        "high_water",
        "queue",
        "buffered",
        "closing",
        "_final",
        "_inline",
        "drain",
        "finished",
    )

    def __init__(self, send: Send, *, high_water: int, runner: InlineRunner | None = None) -> None:
        self._asgi_send = send
        self._inline_runner = runner if runner is not None else InlineRunner()
        self.high_water = high_water
        self.queue: deque[tuple[Message, int]] = deque()
        self.buffered = 0
        self.closing = False
        self._final: Message | None = None
        self._inline = True
        self.drain: asyncio.Task[None] | None = None
        self.finished = asyncio.get_running_loop().create_future()  # the last message went, or lost

    def _send(self, message: Message, size: int) -> bool:
        if self.closing:
            return True
        if self.drain is None:
            self._step(message)
            return True
        self.queue.append((message, size))
        self.buffered += size
        return self.buffered <= self.high_water

    def _finish(self, message: Message) -> None:
        """Send ``message`` as the last one (a close, the end of a body)."""
        if self.closing:
            return
        self.closing = True
        if self.drain is None:
            self._step(message, last=True)
            return
        if self.buffered > self.high_water:
            self.queue.clear()  # a slow consumer: the end would wait behind what it never read
            self.buffered = 0
        self._final = message

    def stop(self) -> None:
        """The connection is gone: drop what is queued and end the drain task."""
        self.closing = True
        self.queue.clear()
        if self.drain is not None:
            self.drain.cancel()
        self._done()

    def _step(self, message: Message, *, last: bool = False) -> None:
        """Send ``message`` now if the host lets us; otherwise start the drain task with it."""
        if last:
            self._final = None
        pending = self._asgi_send(message)
        if not self._inline:
            self._start_drain(pending, last)
            return
        inline = self._inline_runner
        runner = inline.runner
        try:
            yielded = runner.send(pending)
        except BaseException as exc:
            inline.detach()
            self._failed(exc, pending, message, last)
            return
        if yielded is _IDLE:
            if last:
                self._done()
            return
        self._start_drain(_until_idle(inline.detach(), yielded), last)

    def _failed(self, exc: BaseException, pending: Awaitable[None], message: Message, last: bool) -> None:
        """Running ``pending``, the host's ``send(message)``, inline raised ``exc``."""
        close = getattr(pending, "close", None)
        if close is not None:
            close()  # a no-op once it ran; else it is never run (no "never awaited" warning)
        if not isinstance(exc, Exception):
            raise exc  # cancellation, exit: not ours to swallow
        if (isinstance(exc, RuntimeError) and "task" in str(exc)) or (
            isinstance(exc, ValueError) and "already executing" in str(exc)
        ):
            # This host's send needs a task (e.g. a timeout inside it), or called back into a
            # send of ours from inside its own: no more inline steps for this connection.
            self._inline = False
            self._start_drain(self._asgi_send(message), last)
            return
        self._lost(exc)

    def _start_drain(self, first: Awaitable[None], last: bool) -> None:
        self.drain = asyncio.ensure_future(self._drain(first, last))

    async def _drain(self, first: Awaitable[None], last: bool) -> None:
        send, queue = self._asgi_send, self.queue
        try:
            await first
            if last:
                return
            while queue:
                message, size = queue.popleft()
                self.buffered -= size
                await send(message)
            if self._final is not None:
                final, self._final = self._final, None
                await send(final)
                last = True
        except Exception as exc:
            self._lost(exc)
        finally:
            self.drain = None
            if last:
                self._done()

    def _done(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def _lost(self, exc: Exception) -> None:
        """The peer is gone or the host refused: nothing more will be sent."""
        self.closing = True
        self.queue.clear()
        self.buffered = 0
        self._done()
        logger.debug("asgi send stopped: %r", exc)


class AsgiWebSocket(AsgiSender):
    """An accepted ASGI WebSocket as a ``WebSocketChannel`` (see ``AsgiSender`` for how)."""

    __slots__ = ()
    native_frames = False

    def send(self, data: str | bytes) -> bool:
        message: Message
        if isinstance(data, str):
            message = {"type": "websocket.send", "text": data}
        else:
            message = {"type": "websocket.send", "bytes": data}
        if self.drain is None and not self.closing and self._inline:  # the fan-out's path: ``_step`` inlined
            pending = self._asgi_send(message)
            inline = self._inline_runner
            runner = inline.runner
            try:
                yielded = runner.send(pending)
            except BaseException as exc:
                inline.detach()
                self._failed(exc, pending, message, False)
                return True
            if yielded is not _IDLE:
                self._start_drain(_until_idle(inline.detach(), yielded), False)
            return True
        return self._send(message, len(data))

    def send_frames(self, frames: bytes) -> bool:
        raise NotImplementedError("the ASGI door sends whole messages (native_frames is False)")

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._finish({"type": "websocket.close", "code": code, "reason": reason})


class AsgiStream(AsgiSender):
    """A streaming ASGI HTTP response as a ``StreamChannel``: ``more_body`` chunks."""

    __slots__ = ()

    def write(self, data: bytes) -> bool:
        return self._send({"type": "http.response.body", "body": data, "more_body": True}, len(data))

    def close(self) -> None:
        self._finish({"type": "http.response.body", "body": b"", "more_body": False})


class RoomcastApp:
    """A plain ASGI 3 application serving ``app``, or a new ``App(hub, settings)`` without one.

    ``redis="redis://..."`` (or ``settings=Settings(redis_url=...)``) makes the new hub share
    its rooms through that Redis: what ``uvicorn --workers N`` (or several hosts behind a
    load balancer) needs, since each worker process imports the module and builds its own
    ``RoomcastApp``, with its own hub and node identity. Without a shared Redis each worker
    would hold only the subscribers that happened to connect to it. The hub is built here,
    so handlers go on ``rt.hub``; ``redis=`` with ``hub=`` is a ``TypeError``, since a hub
    already built has its broker and the URL would be silently ignored.

    ``native_port=8001`` also serves the same app on roomcast's native door, on that port
    (``Settings.host``), in this process and event loop: Socket.IO, SSE and ``/ws`` clients
    connected there get native fan-out speed while the host serves the rest through ASGI
    (``server.asgi_native``; ``native_address`` says where once started, ``0`` picks a
    port). It opens at the ASGI lifespan startup and drains and closes at its shutdown, so
    it needs the lifespan: ``FastAPI(lifespan=rt.lifespan)`` when mounted. Without one,
    every request is answered 500 naming the fix (``NEEDS_LIFESPAN``, logged once) instead
    of leaving the native port silently closed.
    """

    def __init__(
        self,
        app: App | None = None,
        *,
        hub: Hub | None = None,
        settings: Settings | None = None,
        redis: str | None = None,
        native_port: int | None = None,
    ) -> None:
        if native_port is not None and not 0 <= native_port <= 65535:
            raise ValueError(f"native_port must be a TCP port (0-65535, 0 picks one), got {native_port}")
        if app is not None and (hub is not None or settings is not None or redis is not None):
            raise TypeError("pass either an App or hub/settings/redis to build one, not both")
        if redis is not None:
            if hub is not None:  # a hub comes with its broker: redis= would be silently ignored
                raise TypeError(
                    "redis= builds the hub on that Redis, but hub= passes one already built: leave "
                    "hub= out and register handlers on the new app's .hub, or build your hub on "
                    "Redis and pass settings=Settings(redis_url=...) for the rest"
                )
            if settings is not None and settings.redis_url not in (None, redis):
                raise TypeError("redis= and settings.redis_url name different Redis servers: pass one")
            settings = dataclasses.replace(settings if settings is not None else Settings(), redis_url=redis)
        self.app = app if app is not None else App(hub, settings)
        # its metrics label connections with the door that serves them (both: "asgi+native")
        self.app.door = "asgi" if native_port is None else "asgi+native"
        self.native = InProcessDoor(self.app, native_port) if native_port is not None else None
        """The in-process native door (``native_port=``), or ``None``."""
        self._told_no_lifespan = False
        self._runner = InlineRunner()  # every connection's inline sends (``AsgiSender``)
        self.hub = self.app.hub
        self.settings = self.app.settings
        self._starting = asyncio.Lock()
        self._ready = self._stopped = False
        self.accepting = True
        """``False`` once a drain passed its delay: new clients are answered 503 (``asgi_drain``)."""
        self.signals: SignalDrain | None = None
        """The drain on the host's SIGTERM, once started in the main thread."""

    @property
    def native_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the in-process native door while it listens, else ``None``."""
        return self.native.address if self.native is not None else None

    # -- lifespan -----------------------------------------------------------------------
    async def startup(self) -> None:
        """Start the app once, then the native door if asked; concurrent calls wait for that
        start (a failed one is retried).

        Raises:
            CannotListen: ``native_port`` cannot be bound (the app is shut down again).
        """
        async with self._starting:
            if not self._ready:
                await self.app.startup()
                if self.native is not None:
                    try:
                        await self.native.open()
                    except BaseException:
                        await self.app.shutdown()  # the host's lifespan.startup fails: it exits
                        raise
                self._ready = True
                signals = SignalDrain(self.app, self._stop_accepting)
                if signals.install():
                    self.signals = signals

    async def shutdown(self) -> None:
        """Shut the app down once, if it was started."""
        if self._ready and not self._stopped:
            self._stopped = True
            drained = self.signals is not None and self.signals.drained is not None
            if self.signals is not None:
                self.signals.uninstall()
            if self.native is not None:  # the host's clients are gone; the door's may not be
                await self.native.close(drained=drained)
            await self.app.shutdown()

    def _stop_accepting(self) -> None:
        self.accepting = False
        if self.native is not None:
            self.native.stop_accepting()

    def _refusal(self) -> HttpResponse:
        """What a new client hears once a drain passed its delay: come back (elsewhere)."""
        return api_error(503, "shutting_down", "this server is shutting down: connect again", [("retry-after", "1")])

    @contextlib.asynccontextmanager
    async def lifespan(self, _host: object = None) -> AsyncIterator[None]:
        """``FastAPI(lifespan=rt.lifespan)``: start with the host app, shut down with it."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol, when the host forwards it."""
        while True:
            kind = (await receive())["type"]
            step = self.startup if kind == "lifespan.startup" else self.shutdown
            try:
                await step()
            except Exception as exc:
                logger.exception("%s failed", kind)
                await send({"type": f"{kind}.failed", "message": repr(exc)})
                return
            await send({"type": f"{kind}.complete"})
            if kind == "lifespan.shutdown":
                return

    # -- ASGI ---------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if not self._ready:
            if self.native is not None:
                await self._refuse_without_lifespan(scope, receive, send)
                return
            await self.startup()  # the host did not forward lifespan (a mount): start lazily
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)

    async def _refuse_without_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """No lifespan, so no native door: say so (once in the log, on every request)."""
        if not self._told_no_lifespan:
            self._told_no_lifespan = True
            logger.error(NEEDS_LIFESPAN)
        if scope["type"] == "http":
            answer = api_error(500, "no_lifespan", NEEDS_LIFESPAN)
            await send({"type": "http.response.start", "status": answer.status, "headers": _headers(answer)})
            await send({"type": "http.response.body", "body": answer.body})
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": WS_1011_INTERNAL_ERROR, "reason": "no ASGI lifespan"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.settings.max_payload
        chunks: list[bytes] = []
        size, more = 0, True  # stop reading as soon as the body is past the limit
        while more and size <= limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
        too_big = size > limit  # the router answers 413 (and Engine.IO ends the session)
        request = _request(scope, scope["method"], b"" if too_big else b"".join(chunks), too_big)
        answer: HttpResponse | StreamAccept | None
        if not self.accepting and self.app.opens_session(request):
            answer = self._refusal()  # draining: a new Engine.IO session goes elsewhere
        elif request.method == "GET" and not too_big:
            answer = await self._watched(request, receive)  # a long poll may wait
            if answer is None:
                return
        else:
            answer = await self._handle(request)
        if isinstance(answer, StreamAccept):
            if self.accepting:
                await self._stream(answer, receive, send)
                return
            answer = self._refusal()  # draining: a new stream (never started) goes elsewhere
        response = answer
        await send({"type": "http.response.start", "status": response.status, "headers": _headers(response)})
        await send({"type": "http.response.body", "body": response.body})

    async def _stream(self, accept: StreamAccept, receive: Receive, send: Send) -> None:
        """Serve a streaming response until the transport ends it or the client leaves."""
        headers = [(b"content-type", accept.content_type.encode("latin-1")), (b"cache-control", b"no-cache")]
        headers.extend((n.encode("latin-1"), v.encode("latin-1")) for n, v in accept.headers)
        await send({"type": "http.response.start", "status": accept.status, "headers": headers})
        stream = AsgiStream(send, high_water=self.settings.max_buffer_bytes, runner=self._runner)
        handler = accept.start(stream)
        left = asyncio.ensure_future(self._until_disconnect(receive))
        try:
            await asyncio.wait((left, stream.finished), return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
            drain = stream.drain
            stream.stop()
            if drain is not None:
                await asyncio.gather(drain, return_exceptions=True)
            handler.on_close()

    @staticmethod
    async def _until_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _handle(self, request: HttpRequest) -> HttpResponse | StreamAccept:
        try:
            return await self.app.http(request)
        except Exception:
            logger.exception("request %s %s failed", request.method, request.path)
            return json_error(500, 500, "Internal server error")

    async def _watched(self, request: HttpRequest, receive: Receive) -> HttpResponse | StreamAccept | None:
        """Run the handler while watching for ``http.disconnect``; ``None`` if the client left."""
        handler = asyncio.ensure_future(self._handle(request))
        watcher = asyncio.ensure_future(receive())
        try:
            await asyncio.wait((handler, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            handler.cancel()  # a no-op once done
            watcher.cancel()
            await asyncio.gather(handler, watcher, return_exceptions=True)
        return None if handler.cancelled() else handler.result()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        decision = self._refusal() if not self.accepting else self.app.websocket(_request(scope, "GET"))
        if isinstance(decision, HttpResponse):
            if "websocket.http.response" in scope.get("extensions", {}):  # (uvicorn's sansio
                # impl then logs a spurious "without completing handshake": Kludex/uvicorn#3138)
                start = {"type": "websocket.http.response.start", "status": decision.status}
                await send({**start, "headers": _headers(decision)})
                await send({"type": "websocket.http.response.body", "body": decision.body})
            else:
                await send({"type": "websocket.close", "code": WS_1008_POLICY_VIOLATION})
            return
        await send({"type": "websocket.accept", "subprotocol": decision.subprotocol})
        channel = AsgiWebSocket(send, high_water=self.settings.max_buffer_bytes, runner=self._runner)
        try:
            await self._receive_loop(channel, decision.start(channel), receive)
        finally:  # the connection is gone: end the drain task now
            drain = channel.drain
            channel.stop()
            if drain is not None:
                await asyncio.gather(drain, return_exceptions=True)

    async def _receive_loop(self, channel: AsgiWebSocket, handler: WebSocketHandler, receive: Receive) -> None:
        limit, closed = self.settings.max_payload, False
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                if not closed:
                    handler.on_close(int(message.get("code", 1005)))
                return
            if kind != "websocket.receive" or closed:
                continue
            text = message.get("text")
            data: str | bytes | None = text if text is not None else message.get("bytes")
            if data is None:
                continue
            big = len(data) > limit or (isinstance(data, str) and len(data) * 4 > limit and len(data.encode()) > limit)
            code = WS_1009_MESSAGE_TOO_BIG if big else 0
            if not code:
                try:
                    handler.on_message(data)
                except Exception:
                    logger.exception("websocket handler failed")
                    code = WS_1011_INTERNAL_ERROR
            if code:  # on_close once, now; the loop then waits for websocket.disconnect
                channel.close(code, "message too big" if code == WS_1009_MESSAGE_TOO_BIG else "")
                closed = True
                handler.on_close(code)
