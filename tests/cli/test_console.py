"""How `kit chat` shows events a person must act on."""

from __future__ import annotations

from typing import Any

import pytest

from kit.cli.console import EventPrinter
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
