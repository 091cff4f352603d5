"""``roomcast.client``: an asyncio Socket.IO v5 client whose rooms survive reconnects.

The public names; ``docs/client.md`` is the guide. Side stack: imports only the stdlib,
``roomcast.types/errors/_json/backoff``, the sans-I/O ``roomcast.protocol`` and the one HTTP
client ``roomcast.httpclient``; orjson is its only third-party need. An import-linter
contract keeps the server out of its imports, and ``tests/client/test_standalone.py`` out
of ``sys.modules`` (lazy imports included).
"""

from roomcast.backoff import Backoff
from roomcast.client.batcher import Change, ChangeBatcher
from roomcast.client.client import Auth, Client, SnapshotHandler
from roomcast.client.listeners import ListenerSets
from roomcast.client.state import ClientState, StateChange
from roomcast.client.subscriptions import RoomState
from roomcast.errors import (
    AckTimeout,
    ClientError,
    ConnectionClosed,
    ConnectRefused,
    ConnectTimeout,
    OfflineBufferFull,
    OfflineRefused,
    SubscribeRefused,
)

__all__ = [
    "Client",
    "Auth",
    "SnapshotHandler",
    "ClientState",
    "StateChange",
    "RoomState",
    "Backoff",
    "Change",
    "ChangeBatcher",
    "ListenerSets",
    "ClientError",
    "ConnectionClosed",
    "AckTimeout",
    "ConnectRefused",
    "ConnectTimeout",
    "SubscribeRefused",
    "OfflineRefused",
    "OfflineBufferFull",
]
