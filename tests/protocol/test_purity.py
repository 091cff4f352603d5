"""The protocol layer stays sans-I/O: no module under roomcast.protocol imports the event
loop, the clock, randomness or sockets (STYLE §2.3; import-linter does not see stdlib imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import roomcast.protocol

FORBIDDEN = {"asyncio", "socket", "time", "random", "secrets", "selectors", "threading"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_protocol_modules_import_no_io() -> None:
    folder = Path(roomcast.protocol.__file__).parent
    modules = sorted(folder.glob("*.py"))
    assert len(modules) >= 5
    offenders = {p.name: sorted(_imports(p) & FORBIDDEN) for p in modules if _imports(p) & FORBIDDEN}
    assert offenders == {}
