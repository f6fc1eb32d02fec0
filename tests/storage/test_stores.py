"""Transcript stores: the SDK's conformance suite plus kit's own contract, on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk.testing import run_session_store_conformance

from kit.storage import REMOTE_SCHEMES, StoreError, open_store
from kit.storage.remote import SCHEMES, RemoteSessionStore
from kit.storage.s3 import unique_prefix
from tests.storage.conftest import BUCKET

Factory = Callable[[], Any]

on_module_loop = pytest.mark.asyncio(loop_scope="module")
"""For async tests: the shim's ``wrangler dev`` (backend ``shim``) lives on the module's loop."""


@pytest.fixture(params=["memory", "sqlite", "s3", "shim"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """A factory of fresh, empty stores of one backend (s3: moto in server mode; shim: the
    Cloudflare shim's Durable Objects under ``wrangler dev``, through ``do+http://``)."""
    counter = iter(range(10_000))
    if request.param == "memory":
        return lambda: open_store("memory://")
    if request.param == "shim":
        factory: Factory = request.getfixturevalue("shim_store")
        return factory
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        return lambda: open_store(
            f"s3://{BUCKET}/{unique_prefix()}?endpoint_url={endpoint}&region=us-east-1"
        )
    return lambda: open_store(f"sqlite:///{tmp_path}/store-{next(counter)}.db")


@on_module_loop
async def test_sdk_conformance(make_store: Factory) -> None:
    """Every required and optional contract of the SDK's SessionStore protocol holds."""
    await run_session_store_conformance(make_store, skip_optional=frozenset())


KEY: Any = {"project_key": "-srv-app", "session_id": "11111111-1111-4111-8111-111111111111"}


@on_module_loop
async def test_uuid_is_an_idempotency_key(make_store: Factory) -> None:
    """Appending an entry whose uuid is stored already changes nothing; uuid-less entries append."""
    store = make_store()
    await store.append(KEY, [{"type": "user", "uuid": "a"}, {"type": "x"}])
    await store.append(
        KEY, [{"type": "user", "uuid": "a"}, {"type": "assistant", "uuid": "b"}, {"type": "x"}]
    )
    assert await store.load(KEY) == [
        {"type": "user", "uuid": "a"},
        {"type": "x"},
        {"type": "assistant", "uuid": "b"},
        {"type": "x"},
    ]


@on_module_loop
async def test_concurrent_sessions_keep_their_order(make_store: Factory) -> None:
    """Many sessions appending at once each keep their own order."""
    store = make_store()
    keys: list[Any] = [{"project_key": "p", "session_id": f"s{i}"} for i in range(20)]

    async def writer(key: Any) -> None:
        for n in range(25):
            await store.append(key, [{"type": "t", "uuid": f"{key['session_id']}-{n}", "n": n}])
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(k) for k in keys))
    for key in keys:
        assert [e["n"] for e in await store.load(key)] == list(range(25))


@on_module_loop
async def test_large_and_unicode_entries_round_trip(make_store: Factory) -> None:
    """Entries of a few MB and any unicode come back exactly."""
    store = make_store()
    big = {"type": "assistant", "uuid": "big", "text": "x" * (3 * 1024 * 1024)}
    odd = {
        "type": "user",
        "uuid": "u",
        "text": "héllo 👋 \u0000 \u2028 中文",
        "nested": {"a": [1, None, True]},
    }
    await store.append(KEY, [big, odd])
    assert await store.load(KEY) == [big, odd]


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://x", "unknown scheme 'redis'"),
        ("s3:///prefix", "the bucket is missing"),
        ("s3://bucket/p?endpoint=x", "unknown option 'endpoint'"),
        ("sqlite://relative.db", "three slashes"),
        ("sqlite:///", "three slashes"),
        ("sqlite:///nonexistent/t.db?durability=fast", "give fsync .* or os"),
        ("sqlite:///nonexistent/t.db?mode=ro", "one option, durability=os or fsync .*'mode'"),
        ("sqlite:///nonexistent/t.db?durability=os&durability=fsync", "given once"),
        ("sqlite:///nonexistent/t.db?durability=", "needs a value, os or fsync"),
        ("kit+http://host:1/_kit/store", "needs the session token"),
        ("kit+http://host/_kit/store", "kit\\+http://HOST:PORT/PATH"),
        ("do+https://host.example/v1/sessions/S/store", "needs the session token"),
        ("do+https:///v1/sessions/S/store", "do\\+https://HOST/v1/sessions/ID/store"),
        ("do+https://host.example/v1/sessions/S/store?x=1", "do\\+https://HOST/v1/sessions"),
        ("do+http://127.0.0.1:port/v1/sessions/S/store", "the port is not a number"),
    ],
)
def test_bad_urls_name_the_fix(url: str, needle: str) -> None:
    """A wrong store URL raises StoreError saying what to write."""
    with pytest.raises(StoreError, match=needle):
        open_store(url, token="t" if "token" not in needle else None)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("kit+http://127.0.0.1:9/_kit/store", "http://127.0.0.1:9/_kit/store"),
        (
            "do+https://kit.example.workers.dev/v1/sessions/S/store",
            "https://kit.example.workers.dev/v1/sessions/S/store",
        ),
        (
            "do+https://kit.example:8443/v1/sessions/S/store/",
            "https://kit.example:8443/v1/sessions/S/store",
        ),
        (
            "do+http://127.0.0.1:8787/v1/sessions/S/store",
            "http://127.0.0.1:8787/v1/sessions/S/store",
        ),
    ],
)
@on_module_loop
async def test_remote_urls_open_the_http_client(url: str, base: str) -> None:
    """kit+http://, do+https:// and do+http:// all open the one HTTP client, at the plain
    URL; every remote scheme open_store routes there is one the client knows."""
    store = open_store(url, token="t")
    try:
        assert isinstance(store, RemoteSessionStore)
        assert store.base == base
    finally:
        await store.aclose()
    assert set(SCHEMES) == REMOTE_SCHEMES


@pytest.mark.parametrize(
    ("option", "synced"), [("", True), ("?durability=fsync", True), ("?durability=os", False)]
)
async def test_a_sqlite_store_is_as_durable_as_its_url_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, synced: bool
) -> None:
    """With fsync (also when the URL says nothing, the library's default), an append and a
    delete return only after the store's ``-wal`` was fsynced (and, once, its new folder
    entry); with os, nothing is fsynced. A bad option is refused before any file is made."""
    import kit.durability

    synced_paths: list[Path] = []
    real = kit.durability._fsync_path

    def spy(path: Path, flags: int) -> None:
        real(path, flags)
        synced_paths.append(path)

    monkeypatch.setattr(kit.durability, "_fsync_path", spy)
    path = tmp_path / "t.db"
    store = open_store(f"sqlite:///{path}{option}")
    key = {"project_key": "p", "session_id": "s"}
    await store.append(key, [{"type": "user", "uuid": "u1"}])
    wal = path.with_name("t.db-wal")
    assert synced_paths == ([wal, tmp_path] if synced else [])
    del synced_paths[:]
    await store.delete(key)
    assert synced_paths == ([wal] if synced else [])
    with pytest.raises(StoreError):
        open_store(f"sqlite:///{tmp_path / 'other.db'}?durability=sometimes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.db", "t.db-shm", "t.db-wal"]


async def test_a_failed_fsync_of_a_sqlite_store_holds_the_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync that fails is the store being unavailable, not a plain error: the runtime's
    retrying store holds the entries (so the turn waits for them and ends ``gave_up``, never
    with a ``result`` whose transcript may not be on the disk) instead of the SDK dropping
    them. (Broken on purpose once: raised as a plain StoreError, nothing was held and the
    store said it had settled.)"""
    import errno

    import kit.durability
    from kit.storage.retrying import RetryingStore, StoreHealth

    def failing(path: Path, flags: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(kit.durability, "_fsync_path", failing)
    monkeypatch.setattr(kit.durability, "_FAILED", {})  # this test's failure stays its own
    path = tmp_path / "t.db"
    store = RetryingStore(open_store(f"sqlite:///{path}"), max_wait_s=0.2)
    await store.append(KEY, [{"type": "user", "uuid": "u1"}])
    assert store.held == 1
    assert store.health is StoreHealth.HOLDING
    assert not await store.settled(0.1)
