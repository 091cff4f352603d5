"""The client SDK and the publisher stand alone: importing them loads no server.

A process that only connects (``roomcast.client``) or only publishes (``roomcast.publisher``)
must not pay for the hub, the task store, PyJWT, cryptography or sqlite3, nor depend on
them being installed: the last test runs both with every dependency but orjson unimportable. import-linter checks the static imports; this checks what a fresh
interpreter really has in ``sys.modules`` afterwards, lazy imports and ``roomcast/__init__``
included.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

SERVER_SIDE = [
    "roomcast.server",
    "roomcast.hub",
    "roomcast.broker",
    "roomcast.transports",
    "roomcast.tasks",
    "roomcast.tasks.store_sqlite",
    "roomcast.auth",
    "jwt",
    "cryptography",
    "sqlite3",
    "redis",
    "httptools",
    "uvloop",
    "click",
]


def _loaded_after(statement: str) -> list[str]:
    probe = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    loaded: list[str] = json.loads(done.stdout)
    return loaded


@pytest.mark.parametrize(
    "statement",
    [
        "import roomcast.client",
        "from roomcast.client import Client",
        "from roomcast import Publisher",
        "import roomcast.tail",
    ],
)
def test_importing_the_client_side_loads_no_server_module(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert [name for name in SERVER_SIDE if name in loaded] == []


def test_the_top_level_package_still_hands_out_server_names_when_asked() -> None:
    loaded = _loaded_after("import roomcast\nassert roomcast.Hub.__name__ == 'Hub'")
    assert "roomcast.hub.hub" in loaded


# Everything but the stdlib and orjson made unimportable: what a client-only install has.
_WITHOUT_SERVER_DEPENDENCIES = """
import asyncio, sys

BLOCKED = {"jwt", "cryptography", "sqlite3", "_sqlite3", "redis", "hiredis", "httptools", "uvloop", "click"}

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed here")

sys.meta_path.insert(0, NotInstalled())

from roomcast import Publisher
from roomcast.client import Client

url = sys.argv[1]
print("sync", Publisher(url).publish("r", "warmup").offset, flush=True)

async def main():
    got = asyncio.get_running_loop().create_future()
    client = Client(url, transports=("polling", "websocket"))
    client.on("news", lambda data: got.done() or got.set_result(data))
    await client.connect()
    await client.subscribe("r")
    await Publisher(url).apublish("r", "news", {"x": 1})
    print("received", await asyncio.wait_for(got, 15), flush=True)
    await client.close()

asyncio.run(main())
"""


async def test_the_client_and_the_publisher_run_with_the_stdlib_and_orjson_alone() -> None:
    from servers import running

    from roomcast.hub.hub import Hub
    from roomcast.server.app import App
    from roomcast.server.config import Settings

    async with running(App(Hub(), Settings(task_db=":memory:"))) as srv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WITHOUT_SERVER_DEPENDENCIES,
            srv.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["sync 1", "received {'x': 1}"]
