"""The event log seam, run against every log: Durable Object storage (kit dev), plain SQLite
files, and S3 under a lease (Fly)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from emulator.durable_objects import DOLogStore
from kit.host.errors import LogError
from kit.host.eventlog import (
    CREATED_KEY,
    LogStore,
    SessionLog,
    SQLiteLogStore,
    SQLiteSessionLog,
    TurnState,
)
from kit.host.lease import CLOCK_SKEW_S, LeaseHeld, LeaseLost
from kit.host.s3log import SEGMENT, S3LogStore
from kit.host.session import Session
from kit.ids import SessionId, TurnId, new_session_id
from kit.protocol.turns import MAX_SANDBOX_ATTEMPTS, TURN_FAILED
from kit.storage.s3 import unique_prefix
from kit.storage.s3io import S3Bucket
from tests.conftest import BUCKET


@pytest.fixture(params=["do", "sqlite", "s3"])
async def logs(request: pytest.FixtureRequest, kit_tmp: Path) -> AsyncIterator[LogStore]:
    if request.param == "do":
        store = DOLogStore.in_dir(kit_tmp / "sessions")
        yield store
        await store.aclose()
    elif request.param == "sqlite":
        yield SQLiteLogStore(kit_tmp / "sessions")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        yield S3LogStore(S3Bucket(client, BUCKET, unique_prefix()), owner="host-a")


async def _reopen(logs: LogStore, log: SessionLog) -> SessionLog:
    await log.close()
    again = await logs.open(log.session_id)
    assert again is not None
    return again


async def test_seqs_are_gap_free_and_survive_reopening(logs: LogStore) -> None:
    sid = new_session_id()
    log = await logs.create(sid, {"tier": "basic", "token_sha256": "x"})
    first = await log.append("sandbox", {"state": "starting"})
    batch = await log.append_many([("text_delta", {"text": str(i)}) for i in range(5)])
    assert [first.seq, *[e.seq for e in batch]] == list(range(1, 7))
    log = await _reopen(logs, log)
    assert log.last_seq == 6
    assert log.meta()["tier"] == "basic"
    after = await log.read_after(2)
    assert [e.seq for e in after] == [3, 4, 5, 6]
    assert [e.data["text"] for e in after] == ["1", "2", "3", "4"]
    assert [e.seq for e in await log.read_after(2, limit=2)] == [3, 4]
    assert await log.read_after(6) == []
    assert (await log.append("result", {"text": "ok"})).seq == 7
    await log.close()
    assert sid in await logs.session_ids()


async def test_turns_are_idempotent_on_client_msg_id(logs: LogStore) -> None:
    log = await logs.create(new_session_id(), {})
    added = await log.add_user_turn("m1", "hello ünïcödé")
    assert added is not None
    turn, event = added
    assert (event.kind, event.seq, event.turn_id) == ("user", 1, turn.turn_id)
    assert await log.add_user_turn("m1", "hello again") is None
    await log.set_turn_state(turn.turn_id, TurnState.RUNNING, attempt=True)
    assert [(t.turn_id, t.state, t.attempts) for t in await log.open_turns()] == [
        (turn.turn_id, TurnState.RUNNING, 1)
    ]
    log = await _reopen(logs, log)
    assert await log.add_user_turn("m1", "after reopening") is None
    second = await log.add_user_turn("m2", "next")
    assert second is not None
    assert second[0].turn_id != turn.turn_id
    await log.set_turn_state(turn.turn_id, TurnState.COMPLETED)
    assert [t.client_msg_id for t in await log.open_turns()] == ["m2"]
    assert [e.kind for e in await log.read_after(0)] == ["user", "user"]
    await log.close()


async def test_creating_an_existing_session_is_refused(logs: LogStore) -> None:
    sid = new_session_id()
    log = await logs.create(sid, {})
    with pytest.raises(LogError, match="already exists"):
        await logs.create(sid, {})
    await log.close()
    assert await logs.open(SessionId(new_session_id())) is None


async def test_a_long_log_loads_whole_and_in_order(logs: LogStore) -> None:
    """Past several segments (S3 folds every 64 commits into one object)."""
    log = await logs.create(new_session_id(), {})
    commits = SEGMENT * 3 + 5
    for i in range(commits):
        await log.append_many([("text_delta", {"i": i, "j": 0}), ("text_delta", {"i": i, "j": 1})])
    log = await _reopen(logs, log)
    events = await log.read_after(0)
    assert [e.seq for e in events] == list(range(1, 2 * commits + 1))
    assert [(e.data["i"], e.data["j"]) for e in events][-2:] == [(commits - 1, 0), (commits - 1, 1)]
    await log.append("result", {})
    log = await _reopen(logs, log)
    assert log.last_seq == 2 * commits + 1
    await log.close()


async def test_s3_log_reads_segments_not_every_commit(s3_endpoint: str) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = S3Bucket(client, BUCKET, unique_prefix())
    logs = S3LogStore(bucket, owner="host-a")
    log = await logs.create(new_session_id(), {})
    for i in range(SEGMENT * 2):
        await log.append("text_delta", {"i": i})
    await log.close()
    keys = await bucket.list_keys(logs.session_dir(log.session_id) + "seg/")
    assert len(keys) == 2  # commits 0..63 and 64..127 (commit 0 is the owner's fence)
    segment = json.loads(await bucket.get(keys[0]) or b"{}")
    assert len(segment["commits"]) == SEGMENT


# -- invariant 6 on S3: one writer per session, fenced ---------------------------------


class Clock:
    """The hosts' shared wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _two_hosts(endpoint: str, clock: Clock) -> tuple[S3LogStore, S3LogStore]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = S3Bucket(client, BUCKET, unique_prefix())
    return (
        S3LogStore(bucket, owner="host-a", ttl_s=10, clock=clock),
        S3LogStore(bucket, owner="host-b", ttl_s=10, clock=clock),
    )


async def _die(log: SessionLog) -> None:
    """The host process stops: no more renewals, no release (what SIGKILL does)."""
    renewer = log._renewer  # type: ignore[attr-defined]
    renewer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await renewer


async def test_a_second_host_cannot_open_an_owned_session(s3_endpoint: str) -> None:
    clock = Clock()
    a, b = _two_hosts(s3_endpoint, clock)
    sid = new_session_id()
    log_a = await a.create(sid, {})
    await log_a.append("sandbox", {"state": "starting"})
    with pytest.raises(LeaseHeld, match="owned by host-a"):
        await b.open(sid)
    await log_a.close()  # a graceful close releases: B may take over at once
    log_b = await b.open(sid)
    assert log_b is not None
    assert log_b.last_seq == 1
    await log_b.close()


async def test_takeover_after_expiry_fences_out_the_old_owner(s3_endpoint: str) -> None:
    """A stops renewing; after expiry B takes over, sees everything A committed, and every
    later write of A fails (LeaseLost, its lost-callback fires) and lands nowhere."""
    clock = Clock()
    a, b = _two_hosts(s3_endpoint, clock)
    sid = new_session_id()
    log_a = await a.create(sid, {})
    lost: list[str] = []
    log_a.on_lost(lost.append)
    added = await log_a.add_user_turn("m1", "hi")
    assert added is not None
    await log_a.append_many([("text_delta", {"text": "par"}), ("text_delta", {"text": "tial"})])
    await _die(log_a)
    clock.now += 5
    with pytest.raises(LeaseHeld):
        await b.open(sid)  # not expired yet
    clock.now += 10 + CLOCK_SKEW_S
    log_b = await b.open(sid)
    assert log_b is not None
    assert [e.seq for e in await log_b.read_after(0)] == [1, 2, 3]
    assert [t.client_msg_id for t in await log_b.open_turns()] == ["m1"]
    with pytest.raises(LeaseLost):
        await log_a.append("text_delta", {"text": "stale"})
    assert lost  # A learnt it lost the session (here from its renewal, before writing)
    assert (await log_b.append("text_delta", {"text": "from b"})).seq == 4
    log_b = await _reopen(b, log_b)
    assert [e.data.get("text") for e in await log_b.read_after(1)] == ["par", "tial", "from b"]
    await log_b.close()


async def test_a_write_that_slipped_in_before_the_fence_is_adopted(s3_endpoint: str) -> None:
    """A commits once more after its lease ran out but before B's fence landed: B's fence
    finds it, keeps it (its seq is taken), and fences the next number; A is then out."""
    clock = Clock()
    a, b = _two_hosts(s3_endpoint, clock)
    sid = new_session_id()
    log_a = await a.create(sid, {})
    await log_a.append("text_delta", {"text": "one"})
    await _die(log_a)
    clock.now += 10 + CLOCK_SKEW_S + 1
    lease_b = await b.leases.acquire(sid)  # B has the lease, has not fenced yet
    log_a._lease = dataclasses.replace(  # type: ignore[attr-defined]
        log_a._lease,  # type: ignore[attr-defined]
        expires_at=clock.now + 10,  # A's clock still thinks it holds it
    )
    await log_a.append("text_delta", {"text": "late"})
    await b.leases.release(lease_b)
    log_b = await b.open(sid)
    assert log_b is not None
    assert [e.data["text"] for e in await log_b.read_after(0)] == ["one", "late"]
    lost: list[str] = []
    log_a.on_lost(lost.append)
    with pytest.raises(LeaseLost):
        await log_a.append("text_delta", {"text": "later"})  # collides with B's fence
    assert lost
    assert "taken over" in lost[0]
    assert log_b.last_seq == 2
    await log_b.close()


async def test_recovery_lists_only_abandoned_sessions_with_open_turns(s3_endpoint: str) -> None:
    """A host starting up recovers sessions with unfinished turns whose owner is gone; not
    idle ones, not ones a live host still renews."""
    clock = Clock()
    a, b = _two_hosts(s3_endpoint, clock)
    logs = {}
    for name in ("busy", "idle", "live"):
        log = logs[name] = await a.create(new_session_id(), {})
        if name != "idle":
            await log.add_user_turn("m1", "work")
    for name in ("busy", "idle"):
        await _die(logs[name])
    clock.now += 10 + CLOCK_SKEW_S + 1
    await logs["live"]._renew()  # type: ignore[attr-defined]  # host-a is alive for this one
    assert await b.recoverable() == [logs["busy"].session_id]
    assert sorted(await a.recoverable()) == sorted(
        [logs["busy"].session_id, logs["live"].session_id]
    )
    await logs["live"].close()


class LostAnswers(S3Bucket):
    """A bucket whose conditional PUTs land but answer "conflict", as when botocore retried
    a PUT whose first answer was lost (its retry meets the first try's object)."""

    def __init__(self, inner: S3Bucket) -> None:
        super().__init__(inner.client, inner.bucket, inner.prefix)
        self.lose = 0

    async def put(
        self, key: str, body: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> str | None:
        etag = await super().put(key, body, if_match=if_match, if_absent=if_absent)
        if self.lose > 0 and etag is not None:
            self.lose -= 1
            return None
        return etag


async def test_a_write_whose_answer_was_lost_is_not_mistaken_for_a_takeover(
    s3_endpoint: str,
) -> None:
    """The fence, a commit and a lease renewal each land but report a conflict: the owner
    recognises its own object each time and carries on."""
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    flaky = LostAnswers(S3Bucket(client, BUCKET, unique_prefix()))
    logs = S3LogStore(flaky, owner="host-a")
    sid = new_session_id()
    flaky.lose = 2  # meta.json and the fence commit
    log = await logs.create(sid, {"tier": "lite"})
    flaky.lose = 1
    assert (await log.append("text_delta", {"text": "one"})).seq == 1
    flaky.lose = 1
    await log._renew()  # type: ignore[attr-defined]
    assert (await log.append("text_delta", {"text": "two"})).seq == 2
    await log.close()
    again = await logs.open(sid)
    assert again is not None
    assert [e.data["text"] for e in await again.read_after(0)] == ["one", "two"]
    await again.close()


async def test_recovery_skips_a_damaged_session_and_recovers_the_rest(s3_endpoint: str) -> None:
    clock = Clock()
    a, b = _two_hosts(s3_endpoint, clock)
    damaged, healthy = new_session_id(), new_session_id()
    for sid in (damaged, healthy):
        log = await a.create(sid, {})
        await log.add_user_turn("m1", "work")
        await _die(log)
    bad_key = f"{a.session_dir(damaged)}log/{99:012d}.json"
    await a.bucket.put(bad_key, b"not json")  # not on the chain: harmless
    chain_key = f"{a.session_dir(damaged)}log/{2:012d}.json"
    await a.bucket.put(chain_key, b'{"epoch":1,"events":[[9,"x",null,{},0]],"turns":[]}')
    clock.now += 10 + CLOCK_SKEW_S + 1
    assert sorted(await b.recoverable()) == sorted([damaged, healthy])
    with pytest.raises(LogError, match=r"is damaged.*Restore it from a backup"):
        await b.open(damaged)
    log_b = await b.open(healthy)  # the damaged one does not stand in its way
    assert log_b is not None
    assert [t.client_msg_id for t in await log_b.open_turns()] == ["m1"]
    await log_b.close()


# -- reading without opening: summary and read_events (kit sessions, kit logs) ---------


async def test_summary_and_read_events_read_what_is_stored(logs: LogStore) -> None:
    """summary/read_events report the stored turns, last event and sandbox state; None if unknown."""
    sid = new_session_id()
    assert await logs.summary(sid) is None
    assert await logs.read_events(sid) is None
    log = await logs.create(sid, {"token_sha256": "x", CREATED_KEY: 1_700_000_000_000})
    empty = await logs.summary(sid)
    assert empty is not None
    assert (empty.created_ms, empty.last_seq, empty.last_kind, empty.turns) == (
        1_700_000_000_000,
        0,
        None,
        0,
    )
    first = await log.add_user_turn("m1", "hello")
    assert first is not None
    await log.append("sandbox", {"state": "starting"}, first[0].turn_id)
    await log.append("sandbox", {"state": "running", "sandbox_id": "sb1"}, first[0].turn_id)
    await log.append("result", {"text": "hi"}, first[0].turn_id)
    await log.set_turn_state(first[0].turn_id, TurnState.COMPLETED)
    second = await log.add_user_turn("m2", "again")
    assert second is not None
    last = await log.append("text_delta", {"text": "ag"}, second[0].turn_id)
    summary = await logs.summary(sid)
    assert summary is not None
    assert (summary.last_seq, summary.last_kind, summary.last_ts) == (6, "text_delta", last.ts)
    assert (summary.turns, summary.open_turns, summary.sandbox) == (2, 1, "running")
    events = await logs.read_events(sid)
    assert events == await log.read_after(0)
    assert [e.seq for e in await logs.read_events(sid, after=2, limit=3) or []] == [3, 4, 5]
    await log.close()


async def test_summary_of_an_unreadable_id_is_refused(logs: LogStore) -> None:
    """A malformed id is a LogError naming it, and nothing is created for it."""
    with pytest.raises(LogError, match="not a session id"):
        await logs.summary(SessionId("../etc"))
    assert await logs.session_ids() == []


async def test_another_hosts_session_is_summarised_without_taking_its_lease(
    s3_endpoint: str,
) -> None:
    """Host B reads host A's leased session; A's lease is untouched and A keeps writing."""
    clock = Clock()
    a, b = _two_hosts(s3_endpoint, clock)
    sid = new_session_id()
    log_a = await a.create(sid, {CREATED_KEY: 5})
    lost: list[str] = []
    log_a.on_lost(lost.append)
    added = await log_a.add_user_turn("m1", "work")
    assert added is not None
    lease_before = await a.bucket.get_with_etag(a.leases.key(sid))
    summary = await b.summary(sid)
    events = await b.read_events(sid)
    assert summary is not None
    assert (summary.created_ms, summary.last_seq, summary.turns, summary.open_turns) == (5, 1, 1, 1)
    assert [e.kind for e in events or []] == ["user"]
    assert await a.bucket.get_with_etag(a.leases.key(sid)) == lease_before
    assert (await log_a.append("text_delta", {"text": "still mine"})).seq == 2
    assert lost == []
    with pytest.raises(LeaseHeld):
        await b.open(sid)  # the lease is A's: reading never changed that
    await log_a.close()


async def test_a_damaged_sqlite_log_fails_reads_with_log_errors(kit_tmp: Path) -> None:
    """A read of a SQLite log whose tables went missing raises LogError naming the file,
    not sqlite3's own error."""
    store = SQLiteLogStore(kit_tmp / "sessions")
    log = await store.create(new_session_id(), {"tier": "basic"})
    await log.append("sandbox", {"state": "starting"})
    with contextlib.closing(sqlite3.connect(store.root / f"{log.session_id}.sqlite")) as other:
        other.execute("DROP TABLE events")
        other.execute("DROP TABLE turns")
    try:
        with pytest.raises(LogError, match=r"Cannot read the event log .*\.sqlite"):
            await log.read_after(0)
        with pytest.raises(LogError, match="no such table: turns"):
            await log.open_turns()
    finally:
        await log.close()


async def test_a_turn_started_with_its_user_event_is_stored_so(
    logs: LogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``add_user_turn(start=True)`` with no other turn open stores the turn RUNNING with
    its first attempt counted, in the ``user`` event's own commit (with every state write
    failing, it still is; reopened, that is what is stored); with a turn open, the next is
    queued, and a seen ``client_msg_id`` stores nothing."""
    log = await logs.create(new_session_id(), {"tier": "basic"})

    async def dead(
        self: SessionLog, turn_id: TurnId, state: TurnState, *, attempt: bool = False
    ) -> None:
        raise LogError("no state write here")

    with monkeypatch.context() as patch:
        patch.setattr(type(log), "set_turn_state", dead)
        first = await log.add_user_turn("m1", "one", start=True)
        second = await log.add_user_turn("m2", "two", start=True)
        assert await log.add_user_turn("m1", "one again", start=True) is None
    assert first is not None
    assert second is not None
    assert (first[0].state, first[0].attempts) == (TurnState.RUNNING, 1)
    assert (second[0].state, second[0].attempts) == (TurnState.QUEUED, 0)
    again = await _reopen(logs, log)
    assert [(t.turn_id, t.state, t.attempts) for t in await again.open_turns()] == [
        ("t1", TurnState.RUNNING, 1),
        ("t2", TurnState.QUEUED, 0),
    ]
    await again.end_turn([("result", {"text": "one"})], TurnId("t1"), TurnState.COMPLETED)
    third = await again.add_user_turn("m3", "three", start=True)
    assert third is not None
    assert third[0].state is TurnState.QUEUED
    await again.close()


async def test_a_turns_end_and_its_state_are_one_commit(logs: LogStore) -> None:
    """``end_turn``: the turn's last events and its end state land together (a host that
    dies after the answer is durable never finds the turn open and runs it again)."""
    log = await logs.create(new_session_id(), {"tier": "basic"})
    added = await log.add_user_turn("m1", "hello")
    assert added is not None
    turn, _ = added
    await log.set_turn_state(turn.turn_id, TurnState.RUNNING, attempt=True)
    events = await log.end_turn(
        [("text_delta", {"text": "hi"}), ("result", {"text": "hi"})],
        turn.turn_id,
        TurnState.COMPLETED,
    )
    assert [(e.seq, e.kind, e.turn_id) for e in events] == [
        (2, "text_delta", turn.turn_id),
        (3, "result", turn.turn_id),
    ]
    assert await log.open_turns() == []
    again = await _reopen(logs, log)
    assert await again.open_turns() == []
    assert [e.kind for e in await again.read_after(0)] == ["user", "text_delta", "result"]
    await again.close()


async def test_a_turns_end_writes_no_state_of_its_own(
    logs: LogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each log's ``end_turn`` is its own commit, not the events and then a state write: with
    every end-state write failing (the host dying after the answer), the turn still ends."""
    log = await logs.create(new_session_id(), {"tier": "basic"})
    added = await log.add_user_turn("m1", "hello")
    assert added is not None
    turn, _ = added
    await log.set_turn_state(turn.turn_id, TurnState.RUNNING, attempt=True)

    async def dead(
        self: SessionLog, turn_id: TurnId, state: TurnState, *, attempt: bool = False
    ) -> None:
        raise LogError("the host died here")

    monkeypatch.setattr(type(log), "set_turn_state", dead)
    await log.end_turn([("result", {"text": "hi"})], turn.turn_id, TurnState.COMPLETED)
    again = await _reopen(logs, log)
    assert await again.open_turns() == []
    await again.close()


async def test_a_given_up_turns_error_and_its_end_are_one_commit(
    kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn out of sandbox attempts is given up: its ``turn_failed`` error and its FAILED
    state are one commit. With every FAILED write failing (the host dying between the two),
    the turn still ends, and a restarted host does not give it up a second time."""
    logs = SQLiteLogStore(kit_tmp / "sessions")
    sid = new_session_id()
    log = await logs.create(sid, {"tier": "basic"})
    added = await log.add_user_turn("m1", "hi")
    assert added is not None
    turn, _ = added
    for _ in range(MAX_SANDBOX_ATTEMPTS):
        await log.set_turn_state(turn.turn_id, TurnState.RUNNING, attempt=True)
    alive = SQLiteSessionLog.set_turn_state

    async def dies(
        self: SQLiteSessionLog, turn_id: TurnId, state: TurnState, *, attempt: bool = False
    ) -> None:
        if state is TurnState.FAILED:
            raise LogError("the host died here")
        await alive(self, turn_id, state, attempt=attempt)

    monkeypatch.setattr(SQLiteSessionLog, "set_turn_state", dies)
    env = SimpleNamespace(tier="basic", spend=None, advise=None, files=None)
    (open_turn,) = await log.open_turns()
    await Session(log, env)._run_turn(open_turn)  # type: ignore[arg-type]
    await log.close()
    again = await logs.open(sid)
    assert again is not None
    assert await again.open_turns() == []
    failed = [
        e
        for e in await again.read_after(0)
        if e.kind == "error" and e.data.get("code") == TURN_FAILED
    ]
    assert [e.turn_id for e in failed] == [turn.turn_id]
    await again.close()
