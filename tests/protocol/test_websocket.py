"""Tests for roomcast.protocol.websocket: RFC 6455 examples, error cases, properties, interop."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame
from websockets.frames import Opcode as WsOpcode
from websockets.protocol import Protocol, Side

from roomcast.errors import LocalProtocolError, PayloadTooBig, RemoteProtocolError
from roomcast.protocol.websocket import (
    GUID,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Event,
    InvalidPayloadData,
    Message,
    Opcode,
    Ping,
    Pong,
    WebSocketParser,
    accept_key,
    binary_frame,
    check_client_handshake,
    close_code_for,
    close_frame,
    close_payload,
    handshake_response,
    serialize_frame,
    text_frame,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])  # the key used in RFC 6455 §5.7


def raw_frame(first: int, payload: bytes = b"", *, masked: bool = False, length: int | None = None) -> bytes:
    """Build a frame by hand, possibly invalid; a masked frame uses the all-zero key."""
    n = len(payload) if length is None else length
    bit = 0x80 if masked else 0
    if n < 126:
        header = struct.pack("!BB", first, bit | n)
    elif n < 0x10000:
        header = struct.pack("!BBH", first, bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, bit | 127, n)
    return header + (b"\0\0\0\0" if masked else b"") + payload


def feed_all(parser: WebSocketParser, data: bytes, cuts: list[int] | None = None) -> list[Event]:
    """Feed ``data`` in chunks split at ``cuts`` and collect every event."""
    events: list[Event] = []
    bounds = [0, *sorted(c for c in (cuts or []) if 0 < c < len(data)), len(data)]
    for lo, hi in zip(bounds, bounds[1:]):
        events.extend(parser.feed(data[lo:hi]))
    return events


# --- handshake (§1.3, §4)

GOOD_HEADERS = {
    "host": "example.com",
    "upgrade": "websocket",
    "connection": "Upgrade",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-version": "13",
}


def test_accept_key_rfc_example() -> None:
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_check_client_handshake_accepts_valid_request() -> None:
    assert check_client_handshake("GET", GOOD_HEADERS) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    tolerant = {**GOOD_HEADERS, "upgrade": "foo, WebSocket", "connection": "keep-alive, UPGRADE"}
    assert check_client_handshake("GET", tolerant) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("method", "change", "word"),
    [
        ("POST", {}, "GET"),
        ("GET", {"upgrade": "h2c"}, "Upgrade"),
        ("GET", {"upgrade": None}, "Upgrade"),
        ("GET", {"connection": "keep-alive"}, "Connection"),
        ("GET", {"connection": None}, "Connection"),
        ("GET", {"sec-websocket-version": "8"}, "Version"),
        ("GET", {"sec-websocket-version": None}, "Version"),
        ("GET", {"sec-websocket-key": None}, "Key"),
        ("GET", {"sec-websocket-key": "not base64!"}, "Key"),
        ("GET", {"sec-websocket-key": "c2hvcnQ="}, "Key"),  # 5 bytes, not 16
        ("GET", {"sec-websocket-key": "é" * 24}, "Key"),
    ],
)
def test_check_client_handshake_rejects(method: str, change: dict[str, str | None], word: str) -> None:
    headers = {k: v for k, v in {**GOOD_HEADERS, **change}.items() if v is not None}
    with pytest.raises(RemoteProtocolError) as info:
        check_client_handshake(method, headers)
    assert word in info.value.reason
    assert close_code_for(info.value) == 1002


def test_handshake_response_bytes() -> None:
    assert handshake_response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    response = handshake_response("abc=", subprotocol="chat", extra_headers=[("X-A", "1")])
    assert response.endswith(b"Sec-WebSocket-Accept: abc=\r\nSec-WebSocket-Protocol: chat\r\nX-A: 1\r\n\r\n")


@pytest.mark.parametrize("header", [("X-A", "1\r\nSet-Cookie: x"), ("X\nA", "1"), ("", "1"), ("X-A", "€")])
def test_handshake_response_refuses_bad_headers(header: tuple[str, str]) -> None:
    with pytest.raises(LocalProtocolError):
        handshake_response("abc=", extra_headers=[header])


# --- RFC 6455 §5.7 examples, both directions

HELLO_UNMASKED = bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
HELLO_MASKED = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
HEL_LO = bytes([0x01, 0x03, 0x48, 0x65, 0x6C]) + bytes([0x80, 0x02, 0x6C, 0x6F])
PING_HELLO = bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
PONG_HELLO_MASKED = bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])


def test_rfc_example_hello_unmasked() -> None:
    assert serialize_frame(OP_TEXT, b"Hello") == HELLO_UNMASKED
    assert text_frame("Hello") == text_frame(b"Hello") == HELLO_UNMASKED
    assert WebSocketParser(require_mask=False).feed(HELLO_UNMASKED) == [Message(OP_TEXT, b"Hello")]


def test_rfc_example_hello_masked() -> None:
    assert serialize_frame(OP_TEXT, b"Hello", mask=MASK) == HELLO_MASKED
    assert WebSocketParser().feed(HELLO_MASKED) == [Message(OP_TEXT, b"Hello")]


def test_rfc_example_fragmented() -> None:
    assert serialize_frame(OP_TEXT, b"Hel", fin=False) + serialize_frame(OP_CONT, b"lo") == HEL_LO
    parser = WebSocketParser(require_mask=False)
    assert parser.feed(HEL_LO[:5]) == []
    assert parser.feed(HEL_LO[5:]) == [Message(OP_TEXT, b"Hello")]


def test_rfc_example_ping_and_masked_pong() -> None:
    assert serialize_frame(OP_PING, b"Hello") == PING_HELLO
    assert serialize_frame(OP_PONG, b"Hello", mask=MASK) == PONG_HELLO_MASKED
    assert WebSocketParser(require_mask=False).feed(PING_HELLO) == [Ping(b"Hello")]
    assert WebSocketParser().feed(PONG_HELLO_MASKED) == [Pong(b"Hello")]


@pytest.mark.parametrize(
    ("size", "header"),
    [(256, bytes([0x82, 0x7E, 0x01, 0x00])), (65536, bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]))],
)
def test_rfc_example_binary_length_encodings(size: int, header: bytes) -> None:
    payload = bytes(range(256)) * (size // 256)
    frame = binary_frame(payload)
    assert frame == header + payload == serialize_frame(OP_BINARY, payload)
    assert WebSocketParser(require_mask=False).feed(frame) == [Message(OP_BINARY, payload)]
    masked = serialize_frame(OP_BINARY, payload, mask=MASK)
    assert masked[:2] == bytes([0x82, header[1] | 0x80]) and masked[2 : len(header)] == header[2:]
    assert WebSocketParser().feed(masked) == [Message(OP_BINARY, payload)]


def test_length_boundaries_and_memoryview_payload() -> None:
    for n in (0, 125, 126, 65535, 65536):
        frame = serialize_frame(OP_BINARY, memoryview(b"x" * n), mask=b"abcd")
        assert WebSocketParser().feed(frame) == [Message(OP_BINARY, b"x" * n)]
    assert len(binary_frame(b"x" * 125)) == 127 and len(binary_frame(b"x" * 126)) == 130


# --- close payloads


def test_close_payload_and_frame() -> None:
    assert close_payload(1000) == b"\x03\xe8"
    assert close_payload(4000, "bye") == b"\x0f\xa0bye"
    assert close_payload(1005) == b""
    assert close_frame(1001, "away") == b"\x88\x06\x03\xe9away"
    parser = WebSocketParser()
    assert parser.feed(close_frame(1001, "away", mask=MASK)) == [Close(1001, "away")]
    assert parser.feed(serialize_frame(OP_CLOSE, b"", mask=MASK)) == [Close(1005, "")]


def test_close_reason_truncated_on_utf8_boundary() -> None:
    payload = close_payload(1000, "é" * 100)  # 200 bytes of 2-byte characters
    assert len(payload) == 2 + 122
    assert payload[2:].decode("utf-8") == "é" * 61
    assert close_payload(1000, "a" + "€" * 60)[2:] == ("a" + "€" * 40).encode()  # 121 bytes
    assert len(close_payload(1000, "a" * 500)) == 125


@pytest.mark.parametrize("code", [0, 999, 1004, 1006, 1015, 1016, 2999, 5000])
def test_close_payload_refuses_unsendable_codes(code: int) -> None:
    with pytest.raises(LocalProtocolError):
        close_payload(code)


def test_close_payload_1005_cannot_carry_reason() -> None:
    with pytest.raises(LocalProtocolError):
        close_payload(1005, "x")


# --- serializer misuse


@pytest.mark.parametrize(
    ("opcode", "payload", "fin", "mask"),
    [
        (OP_PING, b"x" * 126, True, None),
        (OP_CLOSE, b"", False, None),
        (0x3, b"", True, None),
        (0xB, b"", True, None),
        (OP_TEXT, b"x", True, b"abc"),
    ],
)
def test_serialize_frame_refuses_misuse(opcode: int, payload: bytes, fin: bool, mask: bytes | None) -> None:
    with pytest.raises(LocalProtocolError):
        serialize_frame(opcode, payload, fin=fin, mask=mask)


def test_control_frame_of_125_bytes_is_fine() -> None:
    frame = serialize_frame(OP_PING, b"p" * 125, mask=MASK)
    assert WebSocketParser().feed(frame) == [Ping(b"p" * 125)]


def test_opcode_constants() -> None:
    assert (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) == (0, 1, 2, 8, 9, 10)
    assert OP_TEXT is Opcode.TEXT and Message(OP_TEXT, b"").opcode == 1


# --- parser errors


def _expect(
    data: bytes,
    exc_type: type[RemoteProtocolError],
    code: int,
    *,
    require_mask: bool = False,
    max_message_bytes: int = 1_000_000,
) -> RemoteProtocolError:
    """Feed ``data`` and check the error, its close code, and that the parser stays failed."""
    parser = WebSocketParser(require_mask=require_mask, max_message_bytes=max_message_bytes)
    with pytest.raises(exc_type) as info:
        parser.feed(data)
    assert close_code_for(info.value) == code
    assert info.value.reason
    with pytest.raises(LocalProtocolError):  # the parser is unusable afterwards
        parser.feed(b"")
    return info.value


@pytest.mark.parametrize(
    ("data", "word"),
    [
        (raw_frame(0xC1, b"x"), "reserved"),  # RSV1
        (raw_frame(0xA1, b"x"), "reserved"),  # RSV2
        (raw_frame(0x91, b"x"), "reserved"),  # RSV3
        (raw_frame(0x83), "opcode"),
        (raw_frame(0x87), "opcode"),
        (raw_frame(0x8B), "opcode"),
        (raw_frame(0x8F), "opcode"),
        (raw_frame(0x09), "fragmented control"),
        (raw_frame(0x08), "fragmented control"),
        (raw_frame(0x89, b"x" * 126), "125"),
        (raw_frame(0x89, length=126)[:4], "125"),  # rejected from the header alone
        (raw_frame(0x80, b"x"), "continuation"),
        (raw_frame(0x00, b"x"), "continuation"),
        (raw_frame(0x01, b"a") + raw_frame(0x81, b"b"), "fragmented message"),
        (raw_frame(0x02, b"a") + raw_frame(0x02, b"b"), "fragmented message"),
        (bytes([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1]), "top bit"),
        (raw_frame(0x88, b"\x03"), "1 byte"),
    ],
)
def test_parser_protocol_errors(data: bytes, word: str) -> None:
    error = _expect(data, RemoteProtocolError, 1002)
    assert type(error) is RemoteProtocolError and word in error.reason


VALID_CLOSE_CODES = [*range(1000, 1004), *range(1007, 1015), 3000, 4321, 4999]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2999, 5000, 65535])
def test_parser_rejects_invalid_close_codes(code: int) -> None:
    error = _expect(raw_frame(0x88, struct.pack("!H", code)), RemoteProtocolError, 1002)
    assert str(code) in error.reason


@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
def test_parser_accepts_valid_close_codes(code: int) -> None:
    frame = raw_frame(0x88, struct.pack("!H", code) + "ok ✓".encode())
    assert WebSocketParser(require_mask=False).feed(frame) == [Close(code, "ok ✓")]


def test_mask_rule_server_side() -> None:
    error = _expect(HELLO_UNMASKED, RemoteProtocolError, 1002, require_mask=True)
    assert "mask" in error.reason


def test_mask_rule_client_side() -> None:
    error = _expect(HELLO_MASKED, RemoteProtocolError, 1002, require_mask=False)
    assert "mask" in error.reason


@pytest.mark.parametrize(
    "data",
    [
        raw_frame(0x81, b"\xc3\x28"),  # bad continuation byte
        raw_frame(0x81, b"\xed\xa0\x80"),  # UTF-16 surrogate
        raw_frame(0x81, b"\xf4\x90\x80\x80"),  # above U+10FFFF
        raw_frame(0x81, b"\xc0\xaf"),  # overlong
        raw_frame(0x01, b"ok") + raw_frame(0x80, b"\xe2\x82"),  # truncated at the message end
        raw_frame(0x88, b"\x03\xe8\xff"),  # close reason
    ],
)
def test_invalid_utf8(data: bytes) -> None:
    error = _expect(data, InvalidPayloadData, 1007)
    assert "UTF-8" in error.reason


def test_utf8_character_split_across_fragments_is_valid() -> None:
    euro = "€".encode()
    data = raw_frame(0x01, euro[:1]) + raw_frame(0x89, b"hi") + raw_frame(0x80, euro[1:])
    assert WebSocketParser(require_mask=False).feed(data) == [Ping(b"hi"), Message(OP_TEXT, euro)]


def test_binary_is_not_utf8_validated() -> None:
    parser = WebSocketParser(require_mask=False)
    assert parser.feed(raw_frame(0x82, b"\xff")) == [Message(OP_BINARY, b"\xff")]


def test_payload_too_big_single_frame() -> None:
    _expect(raw_frame(0x82, b"x" * 11), PayloadTooBig, 1009, max_message_bytes=10)
    parser = WebSocketParser(require_mask=False, max_message_bytes=10)
    assert parser.feed(raw_frame(0x82, b"x" * 10)) == [Message(OP_BINARY, b"x" * 10)]


def test_payload_too_big_sum_of_fragments() -> None:
    ok = raw_frame(0x02, b"x" * 6) + raw_frame(0x80, b"x" * 4)
    parser = WebSocketParser(require_mask=False, max_message_bytes=10)
    assert parser.feed(ok) == [Message(OP_BINARY, b"x" * 10)]
    too_big = raw_frame(0x02, b"x" * 6) + raw_frame(0x00, b"x" * 3) + raw_frame(0x80, b"x" * 2)
    _expect(too_big, PayloadTooBig, 1009, max_message_bytes=10)


def test_huge_declared_length_fails_from_header_alone() -> None:
    header = raw_frame(0x82, length=2**40)
    assert len(header) == 10
    parser = WebSocketParser(require_mask=False)
    with pytest.raises(PayloadTooBig):
        parser.feed(header)  # no payload byte was needed, so none was waited for
    masked = raw_frame(0x82, length=2**40, masked=True)[:10]  # even before the masking key
    with pytest.raises(PayloadTooBig):
        WebSocketParser().feed(masked)
    with pytest.raises(PayloadTooBig):
        WebSocketParser(max_message_bytes=65535).feed(raw_frame(0x82, length=65536, masked=True))


def test_control_frames_ignore_message_limit_but_not_125() -> None:
    parser = WebSocketParser(require_mask=False, max_message_bytes=0)
    assert parser.feed(raw_frame(0x89, b"x" * 125)) == [Ping(b"x" * 125)]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (PayloadTooBig("big"), 1009),
        (InvalidPayloadData("utf8"), 1007),
        (RemoteProtocolError("bad"), 1002),
        (LocalProtocolError("ours"), 1011),
        (ValueError("bug"), 1011),
        (KeyboardInterrupt(), 1011),
    ],
)
def test_close_code_for(exc: BaseException, code: int) -> None:
    assert close_code_for(exc) == code


# --- incremental feeding

MIXED_STREAM = b"".join(
    [
        serialize_frame(OP_TEXT, "héllo".encode(), mask=MASK),
        serialize_frame(OP_BINARY, b"\x00" * 300, fin=False, mask=b"\x01\x02\x03\x04"),
        serialize_frame(OP_PING, b"ping", mask=MASK),
        serialize_frame(OP_CONT, b"", fin=False, mask=MASK),
        serialize_frame(OP_CONT, b"\xff" * 70000, mask=b"\xff\x00\xff\x00"),
        serialize_frame(OP_PONG, b"", mask=MASK),
        close_frame(1000, "done", mask=MASK),
    ]
)
MIXED_EVENTS = [
    Message(OP_TEXT, "héllo".encode()),
    Ping(b"ping"),
    Message(OP_BINARY, b"\x00" * 300 + b"\xff" * 70000),
    Pong(b""),
    Close(1000, "done"),
]


def test_one_feed_gives_all_events() -> None:
    assert WebSocketParser().feed(MIXED_STREAM) == MIXED_EVENTS


def test_byte_by_byte_feeding_gives_same_events() -> None:
    parser = WebSocketParser()
    events: list[Event] = []
    for i in range(len(MIXED_STREAM)):
        events.extend(parser.feed(MIXED_STREAM[i : i + 1]))
    assert events == MIXED_EVENTS


def test_feed_accepts_bytearray_and_memoryview() -> None:
    parser = WebSocketParser()
    half = len(MIXED_STREAM) // 2
    events = parser.feed(bytearray(MIXED_STREAM[:half]))
    events += parser.feed(memoryview(MIXED_STREAM)[half:])
    assert events == MIXED_EVENTS


# --- interop with the websockets library's sans-I/O protocol


def peer_frames(peer: Protocol) -> list[tuple[int, bytes, bool]]:
    """The frames a websockets peer parsed, as plain tuples."""
    frames = peer.events_received()
    assert peer.parser_exc is None and all(isinstance(f, Frame) for f in frames)
    return [(f.opcode, bytes(f.data), f.fin) for f in frames if isinstance(f, Frame)]


def test_websockets_client_reads_our_server_frames() -> None:
    peer = Protocol(Side.CLIENT)
    peer.receive_data(
        text_frame("héllo")
        + binary_frame(b"\x01" * 70000)
        + serialize_frame(OP_PING, b"p")
        + serialize_frame(OP_TEXT, b"Hel", fin=False)
        + serialize_frame(OP_CONT, b"lo")
        + close_frame(1001, "bye")
    )
    assert peer_frames(peer) == [
        (WsOpcode.TEXT, "héllo".encode(), True),
        (WsOpcode.BINARY, b"\x01" * 70000, True),
        (WsOpcode.PING, b"p", True),
        (WsOpcode.TEXT, b"Hel", False),
        (WsOpcode.CONT, b"lo", True),
        (WsOpcode.CLOSE, b"\x03\xe9bye", True),
    ]
    # websockets answered the ping and echoed the close, masked as a client must.
    assert WebSocketParser().feed(b"".join(peer.data_to_send())) == [Pong(b"p"), Close(1001, "bye")]


def test_websockets_server_reads_our_client_frames() -> None:
    peer = Protocol(Side.SERVER)
    peer.receive_data(serialize_frame(OP_TEXT, b"hi", mask=MASK) + close_frame(4000, "x", mask=b"\0\xff\0\xff"))
    assert peer_frames(peer) == [(WsOpcode.TEXT, b"hi", True), (WsOpcode.CLOSE, b"\x0f\xa0x", True)]


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER])
def test_we_read_websockets_frames(side: Side) -> None:
    peer = Protocol(side)
    peer.send_text("héllo".encode())
    peer.send_binary(b"\x02" * 300, fin=False)
    peer.send_ping(b"p")
    peer.send_continuation(b"\x03" * 70000, fin=True)
    peer.send_close(1000, "done")
    parser = WebSocketParser(require_mask=side is Side.CLIENT)
    assert parser.feed(b"".join(peer.data_to_send())) == [
        Message(OP_TEXT, "héllo".encode()),
        Ping(b"p"),
        Message(OP_BINARY, b"\x02" * 300 + b"\x03" * 70000),
        Close(1000, "done"),
    ]


@SETTINGS
@given(text=st.text(max_size=200), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_we_read_websockets_masked_text(text: str, cuts: list[int]) -> None:
    peer = Protocol(Side.CLIENT)  # masks with fresh random keys
    peer.send_text(text.encode())
    data = b"".join(peer.data_to_send())
    assert feed_all(WebSocketParser(), data, cuts) == [Message(OP_TEXT, text.encode())]


# --- properties

payloads = st.one_of(st.binary(max_size=200), st.integers(126, 70000).map(lambda n: b"\xa5" * n))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bool, bytes, list[Event]]:
    """A stream of valid frames (fragments interleaved with control frames) and its events."""
    masked = draw(st.booleans())

    def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
        mask = draw(st.binary(min_size=4, max_size=4)) if masked else None
        return serialize_frame(opcode, payload, fin=fin, mask=mask)

    def control() -> tuple[bytes, Event]:
        kind = draw(st.sampled_from([OP_PING, OP_PONG, OP_CLOSE]))
        if kind == OP_CLOSE:
            code = draw(st.sampled_from([1005, *VALID_CLOSE_CODES]))
            reason = "" if code == 1005 else draw(st.text(max_size=70))
            body = close_payload(code, reason)
            return frame(OP_CLOSE, body), Close(code, body[2:].decode())
        body = draw(st.binary(max_size=125))
        return frame(kind, body), (Ping(body) if kind == OP_PING else Pong(body))

    data: list[bytes] = []
    events: list[Event] = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            wire, event = control()
            data.append(wire)
            events.append(event)
            continue
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        payload = draw(st.text(max_size=100)).encode() if opcode == OP_TEXT else draw(payloads)
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
        for i, piece in enumerate(pieces):
            data.append(frame(opcode if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1))
            if i < len(pieces) - 1 and draw(st.booleans()):
                wire, event = control()
                data.append(wire)
                events.append(event)
        events.append(Message(opcode, payload))
    return masked, b"".join(data), events


@SETTINGS
@given(stream=streams(), cuts=st.lists(st.integers(0, 80000), max_size=8))
def test_roundtrip_random_frames_and_chunking(stream: tuple[bool, bytes, list[Event]], cuts: list[int]) -> None:
    masked, data, expected = stream
    assert feed_all(WebSocketParser(require_mask=masked), data, cuts) == expected


def _feed_arbitrary(parser: WebSocketParser, data: bytes, cuts: list[int]) -> None:
    try:
        events = feed_all(parser, data, cuts)
    except RemoteProtocolError:  # PayloadTooBig and InvalidPayloadData included
        return
    assert all(isinstance(e, (Message, Ping, Pong, Close)) for e in events)


@SETTINGS
@given(
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 400), max_size=6),
    require_mask=st.booleans(),
    limit=st.sampled_from([0, 5, 130, 1_000_000]),
)
def test_arbitrary_bytes_only_raise_remote_protocol_errors(
    data: bytes, cuts: list[int], require_mask: bool, limit: int
) -> None:
    _feed_arbitrary(WebSocketParser(require_mask=require_mask, max_message_bytes=limit), data, cuts)


@SETTINGS
@given(
    stream=streams(),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
    limit=st.sampled_from([10, 1_000_000]),
)
def test_corrupted_valid_streams_only_raise_remote_protocol_errors(
    stream: tuple[bool, bytes, list[Event]],
    flips: list[tuple[int, int]],
    cuts: list[int],
    limit: int,
) -> None:
    masked, data, _ = stream
    corrupted = bytearray(data)
    for where, xor in flips:
        if corrupted:
            corrupted[where % len(corrupted)] ^= xor
    parser = WebSocketParser(require_mask=masked, max_message_bytes=limit)
    _feed_arbitrary(parser, bytes(corrupted), cuts)
