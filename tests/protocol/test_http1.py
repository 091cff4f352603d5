"""The sans-I/O HTTP/1.1 exchange: a request's bytes out; bytes in, one ``Response`` out.

Why split every message at every position: a socket may hand over any prefix, and a parser
that only works on whole lines or whole heads fails in production, not here.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.errors import LocalProtocolError, PayloadTooBig, RemoteProtocolError
from roomcast.protocol import http1
from roomcast.protocol.http1 import IncompleteResponse, NoResponse, Response, ResponseParser


def parse(
    data: bytes,
    *,
    eof: bool = True,
    max_body: int = 1000,
    max_headers: int = 100,
    max_line: int = 65536,
    head_only: bool = False,
) -> tuple[Response, bytes]:
    """Feed ``data`` whole (then EOF if still needed); the response and what followed it."""
    parser = ResponseParser(max_body=max_body, max_headers=max_headers, max_line=max_line, head_only=head_only)
    response = parser.feed(data)
    if response is None and eof:
        response = parser.feed_eof()
    assert response is not None
    return response, parser.rest


def parse_in_pieces(pieces: list[bytes], *, max_body: int = 1000, head_only: bool = False) -> tuple[Response, bytes]:
    parser = ResponseParser(max_body=max_body, head_only=head_only)
    response = None
    for piece in pieces:
        response = parser.feed(piece)
    if response is None:
        response = parser.feed_eof()
    return response, parser.rest


def fails(
    data: bytes,
    error: type[RemoteProtocolError],
    reason: str,
    *,
    eof: bool = True,
    max_body: int = 1000,
    max_headers: int = 100,
    max_line: int = 65536,
) -> None:
    with pytest.raises(error) as raised:
        parse(data, eof=eof, max_body=max_body, max_headers=max_headers, max_line=max_line)
    assert type(raised.value) is error
    assert reason in raised.value.reason


# (wire bytes, expected response, expected rest, head_only)
MESSAGES = [
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
        Response(200, "OK", {"content-length": "5", "content-type": "text/plain"}, b"hello"),
        b"",
        False,
    ),
    (
        b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nTrailer: t\r\n\r\n",
        Response(201, "Created", {"transfer-encoding": "chunked"}, b"wikipedia"),
        b"",
        False,
    ),
    (
        b"HTTP/1.0 200 OK\nConnection: close\n\nto the end\r\nof the connection",
        Response(200, "OK", {"connection": "close"}, b"to the end\r\nof the connection"),
        b"",
        False,
    ),
    (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
        Response(101, "Switching Protocols", {"upgrade": "websocket", "connection": "Upgrade"}, b""),
        b"\x81\x02hi",
        False,
    ),
    (
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad",
        Response(400, "Bad Request", {"content-length": "3"}, b""),
        b"bad",
        True,
    ),
]


@pytest.mark.parametrize(("wire", "expected", "rest", "head_only"), MESSAGES)
def test_a_message_parses_the_same_whole_byte_by_byte_and_split_anywhere(
    wire: bytes, expected: Response, rest: bytes, head_only: bool
) -> None:
    assert parse_in_pieces([wire], head_only=head_only) == (expected, rest)
    assert parse_in_pieces([wire[i : i + 1] for i in range(len(wire))], head_only=head_only) == (expected, rest)
    for i in range(len(wire) + 1):
        for j in range(i, len(wire) + 1, 7):
            assert parse_in_pieces([wire[:i], wire[i:j], wire[j:]], head_only=head_only) == (expected, rest), (i, j)


def test_the_answer_is_known_without_eof_when_its_length_is() -> None:
    parser = ResponseParser(max_body=100)
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n") is None
    assert parser.response is None and parser.rest == b""
    response = parser.feed(b"okEXTRA")
    assert response == Response(200, "OK", {"content-length": "2"}, b"ok")
    assert parser.response is response
    assert parser.rest == b"EXTRA"
    assert parser.feed(b" and more") is response  # later bytes go to rest, not to the body
    assert parser.rest == b"EXTRA and more"
    assert parser.feed_eof() is response  # EOF after the answer changes nothing


def test_the_101_rest_is_every_byte_after_the_head() -> None:
    frames = bytes(range(256)) * 3
    head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    parser = ResponseParser(max_body=0)
    assert parser.feed(head[:-1]) is None
    response = parser.feed(head[-1:] + frames[:100])
    assert response is not None and response.status == 101 and response.body == b""
    parser.feed(frames[100:])
    assert parser.rest == frames


def test_101_204_and_304_have_no_body_whatever_their_headers_say() -> None:
    for status in (101, 204, 304):
        wire = b"HTTP/1.1 %d X\r\nContent-Length: 4\r\n\r\nbody" % status
        assert parse(wire, eof=False) == (Response(status, "X", {"content-length": "4"}, b""), b"body")


def test_head_only_ends_with_the_head_and_still_skips_interim_answers() -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
    assert parse(wire, eof=False, head_only=True) == (Response(200, "OK", {"content-length": "9"}, b""), b"")


def test_every_interim_answer_is_skipped() -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    assert parse(wire, eof=False) == (Response(204, "No Content", {}, b""), b"")


def test_header_names_are_lowercased_and_repeats_joined() -> None:
    wire = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a:2  \r\nVary:\t  \r\nContent-Length: 0\r\n\r\n"
    response, _ = parse(wire, eof=False)
    assert response.headers == {"x-a": "1, 2", "vary": "", "content-length": "0"}


def test_a_status_line_without_a_reason_and_latin1_reasons() -> None:
    assert parse(b"HTTP/1.1 204\r\n\r\n", eof=False)[0] == Response(204, "", {}, b"")
    assert parse(b"HTTP/1.1 200 Gr\xfc\xdfe\r\n\r\n")[0].reason == "Grüße"


def test_repeated_identical_content_lengths_are_one_length() -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
    assert parse(wire, eof=False)[0].body == b"abc"


def test_chunked_wins_over_content_length() -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert parse(wire, eof=False)[0].body == b"abc"


def test_bodies_may_be_exactly_max_body() -> None:
    assert parse(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd", max_body=4)[0].body == b"abcd"
    assert parse(b"HTTP/1.1 200 OK\r\n\r\nabcd", max_body=4)[0].body == b"abcd"
    assert (
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n", max_body=4)[
            0
        ].body
        == b"abcd"
    )


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1200 OK\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
    ],
)
def test_a_status_line_that_is_not_http_1x(line: bytes) -> None:
    fails(line, RemoteProtocolError, "not an HTTP/1.x status line")


def test_a_peer_that_is_not_http_fails_before_any_newline() -> None:
    parser = ResponseParser(max_body=10)
    assert parser.feed(b"HTTP/") is None
    with pytest.raises(RemoteProtocolError, match="not an HTTP/1.x status line"):
        parser.feed(b"2")


def test_too_many_headers_and_trailers() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(4))
    assert parse(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n", max_headers=4)[0].headers["x-3"] == "v"
    fails(b"HTTP/1.1 200 OK\r\n" + fields + b"X-4: v\r\n\r\n", RemoteProtocolError, "too many headers", max_headers=4)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    fails(chunked + fields + b"X-4: v\r\n\r\n", RemoteProtocolError, "too many headers", max_headers=4)
    interim = b"HTTP/1.1 100 Continue\r\n" + fields + b"\r\n"  # each head has its own count
    assert parse(interim + b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n", max_headers=4)[0].status == 200


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 " + b"O" * 100 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"v" * 100 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"v" * 100,  # no newline yet: fails without waiting for one
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 100 + b"\r\na\r\n0\r\n\r\n",
    ],
)
def test_a_line_over_the_limit(wire: bytes) -> None:
    fails(wire, RemoteProtocolError, "a line is over 64 bytes", eof=False, max_line=64)


def test_a_line_at_the_limit_is_fine() -> None:
    line = b"HTTP/1.1 200 " + b"O" * (64 - 15) + b"\r\n"
    assert len(line) == 64
    assert parse(line + b"\r\n", max_line=64)[0].status == 200


@pytest.mark.parametrize("value", [b"abc", b"-1", b"+5", b"1 2", b"", b"\xd9\xa3", b"3, 4", b"0x10"])
def test_a_bad_content_length(value: bytes) -> None:
    fails(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n", RemoteProtocolError, "bad Content-Length")


def test_a_content_length_over_max_body_fails_before_the_body() -> None:
    fails(
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
        PayloadTooBig,
        "the body is over 10 bytes",
        eof=False,
        max_body=10,
    )
    fails(
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        PayloadTooBig,
        "over 10 bytes",
        eof=False,
        max_body=10,
    )


def test_chunked_and_close_delimited_bodies_over_max_body() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n5\r\n"
    fails(chunked, PayloadTooBig, "the body is over 10 bytes", eof=False, max_body=10)
    fails(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11, PayloadTooBig, "the body is over 10 bytes", eof=False, max_body=10)


@pytest.mark.parametrize("size", [b"", b"g", b"-1", b"0x1", b"1" * 17, b" ;x"])
def test_a_bad_chunk_size(size: bytes) -> None:
    fails(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\n",
        RemoteProtocolError,
        "bad chunk size",
        eof=False,
    )


def test_a_chunk_longer_than_its_size() -> None:
    fails(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        RemoteProtocolError,
        "a chunk is longer than its size",
    )


def test_transfer_codings_other_than_chunked_are_refused() -> None:
    for coding in (b"gzip", b"gzip, chunked", b"chunked, chunked"):
        fails(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n",
            RemoteProtocolError,
            "unsupported Transfer-Encoding",
            eof=False,
        )


@pytest.mark.parametrize("line", [b"no colon", b": no name", b" X: folded", b"X Y: space", b"X\x00: nul"])
def test_a_header_line_without_a_valid_name(line: bytes) -> None:
    fails(
        b"HTTP/1.1 200 OK\r\nA: 1\r\n" + line + b"\r\n\r\n", RemoteProtocolError, "a header line without a valid name"
    )


def test_eof_before_any_byte_is_no_response() -> None:
    parser = ResponseParser(max_body=10)
    parser.feed(b"")  # an empty read is not a byte
    with pytest.raises(NoResponse) as raised:
        parser.feed_eof()
    assert isinstance(raised.value, IncompleteResponse) and not raised.value.in_body
    assert raised.value.reason == "the connection closed before an answer"


@pytest.mark.parametrize(
    ("wire", "in_body"),
    [
        (b"H", False),
        (b"HTTP/1.1 200 OK\r\nContent-Le", False),
        (b"HTTP/1.1 100 Continue\r\n\r\n", False),  # an interim answer is not the answer
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n", True),  # in the trailers
    ],
)
def test_eof_inside_the_answer_ended_early(wire: bytes, in_body: bool) -> None:
    with pytest.raises(IncompleteResponse) as raised:
        parse(wire)
    assert type(raised.value) is IncompleteResponse
    assert raised.value.in_body is in_body
    assert raised.value.reason.startswith("the answer ended early")


# -- properties ---------------------------------------------------------------------------
def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"


_bodies = st.lists(st.binary(max_size=40), max_size=6)
_framing = st.sampled_from(["length", "chunked", "eof"])


@settings(max_examples=300, deadline=None)
@given(
    parts=_bodies,
    framing=_framing,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    interim=st.booleans(),
)
def test_any_body_in_any_framing_split_anywhere_comes_back_whole(
    parts: list[bytes], framing: str, cuts: list[int], interim: bool
) -> None:
    body = b"".join(parts)
    if framing == "length":
        wire = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(parts)
    else:
        wire = b"HTTP/1.1 200 OK\r\n\r\n" + body
    if interim:
        wire = b"HTTP/1.1 100 Continue\r\n\r\n" + wire
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)])]
    response, rest = parse_in_pieces(pieces)
    assert (response.status, response.body, rest) == (200, body, b"")


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.binary(max_size=200), st.builds(lambda tail: b"HTTP/1.1 200 OK\r\n" + tail, st.binary(max_size=200))),
    st.booleans(),
)
def test_arbitrary_bytes_end_in_a_response_or_a_remote_protocol_error(data: bytes, eof: bool) -> None:
    parser = ResponseParser(max_body=64, max_headers=4, max_line=64)
    try:
        response = parser.feed(data)
        if eof:
            response = parser.feed_eof()
    except RemoteProtocolError as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    if response is not None:
        assert len(response.body) <= 64


# -- requests and keep-alive ---------------------------------------------------------------


def test_a_request_is_its_line_host_headers_in_order_and_a_length_for_a_body() -> None:
    assert http1.request("POST", "/api/publish", "h:8", {"Accept": "a/b"}, b"{}") == (
        b"POST /api/publish HTTP/1.1\r\nHost: h:8\r\nAccept: a/b\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert http1.request("GET", "/x?y=1", "h", {}) == b"GET /x?y=1 HTTP/1.1\r\nHost: h\r\n\r\n"
    assert http1.request("POST", "/", "h", {}).endswith(b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/a b", {}),
        ("GET", "/a\r\nX: 1", {}),
        ("get", "/", {}),
        ("GET", "/", {"X-Evil": "1\r\nInjected: yes"}),
        ("GET", "/", {"Bad Name": "1"}),
        ("GET", "/", {"X": "ünï€"}),
    ],
)
def test_a_request_that_would_break_the_message_is_refused(method: str, target: str, headers: dict[str, str]) -> None:
    with pytest.raises(LocalProtocolError):
        http1.request(method, target, "h", headers)


@pytest.mark.parametrize(
    ("answer", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\n\r\nok", False),  # delimited by the end of the connection
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", False),  # bytes nobody asked for
    ],
)
def test_only_a_cleanly_ended_http11_answer_leaves_its_connection_reusable(answer: bytes, reusable: bool) -> None:
    parser = ResponseParser(max_body=100)
    if parser.feed(answer) is None:
        parser.feed_eof()
    assert parser.reusable is reusable


def test_a_streamed_body_is_taken_piece_by_piece_to_its_last_byte() -> None:
    parser = ResponseParser(max_body=10, streaming=True)
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
    assert parser.head is not None and parser.head.headers["content-type"] == "text/event-stream"
    assert parser.response is None and parser.take_body() == b""
    taken = []
    for piece in (b"5\r\nhel", b"lo\r\n6\r\n world\r\n", b"0\r\n\r\n"):  # 11 bytes in all: over max_body
        parser.feed(piece)
        taken.append(parser.take_body())
    assert taken == [b"hel", b"lo world", b""] and parser.response is not None
    assert parser.response.body == b""


def test_seen_tells_a_connection_that_never_answered_from_one_that_started_to() -> None:
    silent, started = ResponseParser(max_body=10), ResponseParser(max_body=10)
    started.feed(b"HTTP/1.1 2")
    assert (silent.seen, started.seen) == (False, True)
    with pytest.raises(NoResponse):
        silent.feed_eof()
