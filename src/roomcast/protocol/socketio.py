"""Socket.IO v5 packet codec (the wire format of the default ``socket.io-parser``).

Owns how Socket.IO packets become the payloads of Engine.IO ``MESSAGE`` packets and back:
the ``<type>[<n>-][<nsp>,][<ack id>][<json>]`` text, binary attachments split out as
``{"_placeholder":true,"num":i}`` and sent as separate binary messages, and the payload
validation rules of the reference parser. Namespace and ack *behaviour* live elsewhere.

Sans-I/O: pure functions and an incremental :class:`Decoder`; no sockets, clocks or event
loops. Bad peer input raises ``RemoteProtocolError`` (or ``PayloadTooBig``); being asked to
encode something invalid raises ``LocalProtocolError``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from roomcast import _json
from roomcast.errors import LocalProtocolError, PayloadTooBig, RemoteProtocolError

__all__ = ["SioType", "SioPacket", "RESERVED_EVENTS", "MAX_ACK_ID", "encode", "event_packet_text", "Decoder"]


class SioType(enum.IntEnum):
    """Socket.IO v5 packet types; the value is the digit sent on the wire."""

    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


@dataclass(frozen=True, slots=True)
class SioPacket:
    """One Socket.IO packet.

    Attributes:
        type: the type; decoded ``BINARY_*`` packets are reported as ``EVENT``/``ACK``.
        namespace: the namespace, ``"/"`` for the main one.
        data: ``EVENT``/``ACK``: a list whose nested ``bytes`` are the binary attachments;
            ``CONNECT``: dict or None; ``CONNECT_ERROR``: str or dict; ``DISCONNECT``: None.
        id: the acknowledgement id, if any.
    """

    type: SioType
    namespace: str = "/"
    data: Any = None
    id: int | None = None


RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
MAX_ACK_ID: Final = 2**53 - 1  # the largest id a JavaScript peer represents exactly

_BY_CHAR: Final[dict[str, SioType]] = {str(int(t)): t for t in SioType}
_PLAIN: Final = {SioType.BINARY_EVENT: SioType.EVENT, SioType.BINARY_ACK: SioType.ACK}
_BINARY: Final = (bytes, bytearray, memoryview)
_DIGITS: Final = re.compile(r"[0-9]+")
_ENCODE_KIND: Final = {int(t): _PLAIN.get(t, t) for t in SioType}
_NOT_JSON: Final = "payload is not JSON-serialisable"


def _dumps(value: Any) -> str:
    try:
        return _json.dumps_str(value)
    except TypeError:
        raise LocalProtocolError(_NOT_JSON) from None


def _payload_error(kind: SioType, data: Any, ack_id: int | None) -> str | None:
    """Why ``data``/``ack_id`` are invalid for ``kind`` (EVENT/ACK, never BINARY_*), or None."""
    if kind is SioType.EVENT:
        if not isinstance(data, (list, tuple)) or not data:
            return "event payload must be a non-empty array"
        name = data[0]
        if isinstance(name, str):
            return "reserved event name" if name in RESERVED_EVENTS else None
        return None if type(name) is int else "invalid event name"
    if kind is SioType.ACK:
        if not isinstance(data, (list, tuple)):
            return "ack payload must be an array"
        return "ack without an id" if ack_id is None else None
    if kind is SioType.CONNECT:
        return None if data is None or isinstance(data, dict) else "invalid connect payload"
    if kind is SioType.DISCONNECT:
        return None if data is None else "disconnect takes no payload"
    return None if isinstance(data, (str, dict)) else "invalid connect_error payload"


def _check_namespace(namespace: str) -> None:
    if not isinstance(namespace, str) or namespace[:1] != "/" or "," in namespace:
        raise LocalProtocolError("namespace must start with '/' and contain no ','")


def _deconstruct(obj: Any, out: list[bytes], depth: int = 0) -> Any:
    """Copy ``obj`` with binary leaves replaced by placeholders, depth-first, into ``out``."""
    if isinstance(obj, _BINARY):
        out.append(bytes(obj))
        return {"_placeholder": True, "num": len(out) - 1}
    if depth > _json.MAX_DEPTH:
        raise LocalProtocolError("payload nested too deeply")
    if isinstance(obj, (list, tuple)):
        return [_deconstruct(item, out, depth + 1) for item in obj]
    if isinstance(obj, dict):
        return {key: _deconstruct(value, out, depth + 1) for key, value in obj.items()}
    return obj


def _reconstruct(data: Any, buffers: list[bytes], *, max_placeholders: int, max_bytes: int) -> None:
    """Replace the placeholders in decoded JSON ``data`` by ``buffers``, in place.

    Several placeholders may name one attachment (the official parser allows it), but what
    they expand to is bounded: at most ``max_placeholders`` of them, and ``max_bytes`` of
    attachment bytes in all. Unbounded, one 100 KB attachment named by 3,000 placeholders
    becomes 300 MB once every JSON transport base64-encodes each occurrence. Iterative, so
    deep data costs no Python recursion.

    Raises:
        RemoteProtocolError: a placeholder names no attachment.
        PayloadTooBig: past either bound.
    """
    count = len(buffers)
    placeholders = expanded = 0
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        keys: Any = range(len(node)) if type(node) is list else list(node)
        for key in keys:
            value = node[key]
            if type(value) is dict:
                if value.get("_placeholder") is True:
                    num = value.get("num")
                    if type(num) is not int or not 0 <= num < count:
                        raise RemoteProtocolError("invalid attachment placeholder")
                    placeholders += 1
                    expanded += len(buffers[num])
                    if placeholders > max_placeholders or expanded > max_bytes:
                        raise PayloadTooBig(
                            f"attachments expand past {max_placeholders} placeholders or {max_bytes} bytes"
                        )
                    node[key] = buffers[num]
                else:
                    stack.append(value)
            elif type(value) is list:
                stack.append(value)


def encode(packet: SioPacket) -> list[str | bytes]:
    """Encode a packet as the payloads of the Engine.IO ``MESSAGE`` packets that carry it.

    Why: an ``EVENT``/``ACK`` holding binary data must travel as a ``BINARY_*`` packet whose
    attachments follow in their own messages; callers should not have to know that.

    Args:
        packet: the packet. ``BINARY_EVENT``/``BINARY_ACK`` are accepted as synonyms of
            ``EVENT``/``ACK``: the wire type follows from whether ``data`` holds bytes.

    Returns:
        ``[text, *attachments]``; e.g. ``['212["a",1]']`` or
        ``['61-789[{"_placeholder":true,"num":0}]', b'\\x01']``.

    Raises:
        LocalProtocolError: unknown type, bad namespace or ack id, a payload the type does
            not allow (the rules of :meth:`Decoder.feed`), or data JSON cannot represent.
    """
    kind = _ENCODE_KIND.get(packet.type)
    if kind is None:
        raise LocalProtocolError("unknown Socket.IO packet type")
    namespace, data, ack_id = packet.namespace, packet.data, packet.id
    _check_namespace(namespace)
    if ack_id is not None and (type(ack_id) is not int or not 0 <= ack_id <= MAX_ACK_ID):
        raise LocalProtocolError("ack id must be an int in [0, 2**53 - 1]")
    error = _payload_error(kind, data, ack_id)
    if error is not None:
        raise LocalProtocolError(error)
    attachments: list[bytes] = []
    body = ""
    if data is not None:
        try:
            body = _json.dumps_str(data)
        except TypeError:
            if kind is SioType.EVENT or kind is SioType.ACK:
                data = _deconstruct(data, attachments)
            if not attachments:
                raise LocalProtocolError(_NOT_JSON) from None
            body = _dumps(data)
    head = f"{kind + 3}{len(attachments)}-" if attachments else str(int(kind))
    if namespace != "/":
        head += namespace + ","
    if ack_id is not None:
        head += str(ack_id)
    return [head + body, *attachments]


def event_packet_text(namespace: str, event: str, args: Sequence[Any]) -> str | None:
    """Return the Engine.IO ``MESSAGE`` text of a plain ``EVENT``, or None if it needs binary.

    Why: a publication is encoded once for thousands of recipients, so this skips the
    packet object and scans for bytes only when JSON serialisation fails.

    Args:
        namespace: the namespace, ``"/"`` for the main one.
        event: the event name.
        args: the event arguments.

    Returns:
        ``"42" + ("/ns," if namespace != "/") + JSON([event, *args])``, or None when ``args``
        contain bytes (then use :func:`encode`).

    Raises:
        LocalProtocolError: bad namespace, reserved event name, non-serialisable args.
    """
    if namespace == "/":
        prefix = "42"
    else:
        _check_namespace(namespace)
        prefix = "42" + namespace + ","
    if type(event) is not str or event in RESERVED_EVENTS:
        raise LocalProtocolError("event name must be a non-reserved str")
    try:
        return prefix + _json.dumps_str([event, *args])
    except TypeError:
        found: list[bytes] = []
        _deconstruct(args, found)
        if found:
            return None
        raise LocalProtocolError(_NOT_JSON) from None


class Decoder:
    """Incremental decoder for the Socket.IO packets of one connection.

    Feed it the payloads of Engine.IO ``MESSAGE`` packets in order; it returns a complete
    packet, or None while a binary packet still waits for its attachments.
    """

    __slots__ = ("_max_attachments", "_max_expanded", "_pending", "_buffers", "_expected")

    def __init__(self, *, max_attachments: int = 10, max_expanded_bytes: int = 1_000_000) -> None:
        """Create a decoder; ``max_attachments`` caps what one packet may announce and how
        many placeholders may name them, ``max_expanded_bytes`` what they expand to."""
        self._max_attachments = max_attachments
        self._max_expanded = max_expanded_bytes
        self._pending: SioPacket | None = None
        self._buffers: list[bytes] | None = None  # a binary packet's attachments so far
        self._expected = 0

    @property
    def awaiting_attachments(self) -> bool:
        """True while a binary packet waits for more attachments."""
        return self._pending is not None

    def _reset(self) -> None:
        self._pending = None
        self._buffers = None
        self._expected = 0

    def feed(self, data: str | bytes) -> SioPacket | None:
        """Feed one Engine.IO ``MESSAGE`` payload.

        Why: a binary packet spans several Engine.IO messages (the text, then each
        attachment); this keeps that state so callers only ever see whole packets.
        Validation follows the reference ``socket.io-parser`` v4, except that events need
        a non-empty array, acks an array and an id, and connect_error a str or object.

        Args:
            data: a text payload (a packet) or a binary payload (an attachment).

        Returns:
            The complete packet (``BINARY_*`` reported as ``EVENT``/``ACK`` with ``bytes``
            in place of the placeholders), or None while attachments are pending.

        Raises:
            PayloadTooBig: a packet announces more than ``max_attachments`` attachments.
            RemoteProtocolError: text while attachments are pending, bytes while none are,
                or a malformed packet (type, attachment count, ack id, JSON, payload shape,
                placeholder).
        """
        if isinstance(data, str):
            if self._pending is not None:
                self._reset()
                raise RemoteProtocolError("expected a binary attachment")
            return self._decode_text(data)
        pending = self._pending
        if pending is None:
            raise RemoteProtocolError("unexpected binary attachment")
        buffers = self._buffers
        if buffers is None:
            buffers = self._buffers = []
        buffers.append(bytes(data))
        if len(buffers) < self._expected:
            return None
        self._reset()
        _reconstruct(pending.data, buffers, max_placeholders=self._max_attachments, max_bytes=self._max_expanded)
        return pending

    def _decode_text(self, text: str) -> SioPacket | None:
        size = len(text)
        kind = _BY_CHAR.get(text[:1])
        if kind is None:
            raise RemoteProtocolError("unknown Socket.IO packet type")
        pos = 1
        attachments = -1
        plain = _PLAIN.get(kind)
        if plain is not None:
            match = _DIGITS.match(text, 1)
            if match is None or text[match.end() : match.end() + 1] != "-":
                raise RemoteProtocolError("illegal attachment count")
            digits = match.group()
            if len(digits) > 9 or int(digits) > self._max_attachments:
                raise PayloadTooBig("too many attachments")
            attachments = int(digits)
            pos = match.end() + 1
            kind = plain
        namespace = "/"
        if text.startswith("/", pos):
            comma = text.find(",", pos)
            end = size if comma < 0 else comma
            namespace = text[pos:end]
            pos = end + 1
        ack_id: int | None = None
        match = _DIGITS.match(text, pos)
        if match is not None:
            digits = match.group()
            if len(digits) > 16 or int(digits) > MAX_ACK_ID:
                raise RemoteProtocolError("invalid ack id")
            ack_id = int(digits)
            pos = match.end()
        data: Any = None
        if pos < size:
            try:
                data = _json.loads(text[pos:])
            except ValueError:
                raise RemoteProtocolError("invalid JSON payload") from None
            if data is None:  # an explicit null is never a valid payload
                raise RemoteProtocolError("invalid payload")
        error = _payload_error(kind, data, ack_id)
        if error is not None:
            raise RemoteProtocolError(error)
        packet = SioPacket(kind, namespace, data, ack_id)
        if attachments == 0:
            _reconstruct(data, [], max_placeholders=self._max_attachments, max_bytes=self._max_expanded)
        elif attachments > 0:
            self._pending = packet
            self._expected = attachments
            return None
        return packet
