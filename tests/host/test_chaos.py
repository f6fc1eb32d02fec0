"""Bounded chaos: sandboxes SIGKILLed at random points while sessions talk (invariant 7)."""

from __future__ import annotations

from kit.cli.chaos import run_chaos


async def test_ten_sessions_survive_fifty_kills() -> None:
    """10 sessions talking while a sandbox with a turn in progress is SIGKILLed about every
    1.2 s, 50 times: nothing lost, nothing duplicated, every turn completes, and the kills
    were resumed (each mid-turn kill is followed by the first event of a resumed turn)."""
    report = await run_chaos(sessions=10, kills=50, interval_s=1.2, seed=7, max_seconds=170)
    print(report.summary())
    assert report.kills == 50
    assert report.events_lost == 0
    assert report.events_duplicated == 0
    assert report.turns_completed == report.turns_sent
    assert report.turns_sent >= 20
    assert len(report.resume_latencies_s) >= report.kills * 0.8
