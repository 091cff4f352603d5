"""The roomcast.v1 JSON WebSocket protocol: decoding every message, every error, the encoders."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol import wsjson
from roomcast.protocol.wsjson import (
    BAD_REQUEST,
    ERROR_CODES,
    MAX_ID,
    UNKNOWN_TYPE,
    ClientMessage,
    Emit,
    Ping,
    Publish,
    Refresh,
    Subscribe,
    Unsubscribe,
    WsJsonError,
    ack_message,
    decode,
    error_message,
    event_message,
    publication_data,
    snapshot_message,
)


def test_constants() -> None:
    assert wsjson.SUBPROTOCOL == "roomcast.v1"
    assert ERROR_CODES == (
        "bad_request",
        "unknown_type",
        "unauthorized",
        "forbidden",
        "not_found",
        "limit",
        "internal",
    )
    named = (
        wsjson.BAD_REQUEST,
        wsjson.UNKNOWN_TYPE,
        wsjson.UNAUTHORIZED,
        wsjson.FORBIDDEN,
        wsjson.NOT_FOUND,
        wsjson.LIMIT,
        wsjson.INTERNAL,
    )
    assert named == ERROR_CODES
    assert issubclass(WsJsonError, RemoteProtocolError)


# -- decoding good messages -----------------------------------------------------------------
GOOD = [
    ('{"type":"subscribe","id":1,"room":"a"}', Subscribe(1, "a")),
    ('{"type":"subscribe","id":1,"room":"a","epoch":"x","offset":5}', Subscribe(1, "a", "x", 5)),
    ('{"type":"subscribe","id":"r1","room":"a","epoch":"","offset":0}', Subscribe("r1", "a", "", 0)),
    ('{"type":"subscribe","id":1,"room":"a","epoch":null,"offset":null}', Subscribe(1, "a")),
    ('{"type":"unsubscribe","id":2,"room":"a"}', Unsubscribe(2, "a")),
    ('{"type":"emit","id":3,"event":"name","data":{"k":[1,2]}}', Emit(3, "name", {"k": [1, 2]})),
    ('{"type":"emit","event":"name","data":1}', Emit(None, "name", 1)),
    ('{"type":"emit","id":null,"event":"name"}', Emit(None, "name", None)),
    ('{"type":"emit","id":3,"event":"name","data":null}', Emit(3, "name", None)),
    ('{"type":"publish","id":4,"room":"a","event":"e","data":[1,"x"]}', Publish(4, "a", "e", [1, "x"])),
    ('{"type":"publish","id":4,"room":"a","event":"e"}', Publish(4, "a", "e", None)),
    ('{"type":"ping","id":5}', Ping(5)),
    ('{"type":"refresh","id":6,"token":"eyJ.x.y"}', Refresh(6, "eyJ.x.y")),
    # ids: ints across the JavaScript-safe range, strings up to 64 characters
    ('{"type":"ping","id":0}', Ping(0)),
    ('{"type":"ping","id":-7}', Ping(-7)),
    (f'{{"type":"ping","id":{MAX_ID}}}', Ping(MAX_ID)),
    (f'{{"type":"ping","id":{-MAX_ID}}}', Ping(-MAX_ID)),
    ('{"type":"ping","id":""}', Ping("")),
    ('{"type":"ping","id":"' + "é" * 64 + '"}', Ping("é" * 64)),
    # unknown fields are ignored; key order does not matter; names at the length limit
    ('{"room":"a","extra":{"x":1},"id":1,"type":"subscribe","v":2}', Subscribe(1, "a")),
    ('{"type":"emit","event":"' + "e" * 256 + '"}', Emit(None, "e" * 256)),
    ('{"type":"subscribe","id":1,"room":"' + "r" * 256 + '"}', Subscribe(1, "r" * 256)),
    ('{"type":"subscribe","id":1,"room":"a","epoch":"' + "x" * 256 + '","offset":9}', Subscribe(1, "a", "x" * 256, 9)),
    (
        '{"type":"subscribe","id":1,"room":"a","epoch":"x","offset":18446744073709551615}',
        Subscribe(1, "a", "x", 2**64 - 1),
    ),
    (' {"type":"ping","id":1} \n', Ping(1)),
    ('{"type":"emit","event":"ü€😀","data":"😀"}', Emit(None, "ü€😀", "😀")),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_decode_text(text: str, expected: ClientMessage) -> None:
    message = decode(text)
    assert message == expected
    assert type(message) is type(expected)
    assert type(message.id) is type(expected.id)


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_decode_utf8_bytes(text: str, expected: ClientMessage) -> None:
    assert decode(text.encode()) == expected
    assert decode(bytearray(text.encode())) == expected  # type: ignore[arg-type]
    assert decode(memoryview(text.encode())) == expected  # type: ignore[arg-type]


def test_messages_are_frozen_and_slotted() -> None:
    message = decode('{"type":"subscribe","id":1,"room":"a"}')
    assert isinstance(message, Subscribe)
    with pytest.raises(AttributeError):
        message.room = "b"  # type: ignore[misc]
    assert not hasattr(message, "__dict__")


# -- decoding bad messages ------------------------------------------------------------------
BR, UT = BAD_REQUEST, UNKNOWN_TYPE
BAD: list[tuple[str | bytes, str, int | str | None]] = [
    # not a JSON object
    (b"\xff\xfe", BR, None),
    (b'{"type":"ping","id":1,"x":"\xc3"}', BR, None),
    (b"\x00\x01\x02", BR, None),
    ("", BR, None),
    ("not json", BR, None),
    ('{"type":"ping","id":1', BR, None),
    ('{"type":"ping","id":1}{}', BR, None),
    ("[]", BR, None),
    ('[{"type":"ping","id":1}]', BR, None),
    ("1", BR, None),
    ("null", BR, None),
    ('"ping"', BR, None),
    ('{"type":"ping","id":1,"x":"\ud800"}', BR, None),  # lone surrogate in a str
    ("[" * 2000, BR, None),
    # the id itself is bad: it cannot be echoed
    ('{"type":"ping","id":true}', BR, None),
    ('{"type":"ping","id":false}', BR, None),
    ('{"type":"ping","id":1.0}', BR, None),
    ('{"type":"ping","id":1.5}', BR, None),
    (f'{{"type":"ping","id":{MAX_ID + 1}}}', BR, None),
    (f'{{"type":"ping","id":{-MAX_ID - 1}}}', BR, None),
    ('{"type":"ping","id":"' + "x" * 65 + '"}', BR, None),
    ('{"type":"ping","id":[1]}', BR, None),
    ('{"type":"ping","id":{}}', BR, None),
    ('{"type":"nope","id":true}', BR, None),  # a bad id is reported before the type
    # type
    ("{}", BR, None),
    ('{"id":1}', BR, 1),
    ('{"type":null,"id":1}', BR, 1),
    ('{"type":1,"id":"a"}', BR, "a"),
    ('{"type":["ping"],"id":1}', BR, 1),
    ('{"type":"nope","id":7}', UT, 7),
    ('{"type":"nope"}', UT, None),
    ('{"type":"","id":"q"}', UT, "q"),
    ('{"type":"Ping","id":1}', UT, 1),
    ('{"type":"event","id":1}', UT, 1),  # a server message, not a client one
    ('{"type":"ack","id":1}', UT, 1),
    # required ids
    ('{"type":"subscribe","room":"a"}', BR, None),
    ('{"type":"subscribe","id":null,"room":"a"}', BR, None),
    ('{"type":"unsubscribe","room":"a"}', BR, None),
    ('{"type":"publish","room":"a","event":"e"}', BR, None),
    ('{"type":"ping"}', BR, None),
    ('{"type":"refresh","token":"t"}', BR, None),
    # subscribe
    ('{"type":"subscribe","id":1}', BR, 1),
    ('{"type":"subscribe","id":1,"room":""}', BR, 1),
    ('{"type":"subscribe","id":1,"room":null}', BR, 1),
    ('{"type":"subscribe","id":1,"room":5}', BR, 1),
    ('{"type":"subscribe","id":1,"room":["a"]}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"' + "r" * 257 + '"}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"a","epoch":"x"}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"a","offset":5}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"a","epoch":"x","offset":null}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"a","epoch":"x","offset":-1}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"a","epoch":"x","offset":true}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"a","epoch":"x","offset":1.0}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"a","epoch":"x","offset":"5"}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"a","epoch":"x","offset":18446744073709551616}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"a","epoch":5,"offset":5}', BR, 1),
    ('{"type":"subscribe","id":1,"room":"a","epoch":"' + "x" * 257 + '","offset":5}', BR, 1),
    # unsubscribe
    ('{"type":"unsubscribe","id":2}', BR, 2),
    ('{"type":"unsubscribe","id":2,"room":""}', BR, 2),
    # emit
    ('{"type":"emit","id":3}', BR, 3),
    ('{"type":"emit"}', BR, None),
    ('{"type":"emit","id":3,"event":""}', BR, 3),
    ('{"type":"emit","id":3,"event":7}', BR, 3),
    ('{"type":"emit","id":"k","event":"' + "e" * 257 + '"}', BR, "k"),
    # publish
    ('{"type":"publish","id":4,"event":"e"}', BR, 4),
    ('{"type":"publish","id":4,"room":"a"}', BR, 4),
    ('{"type":"publish","id":4,"room":"","event":"e"}', BR, 4),
    ('{"type":"publish","id":4,"room":"a","event":""}', BR, 4),
    # refresh
    ('{"type":"refresh","id":6}', BR, 6),
    ('{"type":"refresh","id":6,"token":""}', BR, 6),
    ('{"type":"refresh","id":6,"token":null}', BR, 6),
    ('{"type":"refresh","id":6,"token":123}', BR, 6),
]


@pytest.mark.parametrize(("message", "code", "msg_id"), BAD)
def test_decode_errors(message: str | bytes, code: str, msg_id: int | str | None) -> None:
    with pytest.raises(WsJsonError) as info:
        decode(message)
    error = info.value
    assert type(error) is WsJsonError
    assert (error.code, error.id) == (code, msg_id)
    assert type(error.id) is type(msg_id)
    assert error.reason and len(error.reason) <= 60
    assert str(error) == error.reason


@pytest.mark.parametrize(
    "message",
    [
        '{"type":"SECRET-TYPE","id":1}',
        '{"type":"subscribe","id":1,"room":"a","epoch":"SECRET","offset":-1}',
        '{"type":"refresh","id":6,"token":["SECRET"]}',
        '{"type":"emit","id":3,"event":"SECRET' + "x" * 300 + '"}',
        '{"type":"ping","id":"SECRET' + "x" * 64 + '"}',
        "SECRET not json",
    ],
)
def test_error_reasons_never_echo_the_payload(message: str) -> None:
    with pytest.raises(WsJsonError) as info:
        decode(message)
    assert "SECRET" not in str(info.value) and "SECRET" not in info.value.reason


def test_error_can_be_answered_with_error_message() -> None:
    with pytest.raises(WsJsonError) as info:
        decode('{"type":"subscribe","id":9,"room":""}')
    error = info.value
    assert error_message(error.code, error.reason, error.id) == (
        '{"type":"error","id":9,"code":"bad_request","message":"invalid room"}'
    )


# -- fuzz ---------------------------------------------------------------------------------
_text = st.text(st.characters(codec="utf-8"), max_size=10)
_int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson reads and writes as int
_json_values = st.recursive(
    st.none() | st.booleans() | _int64 | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_field_values = st.one_of(
    _json_values,
    st.integers(),
    st.floats(),
    st.text(max_size=3),
    st.integers(min_value=-2, max_value=3),
    st.integers(min_value=2**53 - 2, max_value=2**53 + 1),
    st.text(min_size=250, max_size=260, alphabet="ab"),
)
_typed_dicts = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["subscribe", "unsubscribe", "emit", "publish", "ping", "refresh", "pong", ""])
        | _field_values,
        "id": _field_values,
        "room": _field_values,
        "event": _field_values,
        "data": _field_values,
        "epoch": _field_values,
        "offset": _field_values,
        "token": _field_values,
        "extra": _field_values,
    },
)


def _valid_id(value: object) -> bool:
    if type(value) is int:
        return -MAX_ID <= value <= MAX_ID
    return type(value) is str and len(value) <= 64


def _name_ok(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= 256


def _check(message: str | bytes) -> None:
    try:
        decoded = decode(message)
    except WsJsonError as exc:
        assert type(exc) is WsJsonError
        assert exc.code in (BAD_REQUEST, UNKNOWN_TYPE)
        assert exc.id is None or _valid_id(exc.id)
        assert isinstance(exc.reason, str) and exc.reason
    else:
        assert isinstance(decoded, (Subscribe, Unsubscribe, Emit, Publish, Ping, Refresh))
        assert _valid_id(decoded.id) or (isinstance(decoded, Emit) and decoded.id is None)
        if isinstance(decoded, (Subscribe, Unsubscribe, Publish)):
            assert _name_ok(decoded.room)
        if isinstance(decoded, (Emit, Publish)):
            assert _name_ok(decoded.event)
        if isinstance(decoded, Subscribe):
            assert (decoded.epoch is None) == (decoded.offset is None)
            if decoded.offset is not None:
                assert type(decoded.offset) is int and decoded.offset >= 0
                assert type(decoded.epoch) is str
        if isinstance(decoded, Refresh):
            assert type(decoded.token) is str and decoded.token


@settings(max_examples=500, deadline=None)
@given(_typed_dicts)
def test_decode_structured_fuzz(obj: dict[str, Any]) -> None:
    text = json.dumps(obj, ensure_ascii=False)
    _check(text)
    _check(text.encode())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary(), _json_values.map(json.dumps)))
def test_decode_never_raises_anything_else(message: str | bytes) -> None:
    _check(message)


_surrogates = st.characters(exclude_categories=(), min_codepoint=0xD7F0, max_codepoint=0xE010)


@settings(max_examples=200, deadline=None)
@given(st.text(st.one_of(_surrogates, st.sampled_from('{}"type:ping,id1')), max_size=30))
def test_decode_survives_surrogates(message: str) -> None:
    _check(message)


_chars = st.characters(codec="utf-8")
_ids = st.integers(min_value=-MAX_ID, max_value=MAX_ID) | st.text(_chars, max_size=64)
_names = st.text(_chars, min_size=1, max_size=256)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.builds(Subscribe, _ids, _names),
        st.builds(
            Subscribe,
            _ids,
            _names,
            st.text(_chars, max_size=256),
            st.integers(min_value=0, max_value=2**64 - 1),
        ),
        st.builds(Unsubscribe, _ids, _names),
        st.builds(Emit, st.none() | _ids, _names, _json_values),
        st.builds(Publish, _ids, _names, _names, _json_values),
        st.builds(Ping, _ids),
        st.builds(Refresh, _ids, _names),
    )
)
def test_valid_messages_decode_to_themselves(expected: ClientMessage) -> None:
    fields = {name: getattr(expected, name) for name in type(expected).__slots__}
    kind = type(expected).__name__.lower()
    text = json.dumps({"type": kind, **{k: v for k, v in fields.items() if v is not None}})
    assert decode(text) == expected


# -- encoders -------------------------------------------------------------------------------
def test_event_message() -> None:
    assert event_message("e", {"x": 1}, room="a", offset=7) == (
        '{"type":"event","room":"a","event":"e","data":{"x":1},"offset":7}'
    )
    assert event_message("e", [1, 2]) == '{"type":"event","event":"e","data":[1,2]}'
    assert event_message("e", None, room="a") == '{"type":"event","room":"a","event":"e","data":null}'
    assert event_message("é", "😀") == '{"type":"event","event":"é","data":"😀"}'


def test_snapshot_message() -> None:
    assert snapshot_message(1, room="a", epoch="x", offset=5, recovered=False, snapshot={"n": 2}) == (
        '{"type":"snapshot","id":1,"room":"a","epoch":"x","offset":5,"recovered":false,"snapshot":{"n":2}}'
    )
    assert snapshot_message("s", room="a", epoch="x", offset=0, recovered=False) == (
        '{"type":"snapshot","id":"s","room":"a","epoch":"x","offset":0,"recovered":false,"snapshot":null}'
    )
    recovered = snapshot_message(1, room="a", epoch="x", offset=5, recovered=True, snapshot={"n": 2})
    assert recovered == '{"type":"snapshot","id":1,"room":"a","epoch":"x","offset":5,"recovered":true}'


def test_ack_message() -> None:
    assert ack_message(3, {"ok": True}) == '{"type":"ack","id":3,"data":{"ok":true}}'
    assert ack_message("r", 0) == '{"type":"ack","id":"r","data":0}'
    assert ack_message(5) == '{"type":"ack","id":5,"data":null}'


def test_error_message() -> None:
    assert error_message("forbidden", "not allowed", 3) == (
        '{"type":"error","id":3,"code":"forbidden","message":"not allowed"}'
    )
    assert error_message("bad_request", "message is not JSON") == (
        '{"type":"error","code":"bad_request","message":"message is not JSON"}'
    )
    for code in ERROR_CODES:
        assert json.loads(error_message(code, "m", "i"))["code"] == code


@pytest.mark.parametrize(
    "call",
    [
        lambda: event_message("e", b"raw"),
        lambda: event_message("e", {1, 2}),
        lambda: event_message("e", "\ud800"),
        lambda: event_message("e", 2**64),
        lambda: ack_message(1, b"raw"),
        lambda: ack_message(True),
        lambda: ack_message(None),  # type: ignore[arg-type]
        lambda: ack_message(1.0),  # type: ignore[arg-type]
        lambda: snapshot_message(1, room="a", epoch="x", offset=-1, recovered=False),
        lambda: snapshot_message(1, room="a", epoch="x", offset=True, recovered=False),
        lambda: snapshot_message(None, room="a", epoch="x", offset=1, recovered=False),  # type: ignore[arg-type]
        lambda: snapshot_message(1, room="a", epoch="x", offset=1, recovered=False, snapshot=object()),
        lambda: error_message("nope", "m", 1),
        lambda: error_message("Forbidden", "m"),
        lambda: error_message("forbidden", None),  # type: ignore[arg-type]
        lambda: error_message("forbidden", "m", [1]),  # type: ignore[arg-type]
    ],
)
def test_encoders_reject_what_they_cannot_send(call: Any) -> None:
    with pytest.raises(LocalProtocolError):
        call()


@settings(max_examples=200, deadline=None)
@given(_names, _json_values, st.none() | _names, st.none() | st.integers(min_value=0, max_value=2**63))
def test_event_message_is_json_with_the_documented_keys(
    event: str, data: Any, room: str | None, offset: int | None
) -> None:
    decoded = json.loads(event_message(event, data, room=room, offset=offset))
    expected: dict[str, Any] = {"type": "event", "event": event, "data": data}
    if room is not None:
        expected["room"] = room
    if offset is not None:
        expected["offset"] = offset
    assert decoded == expected


# -- the data rule --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "data"),
    [
        ((), None),
        ((None,), None),
        ((1,), 1),
        (({"a": 1},), {"a": 1}),
        (([1, 2],), [1, 2]),
        ((1, 2), [1, 2]),
        ((1, None, "x"), [1, None, "x"]),
    ],
)
def test_publication_data(args: tuple[Any, ...], data: Any) -> None:
    result = publication_data(args)
    assert result == data
    assert type(result) is type(data)
