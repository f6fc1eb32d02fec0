"""The host side of one client connection, sans I/O.

Feed it the text of each received WebSocket message with :meth:`ServerConnection.receive_text`;
it validates frames, answers ``ping`` itself, queues error frames for bad input and returns
what the host must act on (hello, user, ack, interrupt). The host answers with
:meth:`accept` or :meth:`reject` (hello) and :meth:`acknowledge_interrupt` (each interrupt,
in order), pushes events with :meth:`send_event`, and writes whatever
:meth:`data_to_send` returns. When :attr:`close_code` is set the host sends the pending
frames, then closes the socket with that code.

States::

    AWAIT_HELLO --hello--> AUTHENTICATING --accept(none)--------------> LIVE
                                          --accept(resuming|pending)--> HANDSHAKE --ack--> (host replays) --go_live()--> LIVE
                                          --reject()------------------> CLOSED
    any state --close()/fatal error--> CLOSED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kit.protocol import errors as e
from kit.protocol.errors import InvalidStateError, ProtocolError
from kit.protocol.frames import (
    Ack,
    Event,
    Hello,
    Interrupt,
    Ping,
    ResumeMode,
    User,
    error_frame,
    event_frame,
    interrupt_ack_frame,
    parse_client_frame,
    pong_frame,
    welcome_frame,
)


class ConnectionState(enum.Enum):
    """Where one client connection is in its lifecycle."""

    AWAIT_HELLO = "await_hello"
    AUTHENTICATING = "authenticating"
    HANDSHAKE = "handshake"
    LIVE = "live"
    CLOSED = "closed"


@dataclass(frozen=True)
class HelloReceived:
    """The client said hello; the host must check the token and call accept or reject."""

    token: str
    last_seq: int | None


@dataclass(frozen=True)
class UserReceived:
    """A valid user message."""

    client_msg_id: str
    text: str


@dataclass(frozen=True)
class HandshakeAcked:
    """The client acknowledged the welcome: replay every event after the hello's last_seq."""

    seq: int


@dataclass(frozen=True)
class Acked:
    """The client has every event up to ``seq``."""

    seq: int


@dataclass(frozen=True)
class InterruptRequested:
    """The client asks to stop the running turn; answer with :meth:`ServerConnection.acknowledge_interrupt`."""


ServerInput = HelloReceived | UserReceived | HandshakeAcked | Acked | InterruptRequested


class ServerConnection:
    """Protocol state of one client connection on the host."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.state = ConnectionState.AWAIT_HELLO
        self.last_seq_claimed: int | None = None
        self.acked_seq = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.interrupts_unanswered = 0
        """Interrupts handed to the host that :meth:`acknowledge_interrupt` has not answered."""
        self._out: list[str] = []

    # -- input -----------------------------------------------------------------------

    def receive_text(self, text: str) -> list[ServerInput]:
        """Handle one received text message; return what the host must act on."""
        if self.state is ConnectionState.CLOSED:
            return []
        try:
            frame = parse_client_frame(text)
        except ProtocolError as exc:
            self._fail(exc)
            return []
        if isinstance(frame, Ping):
            self._out.append(pong_frame())
            return []
        if isinstance(frame, Hello):
            if self.state is not ConnectionState.AWAIT_HELLO:
                self._error(e.ALREADY_HELLO, "This connection already said hello.")
                return []
            self.state = ConnectionState.AUTHENTICATING
            self.last_seq_claimed = frame.last_seq
            return [HelloReceived(frame.token, frame.last_seq)]
        if self.state in (ConnectionState.AWAIT_HELLO, ConnectionState.AUTHENTICATING):
            self._error(e.HELLO_REQUIRED, "Send hello with the session token first.")
            return []
        if isinstance(frame, User):
            return [UserReceived(frame.client_msg_id, frame.text)]
        if isinstance(frame, Ack):
            self.acked_seq = max(self.acked_seq, frame.seq)
            if self.state is ConnectionState.HANDSHAKE:
                return [HandshakeAcked(frame.seq)]
            return [Acked(frame.seq)]
        assert isinstance(frame, Interrupt)
        self.interrupts_unanswered += 1
        return [InterruptRequested()]

    # -- host decisions ----------------------------------------------------------------

    def accept(self, resume: ResumeMode, last_seq: int) -> None:
        """The token is good: welcome the client.

        With ``resume="none"`` the connection is live at once; otherwise it waits for the
        client's ``ack`` (:class:`HandshakeAcked`) before the host replays and calls
        :meth:`go_live`.
        """
        self._require(ConnectionState.AUTHENTICATING, "accept")
        claimed = self.last_seq_claimed or 0
        if claimed > last_seq:
            self._fail(
                ProtocolError(
                    e.SEQ_AHEAD,
                    f"hello.last_seq {claimed} is past this session's last event {last_seq}; "
                    "reconnect with last_seq null to receive the whole session.",
                    e.CLOSE_BAD_REQUEST,
                )
            )
            return
        self._out.append(welcome_frame(self.session_id, resume, last_seq))
        self.state = ConnectionState.LIVE if resume == "none" else ConnectionState.HANDSHAKE

    def reject(self, code: str, message: str, close_code: int) -> None:
        """Refuse the connection (wrong token, unknown session): error frame, then close."""
        self._fail(ProtocolError(code, message, close_code))

    def go_live(self) -> None:
        """Replay is written: from now on events are live."""
        self._require(ConnectionState.HANDSHAKE, "go_live")
        self.state = ConnectionState.LIVE

    def send_event(self, event: Event, *, replay: bool) -> None:
        """Queue one event frame."""
        if self.state not in (ConnectionState.HANDSHAKE, ConnectionState.LIVE):
            raise InvalidStateError(
                f"Cannot send an event on a connection in state {self.state.value}."
            )
        self._out.append(event_frame(event, replay=replay))

    def acknowledge_interrupt(self, turn_id: str | None, interrupted: bool) -> None:
        """Answer the oldest unanswered :class:`InterruptRequested` (docs/protocol.md §3).

        ``turn_id``: the oldest open turn when the host handled it, or None if there was
        none; ``interrupted``: whether the stop reached a sandbox running that turn.
        """
        if self.state not in (ConnectionState.HANDSHAKE, ConnectionState.LIVE):
            raise InvalidStateError(
                f"Cannot acknowledge an interrupt on a connection in state {self.state.value}."
            )
        if self.interrupts_unanswered == 0:
            raise InvalidStateError("Cannot acknowledge an interrupt the client did not send.")
        self.interrupts_unanswered -= 1
        self._out.append(interrupt_ack_frame(turn_id, interrupted))

    def send_error(self, code: str, message: str) -> None:
        """Queue an error frame without closing (e.g. a turn could not be queued)."""
        self._error(code, message)

    def close(self, code: str, message: str, close_code: int) -> None:
        """End the connection: an error frame naming why, then the close code."""
        self._fail(ProtocolError(code, message, close_code))

    # -- output ------------------------------------------------------------------------

    def data_to_send(self) -> list[str]:
        """Frames to write, in order; clears the queue."""
        out, self._out = self._out, []
        return out

    # -- internals ---------------------------------------------------------------------

    def _require(self, state: ConnectionState, action: str) -> None:
        if self.state is not state:
            raise InvalidStateError(
                f"Cannot {action} a connection in state {self.state.value}; "
                f"it must be {state.value}."
            )

    def _error(self, code: str, message: str) -> None:
        self._out.append(error_frame(code, message))

    def _fail(self, exc: ProtocolError) -> None:
        self._error(exc.code, exc.message)
        if exc.close_code is not None:
            self.close_code = exc.close_code
            self.close_reason = exc.code
            self.state = ConnectionState.CLOSED
