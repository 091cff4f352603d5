"""One HTTP/1.1 exchange, sans-I/O: the bytes behind roomcast's one HTTP client.

Owns the client side of RFC 9112 that ``roomcast.httpclient`` needs (for the publisher, the
task poller, the client SDK's long-polling and WebSocket handshake, ``roomcast tail``): a
request's bytes (:func:`request`), a response read from bytes (:class:`ResponseParser`), and
whether the connection may carry another request afterwards
(:attr:`ResponseParser.reusable`). No content codings. Callers feed received bytes to
:class:`ResponseParser`, call :meth:`~ResponseParser.feed_eof` when the peer closes, and get a
:class:`Response` once the message is whole. Why one parser fed bytes rather than three
``StreamReader`` loops: the rules (interim answers, framing, limits) then live and are tested
in one place, byte by byte, without a socket.

Which answers have a body (RFC 9112 §6.3):

* interim ``1xx`` answers other than ``101`` are skipped; the next head is the answer;
* ``101``, ``204`` and ``304`` end with their head; so does every answer when the parser is
  made with ``head_only=True`` (an answer to ``HEAD``, or a WebSocket handshake, where only
  the head matters and what follows it is not HTTP);
* otherwise ``Transfer-Encoding: chunked`` (trailers are read and dropped), else
  ``Content-Length``, else the body runs to the end of the connection.

Whatever follows the message is kept in :attr:`ResponseParser.rest`: after a ``101`` those
bytes are the first WebSocket frames, and losing them would lose messages.

A body that never ends (an event stream) is read piece by piece: once :attr:`~ResponseParser.head`
is set, :meth:`~ResponseParser.take_body` hands over what arrived so far (dechunked), and
``max_body`` then bounds only what is held between two calls.

Errors are :class:`~roomcast.errors.RemoteProtocolError` with a ``reason`` that never quotes
the peer's bytes: :class:`~roomcast.errors.PayloadTooBig` for a body over ``max_body``,
:class:`IncompleteResponse` when the connection ends inside the message, and its subclass
:class:`NoResponse` when it ends before a single byte (callers treat that as "unreachable":
nothing was answered at all). After an error the parser is spent; drop it with the connection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final

from roomcast.errors import LocalProtocolError, PayloadTooBig, RemoteProtocolError

__all__ = ["Response", "ResponseParser", "IncompleteResponse", "NoResponse", "request", "check_headers"]

_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: (.*))?")
_PREFIX: Final = b"HTTP/1."
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
_MAX_LENGTH_DIGITS: Final = 18  # more digits than any sane limit; keeps int() cheap
_METHOD: Final = re.compile(r"[A-Z]+")
_TARGET: Final = re.compile(r"[!-~]+")  # visible ASCII, no space: RFC 9112 §3.2


def check_headers(headers: Mapping[str, str]) -> None:
    """Refuse header names that are not tokens and values HTTP/1.1 cannot carry.

    Why callers check at once (a client's ``headers=``, a publisher's API key): a value
    with a CR or LF would start a header of its own, and one outside Latin-1 cannot be
    sent; found only when a request is made, it would look like a network failure.

    Raises:
        LocalProtocolError: names the header, never quotes its value (it may be a secret).
    """
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise LocalProtocolError("header names and values must be str")
        if _TOKEN.fullmatch(name.encode("latin-1", "replace")) is None:
            raise LocalProtocolError(f"invalid header name {name!r}")
        if "\r" in value or "\n" in value or "\x00" in value or not value.isascii() and _not_latin1(value):
            raise LocalProtocolError(f"the value of header {name!r} cannot be sent (CR, LF, NUL or not Latin-1)")


def _not_latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return True
    return False


def request(method: str, target: str, host: str, headers: Mapping[str, str], body: bytes = b"") -> bytes:
    """The bytes of one request: request line, ``Host``, ``headers`` in order, then ``body``.

    ``Content-Length`` is added when there is a body or the method usually has one (a
    ``POST`` with an empty body says ``0`` rather than leave the server guessing).

    Raises:
        LocalProtocolError: a method, target or header that would break the message (a CR
            or LF would let a value start a header or a request of its own).
    """
    if _METHOD.fullmatch(method) is None:
        raise LocalProtocolError(f"bad HTTP method {method!r}")
    if _TARGET.fullmatch(target) is None:
        raise LocalProtocolError("the request target must be visible ASCII without spaces")
    check_headers(headers)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise LocalProtocolError("a header value is not Latin-1") from None
    return head + body


class IncompleteResponse(RemoteProtocolError):
    """The connection ended inside the answer; ``in_body`` says whether the head was whole.

    Why the flag: a cut in the head means the peer is not answering HTTP properly, while a
    cut in the body is usually the network (a reset), worth retrying; callers decide.
    """

    def __init__(self, reason: str, *, in_body: bool) -> None:
        super().__init__(reason)
        self.in_body = in_body


class NoResponse(IncompleteResponse):
    """The connection ended before a single byte of an answer: nothing was answered."""

    def __init__(self) -> None:
        super().__init__("the connection closed before an answer", in_body=False)


@dataclass(frozen=True, slots=True)
class Response:
    """One final answer: status, reason phrase, headers, whole body.

    Header names are lower-cased; a repeated header's values are joined with ``", "``
    (RFC 9110 §5.3), so a lookup never silently keeps only the last one.
    """

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


class _State(Enum):
    STATUS = auto()
    HEADERS = auto()
    LENGTH = auto()  # a Content-Length body
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_END = auto()  # the CRLF after a chunk's data
    TRAILERS = auto()
    UNTIL_EOF = auto()  # a body delimited by the end of the connection
    DONE = auto()


class ResponseParser:
    """Reads one HTTP/1.x response from bytes fed in any pieces.

    Args:
        max_body: the largest body accepted, in bytes (``PayloadTooBig`` beyond it; a
            ``Content-Length`` over it fails before the body is read).
        max_headers: the most header lines in one head (and in the trailers).
        max_line: the longest line (status, header, chunk size, trailer), its CRLF included.
        head_only: the answer ends with its head whatever its headers say (an answer to
            ``HEAD``; a WebSocket handshake, whose frames then start in :attr:`rest`).
        streaming: the caller takes the body as it comes (:meth:`take_body`).

    Use::

        parser = ResponseParser(max_body=1 << 20)
        response = None
        while response is None:
            data = await reader.read(65536)
            response = parser.feed(data) if data else parser.feed_eof()
    """

    __slots__ = (
        "_max_body",
        "_max_headers",
        "_max_line",
        "_head_only",
        "streaming",
        "_buf",
        "_state",
        "_seen",
        "_status",
        "_minor",
        "_reason",
        "_headers",
        "_lines",
        "_body",
        "_left",
        "_until_eof",
        "head",
        "response",
    )

    def __init__(
        self,
        *,
        max_body: int,
        max_headers: int = 100,
        max_line: int = 65536,
        head_only: bool = False,
        streaming: bool = False,
    ) -> None:
        self._max_body = max_body
        self._max_headers = max_headers
        self._max_line = max_line
        self._head_only = head_only
        self.streaming = streaming
        """The body is taken piece by piece (:meth:`take_body`): ``max_body`` bounds what is
        held between two takes, not the whole body."""
        self._buf = bytearray()
        self._state = _State.STATUS
        self._seen = False  # any byte at all: tells NoResponse from IncompleteResponse
        self._status = 0
        self._minor = 1  # HTTP/1.x
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._lines = 0  # header or trailer lines so far, against max_headers
        self._body = bytearray()
        self._left = 0  # bytes still due in a Content-Length body or the current chunk
        self._until_eof = False
        self.head: Response | None = None
        """The final answer's status and headers (empty body) once its head is read."""
        self.response: Response | None = None
        """The answer once it is whole; ``None`` until then."""

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request after this whole answer.

        Only an HTTP/1.1 answer without ``Connection: close``, framed by its length or by
        chunks, read to its end with nothing after it. Why so strict: a connection reused in
        a doubtful state would hand the next caller the end of someone else's answer.
        """
        head = self.response
        if head is None or self._until_eof or self._head_only or self._buf or self._minor < 1:
            return False
        return head.status != 101 and "close" not in _tokens(head.headers.get("connection", ""))

    def take_body(self) -> bytes:
        """The body bytes received (dechunked) since the last call: for a body that streams.

        With ``streaming=True`` the whole :attr:`response` has an empty body: every byte of
        it comes through here, the last ones included.
        """
        taken = bytes(self._body)
        self._body.clear()
        return taken

    @property
    def seen(self) -> bool:
        """Whether any byte of an answer came (a reused connection that ends before one was
        closed by the server while idle: the request is safe to send again)."""
        return self._seen

    @property
    def rest(self) -> bytes:
        """The bytes received after the message (empty until :attr:`response` is set)."""
        return bytes(self._buf) if self._state is _State.DONE else b""

    def feed(self, data: bytes) -> Response | None:
        """Take received bytes; the answer when they complete it, else ``None``.

        Bytes fed after the answer is whole are added to :attr:`rest`.

        Raises:
            RemoteProtocolError: the bytes break HTTP/1.1 or a limit (``PayloadTooBig``).
        """
        if data:
            self._seen = True
            self._buf += data
        if self._state is not _State.DONE:
            self._run()
        return self.response

    def feed_eof(self) -> Response:
        """The peer closed: complete a body delimited by the end of the connection.

        Raises:
            NoResponse: not a single byte came.
            IncompleteResponse: the connection ended inside the head or the body.
        """
        if self.response is not None:
            return self.response
        if self._state is _State.UNTIL_EOF:
            return self._finish()
        if not self._seen:
            raise NoResponse()
        if self._state in (_State.STATUS, _State.HEADERS):
            raise IncompleteResponse("the answer ended early, inside its head", in_body=False)
        raise IncompleteResponse("the answer ended early, inside its body", in_body=True)

    # -- the state machine ----------------------------------------------------------------
    def _run(self) -> None:
        """Advance while the buffer holds enough for the next step."""
        while self._state is not _State.DONE:
            state = self._state
            if state is _State.LENGTH or state is _State.CHUNK_DATA:
                taken = self._buf[: self._left]
                del self._buf[: self._left]
                self._body += taken
                self._left -= len(taken)
                if self._left:
                    return
                if state is _State.LENGTH:
                    self._finish()
                else:
                    self._state = _State.CHUNK_END
                continue
            if state is _State.UNTIL_EOF:
                self._body += self._buf
                self._buf.clear()
                self._check_body(0)
                return
            line = self._line()
            if line is None:
                return
            if state is _State.STATUS:
                self._status_line(line)
            elif state is _State.HEADERS:
                self._header_line(line)
            elif state is _State.CHUNK_SIZE:
                self._chunk_size(line)
            elif state is _State.CHUNK_END:
                if line:
                    raise RemoteProtocolError("a chunk is longer than its size")
                self._state = _State.CHUNK_SIZE
            else:  # TRAILERS: read for their limit, then dropped (nothing here needs them)
                if not line:
                    self._finish()
                else:
                    self._count_line()

    def _line(self) -> bytes | None:
        """The next line without its CRLF (a bare LF is accepted), or ``None`` for more data."""
        end = self._buf.find(b"\n", 0, self._max_line)
        if end < 0:
            if len(self._buf) >= self._max_line:
                raise RemoteProtocolError(f"a line is over {self._max_line} bytes")
            if self._state is _State.STATUS and not _PREFIX.startswith(self._buf[: len(_PREFIX)]):
                raise RemoteProtocolError("not an HTTP/1.x status line")  # fail fast, no newline needed
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _status_line(self, line: bytes) -> None:
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            raise RemoteProtocolError("not an HTTP/1.x status line")
        self._minor = int(match[1])
        self._status = int(match[2])
        self._reason = (match[3] or b"").decode("latin-1").strip()
        self._headers = {}
        self._lines = 0
        self._state = _State.HEADERS

    def _count_line(self) -> None:
        self._lines += 1
        if self._lines > self._max_headers:
            raise RemoteProtocolError(f"too many headers (over {self._max_headers})")

    def _header_line(self, line: bytes) -> None:
        if not line:
            self._end_of_head()
            return
        self._count_line()
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:  # also refuses obsolete line folding
            raise RemoteProtocolError("a header line without a valid name")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def _end_of_head(self) -> None:
        """Choose how the body is delimited (RFC 9112 §6.3), or skip an interim answer."""
        status, headers = self._status, self._headers
        if 100 <= status < 200 and status != 101:
            self._state = _State.STATUS  # interim: the real answer follows
            return
        self.head = Response(status, self._reason, headers, b"")
        if self._head_only or status in (101, 204, 304):
            self._finish()
            return
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if [c.strip().lower() for c in coding.split(",")] != ["chunked"]:
                raise RemoteProtocolError("unsupported Transfer-Encoding (only chunked is read)")
            self._state = _State.CHUNK_SIZE
            return
        length = headers.get("content-length")
        if length is None:
            self._until_eof = True
            self._state = _State.UNTIL_EOF
            return
        values = {v.strip() for v in length.split(",")}  # repeated identical values are allowed
        value = values.pop()
        if values or not value.isascii() or not value.isdigit():
            raise RemoteProtocolError("bad Content-Length")
        if len(value) > _MAX_LENGTH_DIGITS or (int(value) > self._max_body and not self.streaming):
            raise PayloadTooBig(f"the body is over {self._max_body} bytes")
        self._left = int(value)
        self._state = _State.LENGTH

    def _chunk_size(self, line: bytes) -> None:
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if _HEX.fullmatch(size_text) is None:
            raise RemoteProtocolError("bad chunk size")
        size = int(size_text, 16)
        if size == 0:
            self._lines = 0
            self._state = _State.TRAILERS
            return
        self._check_body(size)
        self._left = size
        self._state = _State.CHUNK_DATA

    def _check_body(self, coming: int) -> None:
        if len(self._body) + coming > self._max_body:
            raise PayloadTooBig(f"the body is over {self._max_body} bytes")

    def _finish(self) -> Response:
        if self.head is None:
            self.head = Response(self._status, self._reason, self._headers, b"")
        self._state = _State.DONE
        if self.streaming:  # the body is all for take_body, to its last byte
            self.response = Response(self._status, self._reason, self._headers, b"")
        else:
            self.response = Response(self._status, self._reason, self._headers, bytes(self._body))
            self._body = bytearray()
        return self.response


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}
