"""Sandboxes started ahead of their sessions, so a new session's first turn finds one up.

A sandbox is started for one session id and cannot change it (the agent's transcript is
keyed by it), so the pool chooses the ids of sessions not created yet. It keeps up to
``size`` sandboxes that no turn uses:

- **spares**, started for an id no session has yet;
- **reserved** ones, whose id a new session took (:meth:`SandboxPool.claim`, from
  ``POST /v1/sessions``) and whose first turn has not taken the sandbox yet
  (:meth:`SandboxPool.take`).

A reserved sandbox not taken within ``grace_s`` is stopped; so is one whose release is no
longer current (:meth:`SandboxPool.refresh`); a new spare then takes its place. However
many sessions sit connected and idle, at most ``size`` sandboxes run without a turn.

Spares start one at a time and, after a failed start or a spare that died on its own
within :data:`HEALTHY_S`, back off (up to :data:`MAX_BACKOFF_S`), so a broken bundle or a
tier too small to idle in costs one start per period, not a loop.

A sandbox the pool stops is stopped in the background; a session whose id it had waits in
:meth:`SandboxPool.take` until it is gone, so two sandboxes never run for one session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kit.host.errors import HostError, SandboxError
from kit.host.launch import LiveSandbox, SessionEnv, launch
from kit.host.sandbox import SandboxState
from kit.ids import SessionId, new_session_id

log = logging.getLogger("kit.host")

POOL_SIZE = 2
"""Default pool size: enough for a new session's first turn not to wait for a sandbox when
sessions arrive one at a time, small enough to cost little (each is a runtime and a CLI)."""
MAX_POOL_SIZE = 64
BACKOFF_S = (1.0, 2.0, 5.0, 15.0, 30.0, 60.0)
"""Waits after 1, 2, … consecutive failed starts."""
MAX_BACKOFF_S = BACKOFF_S[-1]
HEALTHY_S = 60.0
"""A spare that dies on its own sooner than this after its start counts as a failed start."""


@dataclass
class _Entry:
    session_id: SessionId
    live: LiveSandbox | None = None
    """None while the sandbox starts."""
    reserved_at: float | None = None
    """When a new session took this entry's id (monotonic); None: a spare."""
    started_at: float = 0.0
    watcher: asyncio.Task[None] | None = None


class SandboxPool:
    """Up to ``size`` sandboxes started for sessions that do not exist yet."""

    def __init__(
        self,
        env: SessionEnv,
        size: int = POOL_SIZE,
        *,
        grace_s: float | None = None,
        discard: Callable[[SessionId], Awaitable[None]] | None = None,
        new_id: Callable[[], SessionId] = new_session_id,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= size <= MAX_POOL_SIZE:
            raise HostError(f"The pool size must be 0 to {MAX_POOL_SIZE}, got {size}.")
        self.env = env
        self.size = size
        self.grace_s = env.grace_s if grace_s is None else grace_s
        self._discard = discard
        """Deletes what was kept for an id no session ever took (its folders)."""
        self._new_id = new_id
        self._clock = clock
        self._entries: dict[SessionId, _Entry] = {}
        self._changed = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._stopping: dict[SessionId, asyncio.Task[None]] = {}
        """Stops under way, by session id."""
        self._retry_at = 0.0
        """No new spare is started before this (backoff after failures)."""
        self._closed = False
        self.starts = 0
        """Sandboxes the pool has started (for tests and benchmarks)."""
        self.failures = 0
        """Consecutive failed starts (0 after a success)."""

    def start(self) -> None:
        """Begin filling the pool (no-op with size 0)."""
        if self.size and self._keeper is None and not self._closed:
            self._keeper = asyncio.get_running_loop().create_task(self._keep(), name="pool")

    @property
    def spares(self) -> int:
        """Sandboxes up and waiting for a session."""
        return sum(1 for e in self._entries.values() if e.live and e.reserved_at is None)

    @property
    def reserved(self) -> int:
        """Sandboxes a new session took the id of and has not used yet."""
        return sum(1 for e in self._entries.values() if e.reserved_at is not None)

    def sandboxes(self) -> list[tuple[SessionId | None, LiveSandbox]]:
        """Every sandbox the pool holds that is up, with the session that reserved it
        (None: a spare)."""
        return [
            (e.session_id if e.reserved_at is not None else None, e.live)
            for e in self._entries.values()
            if e.live is not None
        ]

    def claim(self) -> SessionId | None:
        """The id for a new session whose sandbox is already up, or None (none is ready).

        The sandbox stays in the pool, reserved for that session, until its first turn
        takes it (:meth:`take`) or ``grace_s`` passes.
        """
        current = self.env.release()
        for entry in self._entries.values():
            live = entry.live
            if (
                entry.reserved_at is None
                and live is not None
                and live.release == current
                and live.sandbox.state is SandboxState.RUNNING
            ):
                entry.reserved_at = self._clock()
                self._changed.set()  # the keeper schedules the reservation's end
                return entry.session_id
        return None

    async def take(self, session_id: SessionId) -> LiveSandbox | None:
        """The sandbox reserved for ``session_id``, now the session's; None if there is
        none, once any sandbox the pool held for that id has stopped."""
        entry = self._entries.get(session_id)
        if entry is not None and entry.live is not None and entry.reserved_at is not None:
            del self._entries[session_id]
            if entry.watcher is not None:
                entry.watcher.cancel()
            self._changed.set()  # room for a new spare
            live = entry.live
            if (
                not self._closed
                and live.sandbox.state is SandboxState.RUNNING
                and live.release == self.env.release()
            ):
                self.failures = 0  # a spare lived to be used
                return live
            self._stop_later(entry)
        stopping = self._stopping.get(session_id)
        if stopping is not None:
            await asyncio.wait([stopping])  # not shielded: its own errors are logged
        return None

    def refresh(self) -> None:
        """The release changed: replace every sandbox started from an older one."""
        self._changed.set()

    async def close(self) -> None:
        """Stop every sandbox of the pool and the keeper."""
        self._closed = True
        self._changed.set()
        if self._keeper is not None:  # not cancelled: a start under way finishes first
            with contextlib.suppress(Exception):
                await self._keeper
        for entry in list(self._entries.values()):
            self._stop_later(entry)
        while self._stopping:
            await asyncio.gather(*self._stopping.values(), return_exceptions=True)

    # -- the keeper ------------------------------------------------------------------------

    async def _keep(self) -> None:
        while not self._closed:
            self._changed.clear()
            try:
                self._drop_stale()
                if len(self._entries) < self.size and self._clock() >= self._retry_at:
                    await self._add_one()
                    continue
            except Exception:  # the pool must not stop refilling silently
                log.exception("the sandbox pool failed; it retries")
                self._failed()
            now, expiry = self._clock(), self._next_expiry()
            wake = [t for t in (expiry, self._retry_at) if t is not None and t > now]
            await self._wait(min(wake, default=None))

    async def _wait(self, deadline: float | None) -> None:
        timeout = None if deadline is None else max(0.0, deadline - self._clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _next_expiry(self) -> float | None:
        ends = [
            e.reserved_at + self.grace_s
            for e in self._entries.values()
            if e.reserved_at is not None
        ]
        return min(ends, default=None)

    def _failed(self) -> None:
        """A start failed or a spare died young: wait longer before the next start."""
        self.failures += 1
        self._retry_at = self._clock() + BACKOFF_S[min(self.failures, len(BACKOFF_S)) - 1]

    def _drop_stale(self) -> None:
        """Stop reservations past their grace and sandboxes of an older release or dead."""
        now, current = self._clock(), self.env.release()
        for entry in list(self._entries.values()):
            live = entry.live
            if live is None:
                continue
            expired = entry.reserved_at is not None and now >= entry.reserved_at + self.grace_s
            if expired or live.release != current or live.sandbox.state is SandboxState.EXITED:
                del self._entries[entry.session_id]
                self._stop_later(entry)

    async def _add_one(self) -> None:
        entry = _Entry(self._new_id())
        self._entries[entry.session_id] = entry
        release = self.env.release()
        try:
            entry.live = await launch(self.env, entry.session_id, release)
        except SandboxError as exc:
            self._entries.pop(entry.session_id, None)
            await self._forget(entry)
            self._failed()
            if self.failures == 1:
                log.warning("the sandbox pool could not start a sandbox (retrying): %s", exc)
            return
        entry.started_at = self._clock()
        self.starts += 1
        entry.watcher = asyncio.get_running_loop().create_task(
            self._watch(entry), name=f"pool-watch-{entry.session_id}"
        )

    async def _watch(self, entry: _Entry) -> None:
        assert entry.live is not None
        info = await entry.live.sandbox.wait()
        if self._entries.get(entry.session_id) is entry:  # it died on its own
            del self._entries[entry.session_id]
            if self._clock() - entry.started_at < HEALTHY_S:
                self._failed()
                log.warning(
                    "a pooled sandbox exited %.1f s after its start (%s); the pool backs off",
                    self._clock() - entry.started_at,
                    info.reason,
                )
            self._stop_later(entry)
            self._changed.set()

    def _stop_later(self, entry: _Entry) -> None:
        if entry.watcher is not None and entry.watcher is not asyncio.current_task():
            entry.watcher.cancel()
        task = asyncio.get_running_loop().create_task(self._stop(entry))
        self._stopping[entry.session_id] = task
        task.add_done_callback(lambda _: self._stopping.pop(entry.session_id, None))

    async def _stop(self, entry: _Entry) -> None:
        live = entry.live
        if live is not None:
            try:
                await live.sandbox.stop()
            except Exception:
                log.exception("stopping pooled sandbox %s failed", live.sandbox.id)
            await live.retire(self.env)
        await self._forget(entry)

    async def _forget(self, entry: _Entry) -> None:
        if entry.reserved_at is None and self._discard is not None:
            try:  # no session ever had this id: nothing of it is worth keeping
                await self._discard(entry.session_id)
            except Exception:
                log.exception("cleaning up after pooled sandbox %s failed", entry.session_id)
