"""The client SDK and the publisher stand alone: importing them loads no server.

A process that only connects (``roomcast.client``) or only publishes (``roomcast.publisher``)
must not pay for the hub, the task store, PyJWT, cryptography or sqlite3, nor depend on
them being installed. import-linter checks the static imports; this checks what a fresh
interpreter really has in ``sys.modules`` afterwards, lazy imports and ``roomcast/__init__``
included.
"""

from __future__ import annotations

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
