"""Reading usage from upstream responses, sans-I/O: bytes in, token counts out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from emulator.model.replies import Reply, ToolCall
from emulator.model.sse import message_json, stream_events
from kit.bundle.limits import Tokens
from kit.host.usage import Call, UsageReader


class Seen:
    """Collects what one call reports."""

    def __init__(self) -> None:
        self.reports: list[Tokens] = []

    def __call__(self, tokens: Tokens) -> None:
        self.reports.append(tokens)

    @property
    def total(self) -> Tokens:
        out = Tokens()
        for t in self.reports:
            out += t
        return out


def _sse(reply: Reply, input_tokens: int = 1200) -> bytes:
    return b"".join(
        e.encode()
        for e in stream_events(reply, model="m", message_id="msg_1", input_tokens=input_tokens)
    )


def _chunked(body: bytes, size: int = 7) -> bytes:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def _response(
    body: bytes,
    *,
    kind: str = "text/event-stream",
    status: int = 200,
    chunked: bool = True,
    extra: str = "",
) -> bytes:
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {len(body)}"
    head = f"HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\n{framing}\r\n{extra}\r\n"
    return head.encode() + (_chunked(body) if chunked else body)


def _reader(*calls: Call) -> UsageReader:
    reader = UsageReader()
    for call in calls:
        reader.expect(call)
    return reader


def test_a_streamed_reply_reports_input_then_output() -> None:
    """message_start gives the input (and the first output token), message_delta the rest."""
    seen = Seen()
    reader = _reader(Call(True, seen))
    reader.feed(_response(_sse(Reply(text="Hello there, how are you today?"))))
    assert reader.broken is None
    assert seen.reports[0] == Tokens(input=1200, output=1)
    assert seen.total == Tokens(input=1200, output=7)


@pytest.mark.parametrize("piece", [1, 2, 5, 13, 4096])
def test_any_split_of_the_bytes_reads_the_same(piece: int) -> None:
    """However the stream is cut into reads, the counts are the same."""
    data = _response(
        _sse(Reply(text="a b c d e f", tool=ToolCall("toolu_1", "Bash", {"command": "ls"})))
    )
    whole, cut = Seen(), Seen()
    _reader(Call(True, whole)).feed(data)
    reader = _reader(Call(True, cut))
    for at in range(0, len(data), piece):
        reader.feed(data[at : at + piece])
    assert reader.broken is None
    assert cut.total == whole.total != Tokens()


def test_cache_counts_and_cumulative_deltas() -> None:
    """Cache writes (with their 1-hour part) and reads count; message_delta counts are
    cumulative, so a repeated or lower count adds nothing."""
    start = {
        "type": "message_start",
        "message": {
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": 5000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 200,
                    "ephemeral_1h_input_tokens": 100,
                },
                "output_tokens": 1,
            }
        },
    }
    deltas = [
        {"type": "message_delta", "usage": {"output_tokens": 40}},
        {"type": "message_delta", "usage": {"output_tokens": 40, "input_tokens": 10, "cache_read_input_tokens": 5000}},
        {"type": "message_delta", "usage": {"output_tokens": 90, "input_tokens": 3}},
    ]  # fmt: skip
    events: list[dict[str, Any]] = [start, *deltas]
    body = b"".join(
        b"event: %s\ndata: %s\n\n" % (str(e["type"]).encode(), json.dumps(e).encode())
        for e in events
    )
    seen = Seen()
    _reader(Call(True, seen)).feed(_response(body))
    assert seen.total == Tokens(
        input=10, output=90, cache_write=300, cache_write_1h=100, cache_read=5000
    )
    assert seen.total.total == 5400
    assert len(seen.reports) == 3  # the repeated counts reported nothing


def test_a_json_message_counts_once_complete() -> None:
    """A non-streaming reply (Content-Length) is counted when its body is in."""
    body = json.dumps(
        message_json(Reply(text="hi there"), model="m", message_id="msg_1", input_tokens=321)
    ).encode()
    data = _response(body, kind="application/json", chunked=False)
    seen = Seen()
    reader = _reader(Call(True, seen))
    reader.feed(data[:-1])
    assert seen.reports == []
    reader.feed(data[-1:])
    assert seen.total == Tokens(input=321, output=2)


def test_keep_alive_responses_go_to_their_own_calls() -> None:
    """Responses on one connection are matched to the calls in order; count_tokens answers
    and error responses are skipped, and the framing carries on after them."""
    first, count, failed, last = Seen(), Seen(), Seen(), Seen()
    reader = _reader(Call(True, first), Call(False, count), Call(True, failed), Call(True, last))
    error = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "usage"}})
    stream = (
        _response(_sse(Reply(text="one"), input_tokens=100))
        + _response(b'{"input_tokens": 999}', kind="application/json", chunked=False)
        + _response(error.encode(), kind="application/json", status=529, chunked=False)
        + _response(_sse(Reply(text="two two"), input_tokens=200))
    )
    reader.feed(stream)
    assert reader.broken is None
    assert first.total.input == 100
    assert (count.reports, failed.reports) == ([], [])
    assert last.total.input == 200


def test_an_interim_response_is_skipped() -> None:
    """A 100 Continue before the real response does not take the call."""
    seen = Seen()
    reader = _reader(Call(True, seen))
    reader.feed(b"HTTP/1.1 100 Continue\r\n\r\n" + _response(_sse(Reply(text="x"))))
    assert seen.total.input == 1200


def test_a_body_read_to_the_close() -> None:
    """A response with neither Content-Length nor chunking ends with the connection."""
    body = json.dumps(message_json(Reply(text="x"), model="m", message_id="m1", input_tokens=50))
    seen = Seen()
    reader = _reader(Call(True, seen))
    reader.feed(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + body.encode())
    assert seen.reports == []
    reader.eof()
    assert seen.total.input == 50


def test_a_long_content_line_is_skipped_unread() -> None:
    """A data line over 1 MiB (a big delta) is passed over, and the usage after it still counts."""
    big = (
        b"event: content_block_delta\ndata: " + b'{"usage":"' + b"x" * (2 * 1024 * 1024) + b'"}\n\n'
    )
    seen = Seen()
    reader = _reader(Call(True, seen))
    reader.feed(_response(big + _sse(Reply(text="after"), input_tokens=77)))
    assert reader.broken is None
    assert seen.total.input == 77


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\ncontent-length: 3\r\n\r\nabc", "a compressed response"),
        (b"NOT HTTP\r\n\r\n", "a malformed status line"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "a chunk size that is not hex"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", "a response to no forwarded request"),
        (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\n\r\nnot", "a 200 JSON response that is not JSON"),
    ],
)  # fmt: skip
def test_what_cannot_be_read_is_broken(data: bytes, why: str) -> None:
    """Bytes that cannot be framed or read mark the reader broken, saying why; it reads no more."""
    reader = _reader(Call(True, Seen()))
    reader.feed(data)
    assert reader.broken == why
    reader.feed(_response(_sse(Reply(text="x"))))
    assert reader.broken == why
