"""One session on the host: its durable log, its clients, its turns and its sandbox.

The rule everything here keeps: an event is appended (committed) first and handed to
subscribers only after ``append`` returns (ARCHITECTURE §4.1). One lock per session orders
commits with their fan-out, and a client's handshake holds the same lock while it reads the
tail of the backlog and subscribes, so a client sees every event exactly once, in ``seq``
order, whether the log answers at once (SQLite) or over the network (S3).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from kit.hoptrace import hop
from kit.host.advisor import TierAdvisor
from kit.host.errors import SandboxError
from kit.host.eventlog import SessionLog, Turn, TurnState, started_state
from kit.host.files import FilesError
from kit.host.launch import LiveSandbox, Release, SessionEnv, launch
from kit.host.runtime_client import RuntimeClient, SandboxGone
from kit.host.sandbox import Sandbox, Usage
from kit.host.spend import spent_in
from kit.ids import SessionId, TurnId
from kit.protocol.frames import Event, ResumeMode
from kit.protocol.runtime_api import RuntimeEvent, TurnRequest
from kit.protocol.turns import (
    STOPPED_REASONS,
    TURN_FAILED,
    AwaitSandboxExit,
    Done,
    Emit,
    GiveUp,
    Record,
    StartSandbox,
    Stream,
    TurnAction,
    TurnPlanner,
    Wait,
)

log = logging.getLogger("kit.host")

EXIT_WAIT_S = 10.0
"""How long a sandbox gets to exit (its stream broke, or it was sent SIGTERM) before it is killed."""
CLOSE_GRACE_S = 5.0
"""How long a closing session's sandbox gets to exit after its SIGTERM before it is killed
(then its exit is waited for at most ``kit.host.sandbox.LOST_EXIT_S``)."""


class Subscriber(Protocol):
    """Something that receives a session's committed events (a client connection)."""

    def deliver(self, event: Event) -> None:
        """Take one committed event; must not block."""

    def moved(self, message: str) -> None:
        """The session left this host (another host owns it now): end the connection."""


def hash_token(token: str) -> str:
    """How a session token is stored: never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_token(token: str, stored_hash: str) -> bool:
    """Whether ``token`` hashes to ``stored_hash`` (constant-time; an empty hash never matches)."""
    return bool(stored_hash) and hmac.compare_digest(hash_token(token), stored_hash)


class Session:
    """A session's live state on the host."""

    def __init__(self, log_: SessionLog, env: SessionEnv) -> None:
        self.log = log_
        self.id = log_.session_id
        self.env = env
        self._token_hash = str(log_.meta().get("token_sha256", ""))
        self._subscribers: set[Subscriber] = set()
        self._handshaking: set[Subscriber] = set()
        self._wake = asyncio.Event()
        """Set when the runner should look again: a turn was queued, a client came or
        went, the release changed."""
        self._runner: asyncio.Task[None] | None = None
        self._live: LiveSandbox | None = None
        self._pushed: dict[str, str] = {}
        """The sha256 of each of the session's files (by path) the live sandbox has been
        given, or has refused."""
        self._watcher: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[RuntimeClient] | None = None
        self._running_turn: TurnId | None = None
        self._begun: set[TurnId] = set()
        """Turns :meth:`submit` stored RUNNING, their first attempt counted, with their
        ``user`` event (``SessionLog.add_user_turn``'s ``start``) that the runner has not
        picked up yet: it skips the planner's first Record for them. Known only here; a
        restart finds such a turn RUNNING and recovers it, as any turn a host died in."""
        self._turn_release: Release | None = None
        """The release the running turn started on: a sandbox that replaces a dead one in
        the middle of the turn runs the same bundle (ARCHITECTURE §7)."""
        self._closing = False
        self.advisor = TierAdvisor(env.tier)
        """The tier advisor's state: kept across this session's sandboxes, in memory (a
        host restart or an unload starts it afresh)."""
        now = time.monotonic()
        self._quiet_since = now
        """When the last turn ended (or the session was loaded)."""
        self._alone_since = now
        """When the last client left (or the session was loaded)."""
        self._lock = asyncio.Lock()
        self.lost: str | None = None
        """Why this host may no longer write the session (its lease was taken over)."""
        self.on_gone: Callable[[Session], None] | None = None
        """Called once the session has shut itself down after losing its log."""
        self.on_idle: Callable[[Session], None] | None = None
        """Called when the session sat idle with no sandbox and no client: the host may
        unload it (close its log, release its lease) until someone asks for it again."""
        self.take_pooled: Callable[[SessionId], Awaitable[LiveSandbox | None]] | None = None
        """Hands the session a sandbox started for it ahead of time (:mod:`kit.host.pool`);
        None when there is none, once any pooled sandbox of this id has stopped."""
        log_.on_lost(self._log_lost)

    # -- clients -------------------------------------------------------------------------

    def check_token(self, token: str) -> bool:
        """Whether ``token`` is this session's token (constant-time)."""
        return check_token(token, self._token_hash)

    async def resume_mode(self, last_seq: int | None) -> ResumeMode:
        """What a client that has everything up to ``last_seq`` is about to get."""
        if self.log.last_seq > (last_seq or 0):
            return "resuming"
        return "pending" if await self.log.open_turns() else "none"

    @contextlib.asynccontextmanager
    async def quiet(self) -> AsyncIterator[None]:
        """Hold commits off: no event is appended or fanned out inside this block.

        A handshake reads ``last_seq`` (or the backlog's tail) and subscribes inside it, so
        the client misses nothing and gets nothing twice.
        """
        async with self._lock:
            yield

    def subscribe(self, subscriber: Subscriber) -> None:
        """Deliver every later commit to ``subscriber`` (call inside :meth:`quiet`)."""
        self._handshaking.discard(subscriber)
        self._subscribers.add(subscriber)
        self._wake.set()

    def expect(self, subscriber: Subscriber) -> None:
        """A client is mid-handshake: it counts as present (the session is not unloaded)."""
        self._handshaking.add(subscriber)
        self._wake.set()

    def detach(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber``."""
        if subscriber in self._subscribers or subscriber in self._handshaking:
            self._subscribers.discard(subscriber)
            self._handshaking.discard(subscriber)
            if not self.present:
                self._alone_since = time.monotonic()
                self._wake.set()

    @property
    def present(self) -> bool:
        """Whether a client is connected (or in its handshake)."""
        return bool(self._subscribers or self._handshaking)

    async def emit(self, kind: str, data: dict[str, Any], turn_id: TurnId | None = None) -> Event:
        """Append an event durably, then fan it out."""
        async with self._lock:
            event = await self.log.append(kind, data, turn_id)
            self._publish(event)
        return event

    async def emit_many(
        self,
        items: list[tuple[str, dict[str, Any]]],
        turn_id: TurnId | None,
        *,
        end: TurnState | None = None,
    ) -> list[Event]:
        """Append several events in one commit, then fan each out; with ``end``, the
        commit also moves turn ``turn_id`` to that state (:meth:`SessionLog.end_turn`)."""
        async with self._lock:
            if end is not None and turn_id is not None:
                events = await self.log.end_turn(items, turn_id, end)
            else:
                events = await self.log.append_many(items, turn_id)
            for event in events:
                self._publish(event)
            hop("host: batch committed and published")
        return events

    def _publish(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            subscriber.deliver(event)

    # -- turns ---------------------------------------------------------------------------

    async def submit(self, client_msg_id: str, text: str) -> bool:
        """Queue a user message; false when ``client_msg_id`` was already applied."""
        hop("host: message received")
        async with self._lock:
            # The turn is started in the same commit when no other is open: the runner
            # reads the open turns under this lock, so it never sees it without this mark.
            added = await self.log.add_user_turn(client_msg_id, text, start=True)
            if added is None:
                return False
            if added[0].state is TurnState.RUNNING:
                self._begun.add(added[0].turn_id)
            hop("host: user committed")
            self._publish(added[1])
        self.start()
        self._wake.set()
        return True

    async def interrupt(self) -> bool:
        """Interrupt the running turn; false when there is none."""
        live = self._live
        if self._running_turn is None or live is None:
            return False
        with contextlib.suppress(SandboxGone):
            await live.runtime.interrupt()
        return True

    def start(self) -> None:
        """Start the runner if it is not running: it runs queued and open turns (recovery
        included) and stops the sandbox, or unloads the session, when it sits idle."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name=f"session-{self.id}")

    def refresh(self) -> None:
        """The release changed: the runner replaces an idle sandbox of an older one."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()  # before the read: a turn queued after it sets it again
            async with self._lock:  # not between a submit's commit and its mark (_begun)
                turns = await self.log.open_turns()
            if turns:
                if not await self._run_one(turns[0]):
                    return
                self._quiet_since = time.monotonic()
                continue
            if await self._stop_stale_sandbox():
                continue
            deadline = self._idle_deadline()
            if deadline is not None and deadline <= time.monotonic():
                if self._live is not None:
                    await self._stop_sandbox(reason="idle")
                    continue
                if self.on_idle is not None:
                    async with self._lock:  # a handshake checks ``closed`` under it
                        if self.present:
                            continue  # a client came between the look and the lock
                        self._closing = True  # from now on clients must get a fresh load
                    self.on_idle(self)
                    return
                deadline = None
            timeout = None if deadline is None else deadline - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _idle_deadline(self) -> float | None:
        """When the idle sandbox stops (or, with none, the session unloads); None: never.

        A sandbox stops ``idle_timeout`` after the last turn (the platforms' sleep-after);
        with no client it goes sooner, ``grace_s`` after the last turn or client. A session
        with no sandbox and no client unloads ``grace_s`` after both.
        """
        grace = self.env.grace_s
        alone = max(self._quiet_since, self._alone_since) + grace
        live = self._live
        if live is None:
            return None if self.present else alone
        idle = self._quiet_since + live.release.idle_timeout_s
        return idle if self.present else min(idle, alone)

    async def _run_one(self, turn: Turn) -> bool:
        """Run one turn; False when the runner must stop (the next start recovers)."""
        try:
            await self._run_turn(turn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the turn running forever
            log.exception("session %s: turn %s failed", self.id, turn.turn_id)
            if self.lost is not None:
                return False  # another host owns the session now; it recovers the turn
            try:
                failed = {"code": TURN_FAILED, "message": f"The host failed on this turn: {exc}"}
                await self.emit_many([("error", failed)], turn.turn_id, end=TurnState.FAILED)
            except Exception:
                log.exception(
                    "session %s: the event log fails; the runner stops (the next start "
                    "recovers the open turns)",
                    self.id,
                )
                return False
        return True

    async def _run_turn(self, turn: Turn) -> None:
        """Run ``turn`` as the :class:`TurnPlanner` plans it (its recovery decisions live
        there, sans I/O, shared with the Cloudflare shim); this method only does the I/O."""
        await self._stop_stale_sandbox()  # a turn queued behind a reload gets the new bundle
        self._running_turn = turn.turn_id
        self._turn_release = None
        try:
            await self._begin_spend(turn.turn_id)
            # Attempts are counted in the log, so a turn that keeps killing its sandboxes
            # (or its host) is given up after MAX_SANDBOX_ATTEMPTS however often the host
            # restarts; the planner answers Done by then.
            planner, actions = self._plan(turn)
            runtime: RuntimeClient | None = None
            while True:
                *steps, last = actions
                await self._act_all(turn.turn_id, steps)
                if isinstance(last, StartSandbox):
                    try:
                        runtime = await self._ensure_sandbox(turn.turn_id)
                    except SandboxError:
                        actions = planner.sandbox_failed()  # a "failed" sandbox event is logged
                        continue
                    if self._turn_release is None and self._live is not None:
                        self._turn_release = self._live.release  # a sandbox up before the turn
                    actions = planner.sandbox_started()
                elif isinstance(last, Stream):
                    assert runtime is not None  # a Stream always follows sandbox_started
                    if not await self._push_files(runtime):
                        actions = planner.stream_broken()  # the sandbox went away
                        continue
                    # The advisor's reading before the turn is taken beside it, in a
                    # thread: a turn does not wait for it on its way to the sandbox.
                    before = asyncio.create_task(self._usage())
                    started = time.monotonic()
                    try:
                        end = await self._stream(runtime, turn, planner, last.recover)
                    except BaseException:
                        before.cancel()
                        raise
                    if end is None:  # the sandbox went away: the next one continues the turn
                        before.cancel()
                        actions = planner.stream_broken()
                        continue
                    await self._act_all(turn.turn_id, end[:-1])  # nothing: end_turn did it
                    await self._advise_after_turn(await before, time.monotonic() - started)
                    return
                elif isinstance(last, Done):
                    return
                else:
                    raise AssertionError(f"The turn planner ended an answer with {last!r}.")
        finally:
            self._running_turn = None
            self._turn_release = None

    def _plan(self, turn: Turn) -> tuple[TurnPlanner, list[TurnAction]]:
        """The turn's planner and its first actions, less what :meth:`submit`'s commit
        already did for a turn it started (``_begun``): the planner's first Record."""
        if turn.turn_id not in self._begun:
            planner = TurnPlanner(turn.state, turn.attempts)
            return planner, planner.begin()
        self._begun.discard(turn.turn_id)
        planner = TurnPlanner(TurnState.QUEUED, 0)
        first, *actions = planner.begin()
        done = Record(TurnState.RUNNING, attempt=True)
        if (turn.state, turn.attempts) != started_state(True) or first != done:
            raise AssertionError(f"A started turn's plan begins with {first!r}, at {turn!r}.")
        return planner, actions

    async def _act_all(self, turn_id: TurnId, actions: list[TurnAction]) -> None:
        """Do the planner's actions in order; a GiveUp and the Record of the turn's end
        after it are one commit (:meth:`SessionLog.end_turn`)."""
        i = 0
        while i < len(actions):
            action, after = actions[i], actions[i + 1] if i + 1 < len(actions) else None
            if isinstance(action, GiveUp) and isinstance(after, Record) and not after.attempt:
                told = [*self._refusals(turn_id), ("error", dict(action.error))]
                await self.emit_many(told, turn_id, end=after.state)
                i += 2
                continue
            await self._act(turn_id, action)
            i += 1

    async def _act(self, turn_id: TurnId, action: TurnAction) -> None:
        """Do one of the planner's actions that needs no answer."""
        if isinstance(action, Record):
            await self.log.set_turn_state(turn_id, action.state, attempt=action.attempt)
        elif isinstance(action, Wait):
            await asyncio.sleep(action.seconds)
        elif isinstance(action, AwaitSandboxExit):
            await self._sandbox_gone()
        elif isinstance(action, GiveUp):
            await self.emit_many([*self._refusals(turn_id), ("error", dict(action.error))], turn_id)
        else:
            raise AssertionError(f"The turn runner cannot do {action!r} here.")

    async def _stream(
        self, runtime: RuntimeClient, turn: Turn, planner: TurnPlanner, recover: bool
    ) -> list[TurnAction] | None:
        """Run the turn on ``runtime``; the planner's answer to the turn's end (Done: its
        end event and state are committed together), or None if the stream broke first
        (the sandbox went away)."""
        request = TurnRequest(turn_id=turn.turn_id, text=turn.text, recover=recover)
        arrived: asyncio.Queue[list[RuntimeEvent] | BaseException | None] = asyncio.Queue()
        room = asyncio.Semaphore(READ_AHEAD)
        reader = asyncio.create_task(_read_turn(runtime, request, arrived, room))
        try:
            while True:
                # Whatever arrived while the last commit ran is the next commit: one commit
                # (and one fsync, kit.durability) for a burst, not one per piece.
                waiting = [await arrived.get()]
                hop("host: batch from the runtime")
                while not arrived.empty() and isinstance(waiting[-1], list):
                    waiting.append(arrived.get_nowait())
                kept: list[tuple[str, dict[str, Any]]] = []
                rest: list[TurnAction] = []
                for batch in waiting:
                    if not isinstance(batch, list):
                        break
                    room.release()
                    emit, *rest = planner.batch([(ev.kind, ev.data) for ev in batch])
                    assert isinstance(emit, Emit)  # anything after the turn's end is not in it
                    kept += ((ev.kind, ev.data) for ev in batch[: emit.count])
                    if rest:
                        break
                # A call the model proxy refused is told before what the runtime says next
                # (the API error it got, the result): the refusal came first.
                told = [*self._refusals(turn.turn_id), *kept]
                end = rest[0] if rest and isinstance(rest[0], Record) else None
                if end is not None and not end.attempt:
                    # The turn's end and its state in one commit: an answer that is
                    # durable is never run again at a restart.
                    await self.emit_many(told, turn.turn_id, end=end.state)
                    return rest[1:]
                if told:
                    await self.emit_many(told, turn.turn_id)
                if rest:
                    return rest
                if isinstance(waiting[-1], BaseException):
                    raise waiting[-1]
                if waiting[-1] is None:
                    return None  # the stream ended before the turn did
        except SandboxError as exc:
            log.info("session %s: turn %s lost its sandbox: %s", self.id, turn.turn_id, exc)
        finally:
            reader.cancel()
            _, pending = await asyncio.wait([reader], timeout=READER_STOP_S)
            if pending:  # a cancel swallowed somewhere in the stream: say so, move on
                log.warning(
                    "session %s: turn %s's stream reader did not stop", self.id, turn.turn_id
                )
        return None

    async def _push_files(self, runtime: RuntimeClient) -> bool:
        """Give the sandbox the session's files it lacks (:mod:`kit.host.files`); false when
        it went away meanwhile. A file the store cannot read now, or the runtime refuses (the
        agent put a link where its folder goes), is logged and left out; one the store could
        not read is tried again at the next turn, one the runtime refused once it changes
        or the sandbox does."""
        files = self.env.files
        if files is None:
            return True
        try:
            listed = await files.list(self.id)
        except FilesError as exc:
            log.warning("session %s: its files could not be listed: %s", self.id, exc)
            return True
        for info in listed:
            if self._pushed.get(info.path) == info.sha256:
                continue
            try:
                data = await files.read(self.id, info)
                if data is not None:
                    await runtime.put_file(info.path, data)
            except SandboxGone as exc:
                log.info("session %s: its sandbox went away taking files: %s", self.id, exc)
                return False
            except FilesError as exc:
                log.warning("session %s: file %s could not be read: %s", self.id, info.path, exc)
                continue
            except SandboxError as exc:
                log.warning(
                    "session %s: file %s not given to its sandbox: %s", self.id, info.path, exc
                )
            self._pushed[info.path] = info.sha256
        return True

    async def _begin_spend(self, turn_id: TurnId) -> None:
        """Tell the model proxy's meter this turn runs; the first time this host counts the
        session, start its totals from the stored results (a restart, a takeover)."""
        spend = self.env.spend
        if spend is None:
            return
        if not spend.seeded(self.id):
            tokens, usd = spent_in(await self.log.read_after(0))
            spend.seed(self.id, tokens, usd)
        spend.begin_turn(self.id, turn_id)

    def _refusals(self, turn_id: TurnId) -> list[tuple[str, dict[str, Any]]]:
        """``error`` ``spend_limit`` events for the model calls of the turn the proxy refused
        since the last look (each setting once per turn)."""
        spend = self.env.spend
        if spend is None:
            return []
        return [("error", refusal.event()) for refusal in spend.take_refusals(self.id, turn_id)]

    async def _usage(self) -> Usage | None:
        """The sandbox's usage for the tier advisor (None: no advisor, no sandbox or no
        figures); a few cgroup files and a walk of the workspace."""
        live = self._live
        if live is None or self.env.advise is None:
            return None
        try:  # the advisor must never break a turn
            return await live.sandbox.usage()
        except Exception:
            log.exception("session %s: reading the sandbox's usage failed", self.id)
            return None

    async def _advise_after_turn(self, before: Usage | None, wall_s: float) -> None:
        used, advise = await self._usage(), self.env.advise
        if used is None or advise is None:
            return
        try:
            for line in self.advisor.after_turn(before, used, wall_s):
                advise(self.id, line)
        except Exception:
            log.exception("session %s: the tier advisor failed", self.id)

    # -- sandbox -------------------------------------------------------------------------

    def _alive(self) -> RuntimeClient | None:
        if self._live is not None and self._watcher is not None and not self._watcher.done():
            return self._live.runtime
        return None

    async def _ensure_sandbox(self, turn_id: TurnId | None) -> RuntimeClient:
        runtime = self._alive()
        if runtime is not None:
            return runtime
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(SandboxError):
                await asyncio.shield(self._starting)
            runtime = self._alive()
            if runtime is not None:
                return runtime
        pooled = await self.take_pooled(self.id) if self.take_pooled is not None else None
        if pooled is not None:
            if self._turn_release in (None, pooled.release):
                return await self._adopt(pooled, turn_id, pooled=True)
            await pooled.sandbox.stop()  # of another release than the turn's: not ours to use
            await pooled.retire(self.env)
        self._starting = asyncio.create_task(self._start_sandbox(turn_id))
        return await self._starting

    async def _start_sandbox(self, turn_id: TurnId | None) -> RuntimeClient:
        release = self._turn_release or self.env.release()
        await self.emit("sandbox", {"state": "starting", "tier": release.tier}, turn_id)
        try:
            live = await launch(self.env, self.id, release)
        except SandboxError as exc:
            if not self._closing:
                await self.emit(
                    "sandbox",
                    {"state": "failed", "tier": release.tier, "message": str(exc)},
                    turn_id,
                )
            raise
        return await self._adopt(live, turn_id)

    async def _adopt(
        self, live: LiveSandbox, turn_id: TurnId | None, *, pooled: bool = False
    ) -> RuntimeClient:
        """Make ``live`` the session's sandbox, watch it, and say it runs."""
        self._live = live
        self._pushed = {}  # a new sandbox has none of the session's files
        if self._running_turn is not None:
            self._turn_release = live.release
        if live.release.tier != self.advisor.tier:  # a reload changed the tier
            self.advisor = TierAdvisor(live.release.tier)
        sandbox = live.sandbox
        self._watcher = asyncio.create_task(self._watch(live), name=f"watch-{sandbox.id}")
        running: dict[str, Any] = {
            "state": "running",
            "sandbox_id": sandbox.id,
            "tier": live.release.tier,
            "resumed": sandbox.resumed,
        }
        if pooled:
            running["pooled"] = True
        await self.emit("sandbox", running, turn_id)
        return live.runtime

    async def _watch(self, live: LiveSandbox) -> None:
        sandbox = live.sandbox
        info = await sandbox.wait()
        state = "stopped" if info.reason in STOPPED_REASONS else "died"
        if self._live is live:
            self._live = None
        if info.reason == "oom" and self.env.advise is not None:
            try:
                for line in self.advisor.after_oom():
                    self.env.advise(self.id, line)
            except Exception:
                log.exception("session %s: the tier advisor failed", self.id)
        await live.retire(self.env)
        if not self._closing:
            await self.emit(
                "sandbox",
                {
                    "state": state,
                    "sandbox_id": sandbox.id,
                    "reason": info.reason,
                    "exit_code": info.exit_code,
                },
                self._running_turn,
            )

    async def _sandbox_gone(self) -> None:
        """After a broken turn stream: make sure the sandbox is dead and its exit recorded
        (the watcher's wait ends at most LOST_EXIT_S after the SIGKILL: Sandbox.wait)."""
        live, watcher = self._live, self._watcher
        if watcher is None:
            return
        if live is not None:
            try:
                await asyncio.wait_for(asyncio.shield(watcher), EXIT_WAIT_S)
                return
            except TimeoutError:
                await live.sandbox.kill(reason="unresponsive")
        await watcher

    async def _stop_stale_sandbox(self) -> bool:
        """Stop a sandbox (with no turn) of an older release than the current one; whether
        one was stopped. The next turn starts one of the current release."""
        live = self._live
        if live is None or live.release == self.env.release():
            return False
        await self._stop_sandbox(reason="reload")
        return True

    async def _stop_sandbox(self, reason: str) -> None:
        live, watcher = self._live, self._watcher
        if live is None:
            return
        await live.sandbox.stop(EXIT_WAIT_S, reason=reason)
        if watcher is not None:
            await watcher

    @property
    def closed(self) -> bool:
        """Whether the session is shutting down (a client must ask the host again)."""
        return self._closing

    @property
    def starting(self) -> bool:
        """Whether a sandbox is being started for the session now (none to signal yet)."""
        return self._starting is not None and not self._starting.done()

    @property
    def sandbox(self) -> Sandbox | None:
        """The running sandbox, if any."""
        return self._live.sandbox if self._live is not None else None

    @property
    def release(self) -> Release | None:
        """The release the running sandbox was started from, if one runs."""
        return self._live.release if self._live is not None else None

    async def close(self) -> None:
        """Stop the runner and the sandbox; open turns stay open for the next start."""
        self._closing = True
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(BaseException):
                await self._starting
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        live = self._live
        if live is not None:
            await live.sandbox.stop(CLOSE_GRACE_S)
            if self._watcher is not None:
                with contextlib.suppress(Exception):
                    await self._watcher
        self._subscribers.clear()
        await self.log.close()

    def _log_lost(self, reason: str) -> None:
        """The log's lease was taken over: stop everything here, send the clients away."""
        if self.lost is not None:
            return
        self.lost = reason
        log.warning("session %s: %s; handing it over", self.id, reason)
        if self.on_gone is not None:
            self.on_gone(self)  # the next hello for it loads it afresh (or finds its new owner)
        for subscriber in list(self._subscribers | self._handshaking):
            subscriber.moved(reason)
        task = asyncio.get_running_loop().create_task(self._shut_down_lost())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _shut_down_lost(self) -> None:
        try:
            await self.close()
        except Exception:
            log.exception("session %s: shutting down after losing its lease", self.id)


_background: set[asyncio.Task[None]] = set()


READ_AHEAD = 16
"""Pieces of a turn's stream read ahead of the commits (then the runtime waits)."""
READER_STOP_S = 5.0
"""How long a turn waits for its stream reader to stop once the turn is over."""


async def _read_turn(
    runtime: RuntimeClient,
    request: TurnRequest,
    into: asyncio.Queue[list[RuntimeEvent] | BaseException | None],
    room: asyncio.Semaphore,
) -> None:
    """Read the turn's stream into ``into``, piece by piece (at most ``room`` ahead of the
    session's commits); then ``None`` (the stream ended) or the error that ended it. The
    last item is put without waiting, so the session always learns how the stream ended."""
    try:
        async with contextlib.aclosing(runtime.stream_turn(request)) as stream:
            async for batch in stream:
                await room.acquire()
                into.put_nowait(batch)
    except Exception as exc:
        into.put_nowait(exc)
    except BaseException:
        into.put_nowait(SandboxGone("The turn's stream reader was stopped."))
        raise
    else:
        into.put_nowait(None)
