"""How `kit chat` shows events a person must act on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kit.cli.console import EventPrinter
from kit.client import ConnectionStatus, InterruptAcked, StatusChange
from kit.protocol.frames import Event


def test_store_events_are_shown_with_their_message(capsys: pytest.CaptureFixture[str]) -> None:
    """A store outage is visible in the terminal, with what to do when the turn gives up."""
    printer = EventPrinter()
    printer.show(
        Event(seq=1, kind="store", data={"state": "unavailable", "message": "Waiting."}, ts=0)
    )
    printer.show(
        Event(seq=2, kind="store", data={"state": "gave_up", "message": "Send again."}, ts=0)
    )
    printer.show(Event(seq=3, kind="store", data={"state": "available"}, ts=0))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("]")[0].split("[")[-1] for line in lines] == [
        "store unavailable",
        "store gave_up",
        "store available",
    ]
    assert "Send again." in lines[1]


def test_each_sandbox_state_change_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    """`kit chat` shows every state a sandbox goes through, with why it died."""
    printer = EventPrinter()
    states: list[dict[str, Any]] = [
        {"state": "starting", "tier": "lite"},
        {"state": "running", "tier": "lite", "resumed": False},
        {"state": "died", "reason": "oom", "exit_code": 137},
        {"state": "starting", "tier": "lite"},
        {"state": "running", "tier": "lite", "resumed": True},
        {"state": "stopped", "reason": "idle", "exit_code": 143},
    ]
    for seq, data in enumerate(states, 1):
        printer.show(Event(seq=seq, kind="sandbox", data=data, ts=0))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("[sandbox ")[1].split(" ")[0].rstrip("]") for line in lines] == [
        s["state"] for s in states
    ]
    assert "reason=oom exit_code=137" in lines[2]
    assert "resumed=True" in lines[4]
    assert "reason=idle exit_code=143" in lines[5]


def _result(turn_id: str, subtype: str, seq: int = 9) -> Event:
    return Event(
        seq=seq,
        kind="result",
        data={"is_error": subtype != "success", "subtype": subtype, "text": ""},
        ts=0,
        turn_id=turn_id,
    )


def test_interrupt_answer_comes_before_the_end_it_caused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A turn end that arrives before the interrupt's answer is held back, then shown as
    "interrupting turn t1…" followed by how it ended, not as a bare error."""
    printer = EventPrinter()
    printer.interrupt_requested()
    printer.show(_result("t1", "error_during_execution"))
    assert capsys.readouterr().out == ""
    printer.interrupt_acked(InterruptAcked("t1", True))
    lines = capsys.readouterr().out.splitlines()
    assert [line.strip() for line in lines] == [
        "interrupting turn t1…",
        "turn t1 ended: interrupted (error_during_execution)",
    ]


def test_each_interrupt_answer_reads_as_what_happened(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No turn; a turn not yet running; a turn that finished before the stop took effect."""
    printer = EventPrinter()
    for ack in (InterruptAcked(None, False), InterruptAcked("t2", False)):
        printer.interrupt_requested()
        printer.interrupt_acked(ack)
    printer.interrupt_requested()
    printer.interrupt_acked(InterruptAcked("t3", True))
    printer.show(_result("t3", "success"))
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == "no turn is running"
    assert lines[1].startswith("turn t2 is not running in a sandbox yet")
    assert "nothing was interrupted" in lines[1]
    assert lines[2:] == [
        "interrupting turn t3…",
        "turn t3 ended: success (it finished before the interrupt took effect)",
    ]


def test_an_outage_is_announced_once_and_its_end_too(capsys: pytest.CaptureFixture[str]) -> None:
    """Many retries of one outage give one "host gone" line and one "reconnected"."""
    printer = EventPrinter()
    printer.connection(StatusChange(ConnectionStatus.OPEN))
    for attempt in (1, 2, 3):
        printer.connection(StatusChange(ConnectionStatus.RECONNECTING, attempt, "refused", 0.1))
    printer.connection(StatusChange(ConnectionStatus.OPEN))
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert lines == ["host gone, reconnecting… (refused)", "reconnected"]


def test_json_lines_carry_the_session_id(capsys: pytest.CaptureFixture[str]) -> None:
    """--json: every stdout line is JSON with session_id; notes go to stderr."""
    printer = EventPrinter(as_json=True, session_id="s-1")
    printer.connection(StatusChange(ConnectionStatus.RECONNECTING, 1, "refused", 0.1))
    printer.show(_result("t1", "success", seq=4))
    printer.interrupt_requested()
    printer.interrupt_acked(InterruptAcked(None, False))
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [(line["type"], line["session_id"]) for line in lines] == [
        ("event", "s-1"),
        ("interrupt_ack", "s-1"),
    ]
    assert lines[0]["seq"] == 4
    assert lines[0]["kind"] == "result"
    assert lines[1]["interrupted"] is False
    assert "host gone" in captured.err
