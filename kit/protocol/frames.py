"""Session protocol v1 frames: parsing and validation of client frames, encoding of host frames.

Every frame is one JSON object in one WebSocket text message. Unknown fields are ignored
(so the protocol can be extended without breaking old peers); unknown ``type`` values are
an error. Every string in a client frame, keys included, must be valid Unicode: JSON's
``\\ud800`` escapes can spell a lone UTF-16 surrogate, which no UTF-8 store can hold, so
such a frame is ``bad_frame`` however deep the string sits. See docs/protocol.md for the
whole protocol.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from kit.protocol import errors as e
from kit.protocol.errors import ProtocolError

PROTOCOL_VERSION = 1

MAX_FRAME_BYTES = 256 * 1024
"""A client frame larger than this (UTF-8 bytes) is refused with ``too_large`` and close 1009."""

MAX_TEXT_CHARS = 100_000
"""The longest ``user.text`` accepted."""

MAX_ID_CHARS = 128
"""The longest ``client_msg_id`` accepted."""

MAX_TOKEN_CHARS = 512
"""The longest ``hello.token`` accepted."""

MAX_SEQ = 2**63 - 1
"""The largest ``hello.last_seq`` and ``ack.seq`` accepted: logs keep seqs as signed 64-bit
integers."""

_MAX_INT_LITERAL = len(str(MAX_SEQ)) + 1
"""Integer literals longer than this (sign included) are past :data:`MAX_SEQ` and are not
converted at all: Python refuses ints of over 4300 digits and converts long ones slowly."""

CLIENT_FRAME_TYPES = ("hello", "user", "ack", "interrupt", "ping")

ResumeMode = Literal["none", "resuming", "pending"]

EVENT_KINDS = (
    "user",
    "text_delta",
    "assistant",
    "tool_use",
    "tool_result",
    "result",
    "sandbox",
    "store",
    "error",
)
"""Event kinds v1 defines. Hosts may add kinds; clients must ignore kinds they do not know."""


# --- client -> host -------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """First frame of every connection: the session token and the last ``seq`` seen."""

    token: str
    last_seq: int | None


@dataclass(frozen=True)
class User:
    """A user message; ``client_msg_id`` makes re-sending it harmless."""

    client_msg_id: str
    text: str


@dataclass(frozen=True)
class Ack:
    """The client has every event up to ``seq`` (also ends the resume handshake)."""

    seq: int


@dataclass(frozen=True)
class Interrupt:
    """Stop the running turn; the host answers with an ``interrupt_ack`` frame."""


@dataclass(frozen=True)
class Ping:
    """Keep-alive; answered with ``pong``."""


ClientFrame = Hello | User | Ack | Interrupt | Ping


def parse_client_frame(text: str) -> ClientFrame:
    """Parse and validate one client frame; raise :class:`ProtocolError` with a stable code."""
    if len(text) > MAX_FRAME_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
        raise ProtocolError(
            e.TOO_LARGE,
            f"Frame is larger than {MAX_FRAME_BYTES} bytes; split the message or shorten it.",
            e.CLOSE_TOO_LARGE,
        )
    try:
        obj = json.loads(text, parse_int=_parse_int, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(e.BAD_JSON, f"Frame is not valid JSON: {exc}.") from None
    if not isinstance(obj, dict):
        raise ProtocolError(e.BAD_FRAME, 'Frame must be a JSON object with a string "type".')
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(e.BAD_FRAME, 'Frame must be a JSON object with a string "type".')
    _check_unicode(obj, kind if kind in CLIENT_FRAME_TYPES else "frame")
    if kind == "hello":
        token = _string(obj, "token", MAX_TOKEN_CHARS, "hello")
        last_seq = obj.get("last_seq")
        if last_seq is not None and not _is_seq(last_seq):
            raise ProtocolError(
                e.BAD_FRAME, f"hello.last_seq must be null or an integer from 0 to {MAX_SEQ}."
            )
        return Hello(token=token, last_seq=last_seq)
    if kind == "user":
        msg_id = _string(obj, "client_msg_id", MAX_ID_CHARS, "user")
        text_value = obj.get("text")
        if not isinstance(text_value, str) or not text_value.strip():
            raise ProtocolError(e.BAD_FRAME, "user.text must be a non-empty string.")
        if len(text_value) > MAX_TEXT_CHARS:
            raise ProtocolError(
                e.TOO_LARGE,
                f"user.text is longer than {MAX_TEXT_CHARS} characters; shorten the message.",
                e.CLOSE_TOO_LARGE,
            )
        return User(client_msg_id=msg_id, text=text_value)
    if kind == "ack":
        seq = obj.get("seq")
        if not _is_seq(seq):
            raise ProtocolError(e.BAD_FRAME, f"ack.seq must be an integer from 0 to {MAX_SEQ}.")
        assert isinstance(seq, int)
        return Ack(seq=seq)
    if kind == "interrupt":
        return Interrupt()
    if kind == "ping":
        return Ping()
    raise ProtocolError(
        e.UNKNOWN_TYPE,
        f"Unknown frame type {kind[:40]!r}; expected hello, user, ack, interrupt or ping.",
    )


def _string(obj: dict[str, Any], key: str, limit: int, frame: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(e.BAD_FRAME, f"{frame}.{key} must be a non-empty string.")
    if len(value) > limit:
        raise ProtocolError(e.BAD_FRAME, f"{frame}.{key} must be at most {limit} characters.")
    return value


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


class _HugeInt:
    """Stands for an integer literal too long to be any seq; it is never converted."""


def _parse_int(literal: str) -> int | _HugeInt:
    return int(literal) if len(literal) <= _MAX_INT_LITERAL else _HugeInt()


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _lone_surrogate(value: str) -> int | None:
    """Where the first surrogate code point in ``value`` is (None: it is valid Unicode)."""
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


_Path = tuple[str | int, "_Path"] | None
"""Where a value sits in a frame, as a linked list of keys and indexes, innermost first:
spelled out only for an error message, so a deep frame costs one tuple per container."""


def _check_unicode(frame: dict[str, Any], name: str) -> None:
    """Refuse the frame if any string in it (key or value, at any depth) holds a lone
    surrogate, naming the first one found."""
    todo: list[tuple[dict[str, Any] | list[Any], _Path]] = [(frame, None)]
    while todo:
        container, path = todo.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            if isinstance(key, str) and (at := _lone_surrogate(key)) is not None:
                where = _spell(name, path) if path else "the frame"
                raise ProtocolError(
                    e.BAD_FRAME,
                    f"A key in {where} is not valid Unicode (a lone surrogate at character "
                    f"{at}); send UTF-8 text.",
                )
            if isinstance(item, str):
                if (at := _lone_surrogate(item)) is not None:
                    raise ProtocolError(
                        e.BAD_FRAME,
                        f"{_spell(name, (key, path))} is not valid Unicode (a lone surrogate at "
                        f"character {at}); send UTF-8 text.",
                    )
            elif isinstance(item, dict | list):
                todo.append((item, (key, path)))


def _spell(name: str, path: _Path) -> str:
    parts: list[str] = []
    while path is not None:
        part, path = path
        parts.append(f"[{part}]" if isinstance(part, int) else "." + part[:40])
    return name + "".join(reversed(parts))


def encode_client_frame(frame: ClientFrame) -> str:
    """The JSON text of a client frame (used by clients and tests)."""
    if isinstance(frame, Hello):
        return _dump({"type": "hello", "token": frame.token, "last_seq": frame.last_seq})
    if isinstance(frame, User):
        return _dump({"type": "user", "client_msg_id": frame.client_msg_id, "text": frame.text})
    if isinstance(frame, Ack):
        return _dump({"type": "ack", "seq": frame.seq})
    if isinstance(frame, Interrupt):
        return _dump({"type": "interrupt"})
    return _dump({"type": "ping"})


# --- host -> client -------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One durable event of a session's log."""

    seq: int
    kind: str
    data: dict[str, Any]
    ts: int
    """Milliseconds since the epoch when the host appended it."""
    turn_id: str | None = None
    data_json: str | None = field(default=None, compare=False, repr=False)
    """``data`` as JSON text, where the log had it at hand (the text it stored, or read
    back): a frame reuses it rather than encoding ``data`` again. It must say what ``data``
    says (``dataclasses.replace`` of ``data`` alone keeps the old text)."""
    _frame: tuple[str, str] | None = field(default=None, init=False, compare=False, repr=False)
    """The frame's text around its ``replay`` flag, made once for every socket it goes to
    (events with ``data_json`` only: the SQLite and DO logs make them per read; the S3
    log keeps its events in memory, and a frame each would double that)."""


def welcome_frame(session_id: str, resume: ResumeMode, last_seq: int) -> str:
    """The host's answer to ``hello``."""
    return _dump(
        {
            "type": "welcome",
            "protocol": PROTOCOL_VERSION,
            "session_id": session_id,
            "resume": resume,
            "last_seq": last_seq,
        }
    )


def event_frame(event: Event, *, replay: bool) -> str:
    """An event frame; ``replay`` marks events sent during the resume handshake.

    An event is encoded once: every socket it goes to, live or replaying, gets the same
    text around the flag.
    """
    parts = event._frame
    if parts is None:
        data = event.data_json if event.data_json is not None else _dump(event.data)
        parts = (
            f'{{"type":"event","seq":{int(event.seq)},"kind":{_quoted(event.kind)},'
            f'"data":{data},"replay":',
            f',"ts":{int(event.ts)},"turn_id":{_quoted(event.turn_id)}}}',
        )
        if event.data_json is not None:  # a log that keeps its events keeps no frames too
            object.__setattr__(event, "_frame", parts)
    return parts[0] + ("true" if replay else "false") + parts[1]


def error_frame(code: str, message: str) -> str:
    """An error frame with a stable ``code``."""
    return _dump({"type": "error", "code": code, "message": message})


def pong_frame() -> str:
    """The answer to ``ping``."""
    return _dump({"type": "pong"})


def interrupt_ack_frame(turn_id: str | None, interrupted: bool) -> str:
    """The answer to ``interrupt``, sent to the requesting socket only.

    ``turn_id`` is the session's oldest open turn when the host handled the interrupt
    (``None``: no turn was open); ``interrupted`` says whether the stop was passed to a
    sandbox running that turn. The turn's own end event (``result`` or ``turn_failed``)
    is the last word on how it ended.
    """
    return _dump({"type": "interrupt_ack", "turn_id": turn_id, "interrupted": interrupted})


_PLAIN = re.compile(r"[A-Za-z0-9_.:-]*")
"""Characters JSON writes as they are: a string of only these needs no encoder."""


def _quoted(text: str | None) -> str:
    """``text`` as a JSON value (kinds and turn ids are plain, and skip the encoder)."""
    if text is None:
        return "null"
    return f'"{text}"' if _PLAIN.fullmatch(text) else _dump(text)


def _dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
