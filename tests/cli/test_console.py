"""How `kit chat` shows events a person must act on."""

from __future__ import annotations

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
