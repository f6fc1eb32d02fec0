"""``kit sandbox kill --signal`` and the control API's ``signal``: names and numbers."""

from __future__ import annotations

import signal

import pytest

from kit.cli.control import signal_number
from kit.cli.errors import CliError


@pytest.mark.parametrize(("name", "number"), [("KILL", 9), ("sigterm", 15), (" 9 ", 9)])
def test_signal_names_and_numbers(name: str, number: int) -> None:
    """Names with or without SIG, any case, and numbers name a signal."""
    assert signal_number(name) == number == signal.Signals(number).value


@pytest.mark.parametrize("name", ["NOPE", "99999", "\u00b2", ""])
def test_unknown_signals_are_a_cli_error(name: str) -> None:
    """Anything else is a CliError naming the choices (the control API answers 400
    bad_signal with it), never a bare ValueError (a 500): ``"²".isdigit()`` is true but
    ``int("²")`` raises."""
    with pytest.raises(CliError, match="use a name like KILL"):
        signal_number(name)
