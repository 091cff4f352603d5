"""``yield_to_loop()``: one pass of the event loop, for tests in any folder.

Suspends once, as an await on I/O does, so callbacks and other tasks that are ready run in
between (the write coalescer's flush, a connection_lost). Not a timed wait: it never sleeps.
"""

from __future__ import annotations

import asyncio


async def yield_to_loop() -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(lambda: done.done() or done.set_result(None))
    await done
