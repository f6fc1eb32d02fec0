"""The golden transcripts that need no agent, replayed against ServerConnection with a
minimal reference host (token check, empty log, so no turn to interrupt)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kit.protocol import errors as e
from kit.protocol.golden import load_golden, matches
from kit.protocol.server import HelloReceived, InterruptRequested, ServerConnection

VARS = {"token": "good-token", "session_id": "s-golden"}


def _replay(name: str) -> None:
    conn: ServerConnection | None = None
    pending: list[Any] = []
    for step in load_golden(name):
        if step.action == "ignore":
            continue
        if step.action == "connect":
            conn, pending = ServerConnection(VARS["session_id"]), []
            continue
        assert conn is not None
        if step.action in ("send", "send_raw"):
            text = step.value if step.action == "send_raw" else json.dumps(step.value)
            text = text.replace('"$token"', json.dumps(VARS["token"]))
            for item in conn.receive_text(text):
                if isinstance(item, HelloReceived):
                    if item.token != VARS["token"]:
                        conn.reject(e.UNAUTHORIZED, "Wrong session token.", e.CLOSE_UNAUTHORIZED)
                    else:
                        conn.accept("none", 0)
                elif isinstance(item, InterruptRequested):
                    conn.acknowledge_interrupt(None, False)  # the empty log has no turn
            pending.extend(json.loads(f) for f in conn.data_to_send())
        elif step.action == "expect":
            assert pending, f"{name}: expected {step.value}, host sent nothing"
            frame = pending.pop(0)
            assert matches(step.value, frame, VARS), f"{name}: {frame} does not match {step.value}"
        elif step.action == "expect_close":
            assert conn.close_code == step.value


@pytest.mark.parametrize("name", ["bad_input", "oversize", "interrupt"])
def test_golden_transcript(name: str) -> None:
    """The host side of the transcript is reproduced frame by frame."""
    _replay(name)


def test_matcher_catches_a_wrong_code() -> None:
    """The golden matcher is strict about the values a pattern names."""
    assert matches({"type": "error", "code": "x"}, {"type": "error", "code": "x", "extra": 1}, {})
    assert not matches({"type": "error", "code": "x"}, {"type": "error", "code": "y"}, {})
    assert not matches({"data": {"a": 1}}, {"data": {}}, {})
    assert matches({"s": "$session_id"}, {"s": "s-golden"}, VARS)
