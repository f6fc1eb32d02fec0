"""Reading ``wrangler dev``'s output: its ready URL, without its colour codes."""

from __future__ import annotations

import asyncio

import pytest

from kit.cli.errors import CliError
from kit.cli.wrangler import keep_reading, ready_url


def _stream(text: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(text)
    reader.feed_eof()
    return reader


async def test_the_ready_url_and_the_kept_lines_have_no_colour_codes() -> None:
    """wrangler colours its lines; kit keeps (and may show) them plain, and reads the URL."""
    out = _stream(
        b"\x1b[33m\xe2\x96\xb2 [WARNING]\x1b[0m port busy\n"
        b"\x1b[32m[wrangler:info]\x1b[0m Ready on \x1b[1mhttp://127.0.0.1:8787\x1b[22m\n"
        b"\x1b[2Kafter\n"
    )
    tail: list[str] = []
    assert await ready_url(out, tail) == "http://127.0.0.1:8787"
    await keep_reading(out, tail)
    assert tail == [
        "▲ [WARNING] port busy",
        "[wrangler:info] Ready on http://127.0.0.1:8787",
        "after",
    ]


async def test_wrangler_ending_before_ready_is_one_error() -> None:
    """No Ready line before the output ends: a CliError, the lines read kept."""
    tail: list[str] = []
    with pytest.raises(CliError, match="wrangler exited"):
        await ready_url(_stream(b"\x1b[31mX [ERROR]\x1b[0m Address in use\n"), tail)
    assert tail == ["X [ERROR] Address in use"]
