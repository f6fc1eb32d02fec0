"""The client-side connection: hello, auto-ack, de-duplication and gap detection."""

from __future__ import annotations

import json

import pytest

from kit.protocol.client import (
    ClientConnection,
    EventReceived,
    GapDetected,
    InterruptAcked,
    Welcomed,
)
from kit.protocol.errors import ProtocolError


def _event(seq: int, replay: bool = False) -> str:
    return json.dumps(
        {
            "type": "event",
            "seq": seq,
            "kind": "text_delta",
            "data": {"text": "x"},
            "replay": replay,
            "ts": 1,
        }
    )


def test_hello_carries_last_seq_and_resume_is_acked() -> None:
    """The client says hello with its last seq and acks a resuming welcome."""
    conn = ClientConnection("tok", last_seq=4)
    conn.start()
    assert json.loads(conn.data_to_send()[0]) == {"type": "hello", "token": "tok", "last_seq": 4}
    out = conn.receive_text('{"type":"welcome","session_id":"s","resume":"resuming","last_seq":9}')
    assert out == [Welcomed("s", "resuming", 9)]
    assert json.loads(conn.data_to_send()[0]) == {"type": "ack", "seq": 4}


def test_duplicates_are_dropped_and_gaps_reported() -> None:
    """Events already seen are dropped; a skipped seq is reported, not swallowed."""
    conn = ClientConnection("tok", last_seq=None)
    conn.start()
    conn.receive_text('{"type":"welcome","session_id":"s","resume":"none","last_seq":0}')
    assert isinstance(conn.receive_text(_event(1))[0], EventReceived)
    assert conn.receive_text(_event(1, replay=True)) == []
    assert conn.duplicates_dropped == 1
    assert conn.receive_text(_event(3)) == [GapDetected(expected=2, got=3)]
    assert conn.last_seq == 1


def test_unknown_frame_types_are_ignored() -> None:
    """Frames from a newer host that this client does not know are ignored."""
    conn = ClientConnection("tok")
    assert conn.receive_text('{"type":"future_thing","x":1}') == []


def _open(last_seq: int | None = None, welcome_last_seq: int = 0) -> ClientConnection:
    conn = ClientConnection("tok", last_seq=last_seq)
    conn.start()
    resume = "resuming" if welcome_last_seq > (last_seq or 0) else "none"
    conn.receive_text(
        json.dumps(
            {"type": "welcome", "session_id": "s", "resume": resume, "last_seq": welcome_last_seq}
        )
    )
    conn.data_to_send()
    return conn


def test_interrupt_acks_are_paired_with_interrupts() -> None:
    """Each interrupt_ack answers one interrupt sent; one more is a protocol violation."""
    conn = _open()
    conn.send_interrupt()
    assert json.loads(conn.data_to_send()[0]) == {"type": "interrupt"}
    ack = '{"type":"interrupt_ack","turn_id":"t2","interrupted":true}'
    assert conn.receive_text(ack) == [InterruptAcked("t2", True)]
    with pytest.raises(ProtocolError, match="not sent"):
        conn.receive_text(ack)


def test_malformed_interrupt_ack_is_a_violation() -> None:
    """An ack without a boolean interrupted (or with a non-string turn_id) is refused."""
    conn = _open()
    conn.send_interrupt()
    with pytest.raises(ProtocolError, match="boolean interrupted"):
        conn.receive_text('{"type":"interrupt_ack","turn_id":3,"interrupted":true}')
    with pytest.raises(ProtocolError, match="boolean interrupted"):
        conn.receive_text('{"type":"interrupt_ack","turn_id":null,"interrupted":"no"}')


def test_caught_up_once_the_replay_reaches_the_welcome() -> None:
    """A resuming connection is caught up only when it holds every event the welcome named."""
    conn = _open(last_seq=1, welcome_last_seq=3)
    progress = [conn.caught_up]
    for seq in (2, 3):
        conn.receive_text(_event(seq, replay=True))
        progress.append(conn.caught_up)
    assert progress == [False, False, True]
    assert _open(last_seq=2, welcome_last_seq=2).caught_up


def test_what_the_host_would_refuse_is_refused_at_the_call() -> None:
    """A user message or hello holding a lone surrogate (or an empty text) raises
    ProtocolError naming the field, and nothing is queued."""
    conn = _open()
    for msg_id, text, field in [
        ("m1", "half an emoji \ud83d", "user.text"),
        ("\udc00", "hi", "user.client_msg_id"),
        ("m1", "  ", "user.text"),
    ]:
        with pytest.raises(ProtocolError, match=field):
            conn.send_user(msg_id, text)
    assert conn.data_to_send() == []
    conn.send_user("m1", "a whole emoji \U0001f600")
    assert json.loads(conn.data_to_send()[0])["text"] == "a whole emoji \U0001f600"
    hello = ClientConnection("tok\ud800")
    with pytest.raises(ProtocolError, match=r"hello\.token is not valid Unicode"):
        hello.start()
    assert hello.data_to_send() == []
