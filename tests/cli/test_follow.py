"""The follower behind `kit logs --follow`, driven step by step against a real host: commits
that land at each point of the stored/live handover arrive once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from kit.cli.follow import End, Follower, follow
from kit.cli.stack import Stack
from kit.host import Session
from kit.ids import SessionId
from kit.protocol import errors as e
from kit.protocol.frames import Event


async def _next(items: AsyncGenerator[Event | End, None]) -> int:
    item = await asyncio.wait_for(anext(items), 10)
    assert isinstance(item, Event), item
    return item.seq


async def _note(session: Session, n: int) -> None:
    await session.emit("note", {"n": n})


async def test_commits_at_every_step_of_the_handover_arrive_once(stack: Stack) -> None:
    """Commits during the backlog, during the tail and live, then a rebind: seqs 1..n once."""
    new = await stack.host.create_session()
    session = await stack.host.get(new.session_id)
    assert session is not None
    for n in (1, 2, 3):
        await _note(session, n)
    connections: set[Any] = set()
    items = follow(stack.host, SessionId(new.session_id), 0, connections)
    seqs = [await _next(items)]  # suspended inside the backlog: seqs 2, 3 are still to come
    await _note(session, 4)  # after the backlog's page was read, before subscribing
    await _note(session, 5)
    seqs += [await _next(items) for _ in range(3)]  # 2, 3, then 4 from the stored tail
    await _note(session, 6)  # suspended inside the tail: subscribed, 5 not yet sent
    seqs += [await _next(items) for _ in range(2)]
    await _note(session, 7)  # live
    seqs.append(await _next(items))
    (follower,) = connections
    assert isinstance(follower, Follower)

    def close_clients(gone: Session) -> None:  # what kit dev does for an evicted object
        follower.shutdown(e.SHUTTING_DOWN, "evicted", e.CLOSE_GOING_AWAY)

    assert await stack.host.unload_now(new.session_id, close_clients)
    reloaded = await stack.host.get(new.session_id)
    assert reloaded is not None
    assert reloaded is not session
    await _note(reloaded, 8)  # committed while the follower had let go
    seqs.append(await _next(items))
    await _note(reloaded, 9)  # live again, on the reloaded session
    seqs.append(await _next(items))
    assert seqs == list(range(1, 10))
    assert [f.session for f in connections] == [reloaded]
    await items.aclose()
    assert connections == set()  # detached with the stream
