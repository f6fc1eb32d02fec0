"""Connection caps and the quiet log of failed accepts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from kit.host.gate import ConnectionGate, quiet_accept_errors

ACCEPT_ERROR = "socket.accept() out of system resource"


def test_the_gate_counts_unproven_and_per_token_connections() -> None:
    """A connection counts as unproven until it shows a token, then under that token; over
    either cap it is turned away; leaving frees its place once."""
    gate = ConnectionGate(unproven=2, per_token=1)
    a, b = gate.enter(), gate.enter()
    assert a is not None
    assert b is not None
    assert gate.enter() is None
    assert a.prove(b"t")
    assert gate.unproven == 1
    assert gate.open_for(b"t") == 1
    assert not b.prove(b"t")  # the token's cap
    assert b.prove(b"u")
    assert not a.prove(b"u")  # one token per connection
    a.leave()
    a.leave()
    assert gate.open_for(b"t") == 0
    assert gate.unproven == 0
    c = gate.enter()
    assert c is not None
    assert c.prove(b"t")


async def test_failed_accepts_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flood of failed accept() reports gives one log line without a traceback; other
    reports still reach the handler that was there before."""
    loop = asyncio.get_running_loop()
    others: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: others.append(context))
    try:
        quiet_accept_errors(loop)
        quiet_accept_errors(loop)  # a second proxy on the same loop changes nothing
        with caplog.at_level(logging.ERROR, logger="kit.host"):
            for _ in range(1000):
                loop.call_exception_handler(
                    {"message": ACCEPT_ERROR, "exception": OSError(24, "Too many open files")}
                )
        lines = [r for r in caplog.records if "cannot accept connections" in r.message]
        assert len(lines) == 1
        assert lines[0].exc_info is None
        loop.call_exception_handler({"message": "something else"})
        assert [c["message"] for c in others] == ["something else"]
    finally:
        loop.set_exception_handler(previous)
