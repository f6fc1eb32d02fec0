"""The turn planner: every golden case replayed step by step, plus its guards."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kit.protocol import turns
from kit.protocol.errors import InvalidStateError
from kit.protocol.golden import load_turn_case, turn_case_names
from kit.protocol.turns import (
    MAX_SANDBOX_ATTEMPTS,
    RESTART_BACKOFF_S,
    Record,
    TurnAction,
    TurnPlanner,
    TurnState,
    ends_turn,
)


class _Log:
    """The turn's row in the event log, as the planner's ``record`` actions leave it."""

    def __init__(self, state: str, attempts: int) -> None:
        self.state, self.attempts = TurnState(state), attempts

    def apply(self, actions: list[TurnAction]) -> None:
        for action in actions:
            if isinstance(action, Record):
                self.state = action.state
                self.attempts += action.attempt

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "attempts": self.attempts}


def _feed(
    planner: TurnPlanner, log: _Log, step: dict[str, Any]
) -> tuple[TurnPlanner, list[TurnAction]]:
    """Give ``planner`` the step's input; the planner after it (a new one on a restart) and
    its answer."""
    name = step["in"]
    if name == "host_restarted":
        planner = TurnPlanner(log.state, log.attempts)
        return planner, planner.begin()
    if name == "batch":
        return planner, planner.batch([(ev["kind"], ev["data"]) for ev in step["events"]])
    answer: list[TurnAction] = getattr(planner, name)()
    return planner, answer


def _replay(name: str) -> None:
    steps = load_turn_case(name)
    start = next(s["turn"] for s in steps if "turn" in s)
    log = _Log(start["state"], start["attempts"])
    planner = TurnPlanner(log.state, log.attempts)
    for number, step in enumerate(steps, 1):
        if "in" in step:
            planner, answer = _feed(planner, log, step)
            assert [a.to_json() for a in answer] == step["out"], f"{name} line {number}"
            log.apply(answer)
        elif "log" in step:
            assert log.as_json() == step["log"], f"{name} line {number}"


@pytest.mark.parametrize("name", turn_case_names())
def test_golden_turn_case(name: str) -> None:
    """The planner answers every step of the golden case with exactly its actions."""
    _replay(name)


def _listed_cases() -> set[str]:
    """The case names heading the bullets of the planner's docstring (``a`` / ``b``, and
    ``x_1_y`` … ``x_4_y`` for a range)."""
    doc = (turns.__doc__ or "").split("The recovery paths")[1]
    names: set[str] = set()
    for head in re.findall(r"^- (.*?) —", doc, re.MULTILINE):
        listed = re.findall(r"``([a-z0-9_]+)``", head)
        if "…" in head:
            first, last = listed
            low, high = (int(re.findall(r"\d+", n)[0]) for n in (first, last))
            listed = [first.replace(str(low), str(n)) for n in range(low, high + 1)]
        names |= set(listed)
    return names


def test_the_docstring_lists_every_case_and_each_exists() -> None:
    """The module docstring names the recovery paths; each has a case and each case is named."""
    listed, cases = _listed_cases(), set(turn_case_names())
    assert len(listed) >= 15
    assert cases == listed, f"unlisted: {sorted(cases - listed)}; missing: {sorted(listed - cases)}"


def test_the_cases_cover_every_recovery_path() -> None:
    """Each path the host takes today appears in at least one case: first-try success, a
    failure result, 1..MAX-1 deaths then success, MAX deaths, failed starts (and giving
    up on them), a restart with attempts counted, a restart with none left, every backoff
    value, events after the end."""
    seen: dict[str, set[Any]] = {"deaths": set(), "waits": set(), "ins": set(), "ends": set()}
    for name in turn_case_names():
        steps = load_turn_case(name)
        start = next(s["turn"] for s in steps if "turn" in s)
        deaths = sum(1 for s in steps if s.get("in") == "stream_broken")
        outs = [a for s in steps if "in" in s for a in s["out"]]
        end = next((a["state"] for a in outs if a["action"] == "done"), None)
        seen["deaths"].add((deaths, end))
        seen["waits"] |= {a["seconds"] for a in outs if a["action"] == "wait"}
        seen["ins"] |= {s["in"] for s in steps if "in" in s}
        seen["ends"].add((start["state"], start["attempts"] >= MAX_SANDBOX_ATTEMPTS, end))
        if any(s.get("in") == "batch" and len(s["events"]) > s["out"][0]["count"] for s in steps):
            seen["ins"].add("dropped_after_end")
        if sum(1 for s in steps if s.get("in") == "sandbox_failed") >= MAX_SANDBOX_ATTEMPTS:
            seen["ins"].add("start_failures_give_up")
    for n in range(MAX_SANDBOX_ATTEMPTS):
        assert (n, "completed") in seen["deaths"], f"no case with {n} deaths then success"
    assert (MAX_SANDBOX_ATTEMPTS, "failed") in seen["deaths"]
    assert (0, "failed") in seen["deaths"]  # a failure result
    assert seen["waits"] == {w for w in RESTART_BACKOFF_S if w > 0}
    assert {
        "begin",
        "sandbox_started",
        "sandbox_failed",
        "batch",
        "stream_broken",
        "host_restarted",
        "dropped_after_end",
        "start_failures_give_up",
    } <= seen["ins"]
    assert ("running", True, "failed") in seen["ends"]  # a restart with no attempts left
    assert ("interrupted", False, "completed") in seen["ends"]
    assert ("running", False, "completed") in seen["ends"]


@pytest.mark.parametrize(
    ("kind", "data", "ends"),
    [
        ("result", {"is_error": True}, True),
        ("error", {"code": "turn_failed"}, True),
        ("error", {"code": "spend_limit"}, False),
        ("assistant", {"code": "turn_failed"}, False),
        ("store", {"state": "gave_up"}, False),
    ],
)
def test_ends_turn(kind: str, data: dict[str, Any], ends: bool) -> None:
    """A result or an error turn_failed ends a turn; nothing else does."""
    assert ends_turn(kind, data) is ends


def test_a_call_in_the_wrong_state_names_the_state() -> None:
    """Outcomes out of order raise InvalidStateError saying where the planner is."""
    planner = TurnPlanner(TurnState.QUEUED, 0)
    with pytest.raises(
        InvalidStateError, match="planner is new; sandbox_started needs it starting"
    ):
        planner.sandbox_started()
    planner.begin()
    with pytest.raises(InvalidStateError, match="is starting; batch needs it streaming"):
        planner.batch([("result", {})])
    with pytest.raises(InvalidStateError, match="is starting; begin needs it new"):
        planner.begin()


def test_a_finished_turn_cannot_be_planned() -> None:
    """A COMPLETED or FAILED turn has nothing to plan."""
    for state in (TurnState.COMPLETED, TurnState.FAILED):
        with pytest.raises(InvalidStateError, match="is over"):
            TurnPlanner(state, 1)
