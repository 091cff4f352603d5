"""``roomcast.tail``'s pure parts: the event-stream parser and the reconnect delay.

The parser must read a stream as a browser's ``EventSource`` does (WHATWG HTML §9.2.6),
whatever the line ends and wherever the network cuts the bytes, because ``roomcast tail``
resumes from the ``id`` it keeps: a wrong last id replays events twice or skips them.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.errors import PayloadTooBig
from roomcast.protocol.sse_parser import MAX_LINE, SseEvent, SseParser
from roomcast.tail import BACKOFF_START, Tail


def _feed_all(*chunks: bytes, last_id: str = "") -> tuple[SseParser, list[SseEvent]]:
    parser = SseParser(last_id)
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return parser, events


def test_fields_comments_and_blank_line_dispatch() -> None:
    parser, events = _feed_all(
        b"retry: 2000\n\n"
        b": ping\n\n"
        b'id: c1\nevent: snapshot\ndata: {"room":"a"}\n\n'
        b"data: plain\n\n"
        b"event: x\nunknown: field\ndata\n\n"
    )
    assert events == [
        SseEvent("snapshot", '{"room":"a"}', "c1"),
        SseEvent("message", "plain", "c1"),  # no event field: "message"; the last id carries on
        SseEvent("x", "", "c1"),  # a bare "data" line is an empty data field
    ]
    assert parser.retry == 2000 and parser.last_id == "c1"


def test_multi_line_data_is_joined_with_lf_and_one_leading_space_is_dropped() -> None:
    _, events = _feed_all(b"data: line one\ndata:line two\ndata:  two spaces\ndata:\n\n")
    assert events == [SseEvent("message", "line one\nline two\n two spaces\n", "")]


def test_crlf_cr_and_lf_all_end_lines_even_split_across_chunks() -> None:
    _, events = _feed_all(b"id: 1\r\ndata: a\r", b"\ndata: b\rdata: c\n\r", b"\n", b"data: d\r\r")
    assert events == [SseEvent("message", "a\nb\nc", "1"), SseEvent("message", "d", "1")]


def test_id_rules() -> None:
    parser, events = _feed_all(
        b"id: first\n\n"  # an id alone dispatches nothing but becomes the last id
        b"data: 1\n\n"
        b"id: bad\x00id\ndata: 2\n\n"  # an id with NUL is ignored
        b"id\ndata: 3\n\n",  # an empty id resets it
        last_id="from-before",
    )
    assert [(e.data, e.id) for e in events] == [("1", "first"), ("2", "first"), ("3", "")]
    assert parser.last_id == ""


def test_the_last_id_from_an_earlier_connection_persists_until_a_new_one() -> None:
    parser, events = _feed_all(b"data: replayed-without-id\n\n", last_id="cursor-9")
    assert events == [SseEvent("message", "replayed-without-id", "cursor-9")]
    assert parser.last_id == "cursor-9"


def test_an_unfinished_event_is_not_dispatched() -> None:
    parser, events = _feed_all(b"id: 5\ndata: cut off")
    assert events == [] and parser.last_id == ""  # the id only counts once its block ends


def test_bom_at_the_start_only_and_utf8_split_inside_a_character() -> None:
    text = "data: é€😀\n\n".encode()
    _, events = _feed_all(b"\xef\xbb", b"\xbf" + text[:8], text[8:], "data: \ufeffkept\n\n".encode())
    assert events == [SseEvent("message", "é€😀", ""), SseEvent("message", "\ufeffkept", "")]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    _, events = _feed_all(b"data: \xff\n\n")
    assert events == [SseEvent("message", "\ufffd", "")]


def test_a_line_without_end_over_the_limit_is_refused() -> None:
    parser = SseParser()
    with pytest.raises(PayloadTooBig, match="size limit"):
        parser.feed(b"data: " + b"x" * MAX_LINE)


def test_data_over_the_limit_across_many_lines_is_refused() -> None:
    parser = SseParser(max_line=100)
    assert parser.feed(b"data: " + b"x" * 60 + b"\n") == []
    with pytest.raises(PayloadTooBig, match="size limit"):
        parser.feed(b"data: " + b"x" * 60 + b"\n")


_STREAM = (
    b'retry: 100\r\n\r\n: ping\n\nid: A\nevent: snapshot\ndata: {"a":1}\n\n'
    b"id: B\r\nevent: m\r\ndata: [1,\r\ndata: 2]\r\n\r\n"
    b'event: error\rdata: {"reconnect":false}\r\r'
) + "data: ünïcödé\n\n".encode()


@given(st.lists(st.integers(min_value=0, max_value=len(_STREAM)), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(_STREAM)]
    _, chunked = _feed_all(*(_STREAM[a:b] for a, b in zip(bounds, bounds[1:])))
    _, whole = _feed_all(_STREAM)
    assert (
        chunked
        == whole
        == [
            SseEvent("snapshot", '{"a":1}', "A"),
            SseEvent("m", "[1,\n2]", "B"),
            SseEvent("error", '{"reconnect":false}', "B"),
            SseEvent("message", "ünïcödé", "B"),
        ]
    )


class _Top(random.Random):
    """The jitter at its largest: every delay is its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_tail_reconnect_ceilings_double_from_half_a_second_up_to_retry_max() -> None:
    """The tail's schedule is the package's one ``Backoff`` (full jitter is tested there)."""
    assert BACKOFF_START == 0.5
    tail = Tail("http://127.0.0.1:1", ["r"], retry_max=30.0, rng=_Top(), out=print, note=print)
    ceilings = [tail.backoff.next() for _ in range(9)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    short = Tail("http://127.0.0.1:1", ["r"], retry_max=0.2, rng=_Top(), out=print, note=print)
    assert short.backoff.next() == 0.2
