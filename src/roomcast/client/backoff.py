"""``Backoff`` for the client SDK: the one implementation lives in ``roomcast.backoff``."""

from roomcast.backoff import Backoff

__all__ = ["Backoff"]
