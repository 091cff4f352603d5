"""The browser side of the tests of roomcast's browser module (``/roomcast.js``).

The page is served by a small aiohttp server on a port of its own (so everything it does
with roomcast is cross-origin, as in production) and imports the module statically from the
roomcast server named in its query: ``import {RoomcastClient} from "<roomcast>/roomcast.js"``.
Its script keeps, per client it creates (``makeClient(name, options)``), every state change,
snapshot, handled event and batch in ``window.log[name]``, and every ``console.error`` in
``window.consoleErrors``. ``ModulePage`` reads them back; every call and wait is bounded.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

from aiohttp import web
from pageserver import serve_page

__all__ = ["PAGE", "WAIT_MS", "ModulePage", "page_server"]

WAIT_MS = 10_000  # the bound on every wait

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>roomcast.js</title></head>
<body>
<script>
window.consoleErrors = [];
const originalError = console.error;
console.error = (...args) => {
  consoleErrors.push(args.map((a) => (a instanceof Error ? `${a.name}: ${a.message}` : String(a))).join(" "));
  originalError(...args);
};
</script>
<script type="module">
import {RoomcastClient} from "ROOMCAST/roomcast.js";

window.clients = {};
window.log = {};
window.batchers = {};

// options.tokens: a token callable that hands these out in turn (the last one repeats).
window.makeClient = (name, options) => {
  const {tokens, ...rest} = options;
  const rec = (log[name] = {states: [], snapshots: [], events: [], batches: [], tokenCalls: 0});
  if (tokens) rest.token = () => tokens[Math.min(rec.tokenCalls++, tokens.length - 1)];
  const client = (clients[name] = new RoomcastClient("ROOMCAST", rest));
  client.onState((change) => rec.states.push(change));
  client.onSnapshot((state, snapshot) => rec.snapshots.push({state, snapshot}));
  return client.state;
};

// Record `events` (in set `set`) as {event, data, meta, set}.
window.record = (name, events, set = "default") => {
  for (const event of events) {
    clients[name].on(event, (data, meta) => log[name].events.push({event, data, meta, set}), {set});
  }
};

// A batcher fed by `event`: each publication's data is {key, kind}.
window.batch = (name, event, options) => {
  const batcher = (batchers[name] = clients[name].batcher((b) => log[name].batches.push(b), options));
  clients[name].on(event, (data) => batcher.add(data.key, data.kind, data));
};

// Subscribe to `rooms` and connect (SSE opens one stream with every room); resolves the subscriptions.
window.start = async (name, rooms) => {
  const subscribed = Promise.all(rooms.map((room) => clients[name].subscribe(room)));
  await clients[name].connect();
  return subscribed;
};

window.ready = true;
</script>
</body></html>
"""


@asynccontextmanager
async def page_server() -> AsyncIterator[str]:
    """Serves ``PAGE`` at ``/?roomcast=<server url>`` on 127.0.0.1; yields its origin."""

    def render(request: web.Request) -> str:
        return PAGE.replace("ROOMCAST", html.escape(request.query["roomcast"], quote=True))

    async with serve_page(render) as origin:
        yield origin


class ModulePage:
    """One tab with the page loaded and the module imported."""

    def __init__(self, tab: Any) -> None:
        self.tab = tab
        self.page_errors: list[str] = []
        tab.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    @classmethod
    async def open(cls, context: Any, origin: str, roomcast_url: str) -> ModulePage:
        page = cls(await context.new_page())
        page.tab.set_default_timeout(WAIT_MS)
        await page.tab.goto(f"{origin}/?roomcast={quote(roomcast_url, safe='')}")
        await page.wait("window.ready === true", None, "the module to load")
        return page

    async def run(self, expression: str, arg: Any = None) -> Any:
        """``page.evaluate`` (awaiting a returned promise), bounded by ``WAIT_MS``."""
        try:
            async with asyncio.timeout(WAIT_MS / 1000):
                return await self.tab.evaluate(expression, arg)
        except TimeoutError:
            raise AssertionError(f"timed out evaluating {expression}; {await self._context()}") from None

    async def wait(self, expression: str, arg: Any, what: str) -> None:
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        try:
            await self.tab.wait_for_function(expression, arg=arg, polling=20, timeout=WAIT_MS)
        except PlaywrightTimeout:
            raise AssertionError(f"timed out waiting for {what}; {await self._context()}") from None

    async def make(self, name: str, **options: Any) -> None:
        await self.run("([name, options]) => makeClient(name, options)", [name, options])

    async def log(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.run("(name) => log[name]", name)
        return result

    async def states(self, name: str) -> list[tuple[str, str, str]]:
        return [(c["old"], c["new"], c["reason"]) for c in (await self.log(name))["states"]]

    async def state(self, name: str) -> str:
        result: str = await self.run("(name) => clients[name].state", name)
        return result

    async def wait_state(self, name: str, state: str) -> None:
        await self.wait("([n, s]) => clients[n].state === s", [name, state], f"{name} to be {state}")

    async def wait_count(self, name: str, key: str, count: int) -> list[Any]:
        """Wait until ``log[name][key]`` holds ``count`` entries; returns them all."""
        await self.wait("([n, k, c]) => log[n][k].length >= c", [name, key, count], f"{count} {key} of {name}")
        result: list[Any] = (await self.log(name))[key]
        return result

    async def console_errors(self) -> list[str]:
        result: list[str] = await self.run("() => consoleErrors")
        return result

    async def _context(self) -> str:
        try:
            state = await asyncio.wait_for(self.tab.evaluate("() => [window.log, window.consoleErrors]"), 2)
        except Exception as exc:  # the page itself is stuck or gone
            state = repr(exc)
        return f"page state={json.dumps(state)[:4000]} page errors={self.page_errors!r}"
