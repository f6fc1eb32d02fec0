"""The tier advisor: what a session's sandbox used against what its tier gives.

Around each turn the host reads the sandbox's resource usage (peak memory, CPU seconds, time
held at the CPU share, workspace disk) and asks :func:`advise` what to tell the developer:

- a turn that came within 10 % of the tier's memory or disk (:data:`NEAR`);
- a turn that spent a meaningful share of its time throttled at the tier's CPU share
  (:data:`THROTTLED_SHARE` of its wall time and at least :data:`MIN_THROTTLED_S`): the next
  tier with more CPU;
- a smaller tier that would fit everything the session has used so far: memory and disk
  with :data:`HEADROOM`, and CPU — never for a session that was throttled at all (a smaller
  tier has less CPU), and only one whose vCPU covers the session's average CPU demand with
  :data:`HEADROOM`. Where the provider cannot measure throttling, the advisor says nothing
  about CPU, so it does not suggest a smaller tier either;
- after an OOM kill (:func:`advise_oom`), the next tier with more memory.

:class:`TierAdvisor` is one session's advisor: it speaks once per piece of advice (a
:attr:`Advice.topic`) per session, so the same advice is not repeated after every turn,
and new advice (another tier, another limit) is said when it comes up. Pure: no I/O, no
clock; the host passes readings and the turn's wall time in, ``kit dev`` prints the lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kit.host.sandbox import Usage
from kit.tiers import TIERS, Tier, get_tier

NEAR = 0.9
"""A turn within 10 % of a limit is worth a warning."""
HEADROOM = 1.25
"""A smaller tier "fits" when it leaves this much room over the session's peak memory and
disk, and over its average CPU demand."""
THROTTLED_SHARE = 0.25
"""Held at the CPU share for a quarter of a turn's wall time or more, a turn would be
noticeably quicker on a tier with more CPU; below that, model latency dominates and more
CPU would mostly cost more."""
MIN_THROTTLED_S = 2.0
"""A turn held for less than this in all is not worth a bigger tier: a shorter wait is
within the jitter of a model call (on this kind of machine the scaffold's hello turn is held
~1.5 s at ``basic``, ~0.7 s at ``standard-1`` and ~9 s at ``lite``; docs/tiers.md)."""


@dataclass(frozen=True)
class TurnUsage:
    """What one turn used: the sandbox's peaks so far, and the turn's own CPU seconds, time
    held at the CPU share (``None``: not measurable here) and wall time."""

    peak_memory_mib: float
    disk_mb: float
    cpu_s: float
    throttled_s: float | None
    wall_s: float

    @classmethod
    def between(cls, before: Usage | None, after: Usage, wall_s: float) -> TurnUsage:
        """The turn between two readings of one sandbox (``before`` None: since it started)."""
        cpu_s, throttled_s, wall_s = after.cpu_s, after.throttled_s, max(0.0, wall_s)
        if before is not None:
            cpu_s -= before.cpu_s
            if throttled_s is not None and before.throttled_s is not None:
                throttled_s -= before.throttled_s
        return cls(
            peak_memory_mib=after.peak_memory_mib,
            disk_mb=after.disk_mb,
            cpu_s=max(0.0, cpu_s),
            # Whole 100 ms periods are counted: never more than the turn's own time.
            throttled_s=None if throttled_s is None else min(max(0.0, throttled_s), wall_s),
            wall_s=wall_s,
        )


@dataclass
class SessionUsage:
    """Peaks and totals over every sandbox and turn of one session."""

    peak_memory_mib: float = 0.0
    peak_disk_mb: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    throttled_s: float | None = None
    """Time held at the CPU share over all turns; ``None`` until a turn could measure it."""
    turns: int = 0

    def add_turn(self, turn: TurnUsage) -> None:
        """Fold one turn in."""
        self.peak_memory_mib = max(self.peak_memory_mib, turn.peak_memory_mib)
        self.peak_disk_mb = max(self.peak_disk_mb, turn.disk_mb)
        self.cpu_s += turn.cpu_s
        self.wall_s += turn.wall_s
        if turn.throttled_s is not None:
            self.throttled_s = (self.throttled_s or 0.0) + turn.throttled_s
        self.turns += 1

    @property
    def cpu_demand(self) -> float:
        """vCPU the session's turns used on average while they ran (CPU s per wall s)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class Advice:
    """One piece of advice: ``topic`` says what it is about (the same topic is the same
    advice, whatever the figures in ``line``)."""

    topic: str
    line: str


def smaller_fit(tier: Tier, usage: SessionUsage) -> Tier | None:
    """The smallest tier of the same platform, smaller than ``tier``, that fits ``usage``:
    memory and disk with headroom, and CPU — none when the session was throttled or its
    throttling is unknown, else one whose vCPU covers its average demand with headroom."""
    if usage.throttled_s is None or usage.throttled_s > 0:
        return None
    fits = [
        t
        for t in TIERS.values()
        if t.platform == tier.platform
        and t.memory_mib < tier.memory_mib
        and t.memory_mib >= usage.peak_memory_mib * HEADROOM
        and t.disk_mb >= usage.peak_disk_mb * HEADROOM
        and t.vcpu >= usage.cpu_demand * HEADROOM
    ]
    return min(fits, key=lambda t: (t.memory_mib, t.vcpu), default=None)


def bigger_memory(tier: Tier) -> Tier | None:
    """The next tier of the same platform with more memory than ``tier``."""
    up = [
        t for t in TIERS.values() if t.platform == tier.platform and t.memory_mib > tier.memory_mib
    ]
    return min(up, key=lambda t: (t.memory_mib, t.vcpu), default=None)


def bigger_cpu(tier: Tier) -> Tier | None:
    """The next tier of the same platform with more CPU than ``tier``."""
    up = [t for t in TIERS.values() if t.platform == tier.platform and t.vcpu > tier.vcpu]
    return min(up, key=lambda t: (t.vcpu, t.memory_mib), default=None)


def throttled(turn: TurnUsage) -> bool:
    """Whether the turn spent a meaningful share of its time held at the CPU share."""
    return (
        turn.throttled_s is not None
        and turn.throttled_s >= MIN_THROTTLED_S
        and turn.throttled_s >= THROTTLED_SHARE * turn.wall_s
    )


def advise(tier_name: str, turn: TurnUsage, session: SessionUsage) -> list[Advice]:
    """Advice after a turn (``session`` already includes it); empty when all is well."""
    tier = get_tier(tier_name)
    advice = []
    if turn.peak_memory_mib >= NEAR * tier.memory_mib:
        advice.append(
            Advice(
                f"memory-near:{tier.name}",
                f"memory peaked at {turn.peak_memory_mib:.0f} MiB, within 10% of the "
                f"{tier.memory_mib} MiB of tier {tier.name}: a bigger input may be OOM-killed.",
            )
        )
    if turn.disk_mb >= NEAR * tier.disk_mb:
        advice.append(
            Advice(
                f"disk-near:{tier.name}",
                f"the workspace holds {turn.disk_mb:.0f} MB, within 10% of the "
                f"{tier.disk_mb} MB disk of tier {tier.name}.",
            )
        )
    if turn.throttled_s is not None and throttled(turn):
        held = (
            f"this turn was held at tier {tier.name}'s CPU share ({tier.vcpu:g} vCPU) for "
            f"{turn.throttled_s:.1f} s of its {turn.wall_s:.1f} s"
        )
        up = bigger_cpu(tier)
        if up is None:
            advice.append(
                Advice(
                    f"more-cpu:{tier.name}",
                    f"{held}; no {tier.platform} tier gives more CPU: make the agent's work "
                    "lighter.",
                )
            )
        else:
            advice.append(
                Advice(
                    f"more-cpu:{up.name}",
                    f"{held}; tier {up.name} ({up.vcpu:g} vCPU, {up.vcpu / tier.vcpu:g}x the "
                    f'CPU) would be quicker: set [sandbox] tier = "{up.name}" in kit.toml.',
                )
            )
    smaller = smaller_fit(tier, session)
    if smaller is not None and not advice:
        advice.append(
            Advice(
                f"smaller:{smaller.name}",
                f"peak {session.peak_memory_mib:.0f} MiB and {session.peak_disk_mb:.0f} MB, "
                f"{session.cpu_demand:.2f} vCPU on average and never throttled, over "
                f"{session.turns} turn(s): tier {smaller.name} ({smaller.memory_mib} MiB, "
                f"{smaller.vcpu:g} vCPU) would fit; set [sandbox] tier = "
                f'"{smaller.name}" in kit.toml.',
            )
        )
    return advice


def advise_oom(tier_name: str) -> Advice:
    """What to do after an OOM kill at ``tier_name``'s memory limit."""
    tier = get_tier(tier_name)
    up = bigger_memory(tier)
    if up is None:
        return Advice(
            f"oom:{tier.name}",
            f"the sandbox was OOM-killed at {tier.memory_mib} MiB, the most tier {tier.name}'s "
            "platform offers: make the agent's work smaller.",
        )
    return Advice(
        f"oom:{up.name}",
        f"the sandbox was OOM-killed at the {tier.memory_mib} MiB of tier {tier.name}; tier "
        f'{up.name} ({up.memory_mib} MiB) gives more: set [sandbox] tier = "{up.name}" in kit.toml.',
    )


@dataclass
class TierAdvisor:
    """One session's advisor: folds its turns in and says each piece of advice once.

    The host keeps one per session in memory, across the session's sandboxes (a sandbox that
    dies and restarts keeps it); it starts afresh when the host restarts or unloads the
    session, so advice may then be said once more.
    """

    tier: str
    usage: SessionUsage = field(default_factory=SessionUsage)
    said: set[str] = field(default_factory=set)
    """Topics already said in this session."""

    def after_turn(self, before: Usage | None, after: Usage, wall_s: float) -> list[str]:
        """Lines to say after a turn, from readings of its sandbox just ``before`` and
        ``after`` it and its ``wall_s``: advice not said before in this session."""
        turn = TurnUsage.between(before, after, wall_s)
        self.usage.add_turn(turn)
        return self._new(advise(self.tier, turn, self.usage))

    def after_oom(self) -> list[str]:
        """Lines to say after the session's sandbox was OOM-killed."""
        return self._new([advise_oom(self.tier)])

    def _new(self, advice: list[Advice]) -> list[str]:
        fresh = [a for a in advice if a.topic not in self.said]
        self.said.update(a.topic for a in fresh)
        return [a.line for a in fresh]
