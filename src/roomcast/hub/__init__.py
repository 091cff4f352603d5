"""The room model: ``Hub``, ``Connection``, ``Room``."""

from roomcast.hub.connection import Connection, Encoder
from roomcast.hub.hub import Hub

__all__ = ["Hub", "Connection", "Encoder"]
