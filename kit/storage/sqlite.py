"""A :class:`SessionStore` on one SQLite file.

Entries are kept in append order per key; an entry's ``uuid`` is its idempotency key
(a repeated uuid under the same key is ignored), entries without one are appended as-is.
The summary sidecar is folded in the same transaction as the entries it summarises.
WAL mode lets a host read while a sandbox writes. The file and its ``-wal``/``-shm`` are
0600 (:func:`kit.private.private_sqlite`).

Durability is that of kit's event logs (:mod:`kit.durability`), named in the store URL
(``sqlite:///PATH?durability=os|fsync``; fsync when it says nothing): with ``fsync`` an
append or delete returns only once its commit's ``-wal`` is fsynced (grouped, in a thread,
off the event loop), so a turn's ``result``, which waits for its transcript, is never on
the disk before the transcript is.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from claude_agent_sdk import fold_session_summary
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

from kit.durability import DEFAULT, Durability, GroupSync
from kit.private import DIR_MODE, private_sqlite
from kit.storage.errors import StoreError, StoreUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  project_key TEXT NOT NULL,
  session_id TEXT NOT NULL,
  subpath TEXT NOT NULL,
  uuid TEXT,
  body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_uuid
  ON entries(project_key, session_id, subpath, uuid) WHERE uuid IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_key ON entries(project_key, session_id, subpath, id);
CREATE TABLE IF NOT EXISTS keys (
  project_key TEXT NOT NULL,
  session_id TEXT NOT NULL,
  subpath TEXT NOT NULL,
  mtime INTEGER NOT NULL,
  PRIMARY KEY (project_key, session_id, subpath)
);
CREATE TABLE IF NOT EXISTS summaries (
  project_key TEXT NOT NULL,
  session_id TEXT NOT NULL,
  mtime INTEGER NOT NULL,
  data TEXT NOT NULL,
  PRIMARY KEY (project_key, session_id)
);
"""


class SQLiteSessionStore:
    """The Agent SDK's ``SessionStore`` protocol over a SQLite file."""

    def __init__(self, path: Path, durability: Durability = DEFAULT) -> None:
        self.path = path
        self._sync: GroupSync | None = None
        try:
            path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            if durability is Durability.FSYNC:
                # The folder is synced once too, whoever made the file: a runtime killed
                # before its first fsync leaves a file whose name its folder may not hold.
                self._sync = GroupSync(path, new_file=True)
            private_sqlite(path)  # transcripts are for the host and this sandbox only
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"Cannot open the SQLite store at {path}: {exc}.") from exc
        self._lock = threading.Lock()
        self._last_mtime = 0

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def _now_ms(self) -> int:
        # Storage write time, strictly increasing within this store object.
        now = int(time.time() * 1000)
        self._last_mtime = max(now, self._last_mtime + 1)
        return self._last_mtime

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Append entries in order, ignoring uuids already stored under ``key``."""
        if not entries:
            return
        pk, sid, sub = key["project_key"], key["session_id"], key.get("subpath") or ""
        rows = [(pk, sid, sub, _uuid(e), json.dumps(e, ensure_ascii=False)) for e in entries]

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO entries(project_key, session_id, subpath, uuid, body)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            mtime = self._now_ms()
            db.execute(
                "INSERT INTO keys VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET mtime=excluded.mtime",
                (pk, sid, sub, mtime),
            )
            if not sub:
                row = db.execute(
                    "SELECT mtime, data FROM summaries WHERE project_key=? AND session_id=?",
                    (pk, sid),
                ).fetchone()
                prev: SessionSummaryEntry | None = None
                if row:
                    prev = {"session_id": sid, "mtime": row[0], "data": json.loads(row[1])}
                folded = fold_session_summary(prev, key, entries)
                db.execute(
                    "INSERT INTO summaries VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE"
                    " SET mtime=excluded.mtime, data=excluded.data",
                    (pk, sid, mtime, json.dumps(folded["data"])),
                )

        await self._write("Appending to", write)

    async def _write(self, what: str, write: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``write`` in one transaction, then (with ``fsync``) wait until it is on the
        disk; sqlite3's errors as StoreError ("``what`` PATH failed")."""
        try:
            with self._lock:
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    write(db)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StoreError(f"{what} {self.path} failed: {exc}.") from exc
        await self._durable(what)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Every entry of ``key`` in append order, or ``None`` if it was never written."""
        pk, sid, sub = key["project_key"], key["session_id"], key.get("subpath") or ""
        with self._lock:
            known = self._db.execute(
                "SELECT 1 FROM keys WHERE project_key=? AND session_id=? AND subpath=?",
                (pk, sid, sub),
            ).fetchone()
            if not known:
                return None
            rows = self._db.execute(
                "SELECT body FROM entries WHERE project_key=? AND session_id=? AND subpath=?"
                " ORDER BY id",
                (pk, sid, sub),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """Main transcripts of a project with their write time (epoch ms)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id, mtime FROM keys WHERE project_key=? AND subpath=''",
                (project_key,),
            ).fetchall()
        return [{"session_id": r[0], "mtime": r[1]} for r in rows]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """The summary sidecars of a project."""
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id, mtime, data FROM summaries WHERE project_key=?", (project_key,)
            ).fetchall()
        return [{"session_id": r[0], "mtime": r[1], "data": json.loads(r[2])} for r in rows]

    async def delete(self, key: SessionKey) -> None:
        """Delete a key; a main key takes its subkeys and summary with it."""
        pk, sid, sub = key["project_key"], key["session_id"], key.get("subpath")

        def write(db: sqlite3.Connection) -> None:
            if sub is None:
                for table in ("entries", "keys", "summaries"):
                    db.execute(
                        f"DELETE FROM {table} WHERE project_key=? AND session_id=?", (pk, sid)
                    )
            else:
                for table in ("entries", "keys"):
                    db.execute(
                        f"DELETE FROM {table} WHERE project_key=? AND session_id=? AND subpath=?",
                        (pk, sid, sub),
                    )

        await self._write("Deleting from", write)

    async def _durable(self, what: str) -> None:
        """With ``fsync``: return once what was committed is on the disk.

        A failed fsync is :class:`StoreUnavailable`: the runtime's store then holds the
        entries and the turn waits for them (ending ``store gave_up``, never with a
        ``result`` whose transcript may not be on the disk); it fails for as long as this
        process lives (:attr:`kit.durability.GroupSync.failed`)."""
        if self._sync is None:
            return
        try:
            await self._sync.request()
        except OSError as exc:
            raise StoreUnavailable(f"{what} {self.path} failed: {exc}") from exc

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """Subpaths (subagent transcripts) stored under a session."""
        with self._lock:
            rows = self._db.execute(
                "SELECT subpath FROM keys WHERE project_key=? AND session_id=? AND subpath!=''",
                (key["project_key"], key["session_id"]),
            ).fetchall()
        return [r[0] for r in rows]


def _uuid(entry: SessionStoreEntry) -> Any:
    value = entry.get("uuid")
    return value if isinstance(value, str) and value else None
