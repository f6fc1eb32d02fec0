"""A session's files: bytes the host keeps for a session and puts into each of its sandboxes'
workspaces before a turn runs there (email attachments; ``PUT /v1/sessions/{id}/files/…``).

A sandbox's disk does not outlive it on Fly or Cloudflare, so a file given to a session is
kept by the host, durably, and put again into every new sandbox of the session (a recovered
turn's too) through the runtime's ``PUT /v1/files``. Two stores:

- :class:`SqliteFiles`: one SQLite file (0600) for ``kit dev`` and a gateway without S3.
- :class:`S3Files`: under the event log's bucket and prefix (Fly)::

      files/{session_id}/index.json            {path: {"size", "sha256", "key"}}, replaced
                                               with If-Match
      files/{session_id}/data/{sha256}.{nonce} the bytes (``key``), never changed

  The bytes are written before the index names them, so a listed file is always whole.
  Each put writes its bytes under a name of its own, so two puts at once never share
  them: the put that takes a path out of the index deletes that path's old bytes, and a
  put that does not get into the index (refused, or failed) deletes its own.

Limits: :data:`MAX_FILE_BYTES` a file, :data:`MAX_FILES` files and :data:`MAX_TOTAL_BYTES`
in all per session. A refusal (:class:`FileRefused`) stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import sqlite3
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from kit.host.errors import HostError
from kit.host.eventlog import LogStore
from kit.host.s3log import S3LogStore
from kit.ids import SessionId
from kit.private import private_sqlite
from kit.protocol.errors import ProtocolError
from kit.protocol.runtime_api import MAX_FILE_BYTES, file_path_parts
from kit.storage.errors import StoreError
from kit.storage.s3io import S3Bucket

MAX_FILES = 100
MAX_TOTAL_BYTES = 100 * 1024 * 1024
LISTINGS_KEPT = 10_000
"""Sessions whose listing :class:`SqliteFiles` keeps in memory (the most recently asked)."""
INDEX_TRIES = 10
"""Tries of the S3 index's compare-and-swap before a put gives up (writers race rarely)."""

__all__ = ["MAX_FILE_BYTES", "FileInfo", "FileRefused", "FilesError", "SessionFiles"]


class FilesError(HostError):
    """The session's files could not be read or written (the store failed)."""


class FileRefused(FilesError):
    """A file the session cannot take: a bad path, a path where the session has a folder
    or whose folder is one of its files, too large, too many. ``status`` is the HTTP status
    the route answers (400, 409 or 413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    sha256: str
    key: str = field(default="", compare=False, repr=False)
    """Where the store keeps the bytes (:class:`S3Files`: under the session's folder)."""

    def json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def check(path: str, data: bytes, others: list[FileInfo]) -> None:
    """Refuse ``data`` at ``path`` for a session that holds ``others`` (the file it would
    replace included): :class:`FileRefused`."""
    try:
        file_path_parts(path)
    except ProtocolError as exc:
        raise FileRefused(400, exc.message) from None
    if len(data) > MAX_FILE_BYTES:
        raise FileRefused(
            413, f"{path!r} has {len(data)} bytes; a file may have at most {MAX_FILE_BYTES}."
        )
    kept = [f for f in others if f.path != path]
    for other in kept:
        if other.path.startswith(path + "/") or path.startswith(other.path + "/"):
            folder, inside = sorted((path, other.path), key=len)
            raise FileRefused(
                409,
                f"{path!r}: the session has {other.path!r}, and {folder!r} cannot be both a "
                f"file and the folder of {inside!r}.",
            )
    if len(kept) + 1 > MAX_FILES:
        raise FileRefused(413, f"the session already has {MAX_FILES} files, the most it may have.")
    total = sum(f.size for f in kept) + len(data)
    if total > MAX_TOTAL_BYTES:
        raise FileRefused(
            413,
            f"the session's files would have {total} bytes in all; at most {MAX_TOTAL_BYTES}.",
        )


class SessionFiles(ABC):
    """Where a host keeps its sessions' files."""

    @abstractmethod
    async def list(self, session_id: SessionId) -> list[FileInfo]:
        """The session's files, by path."""

    @abstractmethod
    async def read(self, session_id: SessionId, info: FileInfo) -> bytes | None:
        """The bytes of a listed file (None: replaced or deleted since)."""

    @abstractmethod
    async def put(self, session_id: SessionId, path: str, data: bytes) -> FileInfo:
        """Keep ``data`` at ``path`` (replacing a file there); durable on return.
        :class:`FileRefused` for a file past the limits, :class:`FilesError` when the store
        fails."""

    @abstractmethod
    async def delete(self, session_id: SessionId) -> None:
        """Forget every file of the session."""


class SqliteFiles(SessionFiles):
    """Every session's files in one SQLite file, which one host uses (its state dir is
    locked): the listing each turn asks for is answered from memory once read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._listed: OrderedDict[SessionId, list[FileInfo]] = OrderedDict()
        self._writes = 0
        """Writes begun: a listing read while one ran is not kept (it may be stale)."""
        self._writing = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        private_sqlite(path)
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS files (session_id TEXT, path TEXT, size INTEGER,"
                " sha256 TEXT, data BLOB, PRIMARY KEY (session_id, path))"
            )

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def _run(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        db = self._db()
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise FilesError(f"the session files in {self.path} failed: {exc}") from exc
        finally:
            db.close()

    async def list(self, session_id: SessionId) -> list[FileInfo]:
        listed = self._listed.get(session_id)
        if listed is None:
            writes = self._writes
            rows = await asyncio.to_thread(
                self._run,
                "SELECT path, size, sha256 FROM files WHERE session_id = ? ORDER BY path",
                session_id,
            )
            listed = [FileInfo(str(p), int(str(s)), str(h)) for p, s, h in rows]
            if writes != self._writes or self._writing:
                return listed
            self._listed[session_id] = listed
            if len(self._listed) > LISTINGS_KEPT:
                self._listed.popitem(last=False)
        self._listed.move_to_end(session_id)
        return list(listed)

    async def read(self, session_id: SessionId, info: FileInfo) -> bytes | None:
        rows = await asyncio.to_thread(
            self._run,
            "SELECT data FROM files WHERE session_id = ? AND path = ? AND sha256 = ?",
            session_id,
            info.path,
            info.sha256,
        )
        if not rows:
            return None
        data = rows[0][0]
        assert isinstance(data, bytes)
        return data

    async def put(self, session_id: SessionId, path: str, data: bytes) -> FileInfo:
        async with self._write(session_id):
            return await asyncio.to_thread(self._put, session_id, path, data)

    def _put(self, session_id: SessionId, path: str, data: bytes) -> FileInfo:
        info = FileInfo(path, len(data), hashlib.sha256(data).hexdigest())
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")  # the limits are checked against what is kept
            rows = db.execute(
                "SELECT path, size, sha256 FROM files WHERE session_id = ?", (session_id,)
            ).fetchall()
            check(path, data, [FileInfo(p, s, h) for p, s, h in rows])
            db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                (session_id, path, info.size, info.sha256, data),
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise FilesError(f"the session files in {self.path} failed: {exc}") from exc
        finally:
            db.close()  # an open transaction (a refusal) is rolled back
        return info

    async def delete(self, session_id: SessionId) -> None:
        async with self._write(session_id):
            await asyncio.to_thread(self._run, "DELETE FROM files WHERE session_id = ?", session_id)

    @contextlib.asynccontextmanager
    async def _write(self, session_id: SessionId) -> AsyncIterator[None]:
        self._writes += 1
        self._writing += 1
        self._listed.pop(session_id, None)
        try:
            yield
        finally:
            self._writing -= 1
            self._listed.pop(session_id, None)


class S3Files(SessionFiles):
    """Sessions' files in a bucket, under ``files/`` of its prefix."""

    def __init__(self, bucket: S3Bucket) -> None:
        self.bucket = bucket

    def _dir(self, session_id: SessionId) -> str:
        return f"{self.bucket.prefix}files/{session_id}/"

    async def _index(
        self, session_id: SessionId
    ) -> tuple[dict[str, dict[str, object]], str | None]:
        try:
            got = await self.bucket.get_with_etag(self._dir(session_id) + "index.json")
        except StoreError as exc:
            raise FilesError(str(exc)) from exc
        if got is None:
            return {}, None
        body, etag = got
        try:
            index = json.loads(body)
        except ValueError:
            index = None
        if not isinstance(index, dict):
            raise FilesError(f"session {session_id}'s file index is not a JSON object.")
        return index, etag

    async def list(self, session_id: SessionId) -> list[FileInfo]:
        index, _ = await self._index(session_id)
        return [_info(path, entry) for path, entry in sorted(index.items())]

    async def read(self, session_id: SessionId, info: FileInfo) -> bytes | None:
        try:
            return await self.bucket.get(
                self._dir(session_id) + (info.key or _legacy_key(info.sha256))
            )
        except StoreError as exc:
            raise FilesError(str(exc)) from exc

    async def put(self, session_id: SessionId, path: str, data: bytes) -> FileInfo:
        sha256 = hashlib.sha256(data).hexdigest()
        info = FileInfo(path, len(data), sha256, f"data/{sha256}.{secrets.token_hex(8)}")
        index, _ = await self._index(session_id)
        check(path, data, [_info(p, e) for p, e in index.items()])  # before anything is written
        base = self._dir(session_id)
        try:
            await self.bucket.put(base + info.key, data)
            try:
                old = await self._enter(session_id, info, data)
            except BaseException:
                with contextlib.suppress(StoreError):
                    await self.bucket.delete_many([base + info.key])  # in no index
                raise
            if old is not None:
                await self.bucket.delete_many([base + old])
        except StoreError as exc:
            raise FilesError(str(exc)) from exc
        return info

    async def _enter(self, session_id: SessionId, info: FileInfo, data: bytes) -> str | None:
        """Put ``info`` in the session's index; the key of the bytes it took out of it, if
        no other path names them."""
        base = self._dir(session_id)
        for _ in range(INDEX_TRIES):
            index, etag = await self._index(session_id)
            check(info.path, data, [_info(p, e) for p, e in index.items()])
            old = index.get(info.path)
            index[info.path] = {"size": info.size, "sha256": info.sha256, "key": info.key}
            body = json.dumps(index, sort_keys=True).encode()
            written = await (
                self.bucket.put(base + "index.json", body, if_match=etag)
                if etag is not None
                else self.bucket.put(base + "index.json", body, if_absent=True)
            )
            if written is not None:
                if old is None:
                    return None
                old_key = _info(info.path, old).key
                named = any(_info(p, e).key == old_key for p, e in index.items())
                return None if named else old_key
        raise FilesError(f"{info.path!r}: the session's file index kept changing; try again.")

    async def delete(self, session_id: SessionId) -> None:
        try:
            await self.bucket.delete_many(await self.bucket.list_keys(self._dir(session_id)))
        except StoreError as exc:
            raise FilesError(str(exc)) from exc


def files_for(logs: LogStore, local: Path) -> SessionFiles:
    """Where a host whose event log is ``logs`` keeps sessions' files: beside the log in
    its bucket when it is on S3, else in SQLite file ``local``."""
    return S3Files(logs.bucket) if isinstance(logs, S3LogStore) else SqliteFiles(local)


def _info(path: str, entry: dict[str, object]) -> FileInfo:
    sha256 = str(entry["sha256"])
    return FileInfo(
        path, int(str(entry["size"])), sha256, str(entry.get("key", "")) or _legacy_key(sha256)
    )


def _legacy_key(sha256: str) -> str:
    """Where an index written before keys were named per put keeps a file's bytes."""
    return f"data/{sha256}"
