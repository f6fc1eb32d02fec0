"""The host-side connection state machine, data in and frames out."""

from __future__ import annotations

import json

import pytest

from kit.protocol import errors as e
from kit.protocol.errors import InvalidStateError
from kit.protocol.frames import Event
from kit.protocol.server import (
    Acked,
    ConnectionState,
    HandshakeAcked,
    HelloReceived,
    InterruptRequested,
    ServerConnection,
    UserReceived,
)


def _frames(conn: ServerConnection) -> list[dict[str, object]]:
    return [json.loads(f) for f in conn.data_to_send()]


def test_new_session_is_live_after_welcome() -> None:
    """hello → accept(none) → welcome, and the connection is live at once."""
    conn = ServerConnection("s1")
    assert conn.receive_text('{"type":"hello","token":"t","last_seq":null}') == [
        HelloReceived("t", None)
    ]
    conn.accept("none", 0)
    assert _frames(conn) == [
        {"type": "welcome", "protocol": 1, "session_id": "s1", "resume": "none", "last_seq": 0}
    ]
    assert conn.state is ConnectionState.LIVE


def test_resume_waits_for_ack_then_goes_live() -> None:
    """With resume=resuming the host waits for ack before replaying."""
    conn = ServerConnection("s1")
    conn.receive_text('{"type":"hello","token":"t","last_seq":2}')
    conn.accept("resuming", 5)
    assert conn.state is ConnectionState.HANDSHAKE
    assert conn.receive_text('{"type":"ack","seq":2}') == [HandshakeAcked(2)]
    conn.send_event(Event(3, "text_delta", {"text": "a"}, 0), replay=True)
    conn.go_live()
    assert conn.state.value == "live"
    assert conn.receive_text('{"type":"ack","seq":3}') == [Acked(3)]
    frames = _frames(conn)
    assert frames[-1]["replay"] is True
    assert frames[-1]["seq"] == 3


def test_messages_before_hello_are_refused_without_closing() -> None:
    """user/ack/interrupt before hello get hello_required; the socket stays open."""
    conn = ServerConnection("s1")
    for text in (
        '{"type":"user","client_msg_id":"m","text":"x"}',
        '{"type":"ack","seq":1}',
        '{"type":"interrupt"}',
    ):
        assert conn.receive_text(text) == []
    assert [f["code"] for f in _frames(conn)] == [e.HELLO_REQUIRED] * 3
    assert conn.close_code is None


def test_a_lone_surrogate_changes_no_state() -> None:
    """A hello or user holding a lone surrogate gets bad_frame and leaves the connection
    where it was: a good hello still works, and no user message reaches the host."""
    conn = ServerConnection("s1")
    assert conn.receive_text('{"type":"hello","token":"t\\ud800","last_seq":null}') == []
    assert conn.state is ConnectionState.AWAIT_HELLO
    assert conn.receive_text('{"type":"hello","token":"t","last_seq":null}') == [
        HelloReceived("t", None)
    ]
    conn.accept("none", 0)
    assert conn.receive_text('{"type":"user","client_msg_id":"m","text":"\\udc00"}') == []
    assert conn.state.value == "live"
    assert conn.close_code is None
    assert [f.get("code", f["type"]) for f in _frames(conn)] == [
        e.BAD_FRAME,
        "welcome",
        e.BAD_FRAME,
    ]


def test_ping_is_answered_in_any_state() -> None:
    """ping gets pong before and after hello."""
    conn = ServerConnection("s1")
    conn.receive_text('{"type":"ping"}')
    conn.receive_text('{"type":"hello","token":"t","last_seq":null}')
    conn.accept("none", 0)
    conn.receive_text('{"type":"ping"}')
    assert [f["type"] for f in _frames(conn)] == ["pong", "welcome", "pong"]


def test_reject_closes_with_code() -> None:
    """A wrong token → error unauthorized and close 4401; later input is ignored."""
    conn = ServerConnection("s1")
    conn.receive_text('{"type":"hello","token":"bad","last_seq":null}')
    conn.reject(e.UNAUTHORIZED, "Wrong session token.", e.CLOSE_UNAUTHORIZED)
    assert conn.close_code == e.CLOSE_UNAUTHORIZED
    assert conn.state is ConnectionState.CLOSED
    assert conn.receive_text('{"type":"user","client_msg_id":"m","text":"x"}') == []
    assert [f["code"] for f in _frames(conn)] == [e.UNAUTHORIZED]


def test_last_seq_past_the_log_is_refused() -> None:
    """A client claiming events the host never wrote gets seq_ahead and close 4400."""
    conn = ServerConnection("s1")
    conn.receive_text('{"type":"hello","token":"t","last_seq":9}')
    conn.accept("none", 3)
    assert conn.close_code == e.CLOSE_BAD_REQUEST
    assert _frames(conn)[0]["code"] == e.SEQ_AHEAD


def test_live_inputs_reach_the_host() -> None:
    """user and interrupt after hello are handed to the host."""
    conn = ServerConnection("s1")
    conn.receive_text('{"type":"hello","token":"t","last_seq":null}')
    conn.accept("none", 0)
    assert conn.receive_text('{"type":"user","client_msg_id":"m","text":"x"}') == [
        UserReceived("m", "x")
    ]
    assert conn.receive_text('{"type":"interrupt"}') == [InterruptRequested()]


def test_wrong_state_calls_name_the_state() -> None:
    """Calling accept/go_live/send_event in the wrong state raises InvalidStateError naming it."""
    conn = ServerConnection("s1")
    with pytest.raises(InvalidStateError, match="await_hello"):
        conn.accept("none", 0)
    with pytest.raises(InvalidStateError, match="await_hello"):
        conn.go_live()
    with pytest.raises(InvalidStateError, match="await_hello"):
        conn.send_event(Event(1, "user", {}, 0), replay=False)


def test_oversize_frame_closes_1009() -> None:
    """An oversized frame is reported and closes the connection with 1009."""
    conn = ServerConnection("s1")
    conn.receive_text('{"type":"ping","pad":"' + "x" * 300_000 + '"}')
    assert conn.close_code == e.CLOSE_TOO_LARGE
    assert _frames(conn)[0]["code"] == e.TOO_LARGE


def test_each_interrupt_gets_one_ack_in_order() -> None:
    """Interrupts are answered one by one with interrupt_ack; an extra ack is refused."""
    conn = ServerConnection("s1")
    conn.receive_text('{"type":"hello","token":"t","last_seq":null}')
    conn.accept("none", 0)
    conn.data_to_send()
    conn.receive_text('{"type":"interrupt"}')
    conn.receive_text('{"type":"interrupt"}')
    conn.acknowledge_interrupt("t1", True)
    conn.acknowledge_interrupt(None, False)
    assert _frames(conn) == [
        {"type": "interrupt_ack", "turn_id": "t1", "interrupted": True},
        {"type": "interrupt_ack", "turn_id": None, "interrupted": False},
    ]
    with pytest.raises(InvalidStateError, match="did not send"):
        conn.acknowledge_interrupt(None, False)


def test_no_ack_on_a_closed_connection() -> None:
    """An interrupt answered after the connection closed raises, naming the state."""
    conn = ServerConnection("s1")
    conn.receive_text('{"type":"hello","token":"t","last_seq":null}')
    conn.accept("none", 0)
    conn.receive_text('{"type":"interrupt"}')
    conn.close(e.SHUTTING_DOWN, "Bye.", e.CLOSE_GOING_AWAY)
    with pytest.raises(InvalidStateError, match="closed"):
        conn.acknowledge_interrupt(None, False)
