"""The tier advisor: what a session's sandbox used against what its tier gives.

After each turn the host reads the sandbox's resource usage (peak memory, CPU seconds,
workspace disk) and asks :func:`advise` what to tell the developer: a turn that came within
10 % of a limit, a smaller tier that would fit everything the session has used so far, or,
after an OOM kill, the next tier that gives more memory. Pure functions over
``kit.tiers``; ``kit dev`` prints the advice.
"""

from __future__ import annotations

from dataclasses import dataclass

from kit.host.sandbox import Usage
from kit.tiers import TIERS, Tier, get_tier

NEAR = 0.9
"""A turn within 10 % of a limit is worth a warning."""
HEADROOM = 1.25
"""A smaller tier "fits" when it leaves this much room over the session's peak."""


@dataclass
class SessionUsage:
    """Peaks over every sandbox and turn of one session."""

    peak_memory_mib: float = 0.0
    peak_disk_mb: float = 0.0
    cpu_s: float = 0.0
    turns: int = 0

    def add_turn(self, turn: Usage, cpu_s: float) -> None:
        """Fold one turn in (``cpu_s``: the CPU the turn itself used)."""
        self.peak_memory_mib = max(self.peak_memory_mib, turn.peak_memory_mib)
        self.peak_disk_mb = max(self.peak_disk_mb, turn.disk_mb)
        self.cpu_s += cpu_s
        self.turns += 1


def smaller_fit(tier: Tier, usage: SessionUsage) -> Tier | None:
    """The smallest tier of the same platform, smaller than ``tier``, that fits ``usage``."""
    fits = [
        t
        for t in TIERS.values()
        if t.platform == tier.platform
        and t.memory_mib < tier.memory_mib
        and t.memory_mib >= usage.peak_memory_mib * HEADROOM
        and t.disk_mb >= usage.peak_disk_mb * HEADROOM
    ]
    return min(fits, key=lambda t: (t.memory_mib, t.vcpu), default=None)


def bigger_memory(tier: Tier) -> Tier | None:
    """The next tier of the same platform with more memory than ``tier``."""
    up = [
        t for t in TIERS.values() if t.platform == tier.platform and t.memory_mib > tier.memory_mib
    ]
    return min(up, key=lambda t: (t.memory_mib, t.vcpu), default=None)


def advise(tier_name: str, turn: Usage, session: SessionUsage) -> list[str]:
    """Lines of advice after a turn (none when there is nothing to say)."""
    tier = get_tier(tier_name)
    lines = []
    if turn.peak_memory_mib >= NEAR * tier.memory_mib:
        lines.append(
            f"memory peaked at {turn.peak_memory_mib:.0f} MiB, within 10% of the "
            f"{tier.memory_mib} MiB of tier {tier.name}: a bigger input may be OOM-killed."
        )
    if turn.disk_mb >= NEAR * tier.disk_mb:
        lines.append(
            f"the workspace holds {turn.disk_mb:.0f} MB, within 10% of the "
            f"{tier.disk_mb} MB disk of tier {tier.name}."
        )
    smaller = smaller_fit(tier, session)
    if smaller is not None and not lines:
        lines.append(
            f"peak {session.peak_memory_mib:.0f} MiB and {session.peak_disk_mb:.0f} MB over "
            f"{session.turns} turn(s): tier {smaller.name} ({smaller.memory_mib} MiB, "
            f'{smaller.vcpu:g} vCPU) would fit; set [sandbox] tier = "{smaller.name}" in kit.toml.'
        )
    return lines


def advise_oom(tier_name: str) -> str:
    """What to do after an OOM kill at ``tier_name``'s memory limit."""
    tier = get_tier(tier_name)
    up = bigger_memory(tier)
    if up is None:
        return (
            f"the sandbox was OOM-killed at {tier.memory_mib} MiB, the most tier {tier.name}'s "
            "platform offers: make the agent's work smaller."
        )
    return (
        f"the sandbox was OOM-killed at the {tier.memory_mib} MiB of tier {tier.name}; tier "
        f'{up.name} ({up.memory_mib} MiB) gives more: set [sandbox] tier = "{up.name}" in kit.toml.'
    )
