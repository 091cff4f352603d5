"""How python-socketio's emit arguments are read, in one place for every emitter.

``AsyncServer.emit`` spells the full signature (python-socketio's order, so positional
calls work as there). The others take the options by keyword, typed by the dicts below:
``send``, the ``AsyncNamespace`` helpers (the server's, with their namespace filled in) and
the Redis managers' emitters (python-socketio's managers order them differently, so a
positional call is refused rather than sent somewhere else). Server and managers read
``data``, ``to``/``room`` and ``skip_sid`` with the functions here, and both ask the relay
room for a possibly remote sid with ``relay_emit``, so a worker's emit and a server's emit
are the same publications.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

__all__ = ["EmitOptions", "CallOptions", "check_emit_options", "payload_args", "skip_sids", "targets", "relay_emit"]


class EmitOptions(TypedDict, total=False):
    """``emit``'s and ``send``'s keyword options (see ``AsyncServer.emit``)."""

    to: Any
    room: Any
    skip_sid: Any
    namespace: str | None
    callback: Callable[..., Any] | None
    ignore_queue: bool


class CallOptions(TypedDict, total=False):
    """``call``'s keyword options (see ``AsyncServer.call``)."""

    to: str | None
    sid: str | None
    namespace: str | None
    timeout: float
    ignore_queue: bool


def check_emit_options(options: EmitOptions) -> None:
    """Refuse a misspelt option (``rooom=``) as a call with a named signature would, rather
    than emit to everyone.

    Raises:
        TypeError: an option ``EmitOptions`` does not name.
    """
    unknown = options.keys() - EmitOptions.__optional_keys__
    if unknown:
        raise TypeError(f"emit() got unexpected keyword arguments: {', '.join(sorted(unknown))}")


def payload_args(data: Any) -> tuple[Any, ...]:
    """python-socketio's ``data``: ``None`` is no argument, a tuple several, anything else one."""
    if data is None:
        return ()
    if isinstance(data, tuple):
        return data
    return (data,)


def skip_sids(skip_sid: Any) -> frozenset[str] | None:
    """``skip_sid`` (one sid, several, or none) as the publication's ``skip`` set."""
    if skip_sid is None:
        return None
    if isinstance(skip_sid, str):
        return frozenset((skip_sid,))
    return frozenset(skip_sid) or None


def targets(to: Any, room: Any) -> tuple[Any, ...] | None:
    """The sids or rooms an emit names (``to`` wins over its alias ``room``); ``None`` for
    everyone in the namespace."""
    target = to if to is not None else room
    if target is None:
        return None
    return tuple(target) if isinstance(target, (list, tuple, set, frozenset)) else (target,)


def relay_emit(
    namespace: str, target: Any, event: str, args: tuple[Any, ...], skip: frozenset[str] | None
) -> list[Any]:
    """The relay publication's data that makes whichever node holds sid ``target`` send it
    the event (``AsyncServer._relayed`` reads it)."""
    return ["emit", namespace, target, event, list(args), sorted(skip or ())]
