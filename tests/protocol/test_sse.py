"""SSE framing and the multi-room cursor: exact bytes, a spec-faithful client parser, properties."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol.sse import (
    CONTENT_TYPE,
    MAX_CURSOR_LENGTH,
    comment,
    decode_cursor,
    encode_cursor,
    event_frame,
    id_line,
    retry_frame,
)
from roomcast.types import StreamPosition as P


# -- a client-side parser written from WHATWG HTML §9.2.6, to check what a browser would see --
@dataclass
class Seen:
    type: str
    data: str
    last_event_id: str


@dataclass
class Parsed:
    events: list[Seen]
    retry: int | None
    last_event_id: str


def parse(body: bytes) -> Parsed:
    text = body.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)
    events: list[Seen] = []
    data, event_type, last_id, retry = "", "", "", None
    for line in lines[:-1]:  # whatever follows the last line break is an unfinished line
        if line == "":
            if data == "":
                event_type = ""
                continue
            if data.endswith("\n"):
                data = data[:-1]
            events.append(Seen(event_type or "message", data, last_id))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id":
            if "\x00" not in value:
                last_id = value
        elif name == "retry" and re.fullmatch(r"[0-9]+", value):
            retry = int(value)
    return Parsed(events, retry, last_id)


# -- framing: exact bytes ---------------------------------------------------------------
FRAMES = [
    (("hello",), {}, b"data: hello\n\n"),
    (("",), {}, b"data: \n\n"),
    (('{"a":1}',), {"event": "update"}, b'event: update\ndata: {"a":1}\n\n'),
    (("1",), {"event": "e", "id": "c1"}, b"id: c1\nevent: e\ndata: 1\n\n"),
    (("x",), {"id": ""}, b"id: \ndata: x\n\n"),
    (("a\nb",), {}, b"data: a\ndata: b\n\n"),
    (("a\r\nb",), {}, b"data: a\ndata: b\n\n"),
    (("a\rb",), {}, b"data: a\ndata: b\n\n"),
    (("a\n\r\n\rb",), {}, b"data: a\ndata: \ndata: \ndata: b\n\n"),
    (("a\r\r\nb",), {}, b"data: a\ndata: \ndata: b\n\n"),
    (("a\n",), {}, b"data: a\ndata: \n\n"),
    (("\n",), {}, b"data: \ndata: \n\n"),
    ((" lead",), {}, b"data:  lead\n\n"),
    (("é€😀",), {"event": "ünï"}, "event: ünï\ndata: é€😀\n\n".encode()),
    (("a\u2028b\x00c\x0bd",), {}, "data: a\u2028b\x00c\x0bd\n\n".encode()),
    (("x",), {"event": "a:b c"}, b"event: a:b c\ndata: x\n\n"),
]


@pytest.mark.parametrize(("args", "kwargs", "wire"), FRAMES)
def test_event_frame_exact_bytes(args: tuple[str], kwargs: dict[str, str], wire: bytes) -> None:
    assert event_frame(*args, **kwargs) == wire


def test_event_frame_is_what_a_client_parses() -> None:
    parsed = parse(event_frame("line1\r\nline2", event="e", id="c9"))
    assert parsed.events == [Seen("e", "line1\nline2", "c9")]


def test_id_line_prefixes_a_shared_body() -> None:
    body = event_frame('{"n":1}', event="update")
    assert id_line("abc") == b"id: abc\n"
    assert id_line("abc") + body == event_frame('{"n":1}', event="update", id="abc")
    assert id_line("é") == "id: é\n".encode()


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "\n", "x\r"])
def test_event_and_id_reject_line_breaks(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        event_frame("x", event=bad)
    with pytest.raises(LocalProtocolError):
        event_frame("x", id=bad)
    with pytest.raises(LocalProtocolError):
        id_line(bad)
    with pytest.raises(LocalProtocolError):
        comment(bad)


def test_id_rejects_nul_but_event_allows_it() -> None:
    with pytest.raises(LocalProtocolError):
        event_frame("x", id="a\x00b")
    with pytest.raises(LocalProtocolError):
        id_line("\x00")
    assert event_frame("x", event="a\x00b") == b"event: a\x00b\ndata: x\n\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda: event_frame("\ud800"),
        lambda: event_frame("x", event="\udfff"),
        lambda: event_frame("x", id="\ud800"),
        lambda: id_line("\ud800"),
        lambda: comment("\ud800"),
        lambda: event_frame(b"x"),  # type: ignore[arg-type]
        lambda: event_frame("x", event=1),  # type: ignore[arg-type]
        lambda: id_line(None),  # type: ignore[arg-type]
    ],
)
def test_framing_rejects_what_is_not_text(call: object) -> None:
    with pytest.raises(LocalProtocolError):
        call()  # type: ignore[operator]


def test_comment() -> None:
    assert comment("ping") == b": ping\n\n"
    assert comment() == b":\n\n"
    assert comment("a: b") == b": a: b\n\n"
    assert parse(comment("ping") + comment()).events == []


def test_retry_frame() -> None:
    assert retry_frame(2000) == b"retry: 2000\n\n"
    assert retry_frame(0) == b"retry: 0\n\n"
    parsed = parse(retry_frame(1500))
    assert parsed.retry == 1500 and parsed.events == []


@pytest.mark.parametrize("bad", [-1, True, False, 1.5, "100", None])
def test_retry_frame_rejects_non_ints(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        retry_frame(bad)  # type: ignore[arg-type]


def test_content_type() -> None:
    assert CONTENT_TYPE == "text/event-stream"


_text = st.text(st.characters(codec="utf-8"))
_field = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
_id = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"))


@settings(max_examples=300, deadline=None)
@given(_text, st.none() | _field, st.none() | _id)
def test_event_frame_round_trips_through_a_client(data: str, event: str | None, id: str | None) -> None:
    frame = event_frame(data, event=event, id=id)
    expected_data = data.replace("\r\n", "\n").replace("\r", "\n")
    expected_type = event or "message"  # an empty event type means the default
    assert parse(frame).events == [Seen(expected_type, expected_data, id or "")]
    if id is not None:
        assert id_line(id) + event_frame(data, event=event) == frame


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_text, _field), min_size=1, max_size=5))
def test_consecutive_frames_stay_apart(items: list[tuple[str, str]]) -> None:
    stream = b"".join(comment("ping") + event_frame(data, event=event) for data, event in items)
    events = parse(stream).events
    assert [(e.type, e.data) for e in events] == [
        (event or "message", data.replace("\r\n", "\n").replace("\r", "\n")) for data, event in items
    ]


# -- the cursor ---------------------------------------------------------------------------
def test_encode_cursor_exact() -> None:
    assert encode_cursor({"a": P("x", 5)}) == "eyJhIjpbIngiLDVdfQ"
    assert encode_cursor({}) == "e30"
    both = "eyJhIjpbImUxIiwzXSwiYiI6WyJlMiIsMF19"  # {"a":["e1",3],"b":["e2",0]}
    assert encode_cursor({"b": P("e2", 0), "a": P("e1", 3)}) == both
    assert encode_cursor({"a": P("e1", 3), "b": P("e2", 0)}) == both


def test_cursor_is_compact_sorted_unpadded_base64url() -> None:
    positions = {"zeta": P("E", 1), "Alpha": P("e?>", 2**64 - 1), "ß/room+": P("", 0)}
    cursor = encode_cursor(positions)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert (
        raw
        == json.dumps(
            {k: [v.epoch, v.offset] for k, v in sorted(positions.items())},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
    )
    assert decode_cursor(cursor) == positions


@pytest.mark.parametrize(
    "positions",
    [
        {"": P("e", 1)},
        {1: P("e", 1)},
        {"a": P("e", -1)},
        {"a": P("e", True)},
        {"a": P("e", 1.0)},  # type: ignore[arg-type]
        {"a": P("e", 2**64)},
        {"a": P(1, 1)},  # type: ignore[arg-type]
        {"a": ("e", 1)},
        {"\ud800": P("e", 1)},
        {"a": P("\udc00", 1)},
        {"a": P("e" * MAX_CURSOR_LENGTH, 1)},
    ],
)
def test_encode_cursor_rejects_what_it_could_not_decode(positions: dict[object, object]) -> None:
    with pytest.raises(LocalProtocolError):
        encode_cursor(positions)  # type: ignore[arg-type]


def test_cursor_length_limit_is_exact() -> None:
    # base64 of 6144 bytes is exactly 8192 characters; 12 bytes are '{"a":["",0]}'.
    longest = {"a": P("x" * (6144 - 12), 0)}
    cursor = encode_cursor(longest)
    assert len(cursor) == MAX_CURSOR_LENGTH
    assert decode_cursor(cursor) == longest
    with pytest.raises(LocalProtocolError):
        encode_cursor({"a": P("x" * (6144 - 11), 0)})
    with pytest.raises(RemoteProtocolError) as info:
        decode_cursor(cursor + "A")
    assert type(info.value) is RemoteProtocolError


_rooms = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
_epochs = st.text(st.characters(codec="utf-8"), max_size=20)
_positions = st.builds(P, _epochs, st.integers(min_value=0, max_value=2**64 - 1))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_rooms, _positions, max_size=12))
def test_cursor_round_trip(positions: dict[str, P]) -> None:
    cursor = encode_cursor(positions)
    assert re.fullmatch(r"[A-Za-z0-9_-]*", cursor)
    assert len(cursor) <= MAX_CURSOR_LENGTH
    assert decode_cursor(cursor) == positions
    assert encode_cursor(dict(reversed(list(positions.items())))) == cursor
    assert parse(id_line(cursor) + event_frame("x")).last_event_id == cursor


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64json(text: str) -> str:
    return _b64(text.encode())


BAD_CURSORS = [
    "",
    "e30=",  # padded
    "e30==",
    "A",  # 1 more than a multiple of 4
    "AAAAA",
    "e3 0",
    "e30\n",
    "e3+0",
    "e3/0",
    "ЖЖЖЖ",
    "%7B%7D",
    _b64(b"\xff\xfe{}"),  # not UTF-8
    _b64json("{"),
    _b64json("not json"),
    _b64json("[]"),
    _b64json("null"),
    _b64json('"a"'),
    _b64json("1"),
    _b64json('{"a":1}'),
    _b64json('{"a":null}'),
    _b64json('{"a":{"epoch":"e","offset":1}}'),
    _b64json('{"a":[]}'),
    _b64json('{"a":["e"]}'),
    _b64json('{"a":["e",1,2]}'),
    _b64json('{"a":[1,1]}'),
    _b64json('{"a":[null,1]}'),
    _b64json('{"a":["e",-1]}'),
    _b64json('{"a":["e",true]}'),
    _b64json('{"a":["e",false]}'),
    _b64json('{"a":["e",1.0]}'),
    _b64json('{"a":["e",1e3]}'),
    _b64json('{"a":["e","1"]}'),
    _b64json('{"a":["e",18446744073709551616]}'),  # past 64 bits: orjson reads a float
    _b64json('{"":["e",1]}'),
    _b64json('{"a":["e",1],"b":["e",-2]}'),
    _b64json("[" * 5000),
    "A" * (MAX_CURSOR_LENGTH + 1),
    "e30" + "A" * MAX_CURSOR_LENGTH,
]


@pytest.mark.parametrize("text", BAD_CURSORS)
def test_decode_cursor_rejects(text: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_cursor(text)
    assert type(info.value) is RemoteProtocolError
    assert info.value.reason in ("bad Last-Event-ID", "Last-Event-ID too long")


@pytest.mark.parametrize("text", [None, b"e30", 123, ["e30"]])
def test_decode_cursor_rejects_non_str(text: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_cursor(text)  # type: ignore[arg-type]


def test_decode_cursor_accepts_what_encode_makes_only() -> None:
    assert decode_cursor("e30") == {}
    assert decode_cursor(_b64json('{"a":["",0]}')) == {"a": P("", 0)}
    assert decode_cursor(_b64json('{"a":["e",1],"extra":["f",2]}')) == {
        "a": P("e", 1),
        "extra": P("f", 2),
    }
    assert decode_cursor(_b64json('{"a":["e",18446744073709551615]}')) == {"a": P("e", 2**64 - 1)}


def test_decode_cursor_reason_never_echoes_input() -> None:
    secret = _b64json('{"secret-room":["e",-1]}')
    with pytest.raises(RemoteProtocolError) as info:
        decode_cursor(secret)
    assert "secret" not in str(info.value) and secret not in str(info.value)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_near_cursors = st.dictionaries(
    st.text(max_size=5),
    st.one_of(
        st.tuples(_epochs, st.integers(min_value=-3, max_value=2**65)).map(list),
        st.lists(st.one_of(st.text(max_size=3), st.integers(), st.booleans(), st.none()), max_size=3),
        _json_values,
    ),
    max_size=4,
)


def _check_decode(text: str) -> None:
    try:
        positions = decode_cursor(text)
    except RemoteProtocolError as exc:
        assert type(exc) is RemoteProtocolError
    else:
        assert isinstance(positions, dict)
        for room, position in positions.items():
            assert isinstance(room, str) and room
            assert type(position.epoch) is str
            assert type(position.offset) is int and position.offset >= 0
        assert decode_cursor(encode_cursor(positions)) == positions


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="ABCDEFabcdef0123456789-_=+/ ", max_size=40),
        st.binary(max_size=60).map(_b64),
        _json_values.map(lambda v: _b64json(json.dumps(v, ensure_ascii=False))),
        _near_cursors.map(lambda v: _b64json(json.dumps(v, ensure_ascii=False))),
    )
)
def test_decode_cursor_never_raises_anything_else(text: str) -> None:
    _check_decode(text)


_surrogates = st.characters(exclude_categories=(), min_codepoint=0xD7F0, max_codepoint=0xE010)


@settings(max_examples=200, deadline=None)
@given(st.text(st.one_of(_surrogates, st.sampled_from("e30AZaz-_=")), max_size=20))
def test_decode_cursor_survives_surrogates_and_near_base64(text: str) -> None:
    _check_decode(text)
