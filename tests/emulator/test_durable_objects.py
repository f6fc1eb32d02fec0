"""The emulator's Durable Objects: storage and limits, gates, instances, alarms, hooks."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import emulator.durable_objects as do
from emulator.durable_objects import (
    AlarmInfo,
    DurableObject,
    LimitExceeded,
    MessageTooLarge,
    Namespace,
    ObjectState,
    check_ws_message,
    create_control_app,
)
from emulator.durable_objects.limits import (
    MAX_VALUE_BYTES,
    MAX_WS_MESSAGE_BYTES,
    STATEMENT_TOO_LONG,
    TOO_BIG,
    TOO_MANY_VARIABLES,
)
from emulator.durable_objects.storage import SqlStorage
from tests.conftest import serve_on_loopback


class Counter(DurableObject):
    """A count kept in memory and rebuilt from storage by the constructor."""

    built = 0

    def __init__(self, ctx: ObjectState) -> None:
        super().__init__(ctx)
        Counter.built += 1
        ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS c (n INTEGER NOT NULL)")
        rows = ctx.storage.sql.exec("SELECT n FROM c").rows
        self.n = rows[0][0] if rows else 0
        self.alarms: list[AlarmInfo] = []
        self.fail_alarms = 0

    def bump(self) -> int:
        self.n += 1
        self.ctx.storage.sql.exec("DELETE FROM c")
        self.ctx.storage.sql.exec("INSERT INTO c VALUES (?)", self.n)
        return self.n

    async def alarm(self, info: AlarmInfo) -> None:
        self.alarms.append(info)
        if self.fail_alarms:
            self.fail_alarms -= 1
            raise RuntimeError("alarm handler failed")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def ns(tmp_path: Path) -> AsyncIterator[Namespace[Counter]]:
    namespace = Namespace(tmp_path / "do", Counter, hibernate_after_s=None)
    yield namespace
    await namespace.close()


def _committed(path: Path, query: str) -> list[tuple[object, ...]]:
    """What another connection sees: only committed data."""
    with sqlite3.connect(path) as db:
        return db.execute(query).fetchall()


def test_public_api_is_pinned() -> None:
    """The package exports exactly its curated names."""
    assert sorted(do.__all__) == sorted(
        [
            *("MAX_BOUND_PARAMETERS", "MAX_COLUMNS", "MAX_STATEMENT_BYTES", "MAX_VALUE_BYTES"),
            *("MAX_WS_MESSAGE_BYTES", "AlarmInfo", "AlarmRun", "Cursor", "DOLogStore"),
            *("DOSessionLog", "DurableObject", "DurableObjectError", "LimitExceeded"),
            *("MessageTooLarge", "Namespace", "ObjectEvicted", "ObjectState"),
            *("SessionLogObject", "Storage", "StorageError", "check_ws_message"),
            "create_control_app",
        ]
    )


# -- limits, with Cloudflare's texts ----------------------------------------------------


async def test_oversize_values_fail_with_cloudflares_text_and_change_nothing(
    ns: Namespace[Counter],
) -> None:
    """A SQL string, BLOB or row over 2 MB, and a KV key+value over 2 MB, are refused with
    workerd's ``string or blob too big: SQLITE_TOOBIG``; what was there stays."""

    def write(obj: Counter) -> None:
        sql = obj.ctx.storage.sql
        sql.exec("CREATE TABLE IF NOT EXISTS t (a, b)")
        sql.exec("INSERT INTO t VALUES (?, ?)", "x" * (MAX_VALUE_BYTES - 100), 1)
        obj.ctx.storage.put("k", "v")

    await ns.call("a", write)
    oversize = [
        lambda o: o.ctx.storage.sql.exec(
            "INSERT INTO t VALUES (?, 1)", "x" * (MAX_VALUE_BYTES + 1)
        ),
        lambda o: o.ctx.storage.sql.exec(
            "INSERT INTO t VALUES (?, 1)", b"x" * (MAX_VALUE_BYTES + 1)
        ),
        lambda o: o.ctx.storage.sql.exec(
            "INSERT INTO t VALUES (?, ?)",
            "x" * (MAX_VALUE_BYTES // 2),
            "y" * (MAX_VALUE_BYTES // 2),
        ),
        lambda o: o.ctx.storage.put("k", "v" * MAX_VALUE_BYTES),
        lambda o: o.ctx.storage.put_many({"k2": "small", "k3": "v" * MAX_VALUE_BYTES}),
    ]
    for attempt in oversize:
        with pytest.raises(LimitExceeded) as caught:
            await ns.call("a", attempt)
        assert str(caught.value) == TOO_BIG
    path = ns.path("a")
    assert _committed(path, "SELECT length(a), b FROM t") == [(MAX_VALUE_BYTES - 100, 1)]
    assert _committed(path, "SELECT key FROM _cf_KV") == [("k",)]
    assert await ns.call("a", lambda o: o.ctx.storage.list()) == {"k": "v"}


async def test_statement_parameter_and_column_limits(ns: Namespace[Counter]) -> None:
    """100 KB statements, 100 bound parameters and 100 columns, as workerd sets them."""

    def sql_of(o: Counter) -> SqlStorage:
        return o.ctx.storage.sql

    with pytest.raises(LimitExceeded, match=f"^{STATEMENT_TOO_LONG}$"):
        await ns.call("a", lambda o: sql_of(o).exec("SELECT 1" + " " * 100_000))
    assert await ns.call("a", lambda o: sql_of(o).exec("SELECT 1" + " " * 99_000).rows) == [(1,)]
    with pytest.raises(LimitExceeded, match=f"^{TOO_MANY_VARIABLES}$"):
        await ns.call("a", lambda o: sql_of(o).exec("SELECT " + ",".join("?" * 101), *range(101)))
    hundred = await ns.call(
        "a", lambda o: sql_of(o).exec("SELECT " + ",".join("?" * 100), *range(100))
    )
    assert len(hundred.rows[0]) == 100
    cols = ", ".join(f"c{i}" for i in range(101))
    with pytest.raises(LimitExceeded, match=r"^too many columns on wide: SQLITE_ERROR$"):
        await ns.call("a", lambda o: sql_of(o).exec(f"CREATE TABLE wide ({cols})"))


def test_websocket_messages_over_32_mib_close_with_1009() -> None:
    """An incoming message over 32 MiB gets kj's text and close code 1009."""
    check_ws_message(MAX_WS_MESSAGE_BYTES)
    with pytest.raises(MessageTooLarge) as caught:
        check_ws_message(MAX_WS_MESSAGE_BYTES + 1)
    assert str(caught.value) == f"Message is too large: {MAX_WS_MESSAGE_BYTES + 1} > 33554432"
    assert caught.value.close_code == 1009


# -- coalescing and gates ---------------------------------------------------------------


async def test_writes_with_no_await_between_commit_as_one_batch(ns: Namespace[Counter]) -> None:
    """Puts made without yielding are invisible until the batch commits, then all appear."""
    await ns.call("a", lambda o: o.ctx.storage.list())  # the KV table exists, empty
    storage = await ns.call("a", lambda o: o.ctx.storage)
    storage.put("one", 1)
    storage.put("two", 2)
    assert _committed(ns.path("a"), "SELECT count(*) FROM _cf_KV") == [(0,)]
    await storage.sync()
    assert _committed(ns.path("a"), "SELECT key FROM _cf_KV ORDER BY key") == [("one",), ("two",)]


async def test_a_reply_leaves_only_after_its_writes_are_committed(ns: Namespace[Counter]) -> None:
    """Output gate: when ``call`` returns, another connection already reads the write."""
    assert await ns.call("a", lambda o: o.bump()) == 1
    assert _committed(ns.path("a"), "SELECT n FROM c") == [(1,)]
    assert await ns.call("a", lambda o: o.bump()) == 2
    assert _committed(ns.path("a"), "SELECT n FROM c") == [(2,)]


async def test_block_concurrency_while_holds_other_events(ns: Namespace[Counter]) -> None:
    """Nothing is delivered until the blocking function settles."""
    order: list[str] = []
    release = asyncio.Event()

    async def warm_up() -> None:
        await release.wait()
        order.append("blocker done")

    await ns.call("a", lambda o: o.ctx.block_concurrency_while(warm_up) and None)
    event = asyncio.create_task(ns.call("a", lambda o: order.append("event")))
    done, _ = await asyncio.wait({event}, timeout=0.2)
    assert not done  # held at the input gate
    release.set()
    await event
    assert order == ["blocker done", "event"]


# -- instances: one per id, rebuilt from storage ----------------------------------------


async def test_evict_and_hibernate_rebuild_from_storage(ns: Namespace[Counter]) -> None:
    """After either hook the next event reaches a new instance that starts from storage."""
    assert await ns.call("a", lambda o: o.bump()) == 1
    first = await ns.call("a", lambda o: o)
    assert await ns.call("a", lambda o: o) is first  # one live instance per id
    assert ns.live_ids() == ["a"]
    assert await ns.hibernate("a")
    assert ns.live_ids() == []
    assert await ns.call("a", lambda o: o.bump()) == 2
    assert await ns.evict("a")
    assert not await ns.evict("a")  # nothing in memory to evict
    assert await ns.call("a", lambda o: o.bump()) == 3
    assert ns.generation("a") == 3
    assert await ns.call("a", lambda o: o) is not first
    assert ns.ids() == ["a"]


async def test_idle_objects_hibernate(tmp_path: Path) -> None:
    """An instance with no events for ``hibernate_after_s`` is dropped; storage stays."""
    ns = Namespace(tmp_path / "do", Counter, hibernate_after_s=0.01)
    await ns.call("a", lambda o: o.bump())
    for _ in range(500):
        if not ns.live_ids():
            break
        await asyncio.sleep(0.01)
    assert ns.live_ids() == []
    assert await ns.call("a", lambda o: o.n) == 1
    await ns.close()


async def test_storage_survives_a_restart(tmp_path: Path) -> None:
    """A new namespace on the same directory (``kit dev`` restarted) finds everything."""
    first = Namespace(tmp_path / "do", Counter)
    await first.call("a", lambda o: o.bump())
    await first.call("a", lambda o: o.ctx.storage.set_alarm(1))
    await first.close()
    again = Namespace(tmp_path / "do", Counter)
    assert await again.call("a", lambda o: o.n) == 1
    assert again.alarm("a") == (1, 0)
    await again.close()


# -- alarms -----------------------------------------------------------------------------


async def test_alarm_retries_with_backoff_and_gives_up_after_six(tmp_path: Path) -> None:
    """A throwing handler is retried after 2, 4, 8 … s with its retry count; the alarm is
    cleared only after a success, or after the sixth retry fails."""
    clock = Clock()
    ns = Namespace(tmp_path / "do", Counter, clock=clock, hibernate_after_s=None)
    now_ms = int(clock.now * 1000)
    await ns.call("a", lambda o: o.ctx.storage.set_alarm(now_ms + 60_000))
    assert await ns.call("a", lambda o: o.ctx.storage.get_alarm()) == now_ms + 60_000

    def fail(times: int):  # type: ignore[no-untyped-def]
        def set_(o: Counter) -> None:
            o.fail_alarms = times

        return set_

    await ns.call("a", fail(2))
    run = await ns.run_alarm_now("a")
    assert (run.ran, run.error) == (True, "alarm handler failed")
    assert ns.alarm("a") == (now_ms + 2_000, 1)
    await ns.run_alarm_now("a")
    assert ns.alarm("a") == (now_ms + 4_000, 2)
    assert (await ns.run_alarm_now("a")).error is None
    assert ns.alarm("a") is None
    seen = await ns.call("a", lambda o: [(i.retry_count, i.is_retry) for i in o.alarms])
    assert seen == [(0, False), (1, True), (2, True)]
    assert not (await ns.run_alarm_now("a")).ran

    await ns.call("a", lambda o: o.ctx.storage.set_alarm(now_ms))
    await ns.call("a", fail(100))
    delays = []
    for _ in range(7):
        await ns.run_alarm_now("a")
        stored = ns.alarm("a")
        delays.append(None if stored is None else stored[0] - now_ms)
    assert delays == [2_000, 4_000, 8_000, 16_000, 32_000, 64_000, None]
    await ns.close()


async def test_a_due_alarm_fires_on_its_own_even_after_eviction(tmp_path: Path) -> None:
    """The scheduler delivers a due alarm to a fresh instance (at-least-once)."""
    fired = asyncio.Event()

    class Waker(Counter):
        async def alarm(self, info: AlarmInfo) -> None:
            fired.set()

    ns = Namespace(tmp_path / "do", Waker)
    ns.start()
    await ns.call("a", lambda o: o.ctx.storage.set_alarm(int(ns._now_ms()) + 50))
    await ns.evict("a")
    await asyncio.wait_for(fired.wait(), 10)
    assert ns.live_ids() == ["a"]
    for _ in range(100):  # cleared right after the handler returns
        if ns.alarm("a") is None:
            break
        await asyncio.sleep(0.01)
    assert ns.alarm("a") is None
    await ns.close()


# -- the control API over HTTP ----------------------------------------------------------


async def test_control_api_hooks_need_the_token(ns: Namespace[Counter]) -> None:
    """List, evict, hibernate and fire the alarm over HTTP, with Bearer auth."""
    await ns.call("a", lambda o: o.bump())
    await ns.call("a", lambda o: o.ctx.storage.set_alarm(0))
    app = create_control_app({"Counter": ns}, api_token="secret")
    auth = {"authorization": "Bearer secret"}
    async with serve_on_loopback(app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/Counter/objects")).status_code == 401
        assert (await http.post("/Counter/objects/a/evict")).status_code == 401
        assert ns.live_ids() == ["a"]
        listed = (await http.get("/Counter/objects", headers=auth)).json()
        assert listed == {"ids": ["a"], "live": ["a"]}
        assert (await http.post("/Counter/objects/a/alarm", headers=auth)).json() == {
            "ran": True,
            "error": None,
        }
        assert (await http.post("/Counter/objects/a/hibernate", headers=auth)).json() == {
            "hibernated": True
        }
        assert (await http.post("/Counter/objects/a/evict", headers=auth)).json() == {
            "evicted": False
        }
        assert (await http.get("/Nope/objects", headers=auth)).status_code == 404
        bad = await http.post("/Counter/objects/..%2Fx/evict", headers=auth)
        assert bad.status_code in (400, 404)
    assert await ns.call("a", lambda o: o.n) == 1
