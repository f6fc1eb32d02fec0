"""The client side of a session connection, sans I/O.

It says hello with the last ``seq`` it has, acks the welcome so the host replays what it
missed, drops events it already has (so a resume never shows an event twice), reports
a gap (so the caller reconnects and resumes instead of silently losing events) and pairs
each ``interrupt_ack`` with the interrupt it answers. It queues only frames the host would
accept: a hello or user message the host would refuse (a lone surrogate in a string, an
empty text) raises :class:`ProtocolError` at the call and queues nothing.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from kit.protocol import errors as e
from kit.protocol.errors import InvalidStateError, ProtocolError
from kit.protocol.frames import (
    Ack,
    ClientFrame,
    Event,
    Hello,
    Interrupt,
    Ping,
    ResumeMode,
    User,
    encode_client_frame,
    parse_client_frame,
)


class ClientState(enum.Enum):
    """Where the client connection is."""

    IDLE = "idle"
    HELLO_SENT = "hello_sent"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class Welcomed:
    """The host accepted the hello."""

    session_id: str
    resume: ResumeMode
    last_seq: int


@dataclass(frozen=True)
class EventReceived:
    """A new event (never one the client already had)."""

    event: Event
    replay: bool


@dataclass(frozen=True)
class ErrorReceived:
    """The host reported an error."""

    code: str
    message: str


@dataclass(frozen=True)
class PongReceived:
    """The answer to a ping."""


@dataclass(frozen=True)
class InterruptAcked:
    """The host's answer to an interrupt (the oldest one this connection has not had
    answered).

    ``turn_id`` is the session's oldest open turn when the host handled the interrupt, or
    None when no turn was open. ``interrupted`` is true when the stop was passed to the
    sandbox running that turn; false with a ``turn_id`` means the turn is open but not
    running in a sandbox at that moment (queued, its sandbox starting or restarting), so
    nothing was stopped. Either way the turn's end event (``result``, or ``error``
    ``turn_failed``) says how it really ended.
    """

    turn_id: str | None
    interrupted: bool


@dataclass(frozen=True)
class GapDetected:
    """An event arrived past the next expected seq: reconnect and resume from ``last_seq``."""

    expected: int
    got: int


ClientInput = Welcomed | EventReceived | ErrorReceived | PongReceived | GapDetected | InterruptAcked


class ClientConnection:
    """Protocol state of one connection from the client's side."""

    def __init__(self, token: str, last_seq: int | None = None) -> None:
        self.token = token
        self.last_seq = last_seq
        self.state = ClientState.IDLE
        self.duplicates_dropped = 0
        self.session_id: str | None = None
        self.welcome_last_seq: int | None = None
        """The session's newest ``seq`` when the host welcomed this connection."""
        self.interrupts_unacked = 0
        """Interrupts sent on this connection that the host has not answered yet."""
        self._out: list[str] = []

    def start(self) -> None:
        """Queue the hello frame (:class:`ProtocolError` if the host would refuse it)."""
        if self.state is not ClientState.IDLE:
            raise InvalidStateError(f"Cannot say hello in state {self.state.value}.")
        self._queue(Hello(self.token, self.last_seq))
        self.state = ClientState.HELLO_SENT

    def send_user(self, client_msg_id: str, text: str) -> None:
        """Queue a user message (:class:`ProtocolError` if the host would refuse it)."""
        self._require_open("send a user message")
        self._queue(User(client_msg_id, text))

    def send_interrupt(self) -> None:
        """Queue an interrupt of the running turn."""
        self._require_open("interrupt")
        self._out.append(encode_client_frame(Interrupt()))
        self.interrupts_unacked += 1

    def send_ping(self) -> None:
        """Queue a ping."""
        self._out.append(encode_client_frame(Ping()))

    def send_ack(self) -> None:
        """Acknowledge every event received so far."""
        self._require_open("ack")
        self._out.append(encode_client_frame(Ack(self.last_seq or 0)))

    def receive_text(self, text: str) -> list[ClientInput]:
        """Handle one frame from the host."""
        try:
            obj = json.loads(text)
        except ValueError:
            raise ProtocolError(
                e.PROTOCOL_VIOLATION, "The host sent a frame that is not JSON."
            ) from None
        if not isinstance(obj, dict):
            raise ProtocolError(
                e.PROTOCOL_VIOLATION, "The host sent a frame that is not an object."
            )
        kind = obj.get("type")
        if kind == "welcome":
            return [self._welcome(obj)]
        if kind == "event":
            return self._event(obj)
        if kind == "error":
            return [ErrorReceived(str(obj.get("code", "")), str(obj.get("message", "")))]
        if kind == "pong":
            return [PongReceived()]
        if kind == "interrupt_ack":
            return [self._interrupt_ack(obj)]
        return []  # frame types from a newer host are ignored

    def data_to_send(self) -> list[str]:
        """Frames to write, in order; clears the queue."""
        out, self._out = self._out, []
        return out

    def _welcome(self, obj: dict[str, Any]) -> Welcomed:
        resume = obj.get("resume")
        if resume not in ("none", "resuming", "pending"):
            raise ProtocolError(e.PROTOCOL_VIOLATION, f"Unknown resume mode {resume!r}.")
        welcomed = Welcomed(str(obj.get("session_id")), resume, int(obj.get("last_seq", 0)))
        self.session_id = welcomed.session_id
        self.welcome_last_seq = welcomed.last_seq
        self.state = ClientState.OPEN
        if resume != "none":
            self.send_ack()
        return welcomed

    @property
    def caught_up(self) -> bool:
        """Welcomed and holding every event the session had at the welcome (replay done)."""
        return self.state is ClientState.OPEN and (self.last_seq or 0) >= (
            self.welcome_last_seq or 0
        )

    def _interrupt_ack(self, obj: dict[str, Any]) -> InterruptAcked:
        turn_id, interrupted = obj.get("turn_id"), obj.get("interrupted")
        if not (turn_id is None or isinstance(turn_id, str)) or not isinstance(interrupted, bool):
            raise ProtocolError(
                e.PROTOCOL_VIOLATION,
                "The host sent an interrupt_ack without a string-or-null turn_id and a "
                "boolean interrupted.",
            )
        if self.interrupts_unacked == 0:
            raise ProtocolError(
                e.PROTOCOL_VIOLATION, "The host acknowledged an interrupt that was not sent."
            )
        self.interrupts_unacked -= 1
        return InterruptAcked(turn_id, interrupted)

    def _event(self, obj: dict[str, Any]) -> list[ClientInput]:
        seq = obj.get("seq")
        if not isinstance(seq, int):
            raise ProtocolError(e.PROTOCOL_VIOLATION, "The host sent an event without a seq.")
        have = self.last_seq or 0
        if seq <= have:
            self.duplicates_dropped += 1
            return []
        if seq != have + 1:
            return [GapDetected(expected=have + 1, got=seq)]
        self.last_seq = seq
        data = obj.get("data")
        turn_id = obj.get("turn_id")
        event = Event(
            seq=seq,
            kind=str(obj.get("kind")),
            data=data if isinstance(data, dict) else {},
            ts=int(obj.get("ts", 0)),
            turn_id=turn_id if isinstance(turn_id, str) else None,
        )
        return [EventReceived(event, bool(obj.get("replay", False)))]

    def _queue(self, frame: ClientFrame) -> None:
        text = encode_client_frame(frame)
        parse_client_frame(text)  # what the host would refuse never leaves: raise it here
        self._out.append(text)

    def _require_open(self, action: str) -> None:
        if self.state is not ClientState.OPEN:
            raise InvalidStateError(f"Cannot {action} in state {self.state.value}.")
