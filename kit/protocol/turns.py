"""The turn planner, sans I/O: how a host runs one turn through sandbox deaths and restarts.

The host (``kit.host.session``) and the Cloudflare shim make the same recovery decisions;
they live here once, as data. A :class:`TurnPlanner` is made from the turn as the event
log holds it (its :class:`TurnState` and the sandbox attempts already counted), is told
what happened (:meth:`~TurnPlanner.begin`, :meth:`~TurnPlanner.sandbox_started`,
:meth:`~TurnPlanner.sandbox_failed`, :meth:`~TurnPlanner.batch`,
:meth:`~TurnPlanner.stream_broken`) and answers each time with the actions to take, in
order. The last action of every answer is the one the host then waits on:
:class:`StartSandbox` (answer with ``sandbox_started`` or ``sandbox_failed``),
:class:`Stream` (answer with ``batch`` per batch of runtime events, then ``stream_broken``
if the stream ends without the turn's end) or :class:`Done`; an :class:`Emit` that ends
an answer means "keep reading the stream". The actions before it need no answer:
:class:`Record` (write the turn's state, counting an attempt), :class:`Wait` (back off),
:class:`AwaitSandboxExit` (make sure the broken sandbox is dead and its exit recorded),
:class:`GiveUp` (append the ``error`` event it carries).

::

    planner state   NEW --begin--> STARTING --sandbox_started--> STREAMING
                    STARTING --sandbox_failed--> STARTING (next attempt) | DONE (given up)
                    STREAMING --batch without the end--> STREAMING
                    STREAMING --batch with the end--> DONE
                    STREAMING --stream_broken--> STARTING (next attempt) | DONE (given up)
                    a call in any other state raises InvalidStateError naming the state

The recovery paths the host takes, each a golden case in ``golden/turns/`` (replayed by
``tests/protocol/test_turns.py`` and meant for the TypeScript shim):

- ``first_try_success`` — a queued turn: one attempt, streamed without ``recover``, ends
  with ``result`` → COMPLETED.
- ``failure_result`` — the runtime ends the turn with ``error`` ``turn_failed`` → FAILED.
- ``deaths_1_then_success`` … ``deaths_4_then_success`` — sandboxes die mid-turn 1..4
  times: INTERRUPTED, the exit awaited, the backoff of :data:`RESTART_BACKOFF_S`; every
  later attempt streams with ``recover`` (the runtime continues the turn from its
  transcript); the next sandbox ends it with ``result``.
- ``five_deaths_give_up`` — the fifth death: the turn is given up with ``error``
  ``turn_failed`` ("given up after 5 sandboxes") → FAILED.
- ``start_failures`` — a sandbox that fails to start counts as an attempt; a turn that
  never reached a runtime is not yet ``recover``.
- ``start_failures_give_up`` — five failed starts give the turn up.
- ``death_then_start_failure`` — a death, then a failed start: the next sandbox still
  recovers the turn.
- ``restart_mid_turn`` — a host restart finds the turn RUNNING with attempts counted: the
  new planner backs off as for the next attempt, recovers the turn, and the count goes
  on to the give-up.
- ``restart_running`` / ``restart_interrupted`` — a turn found RUNNING or INTERRUPTED at
  host start is recovered.
- ``restart_queued_after_start_failure`` — a restart after an attempt that never got a
  sandbox: the log says RUNNING, so the turn is recovered (the runtime asks again when
  its transcript lacks the prompt).
- ``restart_exhausted`` — a restart finds a turn whose attempts are all used: it is given
  up at once, with no sandbox.
- ``backoff_values`` — the wait before each attempt: none, none, 0.5 s, 1 s, 2 s.
- ``events_after_end_dropped`` / ``failure_drops_later_events`` — events after the
  turn's end (``result`` or ``turn_failed``) in the same batch are not part of it.
- ``other_errors_do_not_end`` — an ``error`` that is not ``turn_failed`` (a
  ``spend_limit`` refusal) does not end the turn.
- ``stream_ends_without_end`` — a stream that closes with no end event (the runtime
  exited, its harness died) is a broken stream: the next sandbox recovers the turn.

Continue or resend (``kit.runtime.agent.recovery_prompt``) is not planned here: it
depends on the transcript in the store, which only the runtime reads, and every host,
the shim included, runs the same runtime; the host's part is only ``recover``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kit.protocol.errors import InvalidStateError

MAX_SANDBOX_ATTEMPTS = 5
"""Sandboxes one turn may use before the host gives up on it."""
RESTART_BACKOFF_S = (0.0, 0.0, 0.5, 1.0, 2.0)
"""Wait before attempt N of a turn: a first death is retried at once, repeated ones back off."""
STOPPED_REASONS = frozenset({"stopped", "idle", "exited", "reload"})
"""Exit reasons reported as ``stopped`` (on purpose) rather than ``died``."""
TURN_FAILED = "turn_failed"
"""The ``code`` of the ``error`` event that ends a turn without a result."""


class TurnState(enum.Enum):
    """Lifecycle of one turn, as the event log's turn table holds it."""

    QUEUED = "queued"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    """Its sandbox died mid-turn; it will be recovered in a new one."""
    COMPLETED = "completed"
    FAILED = "failed"


OPEN_TURN_STATES = (TurnState.QUEUED, TurnState.RUNNING, TurnState.INTERRUPTED)
"""States of a turn that still has to run (or be recovered)."""


def ends_turn(kind: str, data: Mapping[str, Any]) -> bool:
    """Whether an event of ``kind`` with ``data`` ends its turn: a ``result``, or an
    ``error`` ``turn_failed``. Nothing of the turn follows it."""
    return kind == "result" or (kind == "error" and data.get("code") == TURN_FAILED)


def backoff_s(attempt: int) -> float:
    """How long to wait before attempt ``attempt`` (0-based) of a turn."""
    return RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]


def given_up_error() -> dict[str, Any]:
    """The ``error`` event's data for a turn given up after its sandboxes kept failing."""
    return {
        "code": TURN_FAILED,
        "message": f"The turn was given up after {MAX_SANDBOX_ATTEMPTS} sandboxes failed; "
        "send it again as a new message (a new client_msg_id) to retry.",
    }


# -- actions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """Write the turn's state to the log; ``attempt`` counts one more sandbox attempt."""

    state: TurnState
    attempt: bool = False

    def to_json(self) -> dict[str, Any]:
        """The action as plain JSON (the golden cases' form)."""
        return {"action": "record", "state": self.state.value, "attempt": self.attempt}


@dataclass(frozen=True)
class Wait:
    """Back off this long before the next attempt."""

    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The action as plain JSON (the golden cases' form)."""
        return {"action": "wait", "seconds": self.seconds}


@dataclass(frozen=True)
class StartSandbox:
    """Get a running sandbox for the turn (the live one, a pooled one or a new one);
    answer with ``sandbox_started`` or ``sandbox_failed``."""

    def to_json(self) -> dict[str, Any]:
        """The action as plain JSON (the golden cases' form)."""
        return {"action": "start_sandbox"}


@dataclass(frozen=True)
class Stream:
    """Hand the turn to the sandbox's runtime and read its events; ``recover``: the turn
    ran before, the runtime continues it from the stored transcript."""

    recover: bool

    def to_json(self) -> dict[str, Any]:
        """The action as plain JSON (the golden cases' form)."""
        return {"action": "stream", "recover": self.recover}


@dataclass(frozen=True)
class Emit:
    """Append the first ``count`` events of the batch to the log (the rest are not the
    turn's); as the last action of an answer: keep reading the stream."""

    count: int

    def to_json(self) -> dict[str, Any]:
        """The action as plain JSON (the golden cases' form)."""
        return {"action": "emit", "count": self.count}


@dataclass(frozen=True)
class AwaitSandboxExit:
    """The stream broke: make sure its sandbox is dead (kill it if it does not exit) and
    its exit recorded before the next one starts."""

    def to_json(self) -> dict[str, Any]:
        """The action as plain JSON (the golden cases' form)."""
        return {"action": "await_sandbox_exit"}


@dataclass(frozen=True)
class GiveUp:
    """Append an ``error`` event with ``error`` as its data: the turn is given up."""

    error: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The action as plain JSON (the golden cases' form)."""
        return {"action": "give_up", "error": dict(self.error)}


@dataclass(frozen=True)
class Done:
    """The turn is over, in ``state``."""

    state: TurnState

    def to_json(self) -> dict[str, Any]:
        """The action as plain JSON (the golden cases' form)."""
        return {"action": "done", "state": self.state.value}


TurnAction = Record | Wait | StartSandbox | Stream | Emit | AwaitSandboxExit | GiveUp | Done
"""One thing the host does for a turn (what :class:`TurnPlanner` answers, in lists)."""


# -- the planner ------------------------------------------------------------------------


class PlannerState(enum.Enum):
    """Where a :class:`TurnPlanner` is in its turn."""

    NEW = "new"
    STARTING = "starting"
    """Waiting for a sandbox to start."""
    STREAMING = "streaming"
    """Reading the runtime's stream of the turn."""
    DONE = "done"


class TurnPlanner:
    """Plans one turn on one host: outcomes in, actions out (see the module docstring).

    ``state`` and ``attempts`` are the turn's row in the log. A turn that is not QUEUED
    ran before (on a sandbox that died, or a host that did): it is recovered. Attempts
    are counted in the log, so a turn that keeps killing its sandboxes or its host is
    given up after :data:`MAX_SANDBOX_ATTEMPTS` however often the host restarts.
    """

    def __init__(self, state: TurnState, attempts: int) -> None:
        if state not in OPEN_TURN_STATES:
            raise InvalidStateError(f"A {state.value} turn is over; there is nothing to plan.")
        if attempts < 0:
            raise ValueError(f"attempts must be 0 or more, not {attempts}.")
        self.state = PlannerState.NEW
        self.attempts = attempts
        """Sandbox attempts counted so far (this one included once it is recorded)."""
        self.recover = state is not TurnState.QUEUED
        """Whether the next stream continues the turn rather than starting it."""

    def begin(self) -> list[TurnAction]:
        """Start (or, after a host restart, resume) the turn."""
        self._expect(PlannerState.NEW, "begin")
        return self._next_attempt([])

    def sandbox_started(self) -> list[TurnAction]:
        """The sandbox :class:`StartSandbox` asked for runs."""
        self._expect(PlannerState.STARTING, "sandbox_started")
        self.state = PlannerState.STREAMING
        return [Stream(self.recover)]

    def sandbox_failed(self) -> list[TurnAction]:
        """The sandbox failed to start (its ``failed`` event is recorded): that attempt
        is used up; the turn is not yet ``recover`` if it never reached a runtime."""
        self._expect(PlannerState.STARTING, "sandbox_failed")
        return self._next_attempt([])

    def batch(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[TurnAction]:
        """A batch of the runtime's events (kind, data), in order. Those through the
        turn's end are emitted; an end finishes the turn (COMPLETED on ``result``,
        FAILED on ``error`` ``turn_failed``)."""
        self._expect(PlannerState.STREAMING, "batch")
        end = next((i for i, (kind, data) in enumerate(events) if ends_turn(kind, data)), None)
        if end is None:
            return [Emit(len(events))]
        outcome = TurnState.COMPLETED if events[end][0] == "result" else TurnState.FAILED
        self.state = PlannerState.DONE
        return [Emit(end + 1), Record(outcome), Done(outcome)]

    def stream_broken(self) -> list[TurnAction]:
        """The stream ended without the turn's end (the sandbox went away, or the runtime
        closed it): the next sandbox continues the turn."""
        self._expect(PlannerState.STREAMING, "stream_broken")
        self.recover = True
        return self._next_attempt([Record(TurnState.INTERRUPTED), AwaitSandboxExit()])

    def _next_attempt(self, actions: list[TurnAction]) -> list[TurnAction]:
        if self.attempts >= MAX_SANDBOX_ATTEMPTS:
            self.state = PlannerState.DONE
            return [
                *actions,
                GiveUp(given_up_error()),
                Record(TurnState.FAILED),
                Done(TurnState.FAILED),
            ]
        wait = backoff_s(self.attempts)
        if wait > 0:
            actions.append(Wait(wait))
        self.attempts += 1
        self.state = PlannerState.STARTING
        return [*actions, Record(TurnState.RUNNING, attempt=True), StartSandbox()]

    def _expect(self, state: PlannerState, call: str) -> None:
        if self.state is not state:
            raise InvalidStateError(
                f"The turn planner is {self.state.value}; {call} needs it {state.value}."
            )
