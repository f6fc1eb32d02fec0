"""``kit sandbox kill --signal`` and the control API's ``signal``: names and numbers."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from kit.cli.control import signal_number
from kit.cli.errors import CliError


@pytest.mark.parametrize(("name", "number"), [("KILL", 9), ("sigterm", 15), (" 9 ", 9)])
def test_signal_names_and_numbers(name: str, number: int) -> None:
    """Names with or without SIG, any case, and numbers name a signal."""
    assert signal_number(name) == number == signal.Signals(number).value


@pytest.mark.parametrize("name", ["NOPE", "99999", "\u00b2", "", "SIGSIGKILL", "33"])
def test_unknown_signals_are_a_cli_error(name: str) -> None:
    """Anything else is a CliError naming the choices (the control API answers 400
    bad_signal with it), never a bare ValueError (a 500): ``"²".isdigit()`` is true but
    ``int("²")`` raises."""
    with pytest.raises(CliError, match="use a name like KILL"):
        signal_number(name)


def test_the_shims_signal_table_is_pythons() -> None:
    """The shim's control API reads signal names from its own table
    (worker_shim/src/signals.ts): it is ``signal.Signals`` on Linux, aliases included."""
    source = (Path(__file__).parents[2] / "worker_shim" / "src" / "signals.ts").read_text()
    found = re.search(r"SIGNALS: Readonly<Record<string, number>> = \{(.*?)\};", source, re.S)
    assert found is not None, "worker_shim/src/signals.ts has no SIGNALS table"
    table = json.loads("{" + re.sub(r"(\w+):", r'"\1":', found.group(1)).rstrip().rstrip(",") + "}")
    assert table == {name: int(sig) for name, sig in signal.Signals.__members__.items()}
