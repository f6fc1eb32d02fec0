"""``kit logs --follow`` on the host side: a session's stored events, then its live ones, each once.

The handover from stored to live is the WebSocket handshake's (``kit.host.app._replay``):
pages of the backlog are read while the session runs on; the last page is read, and the
follower subscribed, inside :meth:`Session.quiet`, so no commit falls between the two.
A cursor (the last seq sent) makes every later step idempotent: when the session is
unloaded under the follower (its Durable Object evicted) or the follower falls too far
behind, it finds the session again and carries on from the log after the cursor.

A follower counts as a connected client while it follows (the session stays loaded, as
for an open chat page); it never starts a sandbox.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from kit.host import Session, SessionHost
from kit.host.lease import LeaseHeld
from kit.ids import SessionId
from kit.protocol.frames import Event

PAGE = 1000
"""Events read from the log at a time."""
MAX_BEHIND = 50_000
"""Live events queued for a follower before it is switched back to reading the log."""
MAX_ATTACH_TRIES = 3
"""Attempts in a row to find a session that keeps closing under the follower."""


@dataclass(frozen=True)
class End:
    """Why a stream of events ended: ``done`` (every stored event was sent), ``stopping``
    (the host is shutting down), ``elsewhere`` (another host owns the session now) or
    ``error``."""

    reason: str
    message: str


def _why_none(host: SessionHost, session_id: SessionId) -> End:
    """Why ``host.get`` found no session (it checked that the session exists first)."""
    if host.closing:
        return End("stopping", "kit dev is stopping; the log ends here.")
    return End("error", f"Session {session_id} no longer exists.")


def event_line(event: Event) -> bytes:
    """One NDJSON line for an event."""
    body = {
        "seq": event.seq,
        "kind": event.kind,
        "turn_id": event.turn_id,
        "data": event.data,
        "ts": event.ts,
    }
    return json.dumps(body, ensure_ascii=False).encode() + b"\n"


def end_line(end: End) -> bytes:
    """The NDJSON line that closes a stream."""
    return json.dumps({"end": end.reason, "message": end.message}).encode() + b"\n"


class Follower:
    """A subscriber of one loaded session, queueing what it is handed.

    It also joins the app's connections, whose ``shutdown`` the host calls when it stops
    and when the session's Durable Object is evicted: either way the follower lets go of
    this :class:`Session` and looks the session up again.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.queue: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.let_go = False
        """The session was closed or unloaded under us, or we fell behind: find it again."""
        self.elsewhere: str | None = None
        """Another host took the session over (the reason)."""

    def deliver(self, event: Event) -> None:
        if len(self.queue) >= MAX_BEHIND:
            self.let_go = True  # the log has it all: read it from there
        else:
            self.queue.append(event)
        self.wake.set()

    def moved(self, message: str) -> None:
        self.elsewhere = message
        self.wake.set()

    def shutdown(self, code: str, message: str, close_code: int) -> None:
        """The host closes this session's clients (it stops, or the session is evicted)."""
        self.let_go = True
        self.wake.set()


async def follow(
    host: SessionHost, session_id: SessionId, after: int, connections: set[Any]
) -> AsyncGenerator[Event | End, None]:
    """Every event with seq > ``after``, stored then live, in order and once each; ends
    with an :class:`End` when the host stops or the session leaves it."""
    cursor = after
    tries = 0
    while True:  # one round per loaded instance of the session
        if host.closing:
            yield _why_none(host, session_id)
            return
        try:
            session = await host.get(session_id)
        except LeaseHeld as exc:
            yield End("elsewhere", str(exc))
            return
        if session is None:
            yield _why_none(host, session_id)
            return
        while True:  # the backlog, page by page, while the session runs on
            page = await session.log.read_after(cursor, PAGE)
            for event in page:
                yield event
                cursor = event.seq
            if len(page) < PAGE:
                break
        follower = Follower(session)
        async with session.quiet():
            if session.closed or session.lost:
                tries += 1
                if tries >= MAX_ATTACH_TRIES:
                    yield End("error", "The session keeps moving; run `kit logs` again.")
                    return
                continue
            tail = await session.log.read_after(cursor)
            session.subscribe(follower)
        tries = 0
        connections.add(follower)
        try:
            session.start()  # as for any client: an idle session can unload once we go
            for event in tail:
                yield event
                cursor = event.seq
            while True:
                while follower.queue:
                    event = follower.queue.popleft()
                    if event.seq != cursor + 1:  # never expected: the log sets it right
                        follower.let_go = True
                        break
                    yield event
                    cursor = event.seq
                if follower.elsewhere is not None:
                    yield End("elsewhere", follower.elsewhere)
                    return
                if follower.let_go:
                    break
                follower.wake.clear()
                if not follower.queue:
                    await follower.wake.wait()
        finally:
            session.detach(follower)
            connections.discard(follower)
