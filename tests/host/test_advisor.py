"""The tier advisor: near-limit warnings, a smaller tier that fits, the tier after an OOM."""

from __future__ import annotations

from kit.host.advisor import SessionUsage, advise, advise_oom
from kit.host.sandbox import Usage


def _session(*turns: Usage) -> SessionUsage:
    usage = SessionUsage()
    for turn in turns:
        usage.add_turn(turn, turn.cpu_s)
    return usage


def test_a_turn_near_the_memory_limit_is_flagged() -> None:
    turn = Usage(peak_memory_mib=240, cpu_s=1.0, disk_mb=1)
    [line] = advise("lite", turn, _session(turn))
    assert "within 10% of the 256 MiB of tier lite" in line


def test_a_small_session_on_a_big_tier_is_told_the_smallest_that_fits() -> None:
    turns = [Usage(150, 0.5, 3), Usage(180, 0.7, 4)]
    [line] = advise("standard-1", turns[-1], _session(*turns))
    assert 'tier lite (256 MiB, 0.0625 vCPU) would fit; set [sandbox] tier = "lite"' in line
    # 220 MiB peak needs 275 with headroom: lite no longer fits, basic does
    bigger = Usage(220, 0.1, 4)
    [line] = advise("standard-1", bigger, _session(*turns, bigger))
    assert 'tier = "basic"' in line


def test_nothing_to_say_when_the_tier_is_right() -> None:
    turn = Usage(600, 2.0, 10)
    assert advise("basic", turn, _session(turn)) == []


def test_an_oom_names_the_next_tier_with_more_memory() -> None:
    assert "tier standard-1 (4096 MiB)" in advise_oom("basic")
    assert 'tier = "basic"' in advise_oom("lite")
    assert 'tier = "shared-cpu-2x"' in advise_oom("shared-cpu-1x")
    assert "make the agent's work smaller" in advise_oom("standard-4")
