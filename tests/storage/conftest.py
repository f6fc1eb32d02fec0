"""Store tests use the moto S3 server from tests/conftest.py, and the Cloudflare shim under
``wrangler dev`` (tests/workers.py) for the ``do+http://`` store: one per module, so a
module using it runs its tests on a module-wide event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from kit.storage import open_store
from tests.conftest import BUCKET
from tests.workers import Shim, running_shim

__all__ = ["BUCKET"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shim]:
    """The shim under ``wrangler dev`` on loopback; it may mint store tokens for any key
    (KIT_STORE_CONFORMANCE), as the SDK's conformance suite needs."""
    async with running_shim(tmp_path_factory.mktemp("shim"), {"KIT_STORE_CONFORMANCE": "1"}) as up:
        yield up


@pytest_asyncio.fixture(loop_scope="module")
async def shim_store(shim: Shim) -> AsyncIterator[Callable[[], Any]]:
    """A factory of fresh, empty ``do+http://`` stores: each a new session's DO, reached
    with an any-key store token; closed after the test."""
    opened: list[Any] = []

    def fresh() -> Any:
        url, token = shim.store_token(shim.new_session(), any_key=True)
        assert url.startswith("do+http://127.0.0.1:")
        opened.append(open_store(url, token=token))
        return opened[-1]

    yield fresh
    for store in opened:
        await store.aclose()
