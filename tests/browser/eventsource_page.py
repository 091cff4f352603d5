"""The browser side of the SSE tests: the page, a handle on one ``EventSource`` in it, and a
spy on roomcast's ``/sse`` route.

The page's script keeps, for every stream it opens (``follow(name, url, eventNames)``), each
event (``type``, ``data``, ``lastEventId``) in ``window.received[name]`` and each ``open`` /
``error`` transition with the ``readyState`` after it in ``window.states[name]``. The tests
read them with ``page.evaluate`` and wait on them with ``page.wait_for_function``: every wait
is bounded, none is a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from roomcast.server.app import App
from roomcast.transports.base import HttpRequest, HttpResponse, StreamAccept
from roomcast.transports.sse import SseConnection

__all__ = ["PAGE", "WAIT_MS", "CONNECTING", "OPEN", "CLOSED", "BrowserStream", "SeenRequest", "SseSpy"]

WAIT_MS = 10_000  # the bound on every wait (Playwright's own default is 30 s)
CONNECTING, OPEN, CLOSED = 0, 1, 2  # EventSource.readyState

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>roomcast EventSource</title></head>
<body>
<script>
window.sources = {};    // name -> EventSource
window.received = {};   // name -> [{type, data, lastEventId, readyState}]
window.states = {};     // name -> [{type: "open" | "error", readyState}]

window.follow = function (name, url, eventNames) {
  const es = new EventSource(url);
  const events = (received[name] = []);
  const states = (window.states[name] = []);
  sources[name] = es;
  const record = (e) => events.push(
    {type: e.type, data: e.data, lastEventId: e.lastEventId, readyState: es.readyState});
  es.addEventListener("open", () => states.push({type: "open", readyState: es.readyState}));
  es.addEventListener("error", (e) => {
    // roomcast's own `event: error` is a MessageEvent with data; a network error is not.
    if (e instanceof MessageEvent) record(e);
    else states.push({type: "error", readyState: es.readyState});
  });
  for (const n of new Set(["message", "snapshot", "reset", ...eventNames])) {
    es.addEventListener(n, record);
  }
  return es.url;
};
</script>
</body></html>
"""


class BrowserStream:
    """One ``EventSource`` in the page, read back through Playwright."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = name

    @classmethod
    async def open(cls, page: Any, name: str, url: str, event_names: list[str]) -> BrowserStream:
        """``new EventSource(url)`` in the page, listening for ``event_names`` besides the
        protocol's own (``message``, ``snapshot``, ``reset``, ``error``)."""
        await page.evaluate("([name, url, names]) => follow(name, url, names)", [name, url, event_names])
        return cls(page, name)

    async def events(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.page.evaluate("(name) => received[name]", self.name)
        return result

    async def states(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.page.evaluate("(name) => states[name]", self.name)
        return result

    async def ready_state(self) -> int:
        result: int = await self.page.evaluate("(name) => sources[name].readyState", self.name)
        return result

    async def wait_events(self, count: int) -> list[dict[str, Any]]:
        """Wait until the page holds ``count`` events of this stream; returns all it holds."""
        await self._wait("([name, n]) => received[name].length >= n", [self.name, count], f"{count} events")
        return await self.events()

    async def wait_states(self, count: int) -> list[dict[str, Any]]:
        """Wait until ``count`` open/error transitions happened; returns all of them."""
        await self._wait("([name, n]) => states[name].length >= n", [self.name, count], f"{count} transitions")
        return await self.states()

    async def wait_ready_state(self, value: int) -> None:
        await self._wait("([name, v]) => sources[name].readyState === v", [self.name, value], f"readyState {value}")

    async def close(self) -> None:
        await self.page.evaluate("(name) => sources[name].close()", self.name)

    async def _wait(self, expression: str, arg: Any, what: str) -> None:
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        try:
            await self.page.wait_for_function(expression, arg=arg, polling=20, timeout=WAIT_MS)
        except PlaywrightTimeout:
            raise AssertionError(
                f"{self.name}: timed out waiting for {what}; "
                f"events={await self.events()!r} states={await self.states()!r}"
            ) from None


@dataclass
class SeenRequest:
    """One ``/sse`` request as roomcast's route saw it, and how it answered."""

    rooms: list[str]
    last_event_id: str | None  # the header; EventSource sets it by itself when it reconnects
    origin: str | None
    status: int | None = None  # 200 for an accepted stream; None until answered


@dataclass
class SseSpy:
    """Watches ``app.sse`` from outside: every request to ``/sse`` and every stream that ends.

    Wraps the route's ``handle`` and ``forget`` on the instance (the App reaches both through
    ``app.sse``); roomcast itself is unchanged. ``hold()`` makes the next requests wait at the
    door until ``release()``, so a test can publish while a reconnecting browser is surely away.
    """

    app: App
    requests: list[SeenRequest] = field(default_factory=list)
    gate: asyncio.Event | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        sse = self.app.sse
        handle, forget = sse.handle, sse.forget

        async def spied_handle(request: HttpRequest, *fixed: Any) -> HttpResponse | StreamAccept:
            seen = SeenRequest(
                request.query_all.get("room", []), request.headers.get("last-event-id"), request.headers.get("origin")
            )
            self.requests.append(seen)
            self._changed.set()
            if self.gate is not None:
                await self.gate.wait()
            response = await handle(request, *fixed)  # ``fixed``: the rooms of /tasks/{id}/events
            seen.status = 200 if isinstance(response, StreamAccept) else response.status
            self._changed.set()
            return response

        def spied_forget(conn: SseConnection) -> None:
            forget(conn)
            self._changed.set()

        sse.handle = spied_handle  # type: ignore[method-assign]
        sse.forget = spied_forget  # type: ignore[method-assign]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (bounded) until ``condition()`` holds; it is checked again at every request,
        answer and stream end, never on a timer."""
        try:
            async with asyncio.timeout(WAIT_MS / 1000):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for: {what}; requests={self.requests!r}") from None

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None
