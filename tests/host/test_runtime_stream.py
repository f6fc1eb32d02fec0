"""The host reads a turn's NDJSON stream line by line, whatever its chunking, within a cap
on a line's length (kit/host/runtime_client.py)."""

from __future__ import annotations

import asyncio

import pytest

from kit.host.runtime_client import READ_PIECE, _ndjson_batches

CHUNKED = {"transfer-encoding": "chunked"}


def _reader(body: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 20)
    reader.feed_data(body)
    reader.feed_eof()
    return reader


def _chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


async def _lines(body: bytes, headers: dict[str, str], max_line: int = 1 << 20) -> list[str]:
    return [
        line async for batch in _ndjson_batches(_reader(body), headers, max_line) for line in batch
    ]


async def test_lines_split_across_chunks_come_out_whole() -> None:
    """One-byte chunks, a line spanning chunks, blank lines, a last line without newline."""
    text = b'{"a": 1}\n\n{"b": "\xc3\xa9"}\n{"c": 3}'
    assert await _lines(_chunked(*(text[i : i + 1] for i in range(len(text)))), CHUNKED) == [
        '{"a": 1}',
        '{"b": "é"}',
        '{"c": 3}',
    ]
    assert await _lines(text, {}) == ['{"a": 1}', '{"b": "é"}', '{"c": 3}']


async def test_a_line_over_the_cap_is_refused_before_it_is_all_read() -> None:
    """A line longer than the cap is a ValueError (the host takes the sandbox as lost),
    whether it ends or not, in one chunk or many; so is a chunk that says it is bigger
    than what follows, read a piece at a time rather than held."""
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        await _lines(_chunked(b"x" * 60, b"x" * 60, b"\n"), CHUNKED, max_line=100)
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        await _lines(_chunked(b"x" * 101 + b"\n{}\n"), CHUNKED, max_line=100)
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        await _lines(_chunked(b"{}\n" + b"y" * 101), CHUNKED, max_line=100)
    huge = b"7fffffff\r\n" + b"z" * (2 * READ_PIECE)  # then the stream ends
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        await _lines(huge, CHUNKED, max_line=100)
    with pytest.raises(asyncio.IncompleteReadError):
        await _lines(b"7fffffff\r\n" + b"{}\n" * 10, CHUNKED)
    with pytest.raises(UnicodeDecodeError):
        await _lines(_chunked(b"\xff\n"), CHUNKED)


async def test_a_body_of_known_length_ends_there() -> None:
    """An answer framed by ``content-length`` ends at its length: what follows on a kept
    connection (the next answer) is left unread, and a body cut short is an error. (Broken
    on purpose once: read to the connection's end → the next answer's bytes came out as
    lines of this one.)"""
    body = b'{"a": 1}\n{"b": 2}\n'
    reader = _reader(body + b"HTTP/1.1 200 OK\r\n\r\n")
    lines = [
        line
        async for batch in _ndjson_batches(reader, {"content-length": str(len(body))})
        for line in batch
    ]
    assert lines == ['{"a": 1}', '{"b": 2}']
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 OK\r\n\r\n"
    with pytest.raises(asyncio.IncompleteReadError):
        await _lines(body, {"content-length": str(len(body) + 5)})
    with pytest.raises(ValueError, match="content-length"):
        await _lines(body, {"content-length": "-1"})
