"""The client-side connection: hello, auto-ack, de-duplication and gap detection."""

from __future__ import annotations

import json

from kit.protocol.client import ClientConnection, EventReceived, GapDetected, Welcomed


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
