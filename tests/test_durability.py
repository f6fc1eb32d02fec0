"""KIT_DURABILITY=fsync (kit.durability): nothing counts as committed, and nothing reaches a
reader, before the fsync of its ``-wal``; fsyncs are grouped and run off the event loop; a
failed fsync fails the write (ARCHITECTURE §4.1)."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator.durable_objects import Namespace, StorageError
from kit.durability import Durability, GroupSync
from kit.host.errors import LogError
from kit.host.eventlog import SQLiteLogStore, SQLiteSessionLog
from kit.ids import new_session_id
from tests.emulator.test_durable_objects import Counter

WAIT_S = 10


class HeldFsync:
    """``os.fsync`` that waits for :meth:`release` (then fsyncs), recording what it synced."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        self.go.set()
        self.synced: list[str] = []
        self.fail: OSError | None = None
        self.once = False
        """Fail only the next fsync (Linux reports a writeback error once, to the first
        fsync that looks); later ones succeed."""
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.entered.set()
        assert self.go.wait(WAIT_S), "the test never released the fsync"
        if self.fail is not None:
            fail, self.fail = self.fail, None if self.once else self.fail
            raise fail
        self.synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        self._real(fd)

    def hold(self) -> None:
        self.entered.clear()
        self.go.clear()

    async def held(self) -> None:
        """Wait (off the loop) until a worker thread is inside the held fsync."""
        entered = await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, WAIT_S)
        assert entered, "no fsync started"


@pytest.fixture
def fsync(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldFsync]:
    held = HeldFsync()
    monkeypatch.setattr(os, "fsync", held)
    yield held
    held.go.set()


def _committed(path: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(query).fetchall()


async def test_the_output_gate_waits_for_the_fsync(tmp_path: Path, fsync: HeldFsync) -> None:
    """A Durable Object call is answered only after its batch's ``-wal`` is fsynced: while
    the fsync is held, the commit is visible to another connection but the caller has no
    answer; released, the answer comes and the -wal was synced."""
    ns = Namespace(tmp_path / "do", Counter, hibernate_after_s=None)
    try:
        assert await ns.call("a", lambda c: c.bump()) == 1
        fsync.hold()
        call = asyncio.create_task(ns.call("a", lambda c: c.bump()))
        await fsync.held()
        assert _committed(ns.path("a"), "SELECT n FROM c") == [(2,)]  # committed, in the OS
        assert not call.done(), "the caller heard of a commit not yet on the disk"
        fsync.go.set()
        assert await asyncio.wait_for(call, WAIT_S) == 2
        assert str(ns.path("a")) + "-wal" in fsync.synced
    finally:
        await ns.close()


async def test_os_durability_does_not_fsync(tmp_path: Path, fsync: HeldFsync) -> None:
    """KIT_DURABILITY=os: commits are answered with no fsync at all."""
    fsync.hold()
    ns = Namespace(tmp_path / "do", Counter, hibernate_after_s=None, durability=Durability.OS)
    try:
        assert await asyncio.wait_for(ns.call("a", lambda c: c.bump()), WAIT_S) == 1
        assert not fsync.entered.is_set()
    finally:
        await ns.close()


async def test_a_failed_fsync_fails_the_call_and_breaks_the_instance(
    tmp_path: Path, fsync: HeldFsync
) -> None:
    """An fsync that fails (EIO) fails the call with the OS's error; the instance is done,
    and so is the file: the next instance (rebuilt from storage, fsyncs working again) is
    refused its writes and its reads, as what it would build on may not be on the disk."""
    ns = Namespace(tmp_path / "do", Counter, hibernate_after_s=None)
    try:
        assert await ns.call("a", lambda c: c.bump()) == 1
        fsync.fail = OSError(errno.EIO, "Input/output error")
        with pytest.raises(StorageError, match="Input/output error"):
            await ns.call("a", lambda c: c.bump())
        fsync.fail = None
        assert ns.generation("a") == 1
        with pytest.raises(StorageError, match="Input/output error"):
            await ns.call("a", lambda c: c.bump())
        assert ns.generation("a") == 2
        with pytest.raises(StorageError, match="Input/output error"):
            await ns.call("a", lambda c: c.n)  # a read of it too
    finally:
        await ns.close()


async def test_a_reopened_log_does_not_serve_what_a_failed_fsync_lost(
    tmp_path: Path, fsync: HeldFsync
) -> None:
    """The SQLite log: event 2's fsync fails; the log is closed and opened again (a new
    syncer, fsyncs working): a reader is refused, not served event 2."""
    store = SQLiteLogStore(tmp_path / "logs")
    session_id = new_session_id()
    log = await store.create(session_id, {"tier": "basic"})
    first = await log.append("status", {"n": 1})
    fsync.fail = OSError(errno.EIO, "Input/output error")
    with pytest.raises(LogError):
        await log.append("status", {"n": 2})
    fsync.fail = None
    await log.close()
    again = await store.open(session_id)
    assert again is not None
    try:
        with pytest.raises(LogError, match="Input/output error"):
            await again.read_after(first.seq)
    finally:
        await again.close()


async def test_a_batch_that_only_changes_the_schema_waits_for_its_fsync(
    tmp_path: Path, fsync: HeldFsync
) -> None:
    """DDL changes no row count, yet it is a write: its call waits for the fsync."""
    ns = Namespace(tmp_path / "do", Counter, hibernate_after_s=None)
    try:
        await ns.call("a", lambda c: c.bump())
        fsync.hold()
        call = asyncio.create_task(
            ns.call("a", lambda c: c.ctx.storage.sql.exec("CREATE TABLE t (x)").rows)
        )
        await fsync.held()
        assert not call.done()
        fsync.go.set()
        await asyncio.wait_for(call, WAIT_S)
    finally:
        await ns.close()


async def test_sqlite_log_appends_and_reads_wait_for_the_fsync(
    tmp_path: Path, fsync: HeldFsync
) -> None:
    """The gateway's SQLite log: ``append`` returns after the fsync, and a reader of the
    log does not get an event whose fsync is still running."""
    store = SQLiteLogStore(tmp_path / "logs")
    log = await store.create(new_session_id(), {"tier": "basic"})
    try:
        first = await log.append("status", {"n": 1})
        fsync.hold()
        append = asyncio.create_task(log.append("status", {"n": 2}))
        await fsync.held()
        read = asyncio.create_task(log.read_after(first.seq))
        await asyncio.sleep(0)  # one loop pass: the reader runs up to its wait
        assert not append.done()
        assert not read.done()
        fsync.go.set()
        event = await asyncio.wait_for(append, WAIT_S)
        assert [e.seq for e in await asyncio.wait_for(read, WAIT_S)] == [event.seq]
    finally:
        await log.close()


async def test_fsyncs_are_grouped(tmp_path: Path, fsync: HeldFsync) -> None:
    """Fifty appends made while one fsync runs share the next one: two fsyncs in all."""
    store = SQLiteLogStore(tmp_path / "logs")
    log = await store.create(new_session_id(), {"tier": "basic"})
    try:
        fsync.hold()
        first = asyncio.create_task(log.append("status", {"n": 0}))
        await fsync.held()
        rest = [asyncio.create_task(log.append("status", {"n": n})) for n in range(1, 50)]
        await asyncio.sleep(0)  # one loop pass: each append commits, asks
        assert isinstance(log, SQLiteSessionLog)
        syncer = log._syncer
        assert syncer is not None
        rounds = syncer.rounds
        fsync.go.set()
        events = await asyncio.wait_for(asyncio.gather(first, *rest), WAIT_S)
        assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + 50))
        assert syncer.rounds == rounds + 2
    finally:
        await log.close()


async def test_a_failed_fsync_fails_the_append(tmp_path: Path, fsync: HeldFsync) -> None:
    """A failed fsync is a LogError naming the log file and the OS's reason."""
    store = SQLiteLogStore(tmp_path / "logs")
    log = await store.create(new_session_id(), {"tier": "basic"})
    try:
        fsync.fail = OSError(errno.EIO, "Input/output error")
        with pytest.raises(LogError, match=r"Cannot write the event log .*Input/output error"):
            await log.append("status", {"n": 1})
    finally:
        await log.close()


async def test_a_new_files_folder_is_synced_once(tmp_path: Path, fsync: HeldFsync) -> None:
    """A log made just now has its folder fsynced with its first commit, and only then."""
    store = SQLiteLogStore(tmp_path / "logs")
    log = await store.create(new_session_id(), {"tier": "basic"})
    try:
        await log.append("status", {"n": 1})
        assert fsync.synced.count(str(tmp_path / "logs")) == 1
    finally:
        await log.close()


async def test_a_missing_wal_counts_as_synced(tmp_path: Path, fsync: HeldFsync) -> None:
    """No ``-wal`` (its last connection checkpointed and removed it): nothing to fsync."""
    sync = GroupSync(tmp_path / "gone.sqlite", new_file=False)
    await asyncio.wait_for(sync.request(), WAIT_S)
    assert fsync.synced == []


async def test_nothing_behind_a_failed_fsync_counts(tmp_path: Path, fsync: HeldFsync) -> None:
    """Event 2's fsync fails; event 3, committed behind it in the same -wal while it ran,
    is not reported durable though the next fsync succeeds; no reader gets event 2; the log
    takes nothing more."""
    store = SQLiteLogStore(tmp_path / "logs")
    log = await store.create(new_session_id(), {"tier": "basic"})
    try:
        first = await log.append("status", {"n": 1})
        fsync.hold()
        fsync.once = True
        fsync.fail = OSError(errno.EIO, "Input/output error")
        second = asyncio.create_task(log.append("status", {"n": 2}))
        await fsync.held()
        third = asyncio.create_task(log.append("status", {"n": 3}))
        await asyncio.sleep(0)  # one loop pass: the third commits and asks for a round
        fsync.go.set()
        for pending in (second, third):
            with pytest.raises(LogError, match="Input/output error"):
                await asyncio.wait_for(pending, WAIT_S)
        with pytest.raises(LogError):
            await log.read_after(first.seq)
        with pytest.raises(LogError):
            await log.append("status", {"n": 4})
    finally:
        await log.close()


async def test_no_do_batch_behind_a_failed_fsync_passes_the_gate(
    tmp_path: Path, fsync: HeldFsync
) -> None:
    """The Durable Object's batch 2 fails its fsync; batch 3, committed while it ran, does
    not pass the output gate either."""
    ns = Namespace(tmp_path / "do", Counter, hibernate_after_s=None)
    try:
        assert await ns.call("a", lambda c: c.bump()) == 1
        fsync.hold()
        fsync.once = True
        fsync.fail = OSError(errno.EIO, "Input/output error")
        second = asyncio.create_task(ns.call("a", lambda c: c.bump()))
        await fsync.held()
        third = asyncio.create_task(ns.call("a", lambda c: c.bump()))
        await asyncio.sleep(0)  # one loop pass: the third call runs up to its gate
        await asyncio.sleep(0)  # and the next: its batch commits (call_soon)
        fsync.go.set()
        for pending in (second, third):
            with pytest.raises(StorageError, match="Input/output error"):
                await asyncio.wait_for(pending, WAIT_S)
    finally:
        await ns.close()


async def test_a_call_that_only_reads_costs_no_fsync(tmp_path: Path) -> None:
    """A Durable Object call that wrote nothing asks for no fsync of its own."""
    ns = Namespace(tmp_path / "do", Counter, hibernate_after_s=None)
    try:
        await ns.call("a", lambda c: c.bump())
        syncer = ns._live["a"].state.storage.syncer
        assert syncer is not None
        before = syncer.rounds
        assert await ns.call("a", lambda c: c.ctx.storage.sql.exec("SELECT n FROM c").rows) == [
            (1,)
        ]
        assert syncer.rounds == before
    finally:
        await ns.close()


async def test_a_transcript_append_waits_for_the_fsync(tmp_path: Path, fsync: HeldFsync) -> None:
    """A ``sqlite:///`` transcript store at fsync answers an append only once its ``-wal``
    is on the disk: the runtime holds a turn's ``result`` until its transcript is stored, so
    the result is never durable before the transcript is (ARCHITECTURE §4)."""
    from kit.storage import open_store

    path = tmp_path / "transcript.sqlite"
    store = open_store(f"sqlite:///{path}?durability=fsync")
    key = {"project_key": "p", "session_id": "s"}
    await store.append(key, [{"type": "user", "uuid": "u0"}])  # the new file's folder, once
    fsync.hold()
    append = asyncio.create_task(store.append(key, [{"type": "user", "uuid": "u1"}]))
    await fsync.held()
    assert not append.done()  # committed, but not yet on the disk
    assert len(_committed(path, "SELECT uuid FROM entries")) == 2
    fsync.go.set()
    async with asyncio.timeout(WAIT_S):
        await append
    assert fsync.synced[-1] == f"{path}-wal"


@pytest.mark.parametrize("durability", ["os", "fsync"])
def test_kit_devs_transcript_stores_follow_kit_durability(tmp_path: Path, durability: str) -> None:
    """Each session's own SQLite transcript store is as durable as the event logs
    (``KIT_DURABILITY``); a store URL the user gave (``KIT_STORE_URL``) is kept as given."""
    from kit.cli.settings import EXAMPLE_PROJECT, dev_settings
    from kit.storage.sqliteurl import SQLiteURL, read_sqlite_url

    environ = {"KIT_STATE_DIR": str(tmp_path / "state"), "KIT_DURABILITY": durability}
    settings = dev_settings(project=EXAMPLE_PROJECT, host=None, port=None, environ=environ)
    upstream = ("http://127.0.0.1:9", "key")
    config = settings.gateway_config((), api_token="t", upstream=upstream, leased=False)
    assert read_sqlite_url(config.store_url("s1")) == SQLiteURL(
        tmp_path / "state" / "transcripts" / "s1" / "transcript.sqlite",
        f"durability={durability}",
        "",
    )
    given = "sqlite:///elsewhere/t.sqlite"
    settings = dev_settings(
        project=EXAMPLE_PROJECT,
        host=None,
        port=None,
        environ={**environ, "KIT_STORE_URL": given},
    )
    config = settings.gateway_config((), api_token="t", upstream=upstream, leased=False)
    assert config.store_url("s1") == given


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("sqlite:///data/x#1/all.db", "%23"),
        ("sqlite:///data/x/all.db?mode=ro", "durability=os or fsync"),
        ("sqlite:///data/x/all.db?durability=fast", "or os"),
        ("sqlite://host/data/x/all.db", "three slashes"),
    ],
)
def test_a_sqlite_store_url_kit_cannot_open_is_refused_at_start(
    tmp_path: Path, url: str, fix: str
) -> None:
    """A ``KIT_STORE_URL`` every sandbox would refuse is refused once, when kit starts,
    naming the fix, before any folder is made for it (a sandbox's start makes the store's
    folder first)."""
    from kit.cli.settings import EXAMPLE_PROJECT, SettingsError, dev_settings

    url = url.replace("/data/", f"/{str(tmp_path).strip('/')}/data/")
    environ = {"KIT_STATE_DIR": str(tmp_path / "state"), "KIT_STORE_URL": url}
    with pytest.raises(SettingsError, match="KIT_STORE_URL") as refused:
        dev_settings(project=EXAMPLE_PROJECT, host=None, port=None, environ=environ)
    assert fix in str(refused.value)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("durability", list(Durability))
async def test_a_session_folders_name_is_synced_at_fsync_only(
    tmp_path: Path, fsync: HeldFsync, durability: Durability
) -> None:
    """The host made ``transcripts/<session>``: at fsync the folder it is in is fsynced (in
    a thread; ``synced`` answers only once that fsync is done), at os nothing is."""
    from emulator.sandbox.folders import EntrySync
    from kit.host.gateway import store_urls
    from kit.host.sandbox import store_folder

    url = store_urls(None, tmp_path / "transcripts", durability)("s1")
    folder = store_folder(url)
    assert folder is not None
    folder.mkdir(parents=True)
    fsync.hold()
    synced = asyncio.create_task(EntrySync(folder, url).synced())
    if durability is Durability.FSYNC:
        await fsync.held()
        await asyncio.sleep(0)  # one loop pass: the wait runs up to the held fsync
        assert not synced.done()
    fsync.go.set()
    async with asyncio.timeout(WAIT_S):
        await synced
    expected = [str(tmp_path / "transcripts")] if durability is Durability.FSYNC else []
    assert fsync.synced == expected
