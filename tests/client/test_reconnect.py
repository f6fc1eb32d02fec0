"""The reconnect schedule as data: exponential, capped, jittered within bounds; budgets."""

from __future__ import annotations

import math
import random

import pytest

import kit.client
from kit.client import FOREVER, LIBRARY_POLICY, ClientError, ReconnectPolicy


def test_delays_double_then_stop_at_the_cap() -> None:
    """Without jitter the waits go 0.1, 0.2, 0.4 … and never past max_delay_s."""
    policy = ReconnectPolicy(jitter=0)
    assert policy.schedule(8) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])
    assert policy.delay(10_000, 0.0) == 2.0  # no overflow however long it has been


def test_jitter_only_shortens_and_stays_within_its_fraction() -> None:
    """Jittered waits lie in [(1 - jitter) * base, base], so the cap still holds."""
    policy = ReconnectPolicy(jitter=0.5)
    bases = ReconnectPolicy(jitter=0).schedule(50)
    rng = random.Random(7)
    rands = [rng.random() for _ in range(50)]
    for base, delay in zip(bases, policy.schedule(50, rands), strict=True):
        assert 0.5 * base <= delay <= base <= policy.max_delay_s
    assert len({round(d, 6) for d in policy.schedule(50, rands)[10:]}) > 1  # really random


def test_default_budgets() -> None:
    """The library gives up after 60 s by default; FOREVER never does."""
    assert LIBRARY_POLICY.give_up_after_s == 60
    assert not LIBRARY_POLICY.forever
    assert FOREVER.forever
    assert FOREVER.give_up_after_s == math.inf


def test_nonsense_policies_are_refused() -> None:
    """A policy that would never wait, or shrink its waits, is refused with what to fix."""
    with pytest.raises(ClientError, match="jitter"):
        ReconnectPolicy(jitter=2)
    with pytest.raises(ClientError, match="max_delay_s"):
        ReconnectPolicy(first_delay_s=3, max_delay_s=1)
    with pytest.raises(ClientError, match="multiplier"):
        ReconnectPolicy(multiplier=0.5)
    with pytest.raises(ClientError, match="healthy_after_s"):
        ReconnectPolicy(healthy_after_s=-1)


def test_only_a_connection_that_did_something_is_healthy() -> None:
    """A welcome alone earns no fresh schedule: the connection must bring a new event or
    stay open 5 s."""
    assert not LIBRARY_POLICY.healthy(None)  # never welcomed
    assert not LIBRARY_POLICY.healthy(0.01)  # welcomed, then dropped (1011 at once)
    assert LIBRARY_POLICY.healthy(0.01, new_events=1)
    assert LIBRARY_POLICY.healthy(5.0)
    assert FOREVER.healthy_after_s == LIBRARY_POLICY.healthy_after_s == 5.0


def test_public_api_is_pinned() -> None:
    """kit.client exports exactly its curated names."""
    assert sorted(kit.client.__all__) == [
        "ClientError",
        "ConnectionLost",
        "ConnectionStatus",
        "FOREVER",
        "InterruptAcked",
        "LIBRARY_POLICY",
        "ReconnectPolicy",
        "SessionClient",
        "SessionInfo",
        "SessionRefused",
        "StatusChange",
        "create_session",
        "dumps_event",
    ]
