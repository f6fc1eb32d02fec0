"""The ``do+http://`` store against the Cloudflare shim under ``wrangler dev``: a session's
store token reaches its own transcript and nothing else, as kit's ``kit+http://`` store
does (tests/storage/test_remote_store.py). The SDK's conformance suite and kit's own
contract run against the shim in tests/storage/test_stores.py (backend ``shim``)."""

from __future__ import annotations

from typing import Any

import pytest

from kit.storage import StoreError, open_store
from kit.storage.portable import PortableKeys
from tests.workers import Shim

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the shim's wrangler dev lives on it

ENTRY: Any = {"type": "user", "uuid": "u1", "message": {"content": "hi"}}


async def test_a_store_token_reaches_only_its_own_session(shim: Shim) -> None:
    """A's token writes and reads A's transcript (through PortableKeys, as the runtime
    files it); B's key with A's token is 403, A's token at B's store 401, listings show A
    only, and B's transcript is untouched. (Broken on purpose once: with the DO's session
    check off, A's token read B's transcript: the 403 assertion failed.)"""
    a, b = shim.new_session(), shim.new_session()
    url_a, token_a = shim.store_token(a)
    url_b, token_b = shim.store_token(b)
    assert url_a == f"do+http://{shim.url.removeprefix('http://')}/v1/sessions/{a}/store"
    mine, theirs = open_store(url_a, token=token_a), open_store(url_b, token=token_b)
    stolen = open_store(url_b, token=token_a)
    try:
        await theirs.append({"project_key": "kit", "session_id": b}, [ENTRY])
        await PortableKeys(mine).append({"project_key": "-srv-app", "session_id": a}, [ENTRY])
        assert await mine.load({"project_key": "kit", "session_id": a}) == [ENTRY]
        with pytest.raises(StoreError, match="403"):
            await mine.load({"project_key": "kit", "session_id": b})
        with pytest.raises(StoreError, match="403"):
            await mine.append({"project_key": f"kit/{b}/main", "session_id": a}, [ENTRY])
        with pytest.raises(StoreError, match="401"):
            await stolen.load({"project_key": "kit", "session_id": b})
        assert [s["session_id"] for s in await mine.list_sessions("kit")] == [a]
        assert [s["session_id"] for s in await mine.list_session_summaries("kit")] == [a]
        assert await theirs.load({"project_key": "kit", "session_id": b}) == [ENTRY]
    finally:
        for store in (mine, theirs, stolen):
            await store.aclose()


async def test_a_new_api_token_ends_the_previous_one(shim: Shim) -> None:
    """Minting a session's API store token again revokes the one minted before."""
    session = shim.new_session()
    url, first = shim.store_token(session)
    _, second = shim.store_token(session)
    old, new = open_store(url, token=first), open_store(url, token=second)
    try:
        with pytest.raises(StoreError, match="401"):
            await old.load({"project_key": "kit", "session_id": session})
        assert await new.load({"project_key": "kit", "session_id": session}) is None
    finally:
        await old.aclose()
        await new.aclose()
