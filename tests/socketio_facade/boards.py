"""The example board (examples/socketio_board/board.py) loaded with ``socketio`` bound to
python-socketio or to ``roomcast.socketio``: the file is the same, only its import resolves
differently, which is exactly what moving an application over changes."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

BOARD = Path(__file__).resolve().parents[2] / "examples" / "socketio_board" / "board.py"
_loads = itertools.count()


def load_board(kind: str) -> ModuleType:
    """A fresh module of the board on ``kind``: ``"python-socketio"`` or ``"roomcast"``."""
    import socketio as reference

    import roomcast.socketio

    bound = reference if kind == "python-socketio" else roomcast.socketio
    spec = importlib.util.spec_from_file_location(f"board_{kind.replace('-', '_')}_{next(_loads)}", BOARD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["socketio"] = bound
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules["socketio"] = reference
    return module
