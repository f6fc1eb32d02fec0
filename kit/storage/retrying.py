"""A store wrapper that rides out outages without losing transcript entries.

The SDK gives an ``append`` three tries over about 1.2 s and then drops the batch with a
``mirror_error``. Wrapped, a store behaves like this:

1. A call that hits :class:`StoreUnavailable`, or does not answer within
   ``attempt_timeout_s``, is retried with a capped backoff for up to
   ``max_wait_s`` (default 45 s, inside the SDK's 60 s per-append timeout). The SDK holds
   the turn's ``ResultMessage`` until its appends return, so a short outage only delays it.
2. An append still failing after ``max_wait_s`` gives up *without loss*: its entries are
   **held** in memory, in order, and the SDK is told they were stored. Every later append
   queues behind them (order is kept across keys), and a background task back-fills them
   as soon as the store answers again. Stores are idempotent on ``uuid``, so an entry whose
   write did land before it was held is not stored twice (entries without a uuid could be).
3. Held entries are not durable. Whoever reports a turn complete must first wait for
   :meth:`RetryingStore.settled` (ARCHITECTURE §4.4: a ``result`` only after the transcript
   is in the store). Held entries are lost if the process ends before the back-fill.

Health, reported through ``on_change(health, message)`` on each transition::

    AVAILABLE ──StoreUnavailable──▶ UNAVAILABLE ──an append gave up──▶ HOLDING
      ▲  ▲                               │                                │
      │  └───── a call got through ──────┘                                │
      └─────────────────── the back-fill stored everything ───────────────┘

Other store errors (a missing bucket, a refused request) are not outages: they reach the
caller at once, and the SDK reports a ``mirror_error``. Calls must not overlap (the SDK
serialises its appends), or their order is not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

from kit.storage.errors import StoreUnavailable

log = logging.getLogger("kit.storage")

T = TypeVar("T")
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)
DEFAULT_MAX_WAIT_S = 45.0
ATTEMPT_TIMEOUT_S = 20.0
"""One call that has not answered after this long counts as a failed attempt."""
MIN_ATTEMPT_S = 0.05
BACKFILL_BATCH_ENTRIES = 1000
"""Held appends to one key are merged into writes of up to this many entries."""


class StoreHealth(enum.Enum):
    """How the wrapped store is doing, as the wrapper sees it."""

    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"
    """Calls fail; they wait and retry."""
    HOLDING = "holding"
    """An append gave up waiting; entries are held in memory until the back-fill stores them."""


@dataclass
class _Held:
    key: SessionKey
    entries: list[SessionStoreEntry]


def _ident(key: SessionKey) -> tuple[str, str, str]:
    return key["project_key"], key["session_id"], key.get("subpath") or ""


class RetryingStore:
    """Wraps any kit store; waits out :class:`StoreUnavailable` and back-fills what gave up."""

    def __init__(
        self,
        inner: Any,
        *,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        on_change: Callable[[StoreHealth, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.max_wait_s = max_wait_s
        self.attempt_timeout_s = attempt_timeout_s
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self.health = StoreHealth.AVAILABLE
        self.retries = 0
        self._held: deque[_Held] = deque()
        self._settled = asyncio.Event()
        self._settled.set()
        self._backfill: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def held(self) -> int:
        """How many entries are held, waiting for the back-fill."""
        return sum(len(h.entries) for h in self._held)

    async def settled(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until nothing is held; whether that happened."""
        if not self._held:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), max(timeout_s, 0.0))
        return not self._held

    async def aclose(self, grace_s: float) -> int:
        """Give the back-fill up to ``grace_s``, then stop it; how many entries stay unstored."""
        await self.settled(grace_s)
        self._closed = True
        task, self._backfill = self._backfill, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return self.held

    # -- the protocol ----------------------------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Append, waiting out an outage; past ``max_wait_s`` hold the entries instead."""
        if not entries:
            return
        if self._held:  # keep order: nothing may land before what is already held
            self._hold(key, entries)
            return
        try:
            await self._retry(lambda: self.inner.append(key, entries))
        except StoreUnavailable as exc:
            self._hold(key, entries)
            log.warning(
                "store append gave up after %.0f s; holding entries: %s", self.max_wait_s, exc
            )
            self._set(
                StoreHealth.HOLDING,
                f"The store stayed unreachable for {self.max_wait_s:.0f} s; "
                f"{self.held} entries are held until it answers.",
            )

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Load, waiting out an outage; entries still held for ``key`` are included."""
        result: list[SessionStoreEntry] | None = await self._retry(lambda: self.inner.load(key))
        held = [e for h in self._held if _ident(h.key) == _ident(key) for e in h.entries]
        if not held:
            return result
        stored = result or []
        uuids = {e.get("uuid") for e in stored if isinstance(e.get("uuid"), str)}
        return stored + [e for e in held if e.get("uuid") not in uuids or not e.get("uuid")]

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """List main transcripts."""
        result: list[SessionStoreListEntry] = await self._retry(
            lambda: self.inner.list_sessions(project_key)
        )
        return result

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """List summary sidecars."""
        result: list[SessionSummaryEntry] = await self._retry(
            lambda: self.inner.list_session_summaries(project_key)
        )
        return result

    async def delete(self, key: SessionKey) -> None:
        """Delete a key."""
        await self._retry(lambda: self.inner.delete(key))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """List subagent subpaths."""
        result: list[str] = await self._retry(lambda: self.inner.list_subkeys(key))
        return result

    # -- internals -------------------------------------------------------------------------

    def _set(self, health: StoreHealth, message: str) -> None:
        if health is self.health:
            return
        self.health = health
        if self._on_change is not None:
            self._on_change(health, message)

    def _failed(self, exc: StoreUnavailable) -> None:
        if self.health is StoreHealth.AVAILABLE:
            self._set(StoreHealth.UNAVAILABLE, str(exc))

    def _answered(self) -> None:
        if not self._held:
            self._set(StoreHealth.AVAILABLE, "The store answers again.")

    async def _attempt(self, call: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        """One call, bounded in time: a store that hangs is as good as down."""
        try:
            return await asyncio.wait_for(call(), max(timeout_s, MIN_ATTEMPT_S))
        except TimeoutError:
            raise StoreUnavailable(
                f"The store did not answer within {max(timeout_s, MIN_ATTEMPT_S):.1f} s."
            ) from None

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        deadline = self._clock() + self.max_wait_s
        attempt = 0
        while True:  # ends by the deadline: every failed attempt sleeps at least BACKOFF_S[0]
            remaining = deadline - self._clock()
            try:
                result = await self._attempt(call, min(remaining, self.attempt_timeout_s))
            except StoreUnavailable as exc:
                self._failed(exc)
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                if self._clock() + delay > deadline:
                    raise
                attempt += 1
                self.retries += 1
                await self._sleep(delay)
                continue
            self._answered()
            return result

    def _hold(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        self._held.append(_Held(key, list(entries)))
        self._settled.clear()
        if not self._closed and (self._backfill is None or self._backfill.done()):
            self._backfill = asyncio.create_task(self._run_backfill(), name="store-backfill")

    def _next_batch(self) -> tuple[int, SessionKey, list[SessionStoreEntry]]:
        """The oldest held appends to one key, merged: (how many, key, entries)."""
        first = self._held[0]
        entries = list(first.entries)
        count = 1
        for item in list(self._held)[1:]:
            if _ident(item.key) != _ident(first.key):
                break
            if len(entries) + len(item.entries) > BACKFILL_BATCH_ENTRIES:
                break
            entries.extend(item.entries)
            count += 1
        return count, first.key, entries

    async def _run_backfill(self) -> None:
        """Write held entries oldest first, retrying until they are all stored or
        :meth:`aclose`; each pass either stores a batch or sleeps a backoff step."""
        attempt = 0
        while self._held and not self._closed:
            count, key, entries = self._next_batch()
            try:
                await self._attempt(
                    partial(self.inner.append, key, entries), self.attempt_timeout_s
                )
            except Exception as exc:  # any failure: the held entries must not be dropped
                if not isinstance(exc, StoreUnavailable):
                    log.warning("store back-fill failed, will retry: %s", exc)
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                self.retries += 1
                await self._sleep(delay)
                continue
            for _ in range(count):
                self._held.popleft()
            attempt = 0
        if not self._held:
            log.info("store back-fill done")
            self._answered()
            self._settled.set()
