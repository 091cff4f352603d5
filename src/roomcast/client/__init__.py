"""``roomcast.client``: an asyncio Socket.IO v5 client whose rooms survive reconnects.

The public names; ``docs/client.md`` is the guide. Side stack: imports only the stdlib,
``roomcast.types/errors/disconnect/_json`` and ``roomcast.protocol`` (an import-linter
contract keeps the server out).
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
