"""What only the S3 store has to get right: racing writers, retried appends, outages."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from kit.storage import StoreUnavailable, open_store
from kit.storage.s3 import S3SessionStore, unique_prefix
from tests.storage.conftest import BUCKET


def entry(**fields: Any) -> Any:
    """A transcript entry (opaque JSON to the store)."""
    return fields


KEY: Any = {"project_key": "-workspace", "session_id": "22222222-2222-4222-8222-222222222222"}


def _store(endpoint: str, prefix: str) -> S3SessionStore:
    store = open_store(f"s3://{BUCKET}/{prefix}?endpoint_url={endpoint}&region=us-east-1")
    assert isinstance(store, S3SessionStore)
    return store


@pytest.mark.parametrize("per_writer", [15, 45])
async def test_two_writers_never_overwrite_each_other(s3_endpoint: str, per_writer: int) -> None:
    """Two store objects (two hosts) appending to one key at once: every entry survives,
    each writer's entries stay in its order (If-None-Match on every part), also when a
    compaction happens in the middle of the race (45 + 45 parts > COMPACT_EVERY)."""
    prefix = unique_prefix()
    a, b = _store(s3_endpoint, prefix), _store(s3_endpoint, prefix)

    async def write(store: S3SessionStore, tag: str) -> None:
        for n in range(per_writer):
            await store.append(KEY, [entry(type="t", uuid=f"{tag}{n}", n=n, w=tag)])

    await asyncio.gather(write(a, "a"), write(b, "b"))
    loaded: list[Any] | None = await _store(s3_endpoint, prefix).load(KEY)
    assert loaded is not None
    assert len(loaded) == 2 * per_writer
    for tag in "ab":
        assert [e["n"] for e in loaded if e["w"] == tag] == list(range(per_writer))


async def test_a_retried_append_that_landed_adds_nothing(s3_endpoint: str) -> None:
    """The SDK retries an append whose first try may have landed; a fresh store object
    (which has not seen those uuids) writes them again, and load still returns each once."""
    prefix = unique_prefix()
    batch = [entry(type="user", uuid="u1"), entry(type="assistant", uuid="u2")]
    await _store(s3_endpoint, prefix).append(KEY, batch)
    await _store(s3_endpoint, prefix).append(KEY, [*batch, entry(type="x")])
    assert await _store(s3_endpoint, prefix).load(KEY) == [*batch, entry(type="x")]


async def test_resumed_writer_continues_the_numbering(s3_endpoint: str) -> None:
    """A new process that loads a transcript (as the SDK does on resume) appends after it."""
    prefix = unique_prefix()
    await _store(s3_endpoint, prefix).append(KEY, [entry(type="t", uuid="1")])
    second = _store(s3_endpoint, prefix)
    assert await second.load(KEY) == [entry(type="t", uuid="1")]
    await second.append(KEY, [entry(type="t", uuid="2")])
    assert [e["uuid"] for e in await _store(s3_endpoint, prefix).load(KEY) or []] == ["1", "2"]


async def test_unreachable_endpoint_is_store_unavailable() -> None:
    """A closed port is StoreUnavailable (retryable), not a botocore error."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    store = open_store(f"s3://{BUCKET}/x?endpoint_url=http://127.0.0.1:{port}&region=us-east-1")
    with pytest.raises(StoreUnavailable, match="Cannot reach S3"):
        await store.append(KEY, [entry(type="t")])


async def test_compaction_keeps_every_entry_and_few_objects(s3_endpoint: str) -> None:
    """Past COMPACT_EVERY parts the transcript is folded into base objects: a fresh reader
    still gets every entry in order, reading the newest base plus a short tail."""
    from kit.storage.s3 import COMPACT_EVERY

    prefix = unique_prefix()
    writer = _store(s3_endpoint, prefix)
    total = COMPACT_EVERY * 2 + 10
    for n in range(total):
        await writer.append(KEY, [entry(type="t", uuid=f"u{n}", n=n), entry(type="x", n=n)])
    loaded: list[Any] = await _store(s3_endpoint, prefix).load(KEY) or []
    assert [e["n"] for e in loaded if e["type"] == "t"] == list(range(total))
    assert [e["n"] for e in loaded if e["type"] == "x"] == list(range(total))
    names = await writer._list(writer._parts_prefix(KEY, None))
    bases = sorted(n for n in names if "base-" in n)
    assert len(bases) == 2
    tail = [
        n
        for n in names
        if "base-" not in n
        and int(n.rsplit("/", 1)[1][:12]) > int(bases[-1].rsplit("-", 1)[1][:12])
    ]
    assert len(tail) == 10
    await writer.append(KEY, [entry(type="t", uuid="after", n=total)])
    again: list[Any] = await _store(s3_endpoint, prefix).load(KEY) or []
    assert again[-1]["uuid"] == "after"
    assert len(again) == 2 * total + 1
