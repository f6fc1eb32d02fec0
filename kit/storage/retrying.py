"""A store wrapper that waits out outages instead of dropping transcript entries.

The SDK gives an ``append`` three tries over about 1.2 s and then drops the batch with a
``mirror_error``. Wrapped, an append that hits :class:`StoreUnavailable` is retried with a
capped backoff for up to ``max_wait_s`` (default 45 s, inside the SDK's 60 s per-append
timeout), so the turn waits for the store rather than losing its entries; the SDK holds the
turn's ``ResultMessage`` until its appends return, so the result is still written only
after the transcript is stored. ``on_unavailable`` fires once when an outage begins and
``on_recovered`` once when a call gets through again. Past ``max_wait_s`` the error goes to
the SDK, which reports a ``mirror_error``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

from kit.storage.errors import StoreUnavailable

T = TypeVar("T")
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)
DEFAULT_MAX_WAIT_S = 45.0


class RetryingStore:
    """Wraps any kit store; every method waits out :class:`StoreUnavailable`."""

    def __init__(
        self,
        inner: Any,
        *,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        on_unavailable: Callable[[str], None] | None = None,
        on_recovered: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.max_wait_s = max_wait_s
        self._on_unavailable = on_unavailable
        self._on_recovered = on_recovered
        self._clock = clock
        self._sleep = sleep
        self.outage = False
        self.retries = 0

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        deadline = self._clock() + self.max_wait_s
        attempt = 0
        while True:
            try:
                result = await call()
            except StoreUnavailable as exc:
                if not self.outage:
                    self.outage = True
                    if self._on_unavailable is not None:
                        self._on_unavailable(str(exc))
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                if self._clock() + delay > deadline:
                    raise
                attempt += 1
                self.retries += 1
                await self._sleep(delay)
                continue
            if self.outage:
                self.outage = False
                if self._on_recovered is not None:
                    self._on_recovered()
            return result

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Append, waiting out an outage."""
        await self._retry(lambda: self.inner.append(key, entries))

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Load, waiting out an outage."""
        result: list[SessionStoreEntry] | None = await self._retry(lambda: self.inner.load(key))
        return result

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
