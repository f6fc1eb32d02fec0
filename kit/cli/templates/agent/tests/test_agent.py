"""Runs this agent's scenario checks through kit's whole local stack.

That is the real Claude Code CLI, talking to the offline model that follows scenarios/.
"""

from pathlib import Path

from kit.cli.testing import run_checks


def test_scenario_checks() -> None:
    """Every [[check]] in scenarios/ passes against the offline model."""
    report = run_checks(Path(__file__).resolve().parents[1])
    assert report.ok, report.summary()
