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
    MAX_SEQ,
    MAX_TEXT_CHARS,
    Ack,
    Event,
    Hello,
    Interrupt,
    Ping,
    User,
    encode_client_frame,
    event_frame,
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
    assert _code(text) == (e.TOO_LARGE, e.CLOSE_TOO_LARGE)


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


# -- strings that are not Unicode, numbers that are not seqs ----------------------------

GOOD_USER = {"type": "user", "client_msg_id": "m1", "text": "hi"}


@pytest.mark.parametrize(
    ("frame", "names"),
    [
        ({"type": "hello", "token": "tok\ud800", "last_seq": None}, "hello.token"),
        ({**GOOD_USER, "client_msg_id": "\udfff"}, "user.client_msg_id"),
        ({**GOOD_USER, "text": "half an emoji: \ud83d"}, "user.text"),
        ({"type": "ping\udc00"}, "frame.type"),
        ({"type": "ack", "seq": 1, "note": "\ud800"}, "ack.note"),
        ({"type": "ping", "new": [1, {"deep": ["ok", "x\udc00"]}]}, "ping.new[1].deep[1]"),
        ({"type": "interrupt", "\ud800": 1}, "A key in the frame"),
        ({"type": "shout", "text": "\ud800"}, "frame.text"),
    ],
)
def test_lone_surrogates_are_bad_frames_naming_the_field(
    frame: dict[str, object], names: str
) -> None:
    """A string holding a lone surrogate (JSON's \\ud800 escape, as a browser sends half an
    emoji), in any field, ignored ones and keys included, is bad_frame naming where it is
    and the fix; the socket stays open."""
    text = json.dumps(frame)  # ASCII: the surrogate travels as a \u escape
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(text)
    assert (info.value.code, info.value.close_code) == (e.BAD_FRAME, None)
    assert names in info.value.message
    assert "not valid Unicode (a lone surrogate at character" in info.value.message
    assert info.value.message.endswith("send UTF-8 text.")


def test_surrogate_pairs_are_one_character() -> None:
    """An escaped surrogate pair is one valid character (an emoji), counted once."""
    text = json.dumps({**GOOD_USER, "client_msg_id": "\U0001f600" * 128})
    assert "\\ud83d\\ude00" in text
    frame = parse_client_frame(text)
    assert isinstance(frame, User)
    assert frame.client_msg_id == "\U0001f600" * 128


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant: str) -> None:
    """NaN and Infinity are not JSON (Python's json accepts them; JSON.parse does not)."""
    assert _code('{"type":"ping","x":' + constant + "}") == (e.BAD_JSON, None)


@pytest.mark.parametrize(
    ("literal", "ok"),
    [
        (str(MAX_SEQ), True),
        ("0", True),
        ("-0", True),
        (str(MAX_SEQ + 1), False),
        ("9" * 25, False),
        ("9" * 5000, False),  # past Python's 4300-digit int limit: not bad_json
        ("-" + "9" * 5000, False),
        ("1e999", False),
        ("1E2", False),
        ("2.0", False),
    ],
)
def test_seqs_are_integers_up_to_max_seq(literal: str, ok: bool) -> None:
    """hello.last_seq and ack.seq are integers from 0 to 2**63 - 1; anything else, however
    long its digits, is bad_frame rather than bad_json or a host fault."""
    ack = '{"type":"ack","seq":' + literal + "}"
    hello = '{"type":"hello","token":"t","last_seq":' + literal + "}"
    if ok:
        assert parse_client_frame(ack) == Ack(int(literal))
        assert parse_client_frame(hello) == Hello("t", int(literal))
    else:
        assert _code(ack) == (e.BAD_FRAME, None)
        assert _code(hello) == (e.BAD_FRAME, None)


def test_long_numbers_in_ignored_fields_are_ignored() -> None:
    """A 5000-digit number or 1e999 in a field the host ignores does not matter."""
    digits = "7" * 5000
    frame = '{"type":"ping","a":' + digits + ',"b":1e999,"c":-' + digits + "}"
    assert parse_client_frame(frame) == Ping()


def test_deep_nesting_is_bad_json() -> None:
    """Nesting past what the parser takes is bad_json, not a host fault."""
    depth = 100_000
    assert _code('{"type":"ping","x":' + "[" * depth + "]" * depth + "}") == (e.BAD_JSON, None)


def test_a_key_given_twice_counts_with_its_last_value() -> None:
    """Duplicate keys: the last one wins, as in JSON.parse."""
    assert parse_client_frame('{"type":"ack","seq":"x","seq":4}') == Ack(4)
    assert _code('{"type":"ack","seq":4,"seq":"x"}') == (e.BAD_FRAME, None)
    assert _code('{"type":"ping","type":"shout"}') == (e.UNKNOWN_TYPE, None)


SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
# A list, not st.text(alphabet=...): text() leaves surrogates out of a merged alphabet.
JSON_STRINGS = st.lists(st.characters() | SURROGATES, max_size=8).map("".join)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | JSON_STRINGS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_STRINGS, inner, max_size=3),
    max_leaves=10,
)


@given(
    st.sampled_from(["hello", "user", "ack", "interrupt", "ping", "shout"]),
    st.fixed_dictionaries(
        {"token": JSON_STRINGS, "client_msg_id": JSON_STRINGS, "text": JSON_STRINGS},
        optional={"last_seq": JSON_VALUES, "seq": JSON_VALUES},
    ),
    st.dictionaries(JSON_STRINGS, JSON_VALUES, max_size=3),
)
def test_whatever_parses_can_be_stored(
    kind: str, fields: dict[str, object], extra: dict[str, object]
) -> None:
    """Any object, strings with lone surrogates included, parses or fails with a code; and
    what parses encodes as UTF-8 (so no store or socket can choke on it)."""
    text = json.dumps({**extra, **fields, "type": kind}, allow_nan=False)
    code = _outcome(text)
    assert code in {None, e.BAD_FRAME, e.UNKNOWN_TYPE, e.TOO_LARGE}
    if code is None:
        encode_client_frame(parse_client_frame(text)).encode("utf-8")


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(
    kind=st.text(max_size=20),
    turn_id=st.none() | st.text(max_size=20),
    data=st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=5),
    seq=st.integers(1, MAX_SEQ),
    replay=st.booleans(),
    stored=st.booleans(),
)
def test_an_event_frame_says_exactly_the_event(
    kind: str, turn_id: str | None, data: dict[str, object], seq: int, replay: bool, stored: bool
) -> None:
    """The frame is built from pieces made once per event (the data's stored JSON, plain
    kinds quoted by hand): whatever the event holds, a client reads back just that."""
    data_json = json.dumps(data, ensure_ascii=False) if stored else None
    event = Event(
        seq=seq, kind=kind, data=data, ts=1_700_000_000_000, turn_id=turn_id, data_json=data_json
    )
    for flag in (replay, not replay):  # the second frame reuses the first one's pieces
        assert json.loads(event_frame(event, replay=flag)) == {
            "type": "event",
            "seq": seq,
            "kind": kind,
            "data": data,
            "replay": flag,
            "ts": 1_700_000_000_000,
            "turn_id": turn_id,
        }


def test_only_events_read_from_storage_keep_their_frame() -> None:
    """An event with its stored JSON (the SQLite and DO logs make one per read) keeps its
    frame for the next socket; one without (the S3 log keeps its events in memory for the
    session's life) keeps nothing more than it had."""
    read = Event(seq=1, kind="text_delta", data={"text": "hi"}, ts=1, data_json='{"text":"hi"}')
    kept = Event(seq=1, kind="text_delta", data={"text": "hi"}, ts=1)
    assert event_frame(read, replay=False) == event_frame(kept, replay=False)
    assert read._frame is not None
    assert kept._frame is None
