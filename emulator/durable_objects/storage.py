"""One object's durable storage: a SQLite file with the SQL API, the KV API and its alarm.

Writes are coalesced as on Cloudflare: the first write opens an implicit transaction and
every later write up to the next time the event loop runs joins it; the batch commits as
one, right after the current task yields (``loop.call_soon``). :meth:`Storage.sync` waits
for that commit: the output gate. ``transaction_sync`` is ``ctx.storage.transactionSync``:
all of ``fn`` or none of it.

Every file is created 0600 whatever the umask, and its ``-wal``/``-shm`` follow
(:func:`kit.private.private_sqlite`): an object's storage is an event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from emulator.durable_objects.errors import LimitExceeded, ObjectEvicted, StorageError
from emulator.durable_objects.limits import apply_limits, check_statement, is_limit, sqlite_message
from kit.durability import DEFAULT, Durability, GroupSync
from kit.private import private_sqlite

T = TypeVar("T")

_KV_SCHEMA = "CREATE TABLE IF NOT EXISTS _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID"


@dataclass(frozen=True)
class Cursor:
    """The result of ``sql.exec``: column names and rows, read at once."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    rows_written: int

    def raw(self) -> list[tuple[Any, ...]]:
        """Rows as tuples (``cursor.raw().toArray()``)."""
        return self.rows

    def to_array(self) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column (``cursor.toArray()``)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class AlarmTable:
    """Every object's alarm in ``metadata.sqlite`` (``_cf_ALARM``, as miniflare keeps them)."""

    def __init__(self, path: Path, on_change: Callable[[], None] | None = None) -> None:
        self._on_change = on_change
        private_sqlite(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS _cf_ALARM (object_id TEXT PRIMARY KEY,"
            " scheduled_ms INTEGER NOT NULL, retry_count INTEGER NOT NULL DEFAULT 0)"
        )

    def get(self, object_id: str) -> tuple[int, int] | None:
        """``(scheduled_ms, retry_count)`` of the object's alarm, if one is set."""
        row = self._db.execute(
            "SELECT scheduled_ms, retry_count FROM _cf_ALARM WHERE object_id = ?", (object_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def set(self, object_id: str, scheduled_ms: int, retry_count: int = 0) -> None:
        """Set (or replace) the object's alarm."""
        self._db.execute(
            "INSERT OR REPLACE INTO _cf_ALARM VALUES (?, ?, ?)",
            (object_id, scheduled_ms, retry_count),
        )
        self._changed()

    def delete(self, object_id: str, scheduled_ms: int | None = None) -> None:
        """Clear the alarm (only if still set for ``scheduled_ms``, when given)."""
        if scheduled_ms is None:
            self._db.execute("DELETE FROM _cf_ALARM WHERE object_id = ?", (object_id,))
        else:
            self._db.execute(
                "DELETE FROM _cf_ALARM WHERE object_id = ? AND scheduled_ms = ?",
                (object_id, scheduled_ms),
            )
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def earliest(self) -> tuple[str, int] | None:
        """The next alarm due, as ``(object_id, scheduled_ms)``."""
        row = self._db.execute(
            "SELECT object_id, scheduled_ms FROM _cf_ALARM ORDER BY scheduled_ms LIMIT 1"
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def close(self) -> None:
        """Close the metadata file."""
        self._db.close()


class SqlStorage:
    """``ctx.storage.sql``: one statement per ``exec``, with workerd's limits and texts."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def exec(self, query: str, *bindings: Any) -> Cursor:
        """Run one statement; writes join the current coalesced transaction."""
        check_statement(query, bindings)
        db = self._storage.begin()
        try:
            cur = db.execute(query, bindings)
            rows = cur.fetchall()
        except sqlite3.Error as exc:
            error = LimitExceeded if is_limit(exc) else StorageError
            raise error(sqlite_message(exc)) from exc
        if cur.description is None:  # not a query: DDL and PRAGMAs change no row count
            self._storage.wrote = True
        columns = [d[0] for d in cur.description or ()]
        return Cursor(columns, rows, max(cur.rowcount, 0))


class Storage:
    """``ctx.storage`` of one object instance."""

    def __init__(
        self,
        path: Path,
        object_id: str,
        alarms: AlarmTable,
        durability: Durability = DEFAULT,
    ) -> None:
        self.path = path
        self.object_id = object_id
        self._alarms = alarms
        self.syncer = (
            GroupSync(path, new_file=not path.exists()) if durability is Durability.FSYNC else None
        )
        """Grouped fsync of the ``-wal`` before a commit counts (``KIT_DURABILITY=fsync``)."""
        try:
            private_sqlite(path)  # an object's storage is its host's alone (0600)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        except OSError as exc:
            raise StorageError(f"Cannot open {path}: {exc.strerror or exc}.") from exc
        except sqlite3.Error as exc:
            raise StorageError(sqlite_message(exc)) from exc
        apply_limits(self._db)
        self.sql = SqlStorage(self)
        self._commit: asyncio.Future[None] | None = None
        self._committed: asyncio.Future[None] | None = None
        """The open batch's COMMIT (before its fsync): :meth:`sync` with ``durable=False``."""
        self._durable: asyncio.Future[None] | None = None
        """The newest committed batch's future while its fsync runs (then done)."""
        self._unsynced: list[asyncio.Future[None]] = []
        """Committed batches no fsync has been asked for yet."""
        self._want_durable = False
        """Someone waits for the open batch to be on the disk: its flush asks for the fsync."""
        self._changes_at_begin = 0
        """``total_changes`` when the open batch began: unchanged at its flush, and
        :attr:`wrote` unset, it only read."""
        self.wrote = False
        """A statement of the open batch was not a query (DDL, a PRAGMA): it wrote, though
        ``total_changes`` counts rows only."""
        self._alarm_change: tuple[int | None] | None = None
        self._kv_ready = False
        self._savepoints = 0
        self.closed = False

    # -- coalescing and the output gate ------------------------------------------------

    def begin(self) -> sqlite3.Connection:
        """The connection, inside the implicit transaction of the current event-loop turn."""
        if self.closed:
            raise ObjectEvicted(
                f"Durable Object {self.object_id}: this instance was evicted; call the stub again."
            )
        if self._commit is None:
            loop = asyncio.get_running_loop()
            self._changes_at_begin = self._db.total_changes
            self.wrote = False
            self._db.execute("BEGIN")
            self._commit = loop.create_future()
            self._commit.add_done_callback(_retrieve)
            self._committed = loop.create_future()
            self._committed.add_done_callback(_retrieve)
            loop.call_soon(self.flush)
        return self._db

    def flush(self) -> None:
        """Commit the coalesced batch now (the event loop calls this after the writes)."""
        commit, self._commit = self._commit, None
        committed, self._committed = self._committed, None
        if commit is None or committed is None:
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self.closed = True  # a failed commit breaks the instance, as on Cloudflare
            commit.set_exception(StorageError(sqlite_message(exc)))
            committed.set_exception(StorageError(sqlite_message(exc)))
            return
        if not committed.done():
            committed.set_result(None)
        if self._alarm_change is not None:
            (scheduled,) = self._alarm_change
            self._alarm_change = None
            if scheduled is None:
                self._alarms.delete(self.object_id)
            else:
                self._alarms.set(self.object_id, scheduled)
        if commit.done():
            return
        if self.syncer is None:
            commit.set_result(None)
            return
        if not self.wrote and self._db.total_changes == self._changes_at_begin:
            self._after_earlier(commit)  # reads only: nothing of its own to fsync
            return
        self._durable = commit
        self._unsynced.append(commit)
        if self._want_durable:
            self._request_sync()

    def _after_earlier(self, commit: asyncio.Future[None]) -> None:
        """A batch that wrote nothing is durable once the batches before it are (what it
        read may be theirs): it waits for them, and asks for their fsync if it is waited on."""
        earlier = self._durable
        if self._want_durable:
            self._request_sync()
        failed = self.syncer.failed if self.syncer is not None else None
        if failed is not None:  # what it read may be writes whose fsync failed
            commit.set_exception(StorageError(str(failed)))
            return
        if earlier is None:
            commit.set_result(None)
        else:
            earlier.add_done_callback(lambda done: _copy_outcome(done, commit))

    def _request_sync(self) -> None:
        """Ask for one fsync covering every batch committed so far and not yet asked for.
        Only a caller that waits for durability asks (:meth:`sync`): a batch nobody waits
        on (a turn's state) costs no fsync of its own; the next one covers it."""
        batch, self._unsynced = self._unsynced, []
        self._want_durable = False
        if not batch or self.syncer is None:
            return

        def settle(synced: asyncio.Future[None]) -> None:
            for commit in batch:
                self._synced(commit, synced)

        self.syncer.request().add_done_callback(settle)

    def _synced(self, commit: asyncio.Future[None], synced: asyncio.Future[None]) -> None:
        """A batch's fsync ended: the batch counts as committed, or the instance breaks."""
        error = None if synced.cancelled() else synced.exception()
        if commit.done():
            return
        if error is None:
            commit.set_result(None)
            return
        commit.set_exception(StorageError(str(error)))
        self._break()

    def _break(self) -> None:
        """A commit did not become durable: this instance is done, as on Cloudflare."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(sqlite3.Error):
                self._db.close()

    async def sync(self, *, durable: bool = True) -> None:
        """Wait until every earlier write is committed (``ctx.storage.sync()``): with
        ``fsync`` durability, until it is on the disk too. ``durable=False``: only until
        it is committed (for what no client is told; a later fsync of the same ``-wal``
        covers it, so what survives the machine is still a prefix of the commits)."""
        if not durable:
            if self._committed is not None:
                await asyncio.shield(self._committed)
            return
        if self._commit is not None:  # the open batch: its flush asks for the fsync
            self._want_durable = self.syncer is not None
            await asyncio.shield(self._commit)
            return
        if self._unsynced:
            self._request_sync()
        if self._durable is not None:
            await asyncio.shield(self._durable)
        if self.syncer is not None and self.syncer.failed is not None:
            raise StorageError(str(self.syncer.failed))

    def transaction_sync(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` as one transaction: if it raises, none of its writes stay."""
        db = self.begin()
        self._savepoints += 1
        name = f"_cf_tx{self._savepoints}"
        db.execute(f"SAVEPOINT {name}")
        try:
            result = fn()
        except BaseException:
            db.execute(f"ROLLBACK TO {name}")
            db.execute(f"RELEASE {name}")
            raise
        finally:
            self._savepoints -= 1
        db.execute(f"RELEASE {name}")
        return result

    # -- KV API (values JSON-encoded; Cloudflare uses V8 serialisation) -----------------

    def _kv(self) -> sqlite3.Connection:
        db = self.begin()
        if not self._kv_ready:
            db.execute(_KV_SCHEMA)
            self._kv_ready = True
        return db

    def get(self, key: str) -> Any:
        """The value at ``key``, or ``None``."""
        row = self._kv().execute("SELECT value FROM _cf_KV WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key`` (key + value at most 2 MB)."""
        self.put_many({key: value})

    def put_many(self, entries: dict[str, Any]) -> None:
        """Store several entries, all or none."""
        db = self._kv()
        rows = [(k, json.dumps(v).encode()) for k, v in entries.items()]

        def write() -> None:
            try:
                db.executemany("INSERT OR REPLACE INTO _cf_KV VALUES (?, ?)", rows)
            except sqlite3.Error as exc:
                error = LimitExceeded if is_limit(exc) else StorageError
                raise error(sqlite_message(exc)) from exc

        self.transaction_sync(write)

    def delete(self, key: str) -> bool:
        """Delete ``key``; whether it existed."""
        return self._kv().execute("DELETE FROM _cf_KV WHERE key = ?", (key,)).rowcount > 0

    def list(self, prefix: str = "", limit: int | None = None) -> dict[str, Any]:
        """Entries whose key starts with ``prefix``, in key order."""
        rows = self._kv().execute(
            "SELECT key, value FROM _cf_KV WHERE substr(key, 1, ?) = ? ORDER BY key LIMIT ?",
            (len(prefix), prefix, -1 if limit is None else limit),
        )
        return {k: json.loads(v) for k, v in rows}

    # -- alarm --------------------------------------------------------------------------

    def get_alarm(self) -> int | None:
        """The alarm's time (ms since the epoch), or ``None``."""
        if self._alarm_change is not None:
            return self._alarm_change[0]
        row = self._alarms.get(self.object_id)
        return None if row is None else row[0]

    def set_alarm(self, scheduled_ms: int) -> None:
        """Set the object's one alarm (replacing any), committed with the current batch."""
        self.begin()
        self._alarm_change = (int(scheduled_ms),)

    def delete_alarm(self) -> None:
        """Clear the alarm, committed with the current batch."""
        self.begin()
        self._alarm_change = (None,)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is pending and close the file (eviction)."""
        if self.closed:
            return
        self.flush()
        self._request_sync()  # what was committed goes to the disk with the instance
        self.closed = True
        self._db.close()


def _copy_outcome(done: asyncio.Future[None], into: asyncio.Future[None]) -> None:
    """Finish ``into`` as ``done`` finished (a cancel counts as a failure)."""
    if into.done():
        return
    error = RuntimeError("cancelled") if done.cancelled() else done.exception()
    if error is None:
        into.set_result(None)
    else:
        into.set_exception(error)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # a failed commit nobody awaited is not "never retrieved"
