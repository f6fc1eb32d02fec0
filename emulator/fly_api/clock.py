"""Time for the emulator, injectable, and Fly's rate limits as token buckets on it.

Lease expiry reads :meth:`Clock.time` (unix seconds, as ``Lease.expires_at``); the rate
limiter reads :meth:`Clock.monotonic`. Tests pass a :class:`FakeClock` and move it with
:meth:`FakeClock.advance` instead of sleeping.

Limits (reference/fly.md §8, Fly's "Working with the Machines API"): **1 request/s per
action per machine (or app), burst 3**; Get Machine **5/s, burst 10**.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    """Where the emulator reads the time."""

    def time(self) -> float:
        """Unix time in seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...


class SystemClock:
    """The machine's clocks."""

    def time(self) -> float:
        """Unix time in seconds."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told: both readings advance together."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def time(self) -> float:
        """The fake unix time."""
        return self._now

    def monotonic(self) -> float:
        """The same reading (it never goes back)."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move both readings forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("A clock cannot go back: pass seconds >= 0.")
        self._now += seconds


@dataclass(frozen=True)
class Rate:
    """A token bucket's refill rate (per second) and size."""

    per_second: float
    burst: int


DEFAULT_RATE = Rate(per_second=1.0, burst=3)
"""Every action on one machine (or app) but Get Machine."""
GET_MACHINE_RATE = Rate(per_second=5.0, burst=10)
"""Get Machine, the one call with a higher limit."""


@dataclass(frozen=True)
class RateLimits:
    """Which rate each action gets: ``special`` by operationId, else ``default``."""

    default: Rate = DEFAULT_RATE
    special: tuple[tuple[str, Rate], ...] = (("Machines_show", GET_MACHINE_RATE),)

    def rate(self, action: str) -> Rate:
        """The rate for ``action`` (an operationId of the spec)."""
        return dict(self.special).get(action, self.default)


FLY_RATE_LIMITS = RateLimits()
"""Fly's documented limits."""


class RateLimiter:
    """One token bucket per (action, app, machine), refilled on ``clock``."""

    def __init__(self, limits: RateLimits, clock: Clock) -> None:
        self.limits = limits
        self._clock = clock
        self._buckets: dict[tuple[str, str, str], tuple[float, float]] = {}

    def allow(self, action: str, app: str, machine: str = "") -> bool:
        """Take a token for this call; False (and nothing taken) when the bucket is empty."""
        rate = self.limits.rate(action)
        now = self._clock.monotonic()
        key = (action, app, machine)
        tokens, last = self._buckets.get(key, (float(rate.burst), now))
        tokens = min(float(rate.burst), tokens + (now - last) * rate.per_second)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True
