"""The event log on S3 (Tigris on Fly, R2, AWS; moto in tests), one owner at a time.

Layout under ``s3://BUCKET/PREFIX/sessions/{session_id}/``::

    meta.json                    {"meta": the session's metadata, "nonce": …}, written once
                                 (If-None-Match: *; the nonce tells our own retried PUT apart)
    lease                        the owner's lease and fencing epoch (kit.host.lease)
    log/{n:012d}.json            commit n = 0, 1, 2, …: {"epoch", "events": [...], "turns": [...]}
    seg/{a:012d}-{b:012d}.json   commits a..b again, in one object: a load reads one object
                                 per SEGMENT commits instead of one per commit

A commit is what one ``append_many``, ``add_user_turn``, ``set_turn_state`` or ``end_turn``
writes: its events (their seqs continue the previous commit's) and the new rows of the turns
it changed.
Every commit is written with ``If-None-Match: *``, so the commit numbers form a chain that no
two writers can both extend. Opening a log for writing takes the lease (epoch E), loads the
chain, and writes an empty commit stamped E at its end. A previous owner that still runs
(paused, partitioned) then finds its next number taken, reads the commit there, sees the
newer epoch and stops with :class:`LeaseLost`. The storage itself checks the fencing token
on every write; no read-before-write race is left open.

The owner keeps the whole log in memory (reads cost nothing) and renews its lease in the
background. The lease object carries ``open`` (the session has unfinished turns) so that a
host starting up, or sweeping, knows which sessions to recover without loading them.
``summary`` and ``read_events`` read the chain as it stands, without the lease: any host
may list or read any session, and only the owner writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from kit.host.errors import LogError
from kit.host.eventlog import (
    CREATED_KEY,
    OPEN_TURN_STATES,
    LogStore,
    LogSummary,
    SessionLog,
    Turn,
    TurnState,
    now_ms,
    started_state,
)
from kit.host.lease import DEFAULT_TTL_S, Lease, LeaseHeld, LeaseLost, S3Leases
from kit.ids import SessionId, TurnId, is_session_id
from kit.protocol.frames import Event
from kit.storage.errors import StoreError, StoreUnavailable
from kit.storage.s3io import S3Bucket

log = logging.getLogger("kit.host")

DIGITS = 12
SEGMENT = 64
"""Commits per segment object."""
MAX_FENCE_TRIES = 10
RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""Waits between tries of a commit while S3 is unreachable (until the lease runs short)."""


def _turn_row(turn: Turn) -> dict[str, Any]:
    return {
        "turn_id": turn.turn_id,
        "client_msg_id": turn.client_msg_id,
        "text": turn.text,
        "state": turn.state.value,
        "user_seq": turn.user_seq,
        "attempts": turn.attempts,
    }


def _turn_of(row: dict[str, Any]) -> Turn:
    return Turn(
        TurnId(row["turn_id"]),
        row["client_msg_id"],
        row["text"],
        TurnState(row["state"]),
        int(row["user_seq"]),
        int(row["attempts"]),
    )


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class S3LogStore(LogStore):
    """Session logs in one bucket; this host writes only the sessions whose lease it holds."""

    def __init__(
        self,
        bucket: S3Bucket,
        *,
        owner: str,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket = bucket
        self.owner = owner
        self.leases = S3Leases(bucket, owner=owner, ttl_s=ttl_s, clock=clock)
        self.clock = clock

    @classmethod
    def from_url(cls, url: str, *, owner: str, ttl_s: float = DEFAULT_TTL_S) -> S3LogStore:
        """Open ``s3://BUCKET/PREFIX?endpoint_url=…&region=…`` (as for transcript stores)."""
        try:
            bucket = S3Bucket.from_url(url, what="Event log URL")
        except StoreError as exc:
            raise LogError(str(exc)) from exc
        return cls(bucket, owner=owner, ttl_s=ttl_s)

    def session_dir(self, session_id: str) -> str:
        """The key prefix of one session's objects."""
        if not is_session_id(session_id):
            raise LogError(f"{session_id!r} is not a session id.")
        return f"{self.bucket.prefix}sessions/{session_id}/"

    async def create(self, session_id: SessionId, meta: dict[str, Any]) -> SessionLog:
        key = self.session_dir(session_id) + "meta.json"
        body = _dump({"meta": meta, "nonce": secrets.token_hex(8)})
        # A lost answer to our own PUT looks like a conflict too: compare what is there.
        if (
            not await _store_call(self.bucket.put_if_absent(key, body))
            and await _store_call(self.bucket.get(key)) != body
        ):
            raise LogError(f"Session {session_id} already exists.")
        return await self._open_owned(session_id, meta)

    async def open(self, session_id: SessionId) -> SessionLog | None:
        meta = await self.read_meta(session_id)
        if meta is None:
            return None
        return await self._open_owned(session_id, meta)

    async def read_meta(self, session_id: SessionId) -> dict[str, Any] | None:
        """The session's ``meta.json``, read without taking its lease."""
        raw = await _store_call(self.bucket.get(self.session_dir(session_id) + "meta.json"))
        return None if raw is None else dict(json.loads(raw)["meta"])

    async def session_ids(self) -> list[SessionId]:
        names = await _store_call(self.bucket.list_children(f"{self.bucket.prefix}sessions/"))
        return [SessionId(n) for n in names if is_session_id(n)]

    async def summary(self, session_id: SessionId) -> LogSummary | None:
        """Read from the bucket without the lease: another host's session stays its own."""
        meta = await self.read_meta(session_id)
        if meta is None:
            return None
        events, turns = await self._read_unleased(session_id)
        last = events[-1] if events else None
        sandbox = next((e.data.get("state") for e in reversed(events) if e.kind == "sandbox"), None)
        created = meta.get(CREATED_KEY)
        return LogSummary(
            session_id=session_id,
            created_ms=int(created) if created is not None else None,
            last_seq=len(events),
            last_kind=last.kind if last else None,
            last_ts=last.ts if last else None,
            turns=len(turns),
            open_turns=sum(t.state in OPEN_TURN_STATES for t in turns.values()),
            sandbox=None if sandbox is None else str(sandbox),
        )

    async def read_events(
        self, session_id: SessionId, after: int = 0, limit: int | None = None
    ) -> list[Event] | None:
        if await self.read_meta(session_id) is None:
            return None
        events, _ = await self._read_unleased(session_id)
        start = max(after, 0)
        return events[start:] if limit is None else events[start : start + limit]

    async def _read_unleased(self, session_id: SessionId) -> tuple[list[Event], dict[TurnId, Turn]]:
        """The committed log as it stands, read without taking (or checking) the lease."""
        prefix = self.session_dir(session_id)
        chain, _ = await read_chain(self.bucket, prefix)
        events: list[Event] = []
        turns: dict[TurnId, Turn] = {}
        for number, commit in chain:
            _apply_commit(commit, number, events, turns, self.bucket.url(prefix))
        return events, turns

    async def leased(self, session_id: SessionId) -> bool:
        """Whether any host (this one too) holds the session's lease unexpired."""
        if not is_session_id(session_id):
            return False
        lease = await _store_call(self.leases.peek(session_id))
        return lease is not None and not self.leases.expired(lease)

    async def owner_elsewhere(self, session_id: SessionId) -> str | None:
        """The lease's owner while another host holds it unexpired; else None."""
        if not is_session_id(session_id):
            return None
        lease = await _store_call(self.leases.peek(session_id))
        if lease is None or lease.get("owner") == self.owner or self.leases.expired(lease):
            return None
        return str(lease.get("owner") or "") or None

    async def recoverable(self) -> list[SessionId]:
        """Sessions with unfinished turns whose lease has run out (or is ours)."""
        ids = await self.session_ids()
        leases = await asyncio.gather(*(_store_call(self.leases.peek(sid)) for sid in ids))
        return [
            sid
            for sid, lease in zip(ids, leases, strict=True)
            if lease is not None
            and lease.get("open")
            and (lease.get("owner") == self.owner or self.leases.expired(lease))
        ]

    async def _open_owned(self, session_id: SessionId, meta: dict[str, Any]) -> S3SessionLog:
        lease = await _store_call(self.leases.acquire(session_id))
        session_log = S3SessionLog(self, session_id, meta, lease)
        try:
            await session_log.load()
            await session_log.fence()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.leases.release(lease)
            raise
        session_log.start_renewing()
        return session_log


class S3SessionLog(SessionLog):
    """One session's log, written by the lease holder; see the module docstring."""

    def __init__(
        self, store: S3LogStore, session_id: SessionId, meta: dict[str, Any], lease: Lease
    ) -> None:
        self.session_id = session_id
        self._store = store
        self._bucket = store.bucket
        self._dir = store.session_dir(session_id)
        self._meta = meta
        self._lease = lease
        self._events: list[Event] = []
        self._turns: dict[TurnId, Turn] = {}
        self._msg_ids: set[str] = set()
        self._next = 0
        self._unsegmented: list[dict[str, Any]] = []
        self._write_lock = asyncio.Lock()
        self._renew_lock = asyncio.Lock()
        self._renew_now = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._segments: set[asyncio.Task[None]] = set()
        self._lost: str | None = None
        self._on_lost: list[Callable[[str], None]] = []
        self._closed = False

    # -- the seam ------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return len(self._events)

    @property
    def epoch(self) -> int:
        """This owner's fencing token."""
        return self._lease.epoch

    def meta(self) -> dict[str, Any]:
        return dict(self._meta)

    def on_lost(self, callback: Callable[[str], None]) -> None:
        self._on_lost.append(callback)

    async def append(self, kind: str, data: dict[str, Any], turn_id: TurnId | None = None) -> Event:
        return (await self._commit([(kind, data)], turn_id, []))[0]

    async def append_many(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId | None = None
    ) -> list[Event]:
        return await self._commit(items, turn_id, [])

    async def read_after(self, seq: int, limit: int | None = None) -> list[Event]:
        start = max(seq, 0)
        return self._events[start:] if limit is None else self._events[start : start + limit]

    async def add_user_turn(
        self, client_msg_id: str, text: str, *, start: bool = False
    ) -> tuple[Turn, Event] | None:
        async with self._write_lock:
            if client_msg_id in self._msg_ids:
                return None
            was_open = self._info()["open"]
            state, attempts = started_state(start and not was_open)
            turn = Turn(
                TurnId(f"t{len(self._turns) + 1}"),
                client_msg_id,
                text,
                state,
                self.last_seq + 1,
                attempts,
            )
            events = await self._commit_locked(
                [("user", {"client_msg_id": client_msg_id, "text": text})], turn.turn_id, [turn]
            )
        if not was_open:
            # The lease's "open" flag tells other hosts to recover this session should this
            # one die; set it now, not at the next renewal.
            try:
                await self._renew()
            except LeaseLost:
                pass  # the turn is committed; the handover has started (its owner recovers it)
            except StoreError as exc:
                log.warning("session %s: renewing the lease failed: %s", self.session_id, exc)
        return turn, events[0]

    async def set_turn_state(
        self, turn_id: TurnId, state: TurnState, *, attempt: bool = False
    ) -> None:
        async with self._write_lock:
            await self._commit_locked([], None, [self._moved(turn_id, state, attempt)])
        if state not in OPEN_TURN_STATES:
            self._renew_now.set()

    async def end_turn(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId, state: TurnState
    ) -> list[Event]:
        async with self._write_lock:
            events = await self._commit_locked(items, turn_id, [self._moved(turn_id, state, False)])
        if state not in OPEN_TURN_STATES:
            self._renew_now.set()
        return events

    def _moved(self, turn_id: TurnId, state: TurnState, attempt: bool) -> Turn:
        """Turn ``turn_id``'s row in ``state`` (``attempt``: one more attempt counted)."""
        turn = self._turns.get(turn_id)
        if turn is None:
            raise LogError(f"Session {self.session_id} has no turn {turn_id}.")
        return Turn(
            turn.turn_id,
            turn.client_msg_id,
            turn.text,
            state,
            turn.user_seq,
            turn.attempts + (1 if attempt else 0),
        )

    async def open_turns(self) -> list[Turn]:
        return sorted(
            (t for t in self._turns.values() if t.state in OPEN_TURN_STATES),
            key=lambda t: t.user_seq,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:  # a write in flight lands (or fails) first
            pass
        self._renew_now.set()  # the renewer sees _closed and ends without a half-done PUT
        if self._renewer is not None:
            with contextlib.suppress(Exception):
                await self._renewer
        if self._segments:
            await asyncio.gather(*self._segments, return_exceptions=True)
        if self._lost is None:
            async with self._renew_lock:
                try:
                    await self._store.leases.release(self._lease, self._info())
                except Exception as exc:
                    log.warning(
                        "session %s: releasing the lease failed (others wait for it to expire): %s",
                        self.session_id,
                        exc,
                    )

    # -- loading and fencing -------------------------------------------------------------

    async def load(self) -> None:
        """Read the chain of commits (segments where they exist) into memory."""
        chain, self._next = await read_chain(self._bucket, self._dir)
        first_unsegmented = (self._next // SEGMENT) * SEGMENT
        self._unsegmented = []
        for number, commit in chain:
            self._apply(commit, number)
            if number >= first_unsegmented:  # for the next segment object
                self._unsegmented.append(commit)

    async def fence(self) -> None:
        """Stamp the chain with this owner's epoch: earlier owners can no longer extend it."""
        for _ in range(MAX_FENCE_TRIES):
            body = {"epoch": self.epoch, "owner": self._store.owner, "events": [], "turns": []}
            key = self._commit_key(self._next)
            if await _store_call(self._bucket.put_if_absent(key, _dump(body))):
                self._after_commit(body)
                return
            raw = await _store_call(self._bucket.get(key))
            if raw is None:
                continue  # a conflict that left nothing behind (409): try the number again
            other = json.loads(raw)
            if other == body:
                self._after_commit(other)  # our own try landed; its answer was lost
                return
            if int(other["epoch"]) >= self.epoch:
                self._lose(f"session {self.session_id} was taken over (epoch {other['epoch']})")
                raise LeaseLost(
                    f"Session {self.session_id} is owned by a newer host (epoch "
                    f"{other['epoch']} > {self.epoch})."
                )
            # A previous owner wrote after its lease ran out: adopt its commit, then retry.
            self._apply(other, self._next)
            self._after_commit(other)
        raise LogError(f"Could not fence session {self.session_id}: its log kept growing.")

    def start_renewing(self) -> None:
        """Keep the lease alive in the background until :meth:`close`."""
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew_loop(), name=f"lease-{self.session_id}"
        )

    # -- writing -------------------------------------------------------------------------

    async def _commit(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId | None, turns: list[Turn]
    ) -> list[Event]:
        async with self._write_lock:
            return await self._commit_locked(items, turn_id, turns)

    async def _commit_locked(
        self, items: list[tuple[str, dict[str, Any]]], turn_id: TurnId | None, turns: list[Turn]
    ) -> list[Event]:
        if self._closed:
            raise LogError(f"The event log of session {self.session_id} is closed.")
        await self._ensure_owner()
        ts = now_ms()
        events = [
            Event(seq=self.last_seq + i + 1, kind=kind, data=data, ts=ts, turn_id=turn_id)
            for i, (kind, data) in enumerate(items)
        ]
        body = {
            "epoch": self.epoch,
            "events": [[e.seq, e.kind, e.turn_id, e.data, e.ts] for e in events],
            "turns": [_turn_row(t) for t in turns],
        }
        raw = _dump(body)
        key = self._commit_key(self._next)
        for attempt in range(len(RETRY_BACKOFF_S) + 1):
            try:
                written = await self._bucket.put_if_absent(key, raw)
            except StoreUnavailable as exc:
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                if attempt == len(RETRY_BACKOFF_S) or not self._time_left(delay):
                    # The write may or may not have landed: memory can no longer be trusted.
                    # Hand the session over; whoever loads it next reads what is stored.
                    self._lose(f"a write to the event log could not be confirmed ({exc})")
                    raise LogError(
                        f"The event log at {self._bucket.url(self._dir)} cannot be reached: "
                        f"{exc}. The session will be reloaded from storage."
                    ) from exc
                await asyncio.sleep(delay)
                continue
            except StoreError as exc:
                self._lose(f"the event log refused a write ({exc})")
                raise LogError(f"The event log refused a write: {exc}") from exc
            if written:
                break
            stored = await _store_call(self._bucket.get(key))
            if stored == raw:
                break  # an earlier try of this very write landed; its answer was lost
            if stored is None:
                continue  # a conflict that left nothing behind (409): try again
            epoch = int(json.loads(stored).get("epoch", -1))
            self._lose(f"session {self.session_id} was taken over (epoch {epoch})")
            raise LeaseLost(
                f"Session {self.session_id}: commit {self._next} was written by the owner "
                f"of epoch {epoch} (this host: {self.epoch}); this host stops writing."
            )
        else:
            self._lose("a write to the event log kept conflicting")
            raise LogError(f"Commit {self._next} of session {self.session_id} kept conflicting.")
        self._apply(body, self._next)
        self._after_commit(body)
        return events

    def _apply(self, commit: dict[str, Any], number: int) -> None:
        _apply_commit(commit, number, self._events, self._turns, self._bucket.url(self._dir))
        self._msg_ids.update(row["client_msg_id"] for row in commit["turns"])

    def _after_commit(self, body: dict[str, Any]) -> None:
        self._next += 1
        self._unsegmented.append(body)
        if self._next % SEGMENT == 0:
            first = self._next - SEGMENT
            commits, self._unsegmented = self._unsegmented, []
            if len(commits) == SEGMENT:  # a partial tail (after a load) is left to the commits
                key = f"{self._dir}seg/{first:0{DIGITS}d}-{self._next - 1:0{DIGITS}d}.json"
                task = asyncio.get_running_loop().create_task(
                    self._write_segment(key, {"commits": commits})
                )
                self._segments.add(task)
                task.add_done_callback(self._segments.discard)

    async def _write_segment(self, key: str, body: dict[str, Any]) -> None:
        try:
            await self._bucket.put_if_absent(key, _dump(body))
        except StoreError as exc:  # an optimisation only: loads fall back to the commits
            log.warning("session %s: segment %s not written: %s", self.session_id, key, exc)

    def _commit_key(self, number: int) -> str:
        return f"{self._dir}log/{number:0{DIGITS}d}.json"

    # -- the lease -----------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        return {"open": any(t.state in OPEN_TURN_STATES for t in self._turns.values())}

    def _time_left(self, margin: float = 0.0) -> bool:
        return self._store.clock() + margin < self._lease.expires_at

    async def _ensure_owner(self) -> None:
        if self._lost is not None:
            raise LeaseLost(f"This host no longer owns session {self.session_id}: {self._lost}.")
        if not self._time_left(self._store.leases.ttl_s / 3):
            await self._renew()  # the renewer is late (a busy loop): renew before writing

    async def _renew(self) -> None:
        async with self._renew_lock:
            try:
                self._lease = await self._store.leases.renew(self._lease, self._info())
            except LeaseLost as exc:
                self._lose(str(exc))
                raise

    def _live(self) -> bool:
        return self._lost is None and not self._closed

    async def _renew_loop(self) -> None:
        interval = self._store.leases.ttl_s / 3
        while self._live():  # ends with the log
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), interval)
            self._renew_now.clear()
            if not self._live():
                return
            try:
                await self._renew()
            except LeaseLost:
                return
            except StoreError as exc:
                if not self._time_left():
                    self._lose(f"its lease ran out while S3 was unreachable ({exc})")
                    return
                log.warning("session %s: renewing the lease failed: %s", self.session_id, exc)

    def _lose(self, reason: str) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        for callback in self._on_lost:
            try:
                callback(reason)
            except Exception:
                log.exception("session %s: a lost-lease callback failed", self.session_id)


async def read_chain(bucket: S3Bucket, prefix: str) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The commits under ``prefix`` in chain order, as ``(number, commit)``, read from
    segments where they exist; and the number the next commit takes. Reads only."""
    keys = await _store_call(bucket.list_keys(prefix))
    commits: dict[int, str] = {}
    segments: dict[int, tuple[int, str]] = {}
    for key in keys:
        rest = key[len(prefix) :]
        if rest.startswith("log/"):
            commits[int(rest[4:].split(".", 1)[0])] = key
        elif rest.startswith("seg/"):
            a, b = rest[4:].split(".", 1)[0].split("-")
            if int(b) >= segments.get(int(a), (-1, ""))[0]:
                segments[int(a)] = (int(b), key)
    plan: list[tuple[int, str]] = []  # (first commit number, key), in chain order
    n = 0
    while n in commits or n in segments:  # bounded by the keys listed
        if n in segments:
            end, key = segments[n]
            plan.append((n, key))
            n = end + 1
        else:
            plan.append((n, commits[n]))
            n += 1
    bodies = await asyncio.gather(*(_store_call(bucket.get(key)) for _, key in plan))
    chain: list[tuple[int, dict[str, Any]]] = []
    for (first, key), raw in zip(plan, bodies, strict=True):
        if raw is None:
            raise LogError(f"{bucket.url(key)} vanished while it was read; open again.")
        body = json.loads(raw)
        for offset, commit in enumerate(body["commits"] if "/seg/" in key else [body]):
            chain.append((first + offset, commit))
    return chain, n


def _apply_commit(
    commit: dict[str, Any],
    number: int,
    events: list[Event],
    turns: dict[TurnId, Turn],
    where: str,
) -> None:
    """Add one commit's events and turn rows; :class:`LogError` if its seqs do not follow."""
    for seq, kind, turn_id, data, ts in commit["events"]:
        if seq != len(events) + 1:
            raise LogError(
                f"Commit {number} under {where} holds seq {seq} after {len(events)}: the log "
                "is damaged (was it edited by hand?). Restore it from a backup or delete the "
                "session."
            )
        events.append(Event(seq=seq, kind=kind, data=data, ts=ts, turn_id=turn_id))
    for row in commit["turns"]:
        turn = _turn_of(row)
        turns[turn.turn_id] = turn


async def _store_call(awaitable: Any) -> Any:
    """Await an S3 call; store errors become :class:`LogError` (``LeaseHeld`` passes)."""
    try:
        return await awaitable
    except LeaseHeld:
        raise
    except StoreError as exc:
        raise LogError(f"The event log store failed: {exc}") from exc
