"""Client frame parsing and validation: data in, frames or stable error codes out."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.protocol import errors as e
from kit.protocol.errors import ProtocolError
from kit.protocol.frames import (
    MAX_FRAME_BYTES,
    MAX_TEXT_CHARS,
    Ack,
    Hello,
    Interrupt,
    Ping,
    User,
    encode_client_frame,
    parse_client_frame,
)


def _code(text: str) -> tuple[str, int | None]:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(text)
    return info.value.code, info.value.close_code


def _outcome(text: str) -> str | None:
    """None when ``text`` parses, else the error code (any other exception propagates)."""
    try:
        parse_client_frame(text)
    except ProtocolError as exc:
        return exc.code
    return None


@pytest.mark.parametrize(
    "frame",
    [Hello("tok", None), Hello("tok", 7), User("m1", "hi"), Ack(3), Interrupt(), Ping()],
)
def test_round_trip(frame: object) -> None:
    """Every client frame encodes to JSON that parses back to the same frame."""
    assert parse_client_frame(encode_client_frame(frame)) == frame  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", e.BAD_JSON),
        ("[1,2]", e.BAD_FRAME),
        ('{"type": 3}', e.BAD_FRAME),
        ('{"kind": "user"}', e.BAD_FRAME),
        ('{"type": "shout"}', e.UNKNOWN_TYPE),
        ('{"type": "hello"}', e.BAD_FRAME),
        ('{"type": "hello", "token": ""}', e.BAD_FRAME),
        ('{"type": "hello", "token": "t", "last_seq": -1}', e.BAD_FRAME),
        ('{"type": "hello", "token": "t", "last_seq": true}', e.BAD_FRAME),
        ('{"type": "hello", "token": "t", "last_seq": "3"}', e.BAD_FRAME),
        ('{"type": "user", "text": "hi"}', e.BAD_FRAME),
        ('{"type": "user", "client_msg_id": "m", "text": "   "}', e.BAD_FRAME),
        ('{"type": "user", "client_msg_id": "m", "text": 5}', e.BAD_FRAME),
        ('{"type": "ack"}', e.BAD_FRAME),
        ('{"type": "ack", "seq": 1.5}', e.BAD_FRAME),
    ],
)
def test_bad_frames_have_stable_codes(text: str, code: str) -> None:
    """Malformed frames raise ProtocolError with the documented code and keep the socket open."""
    assert _code(text) == (code, None)


def test_oversized_frame_closes_1009() -> None:
    """A frame over MAX_FRAME_BYTES is too_large and closes the socket with 1009."""
    text = json.dumps({"type": "user", "client_msg_id": "m", "text": "x" * MAX_FRAME_BYTES})
    assert _code(text) == (e.TOO_LARGE, 1009)


def test_multibyte_size_counts_bytes() -> None:
    """The size limit is in UTF-8 bytes, not characters."""
    text = json.dumps({"type": "ping", "pad": "é" * (MAX_FRAME_BYTES // 2 + 1)}, ensure_ascii=False)
    assert len(text) < MAX_FRAME_BYTES
    assert _code(text)[0] == e.TOO_LARGE


def test_text_over_limit_is_too_large() -> None:
    """user.text longer than MAX_TEXT_CHARS is refused even inside the frame limit."""
    text = json.dumps({"type": "user", "client_msg_id": "m", "text": "x" * (MAX_TEXT_CHARS + 1)})
    assert _code(text)[0] == e.TOO_LARGE


def test_unknown_fields_are_ignored() -> None:
    """Extra fields do not break parsing (the protocol extends, never breaks)."""
    assert parse_client_frame('{"type":"ack","seq":2,"new_field":{}}') == Ack(2)


@given(st.text(max_size=300))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    """Arbitrary text either parses or raises ProtocolError, never anything else."""
    code = _outcome(text)
    assert code in {None, e.BAD_JSON, e.BAD_FRAME, e.UNKNOWN_TYPE, e.TOO_LARGE}


@given(
    st.dictionaries(
        st.sampled_from(["type", "token", "last_seq", "client_msg_id", "text", "seq"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=20),
            st.sampled_from(["hello", "user", "ack", "ping", "interrupt"]),
        ),
    )
)
def test_any_object_parses_or_fails_cleanly(obj: dict[str, object]) -> None:
    """Arbitrary JSON objects with plausible keys parse or raise ProtocolError."""
    assert _outcome(json.dumps(obj)) in {None, e.BAD_FRAME, e.UNKNOWN_TYPE}
