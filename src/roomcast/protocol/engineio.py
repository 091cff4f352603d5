"""Engine.IO v4 packet codec.

Owns the wire format of Engine.IO packets and nothing else: the WebSocket form (one packet
per frame, binary messages as raw bytes), the HTTP long-polling payload form (packets joined
by the ``\\x1e`` record separator, binary messages as ``b`` + base64) and the JSON payload of
the handshake ``open`` packet. Session rules (heartbeat, upgrade) live elsewhere.

Sans-I/O: pure functions over ``str``/``bytes``; no sockets, clocks or event loops. Bad input
from the peer raises :class:`~roomcast.errors.RemoteProtocolError` (or its subclass
:class:`~roomcast.errors.PayloadTooBig`); being asked to encode something invalid raises
:class:`~roomcast.errors.LocalProtocolError`.
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from roomcast import _json
from roomcast.errors import LocalProtocolError, PayloadTooBig, RemoteProtocolError

__all__ = [
    "PacketType",
    "Packet",
    "SEPARATOR",
    "encode_ws",
    "decode_ws",
    "encode_polling",
    "decode_polling",
    "open_payload",
]


class PacketType(enum.IntEnum):
    """Engine.IO v4 packet types; the value is the digit sent on the wire."""

    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


@dataclass(frozen=True, slots=True)
class Packet:
    """One Engine.IO packet.

    Attributes:
        type: the packet type.
        data: the payload; ``bytes`` only for a binary ``MESSAGE``, text otherwise.
    """

    type: PacketType
    data: str | bytes = ""


SEPARATOR: Final = "\x1e"

_BY_CHAR: Final[dict[str, PacketType]] = {str(int(t)): t for t in PacketType}
_PREFIX: Final[dict[int, str]] = {int(t): str(int(t)) for t in PacketType}
_BINARY: Final = (bytes, bytearray, memoryview)


def _prefix(packet: Packet) -> str:
    prefix = _PREFIX.get(packet.type)
    if prefix is None:
        raise LocalProtocolError("unknown Engine.IO packet type")
    return prefix


def _check_binary(packet: Packet) -> bytes:
    if not isinstance(packet.data, _BINARY):
        raise LocalProtocolError("packet data must be str or bytes")
    if packet.type != PacketType.MESSAGE:
        raise LocalProtocolError("only MESSAGE packets may carry binary data")
    return bytes(packet.data)


def _decode_text(text: str) -> Packet:
    if not text:
        raise RemoteProtocolError("empty Engine.IO packet")
    packet_type = _BY_CHAR.get(text[0])
    if packet_type is None:
        raise RemoteProtocolError("unknown Engine.IO packet type")
    return Packet(packet_type, text[1:])


def encode_ws(packet: Packet) -> str | bytes:
    """Encode one packet as the payload of one WebSocket frame.

    Why: over WebSocket every packet has its own frame and binary data travels unchanged,
    so the type prefix is only needed for text.

    Args:
        packet: the packet to send.

    Returns:
        A ``str`` for a text frame (type digit + data, e.g. ``"2probe"``) or ``bytes`` for a
        binary frame (a binary ``MESSAGE``, sent as is).

    Raises:
        LocalProtocolError: unknown type, or binary data on a non-``MESSAGE`` packet.
    """
    if isinstance(packet.data, str):
        return _prefix(packet) + packet.data
    return _check_binary(packet)


def decode_ws(frame: str | bytes) -> Packet:
    """Decode the payload of one WebSocket frame received from the peer.

    Why: the transport hands over text and binary frames alike; this tells them apart and
    validates the type digit so that nothing malformed reaches the session.

    Args:
        frame: a text frame (``str``) or a binary frame (``bytes``).

    Returns:
        The packet; a binary frame is always a binary ``MESSAGE``.

    Raises:
        RemoteProtocolError: empty text frame or unknown type digit.
    """
    if isinstance(frame, str):
        return _decode_text(frame)
    return Packet(PacketType.MESSAGE, bytes(frame))


def encode_polling(packets: Iterable[Packet]) -> str:
    """Encode packets as one HTTP long-polling payload (a response or request body).

    Why: polling batches several packets per HTTP request; v4 separates them with
    ``\\x1e`` and base64-encodes binary messages so that the body stays text.

    Args:
        packets: at least one packet, in order.

    Returns:
        The body, e.g. ``"4hello\\x1e2\\x1ebAQIDBA=="``.

    Raises:
        LocalProtocolError: no packets, text data containing ``\\x1e`` (it would break the
            framing), or any error of :func:`encode_ws`.
    """
    parts: list[str] = []
    for packet in packets:
        data = packet.data
        if isinstance(data, str):
            if SEPARATOR in data:
                raise LocalProtocolError("packet text contains the record separator")
            parts.append(_prefix(packet) + data)
        else:
            raw = _check_binary(packet)
            parts.append("b" + binascii.b2a_base64(raw, newline=False).decode("ascii"))
    if not parts:
        raise LocalProtocolError("a polling payload needs at least one packet")
    return SEPARATOR.join(parts)


def decode_polling(body: str, *, max_packets: int = 1024) -> list[Packet]:
    """Decode one HTTP long-polling payload received from the peer.

    Why: a POST body may batch many packets; each one is validated here, and the packet
    count is bounded so that a peer cannot make us allocate without limit.

    Args:
        body: the request body, already decoded from UTF-8.
        max_packets: the most packets accepted in one body.

    Returns:
        The packets, in order.

    Raises:
        PayloadTooBig: more than ``max_packets`` packets.
        RemoteProtocolError: empty body, empty packet, unknown type digit or bad base64.
    """
    if not body:
        raise RemoteProtocolError("empty polling payload")
    chunks = body.split(SEPARATOR, max_packets)
    if len(chunks) > max_packets:
        raise PayloadTooBig("too many packets in polling payload")
    packets: list[Packet] = []
    append = packets.append
    for chunk in chunks:
        if chunk[:1] == "b":
            try:
                raw = binascii.a2b_base64(chunk[1:], strict_mode=True)
            except ValueError:
                raise RemoteProtocolError("invalid base64 in polling payload") from None
            append(Packet(PacketType.MESSAGE, raw))
        else:
            append(_decode_text(chunk))
    return packets


def open_payload(
    sid: str,
    *,
    upgrades: Sequence[str],
    ping_interval_ms: int,
    ping_timeout_ms: int,
    max_payload: int,
) -> str:
    """Build the JSON payload of the handshake ``OPEN`` packet.

    Why: clients check the exact key set and use the numbers to time their pongs and size
    their polling batches, so the keys and integer types must be exactly right.

    Args:
        sid: the Engine.IO session id.
        upgrades: transports the client may upgrade to (``["websocket"]`` or ``[]``).
        ping_interval_ms: the server's ping interval in milliseconds.
        ping_timeout_ms: how long the client has to pong, in milliseconds.
        max_payload: the most bytes the server accepts in one polling body.

    Returns:
        Compact JSON with exactly ``sid``, ``upgrades``, ``pingInterval``, ``pingTimeout``,
        ``maxPayload``; send it as ``Packet(PacketType.OPEN, payload)``.

    Raises:
        LocalProtocolError: empty sid, non-str upgrade, or a negative / non-int number.
    """
    if not isinstance(sid, str) or not sid:
        raise LocalProtocolError("sid must be a non-empty str")
    names = list(upgrades)
    if not all(isinstance(name, str) for name in names):
        raise LocalProtocolError("upgrades must be transport names")
    for value in (ping_interval_ms, ping_timeout_ms, max_payload):
        if type(value) is not int or value < 0:
            raise LocalProtocolError("handshake numbers must be non-negative ints")
    return _json.dumps_str(
        {
            "sid": sid,
            "upgrades": names,
            "pingInterval": ping_interval_ms,
            "pingTimeout": ping_timeout_ms,
            "maxPayload": max_payload,
        }
    )
