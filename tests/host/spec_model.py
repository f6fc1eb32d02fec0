"""A model of docs/protocol.md §3, §5 and §8 for one session: what the host answers to each
message a client sends, given where the connection is.

It is written from the spec, not from ``kit.protocol``: the fuzz test (test_ws_fuzz.py)
checks the real host against it. What a message means as JSON is given with it (the test
builds both together), so no parser decides the expected answer either.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# The spec's numbers, restated (§3, §8).
MAX_FRAME_BYTES = 262_144
WS_MAX_BYTES = 1024 * 1024
MAX_TEXT_CHARS = 100_000
MAX_ID_CHARS = 128
MAX_TOKEN_CHARS = 512
MAX_SEQ = 2**63 - 1
TYPES = ("hello", "user", "ack", "interrupt", "ping")


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()
"""In an expected frame: any value."""


class NotJson:
    """What a text that is not valid JSON (or nests too deeply) means."""

    def __repr__(self) -> str:
        return "NotJson()"


@dataclass(frozen=True)
class Message:
    """One WebSocket message from the client: ``text`` (with ``value``, what it means as
    JSON, or :class:`NotJson`), ``binary``, or ``not_utf8``: a text message whose bytes
    are not UTF-8."""

    text: str | None = None
    value: Any = None
    binary: bytes | None = None
    not_utf8: bytes | None = None


class State(enum.Enum):
    """Where a connection is (§5)."""

    AWAIT_HELLO = "await_hello"
    HANDSHAKE = "handshake"
    LIVE = "live"
    CLOSED = "closed"


@dataclass
class Session:
    """What the model knows of the session: its token and its stored events (as frames
    without ``type`` and ``replay``); no turn is open."""

    session_id: str
    token: str
    events: list[dict[str, Any]]


@dataclass
class Connection:
    """One connection's place in the handshake; ``session`` is None for an unknown id."""

    session: Session | None
    state: State = State.AWAIT_HELLO
    hello_last_seq: int = 0


@dataclass
class Answer:
    """What the host sends back (in order) and the close code it ends with, if any.

    ``stores`` marks a message the host applies (a new user message): the fuzz test does
    not send those, since they change the log by design.
    """

    frames: list[dict[str, Any]] = field(default_factory=list)
    close: int | None = None
    stores: bool = False


def _error(code: str, close: int | None = None) -> Answer:
    return Answer([{"type": "error", "code": code, "message": ANY}], close)


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string in ``value`` (keys included, at any depth) holds a surrogate."""
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    return False


def _is_seq(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_SEQ


def _is_string(value: Any, limit: int) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= limit


def answer(message: Message, conn: Connection) -> Answer:
    """What the host answers to ``message`` on ``conn``; advances ``conn`` as the host
    would (a message that ``stores`` is assumed not sent and changes nothing)."""
    result = _answer(message, conn)
    if result.close is not None:
        conn.state = State.CLOSED
    return result


def _answer(message: Message, conn: Connection) -> Answer:
    if message.binary is not None:
        return _error("bad_frame")
    if message.not_utf8 is not None:
        return Answer([], 1007)  # the transport refuses it: no error frame
    assert message.text is not None
    size = len(message.text.encode("utf-8"))
    if size > WS_MAX_BYTES:
        return Answer([], 1009)  # the transport cuts it off: no error frame
    if size > MAX_FRAME_BYTES:
        return _error("too_large", 1009)
    value = message.value
    if isinstance(value, NotJson):
        return _error("bad_json")
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return _error("bad_frame")
    if has_lone_surrogate(value):
        return _error("bad_frame")
    kind = value["type"]
    if kind not in TYPES:
        return _error("unknown_type")
    if kind == "hello":
        last_seq = value.get("last_seq")
        if not _is_string(value.get("token"), MAX_TOKEN_CHARS) or not (
            last_seq is None or _is_seq(last_seq)
        ):
            return _error("bad_frame")
    if kind == "user":
        text = value.get("text")
        if not _is_string(value.get("client_msg_id"), MAX_ID_CHARS):
            return _error("bad_frame")
        if not isinstance(text, str) or not text.strip():
            return _error("bad_frame")
        if len(text) > MAX_TEXT_CHARS:
            return _error("too_large", 1009)
    if kind == "ack" and not _is_seq(value.get("seq")):
        return _error("bad_frame")
    # A valid frame: what it does depends on the connection.
    if kind == "ping":
        return Answer([{"type": "pong"}])
    if kind == "hello":
        return _hello(value, conn)
    if conn.state is State.AWAIT_HELLO:
        return _error("hello_required")
    if kind == "user":
        return Answer(stores=True)
    if kind == "interrupt":  # no turn is ever open in the model
        return Answer([{"type": "interrupt_ack", "turn_id": None, "interrupted": False}])
    assert kind == "ack"
    if conn.state is State.HANDSHAKE:
        conn.state = State.LIVE
        assert conn.session is not None
        replay = [e for e in conn.session.events if e["seq"] > conn.hello_last_seq]
        return Answer([{"type": "event", **e, "replay": True} for e in replay])
    return Answer()


def _hello(value: dict[str, Any], conn: Connection) -> Answer:
    if conn.state is not State.AWAIT_HELLO:
        return _error("already_hello")
    session = conn.session
    if session is None:
        return _error("unknown_session", 4404)
    if value["token"] != session.token:
        return _error("unauthorized", 4401)
    have = value.get("last_seq") or 0
    last = len(session.events)
    if have > last:
        return _error("seq_ahead", 4400)
    conn.hello_last_seq = have
    conn.state = State.HANDSHAKE if last > have else State.LIVE
    welcome = {
        "type": "welcome",
        "protocol": 1,
        "session_id": session.session_id,
        "resume": "resuming" if last > have else "none",
        "last_seq": last,
    }
    return Answer([welcome])


def matches(expected: dict[str, Any], got: dict[str, Any]) -> bool:
    """Whether ``got`` is ``expected`` (same keys; :data:`ANY` takes any value)."""
    if expected.keys() != got.keys():
        return False
    return all(v is ANY or got[k] == v for k, v in expected.items())
