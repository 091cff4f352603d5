"""Engine.IO v4 codec: wire examples from the spec and its test suite, plus properties."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.errors import LocalProtocolError, PayloadTooBig, RemoteProtocolError
from roomcast.protocol.engineio import (
    SEPARATOR,
    Packet,
    PacketType,
    decode_polling,
    decode_ws,
    encode_polling,
    encode_ws,
    open_payload,
)

T = PacketType

WS_EXAMPLES = [
    (Packet(T.OPEN, '{"sid":"abc"}'), '0{"sid":"abc"}'),
    (Packet(T.CLOSE), "1"),
    (Packet(T.PING), "2"),
    (Packet(T.PING, "probe"), "2probe"),
    (Packet(T.PONG), "3"),
    (Packet(T.PONG, "probe"), "3probe"),
    (Packet(T.MESSAGE, "hello"), "4hello"),
    (Packet(T.MESSAGE, ""), "4"),
    (Packet(T.MESSAGE, "€ ünïcode"), "4€ ünïcode"),
    (Packet(T.UPGRADE), "5"),
    (Packet(T.NOOP), "6"),
    (Packet(T.MESSAGE, b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04"),
    (Packet(T.MESSAGE, b""), b""),
]


@pytest.mark.parametrize(("packet", "wire"), WS_EXAMPLES)
def test_encode_ws_examples(packet: Packet, wire: str | bytes) -> None:
    assert encode_ws(packet) == wire
    assert type(encode_ws(packet)) is type(wire)


@pytest.mark.parametrize(("packet", "wire"), WS_EXAMPLES)
def test_decode_ws_examples(packet: Packet, wire: str | bytes) -> None:
    assert decode_ws(wire) == packet


def test_decode_ws_types_are_enum_members() -> None:
    packet = decode_ws("4x")
    assert packet.type is PacketType.MESSAGE
    assert decode_ws(b"\x00").type is PacketType.MESSAGE


def test_decode_ws_accepts_bytearray_and_memoryview() -> None:
    assert decode_ws(bytearray(b"ab")) == Packet(T.MESSAGE, b"ab")  # type: ignore[arg-type]
    assert decode_ws(memoryview(b"ab")) == Packet(T.MESSAGE, b"ab")  # type: ignore[arg-type]


@pytest.mark.parametrize("frame", ["", "abc", "7", "9hello", "b", "bAQIDBA==", " 4", "x4"])
def test_decode_ws_rejects_bad_frames(frame: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_ws(frame)
    assert type(info.value) is RemoteProtocolError
    assert frame[1:] not in info.value.reason or not frame[1:]


POLLING_EXAMPLES = [
    ([Packet(T.MESSAGE, "hello")], "4hello"),
    (
        [Packet(T.MESSAGE, "hello"), Packet(T.PING), Packet(T.MESSAGE, "world")],
        "4hello\x1e2\x1e4world",
    ),
    (
        [Packet(T.MESSAGE, "test1"), Packet(T.MESSAGE, "test2"), Packet(T.MESSAGE, "test3")],
        "4test1\x1e4test2\x1e4test3",
    ),
    ([Packet(T.MESSAGE, "hello"), Packet(T.MESSAGE, b"\x01\x02\x03\x04")], "4hello\x1ebAQIDBA=="),
    ([Packet(T.MESSAGE, b"")], "b"),
    ([Packet(T.PING)], "2"),
    ([Packet(T.PONG)], "3"),
    ([Packet(T.CLOSE)], "1"),
    ([Packet(T.NOOP)], "6"),
    (
        [Packet(T.MESSAGE, '0{"sid":"x"}'), Packet(T.MESSAGE, '2["hello"]')],
        '40{"sid":"x"}\x1e42["hello"]',
    ),
]


@pytest.mark.parametrize(("packets", "body"), POLLING_EXAMPLES)
def test_encode_polling_examples(packets: list[Packet], body: str) -> None:
    assert encode_polling(packets) == body
    assert encode_polling(iter(packets)) == body


@pytest.mark.parametrize(("packets", "body"), POLLING_EXAMPLES)
def test_decode_polling_examples(packets: list[Packet], body: str) -> None:
    assert decode_polling(body) == packets


@pytest.mark.parametrize(
    "body",
    [
        "",
        "abc",
        "4hello\x1e",
        "\x1e4hello",
        "4a\x1e\x1e4b",
        "4a\x1eabc",
        "b!!!!",
        "bAQIDBA",
        "bAQ=DBA==",
        "bAQIDBA==\n",
        "bé",
        "7",
    ],
)
def test_decode_polling_rejects_bad_bodies(body: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_polling(body)
    assert type(info.value) is RemoteProtocolError


def test_decode_polling_packet_limit() -> None:
    assert len(decode_polling(SEPARATOR.join(["2"] * 3), max_packets=3)) == 3
    with pytest.raises(PayloadTooBig):
        decode_polling(SEPARATOR.join(["2"] * 4), max_packets=3)
    with pytest.raises(PayloadTooBig):
        decode_polling(SEPARATOR.join(["4x"] * 1025))
    assert len(decode_polling(SEPARATOR.join(["4x"] * 1024))) == 1024


@pytest.mark.parametrize(
    "packet",
    [
        Packet(T.PING, b"\x01"),
        Packet(T.OPEN, b"{}"),
        Packet(9, "x"),  # type: ignore[arg-type]
        Packet(T.MESSAGE, 42),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_invalid_packets(packet: Packet) -> None:
    with pytest.raises(LocalProtocolError):
        encode_ws(packet)
    with pytest.raises(LocalProtocolError):
        encode_polling([packet])


def test_encode_polling_rejects_separator_and_empty() -> None:
    with pytest.raises(LocalProtocolError):
        encode_polling([Packet(T.MESSAGE, "a\x1eb")])
    with pytest.raises(LocalProtocolError):
        encode_polling([])
    # over WebSocket the separator is harmless
    assert encode_ws(Packet(T.MESSAGE, "a\x1eb")) == "4a\x1eb"


def test_open_payload_matches_spec_sample() -> None:
    payload = open_payload(
        "lv_VI97HAXpY6yYWAAAC",
        upgrades=["websocket"],
        ping_interval_ms=25000,
        ping_timeout_ms=5000,
        max_payload=1000000,
    )
    assert payload == (
        '{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],'
        '"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}'
    )
    assert encode_ws(Packet(T.OPEN, payload)) == "0" + payload


def test_open_payload_keys_and_types() -> None:
    value = json.loads(open_payload("s", upgrades=(), ping_interval_ms=300, ping_timeout_ms=200, max_payload=10**6))
    assert set(value) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert value == {
        "sid": "s",
        "upgrades": [],
        "pingInterval": 300,
        "pingTimeout": 200,
        "maxPayload": 1000000,
    }


@pytest.mark.parametrize(
    ("sid", "upgrades", "interval", "timeout", "max_payload"),
    [
        ("", ["websocket"], 1, 1, 1),
        ("s", [1], 1, 1, 1),
        ("s", [], 1.5, 1, 1),
        ("s", [], 1, -1, 1),
        ("s", [], 1, 1, True),
    ],
)
def test_open_payload_rejects_bad_values(
    sid: str, upgrades: list[str], interval: int, timeout: int, max_payload: int
) -> None:
    with pytest.raises(LocalProtocolError):
        open_payload(
            sid,
            upgrades=upgrades,
            ping_interval_ms=interval,
            ping_timeout_ms=timeout,
            max_payload=max_payload,
        )


# --- properties -----------------------------------------------------------------------

_text_packets = st.builds(Packet, st.sampled_from(list(PacketType)), st.text())
_binary_packets = st.builds(Packet, st.just(PacketType.MESSAGE), st.binary())
_packets = st.one_of(_text_packets, _binary_packets)
_wild_ws = st.text(st.characters(exclude_categories=(), max_codepoint=0xE010), max_size=10)
_polling_packets = st.one_of(
    st.builds(
        Packet,
        st.sampled_from(list(PacketType)),
        st.text().filter(lambda s: SEPARATOR not in s),
    ),
    _binary_packets,
)


@settings(max_examples=300, deadline=None)
@given(_packets)
def test_ws_round_trip(packet: Packet) -> None:
    assert decode_ws(encode_ws(packet)) == packet


@settings(max_examples=300, deadline=None)
@given(st.lists(_polling_packets, min_size=1, max_size=20))
def test_polling_round_trip(packets: list[Packet]) -> None:
    assert decode_polling(encode_polling(packets)) == packets


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _wild_ws, st.binary()))
def test_decode_ws_never_raises_anything_else(frame: str | bytes) -> None:
    try:
        packet = decode_ws(frame)
    except RemoteProtocolError as exc:
        assert type(exc) is RemoteProtocolError
    else:
        assert isinstance(packet, Packet)


_wireish = st.text(alphabet="0123456789b\x1e=+/AQIDBa-é", max_size=40)
_surrogates = st.characters(exclude_categories=(), min_codepoint=0xD7F0, max_codepoint=0xE010)
_wild = st.text(st.one_of(_surrogates, st.sampled_from("4b\x1eAQ=")), max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _wireish, _wild), st.integers(min_value=0, max_value=8))
def test_decode_polling_never_raises_anything_else(body: str, max_packets: int) -> None:
    try:
        packets = decode_polling(body, max_packets=max_packets)
    except RemoteProtocolError:
        pass
    else:
        assert 1 <= len(packets) <= max_packets
        assert all(isinstance(p, Packet) for p in packets)
