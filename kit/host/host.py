"""The session host: creates sessions, finds them, recovers their open turns, shuts down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from kit.host.eventlog import CREATED_KEY, LogStore, now_ms
from kit.host.launch import SessionEnv
from kit.host.lease import LeaseHeld
from kit.host.pool import SandboxPool
from kit.host.session import Session, check_token, hash_token
from kit.ids import SessionId, is_session_id, new_session_id
from kit.protocol.frames import PROTOCOL_VERSION

log = logging.getLogger("kit.host")


@dataclass(frozen=True)
class NewSession:
    """What ``POST /v1/sessions`` returns (the token is shown only once)."""

    session_id: SessionId
    token: str


class SessionHost:
    """Owns every session of one host process."""

    def __init__(self, logs: LogStore, env: SessionEnv, pool: SandboxPool | None = None) -> None:
        self.logs = logs
        self.env = env
        self.pool = pool
        """Sandboxes started ahead of new sessions (None or size 0: each first turn starts
        its own)."""
        self._sessions: dict[SessionId, Session] = {}
        self._opening: dict[SessionId, asyncio.Lock] = {}
        self._unloading: set[asyncio.Task[None]] = set()
        self._closes: dict[SessionId, asyncio.Task[None]] = {}
        """Sessions being unloaded: a ``get`` waits for the close before it reloads, so a
        new sandbox never starts beside the one still stopping."""
        self.closing = False

    async def create_session(self) -> NewSession:
        """A new, empty session and its client token.

        With a pool, the session takes the id of a sandbox already up, which its first
        turn then uses.
        """
        session_id = (self.pool.claim() if self.pool is not None else None) or new_session_id()
        token = "kit-session-" + secrets.token_urlsafe(24)
        log_ = await self.logs.create(
            session_id,
            {
                "token_sha256": hash_token(token),
                "tier": self.env.tier,
                "protocol": PROTOCOL_VERSION,
                CREATED_KEY: now_ms(),
            },
        )
        self._adopt(Session(log_, self.env))
        log.info("session %s created", session_id)
        return NewSession(session_id, token)

    async def get(self, session_id: str) -> Session | None:
        """The session with this id (loaded from its log if needed), or ``None``.

        A leased log store raises ``LeaseHeld`` while another host owns the session.
        """
        if not is_session_id(session_id):
            return None
        sid = SessionId(session_id)
        session = self._sessions.get(sid)
        if session is not None:
            return session
        if self.closing:
            return None
        lock = self._opening.setdefault(sid, asyncio.Lock())
        try:
            async with lock:  # two hellos at once open the log once
                closing = self._closes.get(sid)
                if closing is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(closing)
                session = self._sessions.get(sid)
                if session is None:
                    log_ = await self.logs.open(sid)
                    if log_ is None:
                        return None
                    session = self._adopt(Session(log_, self.env))
        finally:
            if not lock.locked():
                self._opening.pop(sid, None)
        return session

    async def authorize(self, session_id: str, token: str) -> bool | None:
        """Whether ``token`` is the session's (None: no such session), without loading it:
        a wrong token must not take a lease or load a log."""
        if not is_session_id(session_id):
            return None
        session = self._sessions.get(SessionId(session_id))
        if session is not None:
            return session.check_token(token)
        meta = await self.logs.read_meta(SessionId(session_id))
        if meta is None:
            return None
        return check_token(token, str(meta.get("token_sha256", "")))

    def _adopt(self, session: Session) -> Session:
        self._sessions[session.id] = session
        session.on_gone = self._forget
        session.on_idle = self._unload
        if self.pool is not None:
            session.take_pooled = self.pool.take
        session.start()  # it runs turns, and stops the sandbox or unloads when idle
        return session

    def refresh(self) -> None:
        """The release changed: idle sandboxes of an older one are replaced (running
        turns keep theirs), and so are the pool's."""
        for session in self._sessions.values():
            session.refresh()
        if self.pool is not None:
            self.pool.refresh()

    def _unload(self, session: Session) -> None:
        """Drop an idle session from memory; its log stays (the next ``get`` reloads it)."""
        self._close_later(session)
        log.info("session %s idle: unloaded", session.id)

    def _close_later(self, session: Session) -> asyncio.Task[None]:
        """Forget ``session`` and close it in the background (``get`` waits for it)."""
        self._forget(session)
        task = asyncio.get_running_loop().create_task(session.close(), name=f"unload-{session.id}")
        self._unloading.add(task)
        self._closes[session.id] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._unloading.discard(finished)
            if self._closes.get(session.id) is finished:
                del self._closes[session.id]

        task.add_done_callback(done)
        return task

    async def unload_now(
        self, session_id: str, notify: Callable[[Session], None] | None = None
    ) -> bool:
        """Drop a loaded session at once, busy or not (its Durable Object is being evicted).

        The runner and sandbox stop and the log closes; then ``notify(session)`` runs (it
        closes the clients' sockets, so they reconnect and resume once the old sandbox is
        gone). Open turns stay open: the next ``get`` reloads the session from its log and
        carries on. False when the session was not loaded.
        """
        session = self._sessions.get(SessionId(session_id))
        if session is None:
            return False
        await asyncio.shield(self._close_later(session))
        if notify is not None:
            notify(session)
        log.info("session %s unloaded (evicted)", session.id)
        return True

    def _forget(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    async def session_ids(self) -> list[SessionId]:
        """Every session this host has a log for."""
        return await self.logs.session_ids()

    async def recover(self) -> int:
        """Restart the runner of every session with open turns; how many were restarted.

        Sessions another host owns (a held lease) are left to it.
        """
        count = 0
        for sid in await self.logs.recoverable():
            try:
                session = await self.get(sid)
            except LeaseHeld:
                continue
            except Exception:  # one damaged session must not stop the others' recovery
                log.exception("session %s: cannot be loaded for recovery", sid)
                continue
            if session is not None and await session.log.open_turns():
                session.start()  # loading started it already; a runner that stopped restarts
                count += 1
        if count:
            log.info("recovering open turns in %d session(s)", count)
        return count

    async def sweep(self, interval_s: float) -> None:
        """Recover abandoned sessions every ``interval_s`` until the host closes.

        With a shared log store (S3), another host's sessions come here once their lease
        runs out, even with no client connected to ask for them.
        """
        while not self.closing:  # ends with the host
            await asyncio.sleep(interval_s)
            try:
                await self.recover()
            except Exception:
                log.exception("sweeping for abandoned sessions failed (next sweep retries)")

    def live_sessions(self) -> list[Session]:
        """Sessions loaded in memory."""
        return list(self._sessions.values())

    async def close(self) -> None:
        """Stop every session's runner and sandbox."""
        self.closing = True
        sessions, self._sessions = list(self._sessions.values()), {}
        closing = [s.close() for s in sessions]
        if self.pool is not None:
            closing.append(self.pool.close())
        await asyncio.gather(*closing, *self._unloading, return_exceptions=True)
