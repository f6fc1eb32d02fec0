"""The tier advisor: near-limit warnings, CPU throttling, a smaller tier that fits, the tier
after an OOM, and each piece of advice said once per session."""

from __future__ import annotations

import pytest

from kit.host.advisor import (
    MIN_THROTTLED_S,
    THROTTLED_SHARE,
    SessionUsage,
    TierAdvisor,
    TurnUsage,
    advise,
    advise_oom,
)
from kit.host.sandbox import Usage


def _turn(
    memory: float = 150,
    disk: float = 1,
    cpu: float = 0.2,
    throttled: float | None = 0.0,
    wall: float = 2.0,
) -> TurnUsage:
    return TurnUsage(memory, disk, cpu, throttled, wall)


def _session(*turns: TurnUsage) -> SessionUsage:
    usage = SessionUsage()
    for turn in turns:
        usage.add_turn(turn)
    return usage


def _lines(tier: str, *turns: TurnUsage) -> list[str]:
    return [a.line for a in advise(tier, turns[-1], _session(*turns))]


def test_a_turn_near_the_memory_limit_is_flagged() -> None:
    """A peak within 10% of the tier's memory is a warning naming the limit."""
    [line] = _lines("lite", _turn(memory=240))
    assert "within 10% of the 256 MiB of tier lite" in line


def test_a_small_session_on_a_big_tier_is_told_the_smallest_that_fits() -> None:
    """Never throttled and light on CPU: the smallest tier with room for memory, disk and
    CPU demand is named; a bigger peak moves the advice up."""
    turns = [_turn(150, 3, cpu=0.05), _turn(180, 4, cpu=0.05)]
    [line] = _lines("standard-1", *turns)
    assert 'tier lite (256 MiB, 0.0625 vCPU) would fit; set [sandbox] tier = "lite"' in line
    # 220 MiB peak needs 275 with headroom: lite no longer fits, basic does
    [line] = _lines("standard-1", *turns, _turn(220, 4, cpu=0.05))
    assert 'tier = "basic"' in line


def test_a_smaller_tier_must_cover_the_sessions_cpu_demand() -> None:
    """Unthrottled but busy (0.6 vCPU on average at standard-4): only a tier with 0.75 vCPU
    or more is offered, however little memory the session used."""
    [line] = _lines("standard-4", _turn(memory=150, cpu=1.2, wall=2.0))
    assert 'tier = "standard-2"' in line
    assert "0.60 vCPU on average" in line


def test_a_throttled_session_is_never_told_to_go_smaller() -> None:
    """Any time held at the CPU share, however short, rules out a smaller tier (less CPU),
    in this turn and every later one."""
    light = _turn(memory=150, cpu=0.05, throttled=0.0)
    assert _lines("standard-1", light)  # a smaller tier would fit...
    held = _turn(memory=150, cpu=0.05, throttled=0.1, wall=2.0)
    assert _lines("standard-1", light, held) == []  # ...until a turn was held at all
    assert _lines("standard-1", light, held, light) == []


def test_unknown_throttling_says_nothing_about_cpu() -> None:
    """Without a throttling figure (no cgroups) there is no CPU advice, and no smaller tier
    either: that would be a guess about CPU."""
    assert _lines("standard-4", _turn(memory=150, cpu=0.05, throttled=None)) == []
    assert _lines("lite", _turn(memory=150, cpu=5.0, throttled=None, wall=60)) == []


@pytest.mark.parametrize(
    ("tier", "names"),
    [
        ("lite", 'tier basic (0.25 vCPU, 4x the CPU) would be quicker: set [sandbox] tier = "basic"'),
        ("basic", 'tier standard-1 (0.5 vCPU, 2x the CPU)'),
        ("shared-cpu-8x", 'tier performance-1x (1 vCPU, 2x the CPU)'),
        ("standard-4", "no cloudflare tier gives more CPU: make the agent's work lighter"),
    ],
)  # fmt: skip
def test_a_turn_held_at_the_cpu_share_names_the_next_tier_with_more_cpu(
    tier: str, names: str
) -> None:
    """A turn held at the CPU share for most of its time says so, with the figures, and names
    the next tier of the same platform with more CPU."""
    [line] = _lines(tier, _turn(memory=150, cpu=0.6, throttled=9.2, wall=10.0))
    assert f"held at tier {tier}'s CPU share" in line
    assert "for 9.2 s of its 10.0 s" in line
    assert names in line


def test_a_short_or_small_share_of_throttling_is_not_worth_a_bigger_tier() -> None:
    """Held less than MIN_THROTTLED_S, or for less than THROTTLED_SHARE of the turn: no CPU
    advice (and, throttled, no smaller tier)."""
    short = _turn(throttled=MIN_THROTTLED_S * 0.9, wall=MIN_THROTTLED_S)
    assert _lines("basic", short) == []
    wall = 10 * MIN_THROTTLED_S / THROTTLED_SHARE
    small_share = _turn(throttled=MIN_THROTTLED_S * 2, wall=wall)
    assert _lines("basic", small_share) == []
    at_both = _turn(throttled=MIN_THROTTLED_S, wall=MIN_THROTTLED_S / THROTTLED_SHARE)
    assert len(_lines("basic", at_both)) == 1


def test_an_oom_names_the_next_tier_with_more_memory() -> None:
    """After an OOM kill the next tier with more memory is named (or none is left)."""
    assert "tier standard-1 (4096 MiB)" in advise_oom("basic").line
    assert 'tier = "basic"' in advise_oom("lite").line
    assert 'tier = "shared-cpu-2x"' in advise_oom("shared-cpu-1x").line
    assert "make the agent's work smaller" in advise_oom("standard-4").line


def test_a_turn_is_measured_between_two_readings() -> None:
    """The turn's CPU and held time are the differences between the readings around it (all
    of them when there is no reading before); held time never exceeds the turn's wall time."""
    before = Usage(100, cpu_s=3.0, disk_mb=1, throttled_s=4.0)
    after = Usage(180, cpu_s=3.5, disk_mb=2, throttled_s=6.1)
    turn = TurnUsage.between(before, after, 3.0)
    assert (turn.peak_memory_mib, turn.disk_mb, turn.cpu_s, turn.wall_s) == (180, 2, 0.5, 3.0)
    assert turn.throttled_s == pytest.approx(2.1)
    assert TurnUsage.between(None, after, 5.0).throttled_s == 5.0
    unknown = Usage(180, cpu_s=3.5, disk_mb=2)
    assert TurnUsage.between(before, unknown, 3.0).throttled_s is None


def _reading(cpu: float, throttled: float | None, memory: float = 150) -> Usage:
    return Usage(memory, cpu_s=cpu, disk_mb=1, throttled_s=throttled)


def test_the_session_advisor_says_each_piece_of_advice_once() -> None:
    """Turn after turn held at lite's CPU share: the advice is said after the first turn only;
    the same advice in a later sandbox of the session (readings start again from zero) is not
    said again."""
    advisor = TierAdvisor("lite")
    first = advisor.after_turn(_reading(0.0, 0.0), _reading(0.6, 9.0), 9.5)
    assert len(first) == 1
    assert 'tier = "basic"' in first[0]
    assert advisor.after_turn(_reading(0.6, 9.0), _reading(1.2, 18.0), 9.5) == []
    # the sandbox died; a new one's readings start at zero
    assert advisor.after_turn(_reading(0.0, 0.0), _reading(0.6, 9.0), 9.5) == []
    assert advisor.usage.turns == 3


def test_the_session_advisor_speaks_again_when_its_advice_changes() -> None:
    """New advice (another limit, another tier) is said when it comes up; an OOM is said
    once too."""
    advisor = TierAdvisor("standard-2")
    [smaller] = advisor.after_turn(None, _reading(0.1, 0.0, memory=150), 2.0)
    assert 'tier = "lite"' in smaller
    assert advisor.after_turn(None, _reading(0.1, 0.0, memory=160), 2.0) == []
    [bigger] = advisor.after_turn(None, _reading(0.1, 0.0, memory=230), 2.0)
    assert 'tier = "basic"' in bigger  # lite no longer fits: the advice changed
    [oom] = advisor.after_oom()
    assert "OOM-killed" in oom
    assert advisor.after_oom() == []
    [near] = advisor.after_turn(None, _reading(0.1, 0.0, memory=5600), 2.0)
    assert "within 10% of the 6144 MiB" in near
