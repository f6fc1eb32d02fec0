""":class:`~kit.mail.store.MailStore` on an S3-compatible bucket (the Fly deployment's Tigris).

Several gateways share it, so the two writes that must happen once are conditional PUTs
(``If-None-Match: *``, as :mod:`kit.host.lease` takes leases): :meth:`S3MailStore.take`
creates ``inbound/<h>`` and :meth:`S3MailStore.reply` creates ``outbox/<h>`` (``h``: a
digest of the inbound Message-ID). Of two gateways taking the same message, or answering
it after a restart, exactly one creates the object; the other gets False.

Keys, under the bucket's prefix (``mail/`` on Fly)::

    inbound/<h>.json          the taken message, its thread and session token (the commit)
    pending/<h>               a taken message without a reply yet (written before the commit)
    outbox/<h>.json           the reply, its raw bytes base64 (the commit); sent_at rewritten
                              with If-Match when the relay took it
    unsent/<h>                a reply not yet handed to the relay (written before the commit)
    by-time/<inverted ms>-<h> the outbox newest first (a listing of ``limit`` keys)
    threads/<session>.json    a thread: token, session token, participants
    threads/<session>/replies/<h>   one per reply (their count is the thread's)
    tokens/<token>            plus-address token → session id
    ids/<digest of id>        Message-ID (inbound or reply) → session id
    refused/<inverted ms>-<random>.json   refusals newest first, the newest
                              :data:`~kit.mail.store.MAX_REFUSED_KEPT` kept

Markers written before a commit carry nothing a loser could get wrong: their key is the
same for every writer of the same message. A marker whose commit never happened (a crash
in between) is dropped when read; a commit whose index writes a crash cut short is
completed by :meth:`S3MailStore.pending`. Only a strongly consistent bucket gives these
guarantees (Tigris and R2 are; reference/fly.md §11).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import replace
from typing import Any

from kit.mail.rules import Thread
from kit.mail.store import (
    MAX_REFUSED_KEPT,
    InboundRecord,
    OutboxEntry,
    Refused,
    entry_of,
    record_json,
    record_of,
)
from kit.storage.s3io import S3Bucket

_TOKEN = re.compile(r"[a-z0-9]{1,64}")
_INVERT = 10**15
"""Keys that list newest first: ``_INVERT`` minus the time in milliseconds, 15 digits."""


def _h(message_id: str) -> str:
    return hashlib.sha256(message_id.encode()).hexdigest()[:40]


def _newest_first(at: float) -> str:
    return f"{_INVERT - int(at * 1000):015d}"


class S3MailStore:
    """The email channel's state in ``bucket`` (under its prefix)."""

    def __init__(self, bucket: S3Bucket) -> None:
        self.bucket = bucket
        self.prefix = bucket.prefix

    def _k(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    async def _json(self, key: str) -> dict[str, Any] | None:
        raw = await self.bucket.get(key)
        return None if raw is None else dict(json.loads(raw))

    async def _put_json(self, key: str, body: dict[str, Any], *, if_absent: bool = False) -> bool:
        data = json.dumps(body).encode()
        return await self.bucket.put(key, data, if_absent=if_absent) is not None

    async def _delete(self, key: str) -> None:
        await self.bucket.delete_many([key])

    async def _first_keys(self, prefix: str, limit: int) -> list[str]:
        """At most ``limit`` keys under ``prefix``, in key order (one listing request)."""
        client, name = self.bucket.client, self.bucket.bucket

        def run() -> list[str]:
            answer = client.list_objects_v2(Bucket=name, Prefix=prefix, MaxKeys=limit)
            return [item["Key"] for item in answer.get("Contents", [])]

        return await self.bucket.call(run)

    # -- threads -------------------------------------------------------------------------

    async def _thread(self, session_id: str) -> Thread | None:
        body = await self._json(self._k("threads", f"{session_id}.json"))
        if body is None:
            return None
        replies = await self.bucket.list_keys(self._k("threads", session_id, "replies", ""))
        return Thread(session_id, str(body["token"]), tuple(body["participants"]), len(replies))

    async def seen(self, message_id: str) -> bool:
        return await self.bucket.get(self._k("inbound", f"{_h(message_id)}.json")) is not None

    async def thread_by_token(self, token: str) -> Thread | None:
        if not _TOKEN.fullmatch(token):  # kit issues none such: not a key to look up
            return None
        session_id = await self.bucket.get(self._k("tokens", token))
        return None if session_id is None else await self._thread(session_id.decode())

    async def thread_by_ids(self, ids: list[str]) -> Thread | None:
        for message_id in ids:
            session_id = await self.bucket.get(self._k("ids", _h(message_id)))
            if session_id is not None:
                return await self._thread(session_id.decode())
        return None

    async def session_token(self, session_id: str) -> str | None:
        body = await self._json(self._k("threads", f"{session_id}.json"))
        return None if body is None else str(body["session_token"])

    async def _index(self, thread: Thread, session_token: str, at: float) -> None:
        """Write a new thread and its token's index entry (each once; a repeat is a no-op)."""
        body = {
            "session_id": thread.session_id,
            "token": thread.token,
            "session_token": session_token,
            "participants": list(thread.participants),
            "created_at": at,
        }
        await self._put_json(self._k("threads", f"{thread.session_id}.json"), body, if_absent=True)
        key = self._k("tokens", thread.token)
        await self.bucket.put(key, thread.session_id.encode(), if_absent=True)

    # -- inbound -------------------------------------------------------------------------

    async def take(self, record: InboundRecord, thread: Thread, session_token: str | None) -> bool:
        h = _h(record.message_id)
        await self.bucket.put(self._k("pending", h), b"", if_absent=True)
        if session_token is not None:
            await self._index(thread, session_token, record.received_at)
        body = {
            "record": json.loads(record_json(record)),
            "thread": {
                "session_id": thread.session_id,
                "token": thread.token,
                "participants": list(thread.participants),
            },
            "session_token": session_token,
        }
        if not await self._put_json(self._k("inbound", f"{h}.json"), body, if_absent=True):
            return False
        key = self._k("ids", h)
        await self.bucket.put(key, thread.session_id.encode(), if_absent=True)
        return True

    async def pending(self) -> list[InboundRecord]:
        records: list[InboundRecord] = []
        for key in await self.bucket.list_keys(self._k("pending", "")):
            h = key.rsplit("/", 1)[1]
            body = await self._json(self._k("inbound", f"{h}.json"))
            answered = await self.bucket.get(self._k("outbox", f"{h}.json")) is not None
            if body is None or answered:  # never taken (a crash before it), or answered
                await self._delete(key)
                continue
            record = record_of(dict(body["record"]))
            # A crash after the commit may have cut the index writes short: complete them.
            if body.get("session_token") is not None:
                t = body["thread"]
                thread = Thread(str(t["session_id"]), str(t["token"]), tuple(t["participants"]))
                await self._index(thread, str(body["session_token"]), record.received_at)
            ids_key = self._k("ids", h)
            await self.bucket.put(ids_key, record.session_id.encode(), if_absent=True)
            records.append(record)
        return sorted(records, key=lambda r: r.received_at)

    # -- outbox --------------------------------------------------------------------------

    async def reply(self, entry: OutboxEntry) -> bool:
        h = _h(entry.inbound_id)
        # Written before the commit: the same keys and values whoever wins (the reply's
        # Message-ID is derived from the inbound one).
        if entry.sent_at is None:
            await self.bucket.put(self._k("unsent", h), b"", if_absent=True)
        sid = entry.session_id.encode()
        await self.bucket.put(self._k("ids", _h(entry.message_id)), sid, if_absent=True)
        await self.bucket.put(self._k("threads", entry.session_id, "replies", h), b"")
        body = {**entry.to_json(), "raw": base64.b64encode(entry.raw).decode()}
        if not await self._put_json(self._k("outbox", f"{h}.json"), body, if_absent=True):
            return False
        await self.bucket.put(self._k("by-time", f"{_newest_first(entry.created_at)}-{h}"), b"")
        await self._delete(self._k("pending", h))
        return True

    async def _entry(self, h: str) -> tuple[OutboxEntry, str] | None:
        got = await self.bucket.get_with_etag(self._k("outbox", f"{h}.json"))
        if got is None:
            return None
        body = dict(json.loads(got[0]))
        raw = base64.b64decode(str(body.pop("raw")))
        return entry_of(body, raw), got[1]

    async def unsent(self) -> list[OutboxEntry]:
        entries: list[OutboxEntry] = []
        for key in await self.bucket.list_keys(self._k("unsent", "")):
            got = await self._entry(key.rsplit("/", 1)[1])
            if got is None or got[0].sent_at is not None:  # no reply made, or sent already
                await self._delete(key)
                continue
            entries.append(got[0])
        return sorted(entries, key=lambda e: e.created_at)

    async def mark_sent(self, inbound_id: str, at: float) -> None:
        h = _h(inbound_id)
        got = await self._entry(h)
        if got is not None and got[0].sent_at is None:
            entry, etag = got
            sent = replace(entry, sent_at=at)
            body = {**sent.to_json(), "raw": base64.b64encode(sent.raw).decode()}
            # If-Match: a concurrent mark_sent that won wrote the same thing.
            key = self._k("outbox", f"{h}.json")
            await self.bucket.put(key, json.dumps(body).encode(), if_match=etag)
        await self._delete(self._k("unsent", h))

    async def outbox(self, limit: int) -> list[OutboxEntry]:
        keys = await self._first_keys(self._k("by-time", ""), limit)
        entries: list[OutboxEntry] = []
        for key in keys:
            got = await self._entry(key.rsplit("-", 1)[1])
            if got is not None:
                entries.append(got[0])
        return entries

    # -- refusals ------------------------------------------------------------------------

    async def refuse(self, refused: Refused) -> None:
        name = f"{_newest_first(refused.at)}-{secrets.token_hex(6)}.json"
        await self._put_json(self._k("refused", name), refused.to_json())
        keys = await self.bucket.list_keys(self._k("refused", ""))
        if len(keys) > MAX_REFUSED_KEPT:
            await self.bucket.delete_many(keys[MAX_REFUSED_KEPT:])

    async def refused(self, limit: int) -> list[Refused]:
        items: list[Refused] = []
        for key in await self._first_keys(self._k("refused", ""), limit):
            body = await self._json(key)
            if body is not None:
                items.append(Refused(**body))
        return items
