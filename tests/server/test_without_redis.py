"""A single node (no ``--redis``) never loads redis-py: its 10 MB resident would be the single
process's cost of a feature it does not use ("adding Redis does not change the single-node
figures"). A fresh interpreter builds the server the way ``roomcast serve`` does, serves a
request and renders its metrics and settings line, then shows what it imported."""

from __future__ import annotations

import json
import subprocess
import sys

_SERVE_ONCE = """
import asyncio, json, sys
import roomcast.cli, roomcast.server.runner
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.logs import settings_line
from roomcast.transports.base import HttpRequest

async def main():
    app = App(settings=Settings(task_db=":memory:"))
    await app.startup()
    try:
        metrics = await app.http(HttpRequest("GET", "/metrics", {}, {"host": "127.0.0.1"}, client=("127.0.0.1", 1)))
        assert metrics.status == 200 and b"roomcast_broker_up" in metrics.body, metrics
        assert 'broker="memory"' in metrics.body.decode()
        assert "redis_url=None" in settings_line(app.settings)
    finally:
        await app.shutdown()

asyncio.run(main())
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("redis", "hiredis"))))
"""


def test_a_server_without_redis_never_imports_redis_py() -> None:
    done = subprocess.run([sys.executable, "-c", _SERVE_ONCE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
