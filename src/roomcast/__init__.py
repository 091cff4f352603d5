"""roomcast: the real-time layer for Python backends.

The public API is re-exported here; everything else is reachable through its module.
"""

from __future__ import annotations

from roomcast.broker.memory import MemoryBroker
from roomcast.disconnect import Disconnect
from roomcast.errors import (
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

# The one source of the version: setuptools reads this line for the package metadata
# (pyproject.toml, [tool.setuptools.dynamic]); keep it a plain string literal.
__version__ = "0.1.0"

__all__ = [
    "App",
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
    "StreamPosition",
    "Task",
    "TaskError",
    "TaskEvents",
    "TaskHandle",
    "TaskNotFound",
    "TaskService",
    "TaskStatus",
    "__version__",
]
