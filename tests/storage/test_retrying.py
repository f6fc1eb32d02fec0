"""The outage-riding store wrapper, over a real store whose backend goes away for a while."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from claude_agent_sdk.testing import run_session_store_conformance

from kit.storage import StoreError, StoreUnavailable, open_store
from kit.storage.retrying import RetryingStore, StoreHealth

KEY: Any = {"project_key": "-workspace", "session_id": "44444444-4444-4444-8444-444444444444"}
SUB: Any = {**KEY, "subpath": "subagents/agent-1"}
WAIT_S = 5.0
"""Real-time bound on waiting for a back-fill (it takes milliseconds when it works)."""


def entry(uid: str) -> Any:
    """A transcript entry."""
    return {"type": "t", "uuid": uid}


class OutageStore:
    """A real in-memory store behind switches.

    ``down_for``: the next N calls fail. ``down``: every call fails until it is cleared.
    ``appends_down``: only appends fail. ``lose_replies``: the next N appends are stored,
    then fail as if the reply was lost. ``hang``: calls never answer.
    """

    def __init__(self) -> None:
        self.inner: Any = open_store("memory://")
        self.down_for = 0
        self.down = False
        self.appends_down = False
        self.lose_replies = 0
        self.hang = False
        self.appended: list[list[str]] = []
        """The uuids of every append that reached the store, per call."""

    async def _gate(self, name: str) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.down or (self.appends_down and name == "append") or self.down_for > 0:
            self.down_for = max(self.down_for - 1, 0)
            raise StoreUnavailable("Cannot reach the store.")

    async def append(self, key: Any, entries: list[Any]) -> None:
        await self._gate("append")
        await self.inner.append(key, entries)
        self.appended.append([e["uuid"] for e in entries])
        if self.lose_replies > 0:
            self.lose_replies -= 1
            raise StoreUnavailable("The connection dropped before the reply.")

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any) -> Any:
            await self._gate(name)
            return await method(*args)

        return call


class FakeClock:
    """Time that moves only when the wrapper sleeps (so tests never wait out a backoff)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)  # let others run, as a real sleep would


def wrap(backend: OutageStore, **kw: Any) -> tuple[RetryingStore, FakeClock, list[str]]:
    """A wrapper on fake time that records its health changes."""
    clock, changes = FakeClock(), []
    store = RetryingStore(
        backend,
        clock=clock,
        sleep=clock.sleep,
        on_change=lambda health, message: changes.append(health.value),
        **kw,
    )
    return store, clock, changes


async def uuids(store: Any, key: Any) -> list[str]:
    """The uuids stored under ``key``, in order."""
    return [e["uuid"] for e in await store.load(key) or []]


async def test_conformance_through_the_wrapper() -> None:
    """The wrapper is itself a complete SessionStore."""
    await run_session_store_conformance(
        lambda: RetryingStore(open_store("memory://")), skip_optional=frozenset()
    )


async def test_an_outage_is_waited_out_and_nothing_is_lost() -> None:
    """Appends during an outage wait, then land in order; the outage is reported once,
    and so is the recovery."""
    backend = OutageStore()
    store, clock, changes = wrap(backend)
    await store.append(KEY, [entry("1")])
    backend.down_for = 8
    await store.append(KEY, [entry("2")])
    await store.append(KEY, [entry("3")])
    assert await uuids(store, KEY) == ["1", "2", "3"]
    assert changes == ["unavailable", "available"]
    assert store.retries == 8
    assert 0 < clock.now < 45


async def test_an_append_that_gives_up_is_held_not_lost() -> None:
    """Past max_wait_s the append returns without raising (the SDK would drop the batch),
    after about max_wait_s of trying; its entries are held and the health says so."""
    backend = OutageStore()
    store, clock, changes = wrap(backend, max_wait_s=10)
    backend.down = True
    await store.append(KEY, [entry("1"), entry("2")])
    assert 8 <= clock.now <= 10
    assert store.held == 2
    assert store.health is StoreHealth.HOLDING
    assert changes == ["unavailable", "holding"]
    assert await store.aclose(0) == 2


async def test_held_entries_are_back_filled_in_order_before_later_ones() -> None:
    """Appends made while entries are held queue behind them (across keys, and even once
    the store answers again): nothing reaches the store before what was held; the
    back-fill merges neighbours of one key."""
    backend = OutageStore()
    store, _, changes = wrap(backend, max_wait_s=1)
    await store.append(KEY, [entry("0")])
    backend.down = True
    await store.append(KEY, [entry("1")])
    await store.append(KEY, [entry("2")])
    await store.append(SUB, [entry("s1")])
    assert store.held == 3
    assert backend.appended == [["0"]]  # nothing got through
    backend.down = False
    await store.append(KEY, [entry("3")])  # the store answers, but "3" must wait its turn
    assert await store.settled(WAIT_S)
    assert backend.appended == [["0"], ["1", "2"], ["s1"], ["3"]]
    assert await uuids(store, KEY) == ["0", "1", "2", "3"]
    assert await uuids(store, SUB) == ["s1"]
    assert changes == ["unavailable", "holding", "available"]
    await store.append(KEY, [entry("4")])  # back to writing straight through
    assert backend.appended[-1] == ["4"]
    assert await store.aclose(0) == 0


async def test_a_write_that_landed_before_failing_is_not_stored_twice() -> None:
    """A write whose reply was lost is retried, inline and in the back-fill; the store's
    uuid idempotency keeps one copy of each entry."""
    backend = OutageStore()
    store, _, _ = wrap(backend, max_wait_s=1)
    backend.lose_replies = 1
    await store.append(KEY, [entry("1")])  # stored, "failed", retried
    backend.down = True
    await store.append(KEY, [entry("2")])  # held
    backend.down, backend.lose_replies = False, 2
    assert await store.settled(WAIT_S)
    assert backend.appended.count(["2"]) == 3  # written three times...
    assert await uuids(store, KEY) == ["1", "2"]  # ...stored once


async def test_settled_gives_up_at_its_deadline_and_keeps_the_entries() -> None:
    """A store that stays down: settled() returns false after its timeout, the entries
    stay held (and are written once the store is back)."""
    backend = OutageStore()
    store, _, _ = wrap(backend, max_wait_s=1)
    backend.down = True
    await store.append(KEY, [entry("1")])
    assert not await store.settled(0.05)
    assert store.held == 1
    backend.down = False
    assert await store.settled(WAIT_S)
    assert await uuids(store, KEY) == ["1"]


async def test_load_sees_held_entries() -> None:
    """While appends are held, a load returns the stored entries followed by the held ones."""
    backend = OutageStore()
    store, _, _ = wrap(backend, max_wait_s=1)
    await store.append(KEY, [entry("1")])
    backend.appends_down = True
    await store.append(KEY, [entry("2")])
    assert store.held == 1
    assert await uuids(store, KEY) == ["1", "2"]
    assert await uuids(backend, KEY) == ["1"]
    assert await store.aclose(0) == 1


async def test_a_store_that_hangs_counts_as_down() -> None:
    """A call that never answers is abandoned after attempt_timeout_s and retried; the
    append still returns within max_wait_s, its entries held."""
    backend = OutageStore()
    store, _, changes = wrap(backend, max_wait_s=0.5, attempt_timeout_s=0.05)
    backend.hang = True
    async with asyncio.timeout(WAIT_S):
        await store.append(KEY, [entry("1")])
    assert store.held == 1
    assert changes == ["unavailable", "holding"]
    backend.hang = False
    assert await store.settled(WAIT_S)
    assert await uuids(store, KEY) == ["1"]


async def test_other_store_errors_are_not_outages() -> None:
    """A store that refuses (not unreachable) fails the call at once: no retry, no hold."""

    class Refusing(OutageStore):
        async def append(self, key: Any, entries: list[Any]) -> None:
            raise StoreError("Bucket 'x' does not exist; create it or fix the store URL.")

    store, clock, changes = wrap(Refusing())
    with pytest.raises(StoreError, match="does not exist"):
        await store.append(KEY, [entry("1")])
    assert (clock.now, store.held, changes) == (0.0, 0, [])
