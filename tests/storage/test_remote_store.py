"""The host-kept transcript store over HTTP (kit+http://): the SDK's conformance suite
through the real routes on loopback, and the walls between sessions."""

from __future__ import annotations

from typing import Any

import pytest
from claude_agent_sdk.testing import run_session_store_conformance
from starlette.applications import Starlette

from kit.host.store_routes import store_routes
from kit.ids import SessionId, new_session_id
from kit.storage import MemorySessionStore, StoreError, StoreUnavailable
from kit.storage.remote import RemoteSessionStore
from tests.conftest import serve_on_loopback


class AnySession(str):
    """For the conformance suite only, whose keys name many sessions: a session equal to
    every session id."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


def _app(store: Any, tokens: dict[bytes, SessionId]) -> Starlette:
    return Starlette(routes=store_routes("/_kit/store", store, tokens.get))


async def test_sdk_conformance_through_the_routes() -> None:
    """Every required and optional SessionStore contract holds over HTTP."""
    backing = MemorySessionStore()
    app = _app(backing, {b"t": SessionId(AnySession("any"))})
    async with serve_on_loopback(app) as url:
        base = url.replace("http://", "kit+http://") + "/_kit/store"
        stores: list[RemoteSessionStore] = []

        def make() -> RemoteSessionStore:
            stores.append(RemoteSessionStore(base, "t"))
            return stores[-1]

        # Each store the suite makes must start empty: a fresh backing store per factory call.
        def fresh() -> RemoteSessionStore:
            app.router.routes[:] = store_routes(
                "/_kit/store", MemorySessionStore(), {b"t": SessionId(AnySession("any"))}.get
            )
            return make()

        try:
            await run_session_store_conformance(fresh, skip_optional=frozenset())
        finally:
            for store in stores:
                await store.aclose()


async def test_a_sandbox_reaches_only_its_own_session() -> None:
    """A session's token writes and reads its own transcript; another session's key is
    refused (403), listings show only its own session, a dead token is refused (401).
    (Broken on purpose once: without the session check, B's transcript was read.)"""
    backing = MemorySessionStore()
    a, b = new_session_id(), new_session_id()
    entry: Any = {"type": "user", "uuid": "u1", "message": {"content": "hi"}}
    await backing.append({"project_key": "kit", "session_id": b}, [entry])
    app = _app(backing, {b"token-a": a})
    async with serve_on_loopback(app) as url:
        base = url.replace("http://", "kit+http://") + "/_kit/store"
        mine = RemoteSessionStore(base, "token-a")
        dead = RemoteSessionStore(base, "token-gone")
        try:
            await mine.append({"project_key": "kit", "session_id": a}, [entry])
            assert await mine.load({"project_key": "kit", "session_id": a}) == [entry]
            with pytest.raises(StoreError, match="403"):
                await mine.load({"project_key": "kit", "session_id": b})
            with pytest.raises(StoreError, match="403"):
                await mine.delete({"project_key": "kit", "session_id": b})
            listed = await mine.list_sessions("kit")
            assert [item["session_id"] for item in listed] == [a]
            with pytest.raises(StoreError, match="401"):
                await dead.load({"project_key": "kit", "session_id": a})
        finally:
            await mine.aclose()
            await dead.aclose()
    assert await backing.load({"project_key": "kit", "session_id": b}) == [entry]


async def test_an_outage_of_the_hosts_store_is_retryable() -> None:
    """The host's own store out (StoreUnavailable) is a 503 the sandbox reads as
    StoreUnavailable (its RetryingStore waits it out); no host answer at all too."""

    class Down(MemorySessionStore):
        async def load(self, key: Any) -> Any:
            raise StoreUnavailable("S3 answered 503")

    a = new_session_id()
    async with serve_on_loopback(_app(Down(), {b"t": a})) as url:
        store = RemoteSessionStore(url.replace("http://", "kit+http://") + "/_kit/store", "t")
        try:
            with pytest.raises(StoreUnavailable):
                await store.load({"project_key": "kit", "session_id": a})
        finally:
            await store.aclose()
    gone = RemoteSessionStore(url.replace("http://", "kit+http://") + "/_kit/store", "t")
    try:
        with pytest.raises(StoreUnavailable):
            await gone.load({"project_key": "kit", "session_id": a})
    finally:
        await gone.aclose()
