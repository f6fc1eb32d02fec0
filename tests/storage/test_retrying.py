"""The outage-riding store wrapper, over a real store whose backend goes away for a while."""

from __future__ import annotations

from typing import Any

import pytest
from claude_agent_sdk.testing import run_session_store_conformance

from kit.storage import StoreUnavailable, open_store
from kit.storage.retrying import RetryingStore

KEY: Any = {"project_key": "-workspace", "session_id": "44444444-4444-4444-8444-444444444444"}


class OutageStore:
    """A real in-memory store behind a switch: while ``down`` every call is unavailable."""

    def __init__(self) -> None:
        self.inner: Any = open_store("memory://")
        self.down_for = 0  # how many more calls fail

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any) -> Any:
            if self.down_for > 0:
                self.down_for -= 1
                raise StoreUnavailable("Cannot reach the store.")
            return await method(*args)

        return call


class FakeClock:
    """Time that moves only when the wrapper sleeps (so tests never wait)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_conformance_through_the_wrapper() -> None:
    """The wrapper is itself a complete SessionStore."""
    await run_session_store_conformance(
        lambda: RetryingStore(open_store("memory://")), skip_optional=frozenset()
    )


async def test_an_outage_is_waited_out_and_nothing_is_lost() -> None:
    """Appends during an outage wait, then land in order; the outage is reported once,
    and so is the recovery."""
    backend, clock, events = OutageStore(), FakeClock(), []
    store = RetryingStore(
        backend,
        on_unavailable=lambda m: events.append("down"),
        on_recovered=lambda: events.append("up"),
        clock=clock,
        sleep=clock.sleep,
    )
    await store.append(KEY, [{"type": "t", "uuid": "1"}])
    backend.down_for = 8
    await store.append(KEY, [{"type": "t", "uuid": "2"}])
    await store.append(KEY, [{"type": "t", "uuid": "3"}])
    assert [e["uuid"] for e in await store.load(KEY) or []] == ["1", "2", "3"]
    assert events == ["down", "up"]
    assert store.retries == 8
    assert 0 < clock.now < 45


async def test_giving_up_raises_after_the_deadline() -> None:
    """A store down for longer than max_wait_s: the error reaches the caller (the SDK then
    reports a mirror_error), after about max_wait_s of trying, not before."""
    backend, clock = OutageStore(), FakeClock()
    store = RetryingStore(backend, max_wait_s=10, clock=clock, sleep=clock.sleep)
    backend.down_for = 10_000
    with pytest.raises(StoreUnavailable):
        await store.append(KEY, [{"type": "t", "uuid": "1"}])
    assert 8 <= clock.now <= 10
