"""Reading token usage out of the Messages API's responses as they stream through the proxy.

Sans-I/O: :class:`UsageReader` is told about each forwarded call (:meth:`~UsageReader.expect`,
in order) and fed the upstream's bytes as they pass (:meth:`~UsageReader.feed`); it reports
each call's usage as it grows. It frames HTTP/1.1 responses (``Content-Length``, chunked,
or to the end of the connection) and reads, for a call that costs:

- an SSE stream: ``usage`` of ``message_start`` (input, cache writes and reads, the first
  output tokens) and of each ``message_delta`` (cumulative counts: output, and input or
  cache counts when present);
- a JSON message: its ``usage`` once the body is complete.

Nothing is buffered on the way to the client: the proxy writes the bytes first and feeds
them here after. Only lines that carry ``"usage"`` are decoded. Responses other than 200
(errors are not billed) and ``count_tokens`` answers are framed and skipped.

When the bytes cannot be framed (a malformed head or chunk, a response nobody asked for, a
compressed body, a JSON body over :data:`MAX_JSON_BYTES`), :attr:`UsageReader.broken` says
why and nothing more is read: the proxy then closes the connection rather than forward
calls it cannot count.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kit.bundle.limits import Tokens
from kit.host.errors import HostError

MAX_HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 1024 * 1024
"""A longer SSE line is content (a large delta), never usage: it is skipped unread."""
MAX_JSON_BYTES = 16 * 1024 * 1024


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Call:
    """A forwarded request whose response is to come."""

    costs: bool
    """False for ``count_tokens``: its answer is not usage."""
    on_usage: Callable[[Tokens], None]
    """Called with the increase each time the call's usage grows."""
    on_done: Callable[[], None] = _nothing
    """Called once, when the response has been read to its end or the connection is gone."""


class _Framing(enum.Enum):
    HEAD = "head"
    LENGTH = "length"
    CHUNK_SIZE = "chunk size"
    CHUNK_DATA = "chunk data"
    CHUNK_END = "chunk end"
    TRAILERS = "trailers"
    UNTIL_CLOSE = "until close"


class UsageReader:
    """One upstream connection's responses, read for usage."""

    def __init__(self) -> None:
        self._calls: deque[Call] = deque()
        self._buf = bytearray()
        self._framing = _Framing.HEAD
        self._left = 0
        self._body: _Body | None = None
        self._current: Call | None = None
        self.broken: str | None = None
        """Why the stream could not be read (None: all is well)."""

    @property
    def idle(self) -> bool:
        """Whether every expected response has been read to its end (nothing is owed)."""
        return not self._calls and self._framing is _Framing.HEAD and not self._buf

    def expect(self, call: Call) -> None:
        """A request was forwarded: its response comes after those already expected."""
        self._calls.append(call)

    def feed(self, data: bytes) -> None:
        """Bytes from upstream, in order."""
        if self.broken is not None:
            return
        self._buf += data
        try:
            while self._step():
                pass
        except _Unreadable as exc:
            self.broken = str(exc)
            self._buf.clear()

    def eof(self) -> None:
        """Upstream closed the connection: a body read to the close is complete."""
        if self.broken is None and self._framing is _Framing.UNTIL_CLOSE:
            try:
                self._end_body()
            except _Unreadable as exc:
                self.broken = str(exc)
        self.close()

    def close(self) -> None:
        """The connection is gone: every call not answered in full is done (idempotent)."""
        calls = [c for c in (self._current, *self._calls) if c is not None]
        self._current = None
        self._calls.clear()
        for call in calls:
            call.on_done()

    def _step(self) -> bool:
        """Consume what the buffer allows for the current state; False when it needs more."""
        buf = self._buf
        match self._framing:
            case _Framing.HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise _Unreadable("a response head over 64 KiB")
                    return False
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._head(head)
                return True
            case _Framing.LENGTH | _Framing.CHUNK_DATA:
                if not buf:
                    return False
                take = min(self._left, len(buf))
                self._body_bytes(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if self._left == 0:
                    if self._framing is _Framing.LENGTH:
                        self._end_body()
                    else:
                        self._framing = _Framing.CHUNK_END
                return True
            case _Framing.CHUNK_END:
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    raise _Unreadable("a chunk not followed by CRLF")
                del buf[:2]
                self._framing = _Framing.CHUNK_SIZE
                return True
            case _Framing.CHUNK_SIZE:
                line = self._line()
                if line is None:
                    return False
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _Unreadable("a chunk size that is not hex") from None
                if size < 0:
                    raise _Unreadable("a negative chunk size")
                if size == 0:
                    self._framing = _Framing.TRAILERS
                else:
                    self._left, self._framing = size, _Framing.CHUNK_DATA
                return True
            case _Framing.TRAILERS:
                line = self._line()
                if line is None:
                    return False
                if not line:
                    self._end_body()
                return True
            case _Framing.UNTIL_CLOSE:
                if not buf:
                    return False
                self._body_bytes(bytes(buf))
                buf.clear()
                return False
        raise AssertionError(self._framing)  # pragma: no cover

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > 4096:
                raise _Unreadable("a chunk line over 4 KiB")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _Unreadable("a malformed status line")
        status = int(parts[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise _Unreadable("a malformed header line")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            return  # an interim response; the real one follows
        if not self._calls:
            raise _Unreadable("a response to no forwarded request")
        call = self._current = self._calls.popleft()
        self._body = None
        if call.costs and status == 200:
            if headers.get(b"content-encoding", b"identity").lower() != b"identity":
                raise _Unreadable("a compressed response")
            kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if kind == b"text/event-stream":
                self._body = _EventStream(call.on_usage)
            elif kind == b"application/json":
                self._body = _JsonMessage(call.on_usage)
        if status in (204, 304):
            self._end_body()
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._framing = _Framing.CHUNK_SIZE
        elif b"content-length" in headers:
            try:
                self._left = int(headers[b"content-length"])
            except ValueError:
                raise _Unreadable("a Content-Length that is not a number") from None
            self._framing = _Framing.LENGTH
            if self._left == 0:
                self._end_body()
        else:
            self._framing = _Framing.UNTIL_CLOSE

    def _body_bytes(self, data: bytes) -> None:
        if self._body is not None:
            self._body.feed(data)

    def _end_body(self) -> None:
        body, call = self._body, self._current
        self._body = self._current = None
        self._framing = _Framing.HEAD
        try:
            if body is not None:
                body.finish()
        finally:
            if call is not None:
                call.on_done()


class _Unreadable(HostError):
    """The upstream's bytes cannot be framed or read."""


class _Usage:
    """One call's usage so far; reports each increase."""

    def __init__(self, on_usage: Callable[[Tokens], None]) -> None:
        self._on_usage = on_usage
        self._seen: dict[str, int] = {}
        self._reported = Tokens()

    def update(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        counts = dict(usage)
        breakdown = usage.get("cache_creation")
        if isinstance(breakdown, dict):
            counts["ephemeral_1h_input_tokens"] = breakdown.get("ephemeral_1h_input_tokens")
        for key, value in counts.items():
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                # Counts only grow within a call (message_delta's are cumulative).
                self._seen[key] = max(self._seen.get(key, 0), value)
        seen = self._seen
        now = Tokens(
            input=seen.get("input_tokens", 0),
            output=seen.get("output_tokens", 0),
            cache_write=seen.get("cache_creation_input_tokens", 0),
            cache_write_1h=seen.get("ephemeral_1h_input_tokens", 0),
            cache_read=seen.get("cache_read_input_tokens", 0),
        )
        grown = now - self._reported
        if grown.total or grown.cache_write_1h:
            self._reported = now
            self._on_usage(grown)


class _Body:
    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """The body is complete."""


class _EventStream(_Body):
    """SSE: ``data:`` lines of ``message_start`` and ``message_delta`` events."""

    def __init__(self, on_usage: Callable[[Tokens], None]) -> None:
        self._usage = _Usage(on_usage)
        self._line = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                rest = data[start:]
                if not self._skipping:
                    self._line += rest
                    if len(self._line) > MAX_LINE_BYTES:
                        self._line.clear()
                        self._skipping = True
                return
            if self._skipping:
                self._skipping = False
            else:
                self._line += data[start:end]
                self._event_line(bytes(self._line))
            self._line.clear()
            start = end + 1

    def _event_line(self, line: bytes) -> None:
        if not line.startswith(b"data:") or b'"usage"' not in line:
            return
        try:
            event: Any = json.loads(line[5:])
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            self._usage.update(event["message"].get("usage"))
        elif event.get("type") == "message_delta":
            self._usage.update(event.get("usage"))


class _JsonMessage(_Body):
    """A non-streaming message: ``usage`` once the whole body is in."""

    def __init__(self, on_usage: Callable[[Tokens], None]) -> None:
        self._usage = _Usage(on_usage)
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        self._data += data
        if len(self._data) > MAX_JSON_BYTES:
            raise _Unreadable("a JSON response over 16 MiB")

    def finish(self) -> None:
        try:
            message: Any = json.loads(self._data)
        except ValueError:
            raise _Unreadable("a 200 JSON response that is not JSON") from None
        if isinstance(message, dict):
            self._usage.update(message.get("usage"))
