"""python-socketio's server API on roomcast: change ``import socketio`` to
``from roomcast import socketio`` and the application runs on roomcast's hub.

What it maps to, what differs and what roomcast adds: docs/migrating-from-python-socketio.md.
"""

from __future__ import annotations

from roomcast.socketio import exceptions
from roomcast.socketio.asgi import ASGIApp
from roomcast.socketio.namespace import AsyncNamespace
from roomcast.socketio.redis_manager import AsyncManager, AsyncRedisManager, RedisManager
from roomcast.socketio.server import AsyncServer

__all__ = [
    "ASGIApp",
    "AsyncManager",
    "AsyncNamespace",
    "AsyncRedisManager",
    "AsyncServer",
    "RedisManager",
    "exceptions",
]
