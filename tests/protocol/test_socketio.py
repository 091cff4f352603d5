"""Socket.IO v5 codec: wire examples from the spec and its test suite, plus properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast import _json
from roomcast.errors import LocalProtocolError, PayloadTooBig, RemoteProtocolError
from roomcast.protocol.socketio import (
    MAX_ACK_ID,
    RESERVED_EVENTS,
    Decoder,
    SioPacket,
    SioType,
    encode,
    event_packet_text,
)

T = SioType
PH0 = '{"_placeholder":true,"num":0}'
PH1 = '{"_placeholder":true,"num":1}'

# (packet, wire) pairs that must encode to exactly these payloads and decode back.
EXAMPLES: list[tuple[SioPacket, list[str | bytes]]] = [
    (SioPacket(T.CONNECT), ["0"]),
    (SioPacket(T.CONNECT, "/", {"sid": "x"}), ['0{"sid":"x"}']),
    (SioPacket(T.CONNECT, "/", {"token": "123"}), ['0{"token":"123"}']),
    (SioPacket(T.CONNECT, "/custom"), ["0/custom,"]),
    (
        SioPacket(T.CONNECT, "/admin", {"sid": "oSO0OpakMV_3jnilAAAA"}),
        ['0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}'],
    ),
    (SioPacket(T.CONNECT_ERROR, "/", {"message": "Not authorized"}), ['4{"message":"Not authorized"}']),
    (
        SioPacket(T.CONNECT_ERROR, "/random", {"message": "Invalid namespace"}),
        ['4/random,{"message":"Invalid namespace"}'],
    ),
    (SioPacket(T.CONNECT_ERROR, "/", "nope"), ['4"nope"']),
    (SioPacket(T.DISCONNECT), ["1"]),
    (SioPacket(T.DISCONNECT, "/custom"), ["1/custom,"]),
    (SioPacket(T.EVENT, "/", ["foo"]), ['2["foo"]']),
    (SioPacket(T.EVENT, "/admin", ["bar"]), ['2/admin,["bar"]']),
    (SioPacket(T.EVENT, "/", ["a", 1], 12), ['212["a",1]']),
    (SioPacket(T.EVENT, "/", ["foo"], 12), ['212["foo"]']),
    (SioPacket(T.EVENT, "/", [7, "x"]), ['2[7,"x"]']),
    (
        SioPacket(T.EVENT, "/", ["message", 1, "2", {"3": [True]}]),
        ['2["message",1,"2",{"3":[true]}]'],
    ),
    (
        SioPacket(T.EVENT, "/", ["message-with-ack", 1, "2", {"3": [False]}], 456),
        ['2456["message-with-ack",1,"2",{"3":[false]}]'],
    ),
    (SioPacket(T.EVENT, "/admin", ["tellme"], 1), ['2/admin,1["tellme"]']),
    (SioPacket(T.ACK, "/", [], 12), ["312[]"]),
    (SioPacket(T.ACK, "/admin", ["bar"], 13), ['3/admin,13["bar"]']),
    (SioPacket(T.ACK, "/", [1, "2", {"3": [False]}], 456), ['3456[1,"2",{"3":[false]}]']),
    (SioPacket(T.EVENT, "/", ["baz", b"\x01\x02\x03\x04"]), [f'51-["baz",{PH0}]', b"\x01\x02\x03\x04"]),
    (
        SioPacket(T.EVENT, "/admin", ["baz", b"\x01\x02", b"\x03\x04"]),
        [f'52-/admin,["baz",{PH0},{PH1}]', b"\x01\x02", b"\x03\x04"],
    ),
    (
        SioPacket(T.EVENT, "/", ["message", b"\x01\x02\x03", b"\x04\x05\x06"]),
        [f'52-["message",{PH0},{PH1}]', b"\x01\x02\x03", b"\x04\x05\x06"],
    ),
    (
        SioPacket(T.EVENT, "/", ["message-with-ack", b"\x01\x02\x03", b"\x04\x05\x06"], 789),
        [f'52-789["message-with-ack",{PH0},{PH1}]', b"\x01\x02\x03", b"\x04\x05\x06"],
    ),
    (SioPacket(T.ACK, "/", ["bar", b"\x01\x02\x03\x04"], 15), [f'61-15["bar",{PH0}]', b"\x01\x02\x03\x04"]),
    (SioPacket(T.ACK, "/", [b"\x01"], 789), [f"61-789[{PH0}]", b"\x01"]),
    (SioPacket(T.ACK, "/admin", [b"<binary>"], 1), [f"61-/admin,1[{PH0}]", b"<binary>"]),
    (
        SioPacket(T.ACK, "/", [b"\x01\x02\x03", b"\x04\x05\x06"], 789),
        [f"62-789[{PH0},{PH1}]", b"\x01\x02\x03", b"\x04\x05\x06"],
    ),
    (
        SioPacket(T.EVENT, "/", ["nested", {"a": [b"A", {"b": b"B"}], "c": b"C"}, b"D"]),
        [
            '54-["nested",{"a":[{"_placeholder":true,"num":0},{"b":{"_placeholder":true,"num":1}}],'
            '"c":{"_placeholder":true,"num":2}},{"_placeholder":true,"num":3}]',
            b"A",
            b"B",
            b"C",
            b"D",
        ],
    ),
]


def _feed_all(parts: list[str | bytes], decoder: Decoder | None = None) -> SioPacket:
    decoder = decoder or Decoder()
    for part in parts[:-1]:
        assert decoder.feed(part) is None
        assert decoder.awaiting_attachments
    packet = decoder.feed(parts[-1])
    assert packet is not None
    assert not decoder.awaiting_attachments
    return packet


@pytest.mark.parametrize(("packet", "wire"), EXAMPLES)
def test_encode_examples(packet: SioPacket, wire: list[str | bytes]) -> None:
    assert encode(packet) == wire


@pytest.mark.parametrize(("packet", "wire"), EXAMPLES)
def test_decode_examples(packet: SioPacket, wire: list[str | bytes]) -> None:
    assert _feed_all(wire) == packet


@pytest.mark.parametrize(
    ("wire", "packet"),
    [
        ("0/custom", SioPacket(T.CONNECT, "/custom")),
        ("0/random", SioPacket(T.CONNECT, "/random")),
        ('0/custom,{"token":"abc"}', SioPacket(T.CONNECT, "/custom", {"token": "abc"})),
        ("1/custom", SioPacket(T.DISCONNECT, "/custom")),
        ('2/,["a"]', SioPacket(T.EVENT, "/", ["a"])),
        ('2007["a"]', SioPacket(T.EVENT, "/", ["a"], 7)),
        ('2["a",{"_placeholder":true,"num":0}]', SioPacket(T.EVENT, "/", ["a", {"_placeholder": True, "num": 0}])),
        ('50-["a",1]', SioPacket(T.EVENT, "/", ["a", 1])),
        ("60-5[]", SioPacket(T.ACK, "/", [], 5)),
        ('51-["a",{"_placeholder":1,"num":0}]', None),  # "_placeholder":1 is not a placeholder
        ("05", SioPacket(T.CONNECT, "/", None, 5)),
        ("0 {} ", SioPacket(T.CONNECT, "/", {})),  # JSON.parse allows surrounding whitespace
    ],
)
def test_decode_lenient_forms(wire: str, packet: SioPacket | None) -> None:
    """Forms the reference parser accepts although our encoder never produces them."""
    decoder = Decoder()
    result = decoder.feed(wire)
    if packet is None:  # pending: one attachment announced
        assert result is None
        done = decoder.feed(b"z")
        assert done == SioPacket(T.EVENT, "/", ["a", {"_placeholder": 1, "num": 0}])
    else:
        assert result == packet


def test_decoded_types_are_enum_members_and_binary_is_normalised() -> None:
    decoder = Decoder()
    assert decoder.feed(f'51-["a",{PH0}]') is None
    packet = decoder.feed(b"\x00")
    assert packet is not None
    assert packet.type is SioType.EVENT
    assert packet.data == ["a", b"\x00"]
    assert type(packet.data[1]) is bytes
    assert decoder.feed("3/x,1[]") == SioPacket(T.ACK, "/x", [], 1)


def test_decoder_is_reusable_and_accepts_bytes_like() -> None:
    decoder = Decoder()
    assert decoder.feed(f"62-9[{PH1},{PH0}]") is None
    assert decoder.feed(bytearray(b"first")) is None  # type: ignore[arg-type]
    assert decoder.feed(memoryview(b"second")) == SioPacket(T.ACK, "/", [b"second", b"first"], 9)  # type: ignore[arg-type]
    assert decoder.feed('2["again"]') == SioPacket(T.EVENT, "/", ["again"])
    assert decoder.feed(f'51-["x",{PH0},{PH0}]') is None
    assert decoder.feed(b"") == SioPacket(T.EVENT, "/", ["x", b"", b""])


BAD_TEXT = (
    [
        "",
        "abc",
        "9",
        "7[]",
        'x2["a"]',
        "2{}",
        '2abc["message-with-ack",1,"2",{"3":[false]}]',
        "2[]",
        "2",
        "2/admin,",
        '2/admin["a"]',
        "2null",
        '2"a"',
        "2[1",
        "2[true]",
        "2[null]",
        "2[1.5]",
        '2[["a"]]',
        '2["a"]x',
        "3[]",
        "3{}",
        "31",
        "31{}",
        '31"a"',
        "0[]",
        '0"x"',
        "0null",
        "1null",
        "3null",
        "1{}",
        "1[]",
        '1"x"',
        "4",
        "4[]",
        "4null",
        "4/random,",
        '5-["a"]',
        '5["a"]',
        '51["a"]',
        '5x-["a"]',
        "51",
        "5",
        "6",
        "61-[]",
        "61-{}",
        "2" + "9" * 17 + '["a"]',
        "2" + "1" * 5000 + '["a"]',
        f'2{MAX_ACK_ID + 1}["a"]',
        "2[" * 2000,
        '2["\ud800"]',  # a lone surrogate in the text itself
        '2["a\\ud800"]',  # an escaped lone surrogate
        "2NaN",
        '2["a",NaN]',
    ]
    + [f'2["{name}"]' for name in sorted(RESERVED_EVENTS)]
    + [f'52-["{name}",{PH0},{PH1}]' for name in sorted(RESERVED_EVENTS)]
)


@pytest.mark.parametrize("wire", BAD_TEXT)
def test_decode_rejects_bad_text(wire: str) -> None:
    decoder = Decoder()
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(wire)
    assert type(info.value) is RemoteProtocolError
    assert info.value.reason
    assert len(info.value.reason) < 60
    assert not decoder.awaiting_attachments


@pytest.mark.parametrize(
    "wire",
    ["511-[]", "5" + "9" * 5000 + '-["a"]', '599999999999-["a"]', "611-1[]"],
)
def test_decode_too_many_attachments(wire: str) -> None:
    with pytest.raises(PayloadTooBig):
        Decoder().feed(wire)


def test_decode_attachment_limit_is_configurable() -> None:
    assert Decoder(max_attachments=2).feed(f'52-["a",{PH0},{PH1}]') is None
    with pytest.raises(PayloadTooBig):
        Decoder(max_attachments=2).feed('53-["a"]')
    assert Decoder(max_attachments=0).feed('50-["a"]') == SioPacket(T.EVENT, "/", ["a"])


@pytest.mark.parametrize(
    "wire",
    [
        '51-["a",{"_placeholder":true,"num":1}]',
        '51-["a",{"_placeholder":true,"num":-1}]',
        '51-["a",{"_placeholder":true,"num":"0"}]',
        '51-["a",{"_placeholder":true,"num":true}]',
        '51-["a",{"_placeholder":true,"num":0.5}]',
        '51-["a",{"_placeholder":true}]',
        '51-["a",[[{"x":{"_placeholder":true,"num":3}}]]]',
        '61-1[{"_placeholder":true,"num":null}]',
    ],
)
def test_decode_rejects_bad_placeholders(wire: str) -> None:
    decoder = Decoder()
    assert decoder.feed(wire) is None
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\x01")
    assert not decoder.awaiting_attachments


def test_decode_rejects_placeholder_without_attachments() -> None:
    with pytest.raises(RemoteProtocolError):
        Decoder().feed(f'50-["a",{PH0}]')


def test_decode_rejects_binary_without_pending_packet() -> None:
    with pytest.raises(RemoteProtocolError):
        Decoder().feed(b"\x01\x02")
    decoder = Decoder()
    assert decoder.feed('2["a"]') is not None
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")


def test_decode_rejects_text_while_attachments_pending() -> None:
    decoder = Decoder()
    assert decoder.feed(f'52-["a",{PH0},{PH1}]') is None
    assert decoder.feed(b"1") is None
    with pytest.raises(RemoteProtocolError):
        decoder.feed('2["b"]')
    assert not decoder.awaiting_attachments


def test_decode_accepts_the_shared_depth_limit_and_refuses_deeper() -> None:
    """One nesting limit (``_json.MAX_DEPTH``) for decoders and encoders: what is accepted
    can be published and encoded by every transport; deeper is refused, not acknowledged."""
    depth = _json.MAX_DEPTH - 2  # the argument array and the placeholder object add one each
    wire = '51-["a",' + "[" * depth + PH0 + "]" * depth + "]"
    decoder = Decoder()
    assert decoder.feed(wire) is None
    packet = decoder.feed(b"!")
    assert packet is not None
    node: Any = packet.data[1]
    for _ in range(depth - 1):
        node = node[0]
    assert node == [b"!"]
    for deeper in (depth + 2, 1000):
        with pytest.raises(RemoteProtocolError):
            Decoder().feed('42["a",' + "[" * deeper + "]" * deeper + "]")


@pytest.mark.parametrize(
    "packet",
    [
        SioPacket(9),  # type: ignore[arg-type]
        SioPacket(T.CONNECT, "admin"),
        SioPacket(T.CONNECT, ""),
        SioPacket(T.CONNECT, "/a,b"),
        SioPacket(T.CONNECT, "/", []),
        SioPacket(T.CONNECT, "/", "token"),
        SioPacket(T.CONNECT, "/", {"x": b"\x01"}),
        SioPacket(T.CONNECT, "/", {1: "int key"}),
        SioPacket(T.DISCONNECT, "/", {}),
        SioPacket(T.CONNECT_ERROR),
        SioPacket(T.CONNECT_ERROR, "/", ["x"]),
        SioPacket(T.EVENT),
        SioPacket(T.EVENT, "/", []),
        SioPacket(T.EVENT, "/", {"a": 1}),
        SioPacket(T.EVENT, "/", [True]),
        SioPacket(T.EVENT, "/", [None]),
        SioPacket(T.EVENT, "/", [b"name"]),
        SioPacket(T.EVENT, "/", ["connect"]),
        SioPacket(T.EVENT, "/", ["a", object()]),
        SioPacket(T.EVENT, "/", ["a", object(), b"x"]),
        SioPacket(T.EVENT, "/", ["a", 2**64]),
        SioPacket(T.EVENT, "/", ["a"], -1),
        SioPacket(T.EVENT, "/", ["a"], True),
        SioPacket(T.EVENT, "/", ["a"], MAX_ACK_ID + 1),
        SioPacket(T.EVENT, "/", ["a"], "1"),  # type: ignore[arg-type]
        SioPacket(T.ACK, "/", []),
        SioPacket(T.ACK, "/", {}, 1),
        SioPacket(T.BINARY_ACK, "/", [b"x"]),
    ],
)
def test_encode_rejects_invalid_packets(packet: SioPacket) -> None:
    with pytest.raises(LocalProtocolError):
        encode(packet)


def test_encode_rejects_too_deep_binary_payload() -> None:
    data: Any = b"x"
    for _ in range(1000):
        data = [data]
    with pytest.raises(LocalProtocolError):
        encode(SioPacket(T.EVENT, "/", ["a", data]))


def test_encode_accepts_binary_types_tuples_and_bytes_like() -> None:
    assert encode(SioPacket(T.BINARY_EVENT, "/", ("a", 1))) == ['2["a",1]']
    assert encode(SioPacket(T.BINARY_ACK, "/", [bytearray(b"\x01")], 789)) == [f"61-789[{PH0}]", b"\x01"]
    parts = encode(SioPacket(T.EVENT, "/", ["a", memoryview(b"mv")]))
    assert parts == [f'51-["a",{PH0}]', b"mv"]
    assert type(parts[1]) is bytes
    assert encode(SioPacket(T.EVENT, "/", ["a"], MAX_ACK_ID)) == [f'2{MAX_ACK_ID}["a"]']


# --- event_packet_text -----------------------------------------------------------------


def test_event_packet_text() -> None:
    assert event_packet_text("/", "hey", ["Jude"]) == '42["hey","Jude"]'
    assert event_packet_text("/", "auth", [{}]) == '42["auth",{}]'
    assert event_packet_text("/custom", "auth", ({"token": "abc"},)) == '42/custom,["auth",{"token":"abc"}]'
    assert event_packet_text("/", "ping", []) == '42["ping"]'
    assert event_packet_text("/", "bin", ["a", {"b": [b"\x01"]}]) is None
    assert event_packet_text("/", "bin", [bytearray(b"\x01")]) is None


@pytest.mark.parametrize(
    ("namespace", "event", "args"),
    [
        ("admin", "a", []),
        ("/a,b", "a", []),
        ("/", "connect", []),
        ("/", "disconnecting", []),
        ("/", 1, []),
        ("/", "a", [object()]),
        ("/", "a", [2**64]),
    ],
)
def test_event_packet_text_rejects(namespace: str, event: str, args: list[Any]) -> None:
    with pytest.raises(LocalProtocolError):
        event_packet_text(namespace, event, args)


# --- properties -----------------------------------------------------------------------

_keys = st.text(max_size=8).filter(lambda k: k != "_placeholder")
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
_with_bytes = st.recursive(
    st.one_of(_scalars, st.binary(max_size=8)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
_namespaces = st.one_of(st.just("/"), st.text(max_size=8).filter(lambda s: "," not in s).map(lambda s: "/" + s))
_ack_ids = st.one_of(st.none(), st.integers(min_value=0, max_value=MAX_ACK_ID))
_event_names = st.one_of(
    st.text(max_size=10).filter(lambda s: s not in RESERVED_EVENTS),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
_packets = st.one_of(
    st.builds(
        SioPacket,
        st.just(T.CONNECT),
        _namespaces,
        st.one_of(st.none(), st.dictionaries(_keys, _json_values, max_size=4)),
        _ack_ids,
    ),
    st.builds(SioPacket, st.just(T.DISCONNECT), _namespaces, st.none(), _ack_ids),
    st.builds(
        SioPacket,
        st.just(T.CONNECT_ERROR),
        _namespaces,
        st.one_of(st.text(max_size=10), st.dictionaries(_keys, _json_values, max_size=4)),
        _ack_ids,
    ),
    st.builds(
        SioPacket,
        st.sampled_from([T.EVENT, T.BINARY_EVENT]),
        _namespaces,
        st.builds(lambda name, rest: [name, *rest], _event_names, st.lists(_with_bytes, max_size=4)),
        _ack_ids,
    ),
    st.builds(
        SioPacket,
        st.sampled_from([T.ACK, T.BINARY_ACK]),
        _namespaces,
        st.lists(_with_bytes, max_size=4),
        st.integers(min_value=0, max_value=MAX_ACK_ID),
    ),
)


def _count_bytes(value: Any) -> int:
    if isinstance(value, bytes):
        return 1
    if isinstance(value, list):
        return sum(_count_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_count_bytes(v) for v in value.values())
    return 0


@settings(max_examples=300, deadline=None)
@given(_packets)
def test_round_trip(packet: SioPacket) -> None:
    parts = encode(packet)
    assert isinstance(parts[0], str)
    assert all(isinstance(p, bytes) for p in parts[1:])
    assert len(parts) - 1 == _count_bytes(packet.data)
    # the attachment limit has its own tests; here any generated count must round-trip
    decoded = _feed_all(parts, Decoder(max_attachments=len(parts)))
    plain = {T.BINARY_EVENT: T.EVENT, T.BINARY_ACK: T.ACK}.get(packet.type, packet.type)
    assert decoded == SioPacket(plain, packet.namespace, packet.data, packet.id)
    if plain is T.EVENT and len(parts) == 1 and packet.id is None and isinstance(packet.data[0], str):
        assert event_packet_text(packet.namespace, packet.data[0], packet.data[1:]) == "4" + parts[0]


_headers = st.text(alphabet='0123456789-/,[]{}":_placeholdernumtrue ', max_size=40)
_surrogates = st.characters(exclude_categories=(), min_codepoint=0xD7F0, max_codepoint=0xE010)
_wire_texts = st.one_of(
    st.text(),
    st.text(st.one_of(_surrogates, st.sampled_from('2["a,/]'))),
    _headers,
    st.builds(lambda head, body: head + body, _headers, _json_values.map(repr)),
    st.builds(
        lambda t, head, body: t + head + body,
        st.sampled_from(list("0123456")),
        _headers,
        st.sampled_from(["", "[]", '["a"]', "{}", f'["a",{PH0}]', f"[{PH1}]", '"s"', "null"]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_wire_texts, st.binary(max_size=8)), min_size=1, max_size=6))
def test_decoder_never_raises_anything_else(inputs: list[str | bytes]) -> None:
    decoder = Decoder(max_attachments=3)
    for item in inputs:
        try:
            result = decoder.feed(item)
        except RemoteProtocolError:
            continue
        assert result is None or isinstance(result, SioPacket)
        if result is not None:
            assert result.type in (T.CONNECT, T.DISCONNECT, T.EVENT, T.ACK, T.CONNECT_ERROR)
            assert result.namespace.startswith("/")


def test_placeholders_are_bounded_in_count_and_in_what_they_expand_to() -> None:
    """One attachment named by thousands of placeholders would become thousands of copies."""
    many = ",".join([PH0] * 3000)
    decoder = Decoder(max_attachments=10, max_expanded_bytes=1_000_000)
    assert decoder.feed(f'51-["publish",[{many}]]') is None
    with pytest.raises(PayloadTooBig):
        decoder.feed(b"x" * 100_000)
    ten = ",".join([PH0] * 10)
    small = Decoder(max_attachments=10, max_expanded_bytes=250_000)
    assert small.feed(f'51-["a",[{ten}]]') is None
    with pytest.raises(PayloadTooBig):
        small.feed(b"x" * 100_000)  # ten copies of 100 KB: past 250 KB
    assert small.feed(f'51-["a",[{PH0},{PH0}]]') is None
    packet = small.feed(b"x" * 100_000)
    assert packet is not None and packet.data[1] == [b"x" * 100_000] * 2  # within both bounds
