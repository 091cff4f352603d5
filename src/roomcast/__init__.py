"""roomcast: the real-time layer for Python backends.

The public API is re-exported here; everything else is reachable through its module.

Why the names are loaded on first use (PEP 562 ``__getattr__``) rather than imported here:
Python imports this package before any of its modules, so ``import roomcast.client`` or
``from roomcast.publisher import Publisher`` would otherwise load the whole server (the
hub, PyJWT, cryptography, sqlite3, redis-py) into a process that only connects or
publishes. ``roomcast.Hub`` still works; it imports ``roomcast.hub.hub`` when first asked.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from roomcast import _speedups
from roomcast._speedups import Speedups, speedups

# Before any module of the compiled fast path can be imported: the finder decides, per module,
# between its compiled build and its .py (ROOMCAST_PURE_PYTHON, stale builds; roomcast._speedups).
_speedups.install()

if TYPE_CHECKING:
    from roomcast.broker.memory import MemoryBroker
    from roomcast.disconnect import Disconnect
    from roomcast.errors import (
        BlockingCallInLoop,
        ConnectionRefused,
        InvalidTransition,
        PayloadTooBig,
        ProtocolError,
        PublishError,
        RemoteProtocolError,
        RoomcastError,
        TaskError,
        TaskNotFound,
    )
    from roomcast.hub.connection import Connection
    from roomcast.hub.hub import Hub
    from roomcast.publisher import Publisher, RedisPublisher
    from roomcast.server.app import App
    from roomcast.server.asgi import RoomcastApp
    from roomcast.server.config import Settings
    from roomcast.tasks.model import Task, TaskEvents, TaskStatus
    from roomcast.tasks.service import TaskHandle, TaskService
    from roomcast.types import Publication, StreamPosition

_WHERE: dict[str, str] = {
    "MemoryBroker": "roomcast.broker.memory",
    "Disconnect": "roomcast.disconnect",
    "BlockingCallInLoop": "roomcast.errors",
    "ConnectionRefused": "roomcast.errors",
    "InvalidTransition": "roomcast.errors",
    "PayloadTooBig": "roomcast.errors",
    "ProtocolError": "roomcast.errors",
    "PublishError": "roomcast.errors",
    "RemoteProtocolError": "roomcast.errors",
    "RoomcastError": "roomcast.errors",
    "TaskError": "roomcast.errors",
    "TaskNotFound": "roomcast.errors",
    "Connection": "roomcast.hub.connection",
    "Hub": "roomcast.hub.hub",
    "Publisher": "roomcast.publisher",
    "RedisPublisher": "roomcast.publisher",
    "App": "roomcast.server.app",
    "RoomcastApp": "roomcast.server.asgi",
    "Settings": "roomcast.server.config",
    "Task": "roomcast.tasks.model",
    "TaskEvents": "roomcast.tasks.model",
    "TaskStatus": "roomcast.tasks.model",
    "TaskHandle": "roomcast.tasks.service",
    "TaskService": "roomcast.tasks.service",
    "Publication": "roomcast.types",
    "StreamPosition": "roomcast.types",
}
"""Each public name and the module that defines it."""


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'roomcast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


# The one source of the version: setuptools reads this line for the package metadata
# (pyproject.toml, [tool.setuptools.dynamic]); keep it a plain string literal.
__version__ = "0.1.0"

__all__ = [
    "App",
    "BlockingCallInLoop",
    "Connection",
    "ConnectionRefused",
    "Disconnect",
    "Hub",
    "InvalidTransition",
    "MemoryBroker",
    "PayloadTooBig",
    "ProtocolError",
    "Publication",
    "PublishError",
    "Publisher",
    "RedisPublisher",
    "RemoteProtocolError",
    "RoomcastApp",
    "RoomcastError",
    "Settings",
    "Speedups",
    "StreamPosition",
    "Task",
    "TaskError",
    "TaskEvents",
    "TaskHandle",
    "TaskNotFound",
    "TaskService",
    "TaskStatus",
    "__version__",
    "speedups",
]
