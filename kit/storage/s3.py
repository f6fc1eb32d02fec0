"""A :class:`SessionStore` on S3-compatible object storage (Tigris on Fly, R2, AWS, moto).

Layout under ``s3://BUCKET/PREFIX/``::

    {project_key}/{session_id}/main/{n:012d}.jsonl          one object per append, n = 0, 1, 2, …
    {project_key}/{session_id}/main/base-{n:012d}.jsonl     every entry of parts 0..n (compaction;
                                                            readers take the newest base + later parts)
    {project_key}/{session_id}/sub/{subpath}/{n:012d}.jsonl  subagent transcripts
    {project_key}/{session_id}/summary.json                  the summary sidecar

Order comes from the zero-padded counter, not from any clock. Every part is written with
``If-None-Match: *``, so two writers can never both take number ``n``: the loser re-reads the
listing and takes the next one. The summary is a read-modify-write guarded by ``If-Match``.
An entry's ``uuid`` is its idempotency key: the writer skips uuids it has seen, and ``load``
keeps only the first copy of a uuid, so a retried append that had in fact landed changes
nothing. Every ``COMPACT_EVERY`` parts the writer folds everything so far into one base
object, so a load reads one base plus a short tail. Parts are kept (their numbers stay
claimed, so a late writer cannot reuse one below the base), and a base ends at the last
number of an unbroken run of parts, so a part still in flight is never left out. ``list_sessions`` and the summaries share one clock: the summary object's
``LastModified``.

The boto3 plumbing (threads, error mapping, conditional writes) is ``kit.storage.s3io``.
"""

from __future__ import annotations

import asyncio
import json
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from claude_agent_sdk import fold_session_summary
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

from kit.storage.errors import StoreError, StoreUnavailable
from kit.storage.s3io import S3Bucket

MAX_CONFLICT_RETRIES = 20
PART_DIGITS = 12
COMPACT_EVERY = 64
BASE = "base-"


@dataclass
class _KeyState:
    """What this process knows about one key: the next part number and the uuids stored."""

    next_part: int | None = None
    seen: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class S3SessionStore:
    """The Agent SDK's ``SessionStore`` protocol over an S3 bucket."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self._b = S3Bucket(client, bucket, prefix)
        self.bucket = self._b.bucket
        self.prefix = self._b.prefix
        self._keys: dict[tuple[str, str, str], _KeyState] = {}
        self._summaries: dict[tuple[str, str], tuple[str, SessionSummaryEntry]] = {}

    @classmethod
    def from_url(cls, url: str) -> S3SessionStore:
        """Open ``s3://BUCKET/PREFIX?endpoint_url=…&region=…&checksums=when_required``."""
        b = S3Bucket.from_url(url)
        return cls(b.client, b.bucket, b.prefix)

    # -- keys ----------------------------------------------------------------------------

    def _session_prefix(self, project_key: str, session_id: str) -> str:
        return f"{self.prefix}{project_key}/{session_id}/"

    def _parts_prefix(self, key: SessionKey | SessionListSubkeysKey, subpath: str | None) -> str:
        base = self._session_prefix(key["project_key"], key["session_id"])
        return base + ("main/" if not subpath else f"sub/{subpath}/")

    def _state(self, key: SessionKey) -> _KeyState:
        ident = (key["project_key"], key["session_id"], key.get("subpath") or "")
        state = self._keys.get(ident)
        if state is None:
            state = self._keys[ident] = _KeyState()
        return state

    # -- the protocol ----------------------------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Append entries as one new part; uuids already stored under ``key`` are skipped."""
        if not entries:
            return
        state = self._state(key)
        subpath = key.get("subpath")
        prefix = self._parts_prefix(key, subpath)
        async with state.lock:
            if state.next_part is None:
                await self._catch_up(key, state)
            fresh = _fresh(entries, state.seen)
            if fresh:
                body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in fresh).encode()
                for _ in range(MAX_CONFLICT_RETRIES):
                    assert state.next_part is not None
                    name = f"{prefix}{state.next_part:0{PART_DIGITS}d}.jsonl"
                    if await self._put_if_absent(name, body):
                        state.next_part += 1
                        if state.next_part % COMPACT_EVERY == 0:
                            await self._compact(key)
                        break
                    # Another writer took this number: see what it wrote, then try the next.
                    await self._catch_up(key, state)
                    fresh = _fresh(entries, state.seen)
                    if not fresh:
                        break
                    body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in fresh).encode()
                else:
                    raise StoreError(
                        f"Appending to s3://{self.bucket}/{prefix} lost {MAX_CONFLICT_RETRIES} "
                        "races in a row; is a second host writing this session?"
                    )
                for e in fresh:
                    if isinstance(e.get("uuid"), str):
                        state.seen.add(e["uuid"])
            if not subpath:
                await self._fold_summary(key, entries)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Every entry of ``key`` in append order (first copy of each uuid), or ``None``."""
        read = await self._read_all(key)
        return None if read is None else read[0]

    async def _read_all(self, key: SessionKey) -> tuple[list[SessionStoreEntry], int] | None:
        """(entries, highest part number covered), or None for a key never written."""
        prefix = self._parts_prefix(key, key.get("subpath"))
        for _ in range(3):  # a compaction may delete parts while we read: list again
            names = await self._list(prefix)
            if not names:
                return None
            base, parts = _pick(names, prefix)
            wanted = ([base] if base else []) + [name for _, name in parts]
            bodies = await asyncio.gather(*(self._get(name) for name in wanted))
            if any(body is None for body in bodies):
                continue
            entries, seen = _parse([b for b in bodies if b is not None])
            last = _part_number(base) if base else -1
            if parts:
                last = max(last, parts[-1][0])
            state = self._state(key)
            state.seen |= seen
            state.next_part = max(state.next_part or 0, last + 1)
            return entries, last
        raise StoreUnavailable(
            f"s3://{self.bucket}/{prefix} kept changing while it was read; try again."
        )

    async def _compact(self, key: SessionKey) -> None:
        """Fold the parts so far into one base object (parts stay: their numbers stay claimed).

        The base ends at the last number of an unbroken run after the previous base: a gap is
        a part still being written, and every number up to the run's end already exists, so
        no later write can land below the new base.
        """
        prefix = self._parts_prefix(key, key.get("subpath"))
        base, parts = _pick(await self._list(prefix), prefix)
        floor = _part_number(base) if base else -1
        run: list[str] = []
        for number, name in parts:
            if number != floor + 1 + len(run):
                break
            run.append(name)
        if not run:
            return
        bodies = await asyncio.gather(*(self._get(name) for name in ([base] if base else []) + run))
        if any(body is None for body in bodies):
            return  # someone is deleting this key; nothing to compact
        entries, _ = _parse([b for b in bodies if b is not None])
        body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode()
        last = floor + len(run)
        await self._put_if_absent(f"{prefix}{BASE}{last:0{PART_DIGITS}d}.jsonl", body)

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """Main transcripts of a project, with the write time of their summary (epoch ms)."""
        summaries = await self._summary_objects(project_key)
        return [{"session_id": sid, "mtime": mtime} for sid, (_, mtime) in summaries.items()]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """The summary sidecars of a project."""
        summaries = await self._summary_objects(project_key)
        out: list[SessionSummaryEntry] = []
        for sid, (name, mtime) in summaries.items():
            body = await self._get(name)
            if body is not None:
                out.append({"session_id": sid, "mtime": mtime, "data": json.loads(body)})
        return out

    async def delete(self, key: SessionKey) -> None:
        """Delete a key; a main key takes its subkeys and summary with it."""
        subpath = key.get("subpath")
        if subpath is None:
            prefix = self._session_prefix(key["project_key"], key["session_id"])
            self._summaries.pop((key["project_key"], key["session_id"]), None)
            for ident in [
                k for k in self._keys if k[:2] == (key["project_key"], key["session_id"])
            ]:
                del self._keys[ident]
        else:
            prefix = self._parts_prefix(key, subpath)
            self._keys.pop((key["project_key"], key["session_id"], subpath), None)
        await self._b.delete_many(await self._list(prefix))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """Subpaths (subagent transcripts) stored under a session."""
        base = self._session_prefix(key["project_key"], key["session_id"]) + "sub/"
        subpaths = {name[len(base) :].rsplit("/", 1)[0] for name in await self._list(base)}
        return sorted(subpaths)

    # -- internals -----------------------------------------------------------------------

    async def _catch_up(self, key: SessionKey, state: _KeyState) -> None:
        """Learn the next part number and the stored uuids (once per key, or after a race)."""
        await self.load(key)
        if state.next_part is None:
            state.next_part = 0

    async def _fold_summary(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        pk, sid = key["project_key"], key["session_id"]
        name = self._session_prefix(pk, sid) + "summary.json"
        for _ in range(MAX_CONFLICT_RETRIES):
            cached = self._summaries.get((pk, sid))
            if cached is None:
                head = await self._get_with_etag(name)
                if head is not None:
                    cached = (head[1], {"session_id": sid, "mtime": 0, "data": json.loads(head[0])})
            folded = fold_session_summary(cached[1] if cached else None, key, entries)
            body = json.dumps(folded["data"]).encode()
            etag = await self._put_summary(name, body, cached[0] if cached else None)
            if etag is not None:
                self._summaries[(pk, sid)] = (etag, folded)
                return
            self._summaries.pop((pk, sid), None)  # someone else folded in between: re-read
        raise StoreError(
            f"Updating s3://{self.bucket}/{name} lost {MAX_CONFLICT_RETRIES} races in a row."
        )

    async def _summary_objects(self, project_key: str) -> dict[str, tuple[str, int]]:
        base = f"{self.prefix}{project_key}/"
        found: dict[str, tuple[str, int]] = {}
        for item in await self._list_full(base):
            name = item["Key"]
            rest = name[len(base) :]
            if rest.count("/") == 1 and rest.endswith("/summary.json"):
                sid = rest.split("/", 1)[0]
                found[sid] = (name, int(item["LastModified"].timestamp() * 1000))
        return found

    async def _put_if_absent(self, name: str, body: bytes) -> bool:
        return await self._b.put_if_absent(name, body)

    async def _put_summary(self, name: str, body: bytes, etag: str | None) -> str | None:
        return await self._b.put(name, body, if_match=etag, if_absent=etag is None)

    async def _get(self, name: str) -> bytes | None:
        return await self._b.get(name)

    async def _get_with_etag(self, name: str) -> tuple[bytes, str] | None:
        return await self._b.get_with_etag(name)

    async def _list(self, prefix: str) -> list[str]:
        return await self._b.list_keys(prefix)

    async def _list_full(self, prefix: str) -> list[dict[str, Any]]:
        return await self._b.list_objects(prefix)


def _fresh(entries: list[SessionStoreEntry], seen: set[str]) -> list[SessionStoreEntry]:
    out, batch_seen = [], set()
    for entry in entries:
        uid = entry.get("uuid")
        if isinstance(uid, str) and uid:
            if uid in seen or uid in batch_seen:
                continue
            batch_seen.add(uid)
        out.append(entry)
    return out


def _part_number(name: str) -> int:
    leaf = name.rsplit("/", 1)[1]
    return int(leaf.removeprefix(BASE).split(".", 1)[0])


def _pick(names: list[str], prefix: str) -> tuple[str | None, list[tuple[int, str]]]:
    """The newest base and the parts after it, in order."""
    bases = [n for n in names if n[len(prefix) :].startswith(BASE)]
    base = max(bases, key=lambda n: _part_number(n)) if bases else None
    floor = _part_number(base) if base else -1
    parts = sorted(
        (_part_number(n), n)
        for n in names
        if not n[len(prefix) :].startswith(BASE) and _part_number(n) > floor
    )
    return base, parts


def _parse(bodies: list[bytes]) -> tuple[list[SessionStoreEntry], set[str]]:
    """Entries of JSONL bodies in order, keeping the first copy of each uuid."""
    entries: list[SessionStoreEntry] = []
    seen: set[str] = set()
    for body in bodies:
        for line in body.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            uid = entry.get("uuid")
            if isinstance(uid, str) and uid:
                if uid in seen:
                    continue
                seen.add(uid)
            entries.append(entry)
    return entries, seen


def unique_prefix() -> str:
    """A fresh prefix (tests and benchmarks give every store its own)."""
    return f"t-{uuidlib.uuid4().hex[:12]}"
