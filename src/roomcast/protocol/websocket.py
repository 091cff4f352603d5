"""RFC 6455 WebSocket, sans-I/O: opening handshake, frame serialization and frame parsing.

Owns the WebSocket wire format and nothing else. It never touches a socket, a clock or a
source of randomness: callers feed received bytes to :class:`WebSocketParser` and get events
back, write the bytes the ``*_frame`` helpers return, and pass in a client's masking key
(RFC 6455 §5.3) themselves.

Two paths are hot. Receive: the parser appends to one ``bytearray`` and walks it with an
offset, compacting once per :meth:`WebSocketParser.feed` rather than per frame, and unmasks a
payload with one big-integer XOR instead of a per-byte loop. Fan-out: :func:`text_frame` is one
precomputed ``struct`` pack plus one concatenation, built once and written to many sockets.

No extensions are negotiated, so a peer's RSV bit is an error (§5.2). Peer errors raise
:class:`~roomcast.errors.RemoteProtocolError` (or a subclass); :func:`close_code_for` maps them
to the close code to send (§7.4.1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypeAlias

from roomcast.errors import LocalProtocolError, PayloadTooBig, RemoteProtocolError

__all__ = [
    "Opcode",
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "GUID",
    "accept_key",
    "check_client_handshake",
    "handshake_response",
    "serialize_frame",
    "text_frame",
    "binary_frame",
    "close_payload",
    "close_frame",
    "Message",
    "Ping",
    "Pong",
    "Close",
    "Event",
    "InvalidPayloadData",
    "WebSocketParser",
    "close_code_for",
]


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 §5.2); 0x3-0x7 and 0xB-0xF are reserved and rejected."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = Opcode  # definition order

GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # §1.3: appended to the client's key

_MAX_CONTROL: Final = 125  # §5.5: control payloads fit the 7-bit length field
_MAX_REASON: Final = 123  # §5.5.1: 125 minus the 2-byte close code
_OPCODES: Final = frozenset(int(op) for op in Opcode)
_DATA_OPS: Final = (Opcode.CONT, Opcode.TEXT, Opcode.BINARY)  # index by opcode, no Enum call
_HDR_7: Final = struct.Struct("!BB")  # §5.2 headers, precomputed so packing is one C call
_HDR_16: Final = struct.Struct("!BBH")
_HDR_64: Final = struct.Struct("!BBQ")
_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")

Buffer: TypeAlias = bytes | bytearray | memoryview


class InvalidPayloadData(RemoteProtocolError):
    """A text message or close reason was not valid UTF-8 (RFC 6455 §8.1; close code 1007)."""


def accept_key(client_key: str) -> str:
    """Return ``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2).

    The digest proves the server understood the handshake rather than echoing headers back.
    """
    digest = hashlib.sha1((client_key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def _tokens(value: str) -> set[str]:
    """Split a comma-separated header into lower-cased tokens (RFC 7230 §7 list syntax)."""
    return {token.strip().lower() for token in value.split(",")}


def check_client_handshake(method: str, headers: Mapping[str, str]) -> str:
    """Validate a client's opening handshake request (RFC 6455 §4.2.1).

    Args:
        method: the HTTP request method (case-sensitive, as HTTP methods are).
        headers: lower-cased names to values, repeated headers joined with ",".

    Returns:
        The ``Sec-WebSocket-Accept`` value for the 101 response.

    Raises:
        RemoteProtocolError: not a valid upgrade; the reason names the offending part so the
            HTTP layer can answer 400 (or 426 for the version, §4.4).
    """
    if method != "GET":
        raise RemoteProtocolError("WebSocket handshake must use GET")
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise RemoteProtocolError("missing or invalid Upgrade: websocket header")
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise RemoteProtocolError("missing or invalid Connection: Upgrade header")
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise RemoteProtocolError("unsupported Sec-WebSocket-Version (need 13)")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:  # §4.1: a base64-encoded 16-byte nonce
        raise RemoteProtocolError("missing or invalid Sec-WebSocket-Key")
    return accept_key(key)


def _header_line(name: str, value: str) -> str:
    """Format one header line, refusing CR/LF so a caller cannot inject headers."""
    if any(c in name or c in value for c in "\r\n") or not name or ":" in name:
        raise LocalProtocolError(f"invalid response header {name!r}")
    return f"{name}: {value}\r\n"


def handshake_response(
    accept: str, *, subprotocol: str | None = None, extra_headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """Build the full ``101 Switching Protocols`` response (RFC 6455 §4.2.2).

    Args:
        accept: the value returned by :func:`check_client_handshake`.
        subprotocol: the one subprotocol the server selected, if any (§4.2.2).
        extra_headers: more Latin-1 headers, e.g. ``Set-Cookie``.

    Raises:
        LocalProtocolError: a header contains CR/LF, or is not Latin-1.
    """
    lines = [
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        _header_line("Sec-WebSocket-Accept", accept),
    ]
    if subprotocol is not None:
        lines.append(_header_line("Sec-WebSocket-Protocol", subprotocol))
    lines.extend(_header_line(name, value) for name, value in extra_headers)
    lines.append("\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise LocalProtocolError("response headers must be Latin-1") from None


def _xor_mask(data: Buffer, mask: Buffer) -> bytes:
    """Mask or unmask a payload (RFC 6455 §5.3); one big-int XOR runs in C, not per byte."""
    n = len(data)
    if n == 0:
        return b""
    key = bytes(mask) * (n >> 2) + bytes(mask[: n & 3])
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _header(first: int, length: int, mask_bit: int) -> bytes:
    """Pack a frame header with the shortest length encoding (RFC 6455 §5.2)."""
    if length < 126:
        return _HDR_7.pack(first, mask_bit | length)
    if length < 0x10000:
        return _HDR_16.pack(first, mask_bit | 126, length)
    return _HDR_64.pack(first, mask_bit | 127, length)


def serialize_frame(opcode: int, payload: Buffer, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """Serialize one frame (RFC 6455 §5.2).

    Args:
        opcode: one of the ``OP_*`` values.
        payload: application data, copied once into the result.
        fin: False for every fragment of a message but the last (§5.4).
        mask: None on a server (§5.1 forbids masking); on a client, a fresh unpredictable
            4-byte key from the caller (§10.3).

    Raises:
        LocalProtocolError: unknown opcode, bad mask, fragmented or oversized control frame.
    """
    if opcode not in _OPCODES:
        raise LocalProtocolError(f"unknown opcode {opcode:#x}")
    length = len(payload)
    if opcode >= 8 and (length > _MAX_CONTROL or not fin):
        raise LocalProtocolError("control frames must be unfragmented with payload <= 125 bytes")
    first = 0x80 | opcode if fin else opcode
    if mask is None:
        return _header(first, length, 0) + payload
    if len(mask) != 4:
        raise LocalProtocolError("masking key must be 4 bytes")
    return _header(first, length, 0x80) + mask + _xor_mask(payload, mask)


def text_frame(data: str | bytes) -> bytes:
    """Build an unmasked final text frame: the server's fan-out fast path.

    ``bytes`` are trusted to be UTF-8 (a JSON encoder's output): no validation on a hot path.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    return _header(0x81, len(data), 0) + data


def binary_frame(data: bytes) -> bytes:
    """Build an unmasked final binary frame, the binary twin of :func:`text_frame`."""
    return _header(0x82, len(data), 0) + data


def _valid_close_code(code: int) -> bool:
    """Tell whether a close code may be on the wire (RFC 6455 §7.4).

    1004 and 1016-2999 are reserved, 1005/1006/1015 are for local reporting only.
    """
    return 3000 <= code <= 4999 or (1000 <= code <= 1014 and code not in (1004, 1005, 1006))


def close_payload(code: int, reason: str = "") -> bytes:
    """Build a close frame body: 2-byte code plus UTF-8 reason (RFC 6455 §5.5.1).

    The reason is cut to 123 bytes on a character boundary: control payloads are capped at
    125 bytes, and a split character would make the peer fail with 1007. ``code=1005``
    ("no status") gives an empty body, so a peer's empty close can be echoed.

    Raises:
        LocalProtocolError: ``code`` may not be sent (§7.4.1), or 1005 with a reason.
    """
    if code == 1005:
        if reason:
            raise LocalProtocolError("close code 1005 cannot carry a reason")
        return b""
    if not _valid_close_code(code):
        raise LocalProtocolError(f"close code {code} may not be sent")
    raw = reason.encode("utf-8")
    if len(raw) > _MAX_REASON:
        cut = _MAX_REASON
        while raw[cut] & 0xC0 == 0x80:  # step back off UTF-8 continuation bytes
            cut -= 1
        raw = raw[:cut]
    return _U16.pack(code) + raw


def close_frame(code: int, reason: str = "", *, mask: bytes | None = None) -> bytes:
    """Build a complete close frame; see :func:`close_payload` and :func:`serialize_frame`."""
    return serialize_frame(OP_CLOSE, close_payload(code, reason), mask=mask)


@dataclass(frozen=True, slots=True)
class Message:
    """A TEXT or BINARY message reassembled from its fragments (RFC 6455 §5.4).

    Text is validated as UTF-8 but left as bytes, so a caller that forwards it never decodes.
    """

    opcode: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping (RFC 6455 §5.5.2); answer with a pong carrying the same ``data``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong (RFC 6455 §5.5.3), solicited or not."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """A close frame (RFC 6455 §5.5.1); ``code`` is 1005 when the peer sent no status (§7.1.5)."""

    code: int
    reason: str


Event: TypeAlias = Message | Ping | Pong | Close


def _parse_close(payload: bytes) -> Close:
    """Decode and validate a close frame body (RFC 6455 §5.5.1, §7.4)."""
    if not payload:
        return Close(1005, "")
    if len(payload) == 1:
        raise RemoteProtocolError("close frame payload of 1 byte")
    (code,) = _U16.unpack_from(payload)
    if not _valid_close_code(code):
        raise RemoteProtocolError(f"invalid close code {code}")
    try:
        return Close(code, payload[2:].decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidPayloadData("invalid UTF-8 in close reason") from None


class WebSocketParser:
    """Incremental frame parser for one direction of one connection (RFC 6455 §5).

    Args:
        max_message_bytes: limit on a message's payload summed over its fragments, checked
            against each header's declared length before any payload is awaited, so a peer
            cannot make the parser buffer more than that.
        require_mask: True on a server, whose peer MUST mask; False on a client, whose peer
            MUST NOT (§5.1).
    """

    __slots__ = ("_buf", "_max", "_require_mask", "_msg_op", "_frag", "_failed")

    def __init__(self, *, max_message_bytes: int = 1_000_000, require_mask: bool = True) -> None:
        # Both buffers exist only while they hold bytes: an idle connection (every frame it
        # sent was complete) carries neither.
        self._buf: bytearray | None = None  # the bytes of an incomplete frame
        self._max = max_message_bytes
        self._require_mask = 0x80 if require_mask else 0
        self._msg_op = 0  # opcode of the open fragmented message, 0 when none is open
        # its payload so far: no per-fragment object for tiny fragments
        self._frag: bytearray | None = None
        self._failed = False

    def feed(self, data: Buffer) -> list[Event]:
        """Add received bytes and return every event they complete, in wire order.

        Incomplete frames stay buffered for the next call. Control frames may arrive between
        the fragments of a message (§5.4) and are returned as soon as they are complete.

        Raises:
            RemoteProtocolError: the peer broke the protocol (subclasses: PayloadTooBig,
                InvalidPayloadData); :func:`close_code_for` gives the close code. The parser
                stays failed, and events completed earlier in the same call are dropped.
            LocalProtocolError: called again after a failure.
        """
        if self._failed:
            raise LocalProtocolError("parser already failed; close the connection")
        buf = self._buf
        if buf is None:
            buf = bytearray(data)
        else:
            buf += data
        events: list[Event] = []
        pos = self._parse(buf, events)
        if pos == len(buf):
            self._buf = None
        else:
            if pos:
                del buf[:pos]  # once per feed; CPython makes prefix deletion cheap
            self._buf = buf
        return events

    def _parse(self, buf: bytearray, events: list[Event]) -> int:
        """Consume complete frames from ``buf``, append their events, return the new offset."""
        end = len(buf)
        pos = 0
        view = memoryview(buf)  # slices of it copy once; released before buf is resized
        try:
            while end - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                if b0 & 0x70:
                    raise RemoteProtocolError("reserved bits set without a negotiated extension")
                opcode = b0 & 0x0F
                length = b1 & 0x7F
                if 2 < opcode < 8 or opcode > 0xA:
                    raise RemoteProtocolError(f"unknown opcode {opcode:#x}")
                if opcode >= 8:  # §5.5: control frames
                    if not b0 & 0x80:
                        raise RemoteProtocolError("fragmented control frame")
                    if length > _MAX_CONTROL:
                        raise RemoteProtocolError("control frame payload over 125 bytes")
                masked = b1 & 0x80
                if masked != self._require_mask:  # §5.1
                    raise RemoteProtocolError("frame masking does not match the peer's role")
                start = pos + 2
                if length == 126:
                    if end - start < 2:
                        break
                    (length,) = _U16.unpack_from(buf, start)
                    start += 2
                elif length == 127:
                    if end - start < 8:
                        break
                    (length,) = _U64.unpack_from(buf, start)
                    if length >> 63:
                        raise RemoteProtocolError("64-bit payload length with the top bit set")
                    start += 8
                if opcode < 8:  # §5.4; _frag is None unless a fragmented message is open
                    if not self._msg_op and not opcode:
                        raise RemoteProtocolError("continuation frame without a message")
                    if self._msg_op and opcode:
                        raise RemoteProtocolError("new data frame inside a fragmented message")
                    frag = self._frag
                    if length + (len(frag) if frag is not None else 0) > self._max:
                        raise PayloadTooBig(f"message over {self._max} bytes")
                if masked:
                    start += 4
                stop = start + length
                if stop > end:
                    break
                if masked:
                    payload = _xor_mask(view[start:stop], view[start - 4 : start])
                else:
                    payload = bytes(view[start:stop])
                pos = stop
                if opcode >= 8:
                    if opcode == 8:
                        events.append(_parse_close(payload))
                    else:
                        events.append(Ping(payload) if opcode == 9 else Pong(payload))
                elif b0 & 0x80:
                    if opcode == 0:
                        opcode, self._msg_op = self._msg_op, 0
                        frag, self._frag = self._frag, None
                        if frag is not None:
                            frag += payload
                            payload = bytes(frag)
                    if opcode == 1:
                        try:
                            payload.decode("utf-8")
                        except UnicodeDecodeError:
                            raise InvalidPayloadData("invalid UTF-8 in text message") from None
                    events.append(Message(_DATA_OPS[opcode], payload))
                else:
                    if opcode:
                        self._msg_op = opcode
                    if self._frag is None:
                        self._frag = bytearray(payload)
                    else:
                        self._frag += payload
        except BaseException:
            self._failed = True
            raise
        finally:
            view.release()
        return pos


def close_code_for(exc: BaseException) -> int:
    """Pick the close code to send after ``exc`` ends a connection (RFC 6455 §7.4.1).

    1009 too big, 1007 invalid data, 1002 protocol error; 1011 for anything else (our fault).
    """
    if isinstance(exc, PayloadTooBig):
        return 1009
    if isinstance(exc, InvalidPayloadData):
        return 1007
    if isinstance(exc, RemoteProtocolError):
        return 1002
    return 1011
