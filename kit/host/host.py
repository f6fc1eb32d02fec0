"""The session host: creates sessions, finds them, recovers their open turns, shuts down."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from kit.host.eventlog import LogStore
from kit.host.session import Session, SessionEnv, hash_token
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

    def __init__(self, logs: LogStore, env: SessionEnv) -> None:
        self.logs = logs
        self.env = env
        self._sessions: dict[SessionId, Session] = {}
        self.closing = False

    def create_session(self) -> NewSession:
        """A new, empty session and its client token."""
        session_id = new_session_id()
        token = "kit-session-" + secrets.token_urlsafe(24)
        log_ = self.logs.create(
            session_id,
            {
                "token_sha256": hash_token(token),
                "tier": self.env.tier,
                "protocol": PROTOCOL_VERSION,
            },
        )
        self._sessions[session_id] = Session(log_, self.env)
        log.info("session %s created", session_id)
        return NewSession(session_id, token)

    def get(self, session_id: str) -> Session | None:
        """The session with this id (loaded from its log if needed), or ``None``."""
        if not is_session_id(session_id):
            return None
        sid = SessionId(session_id)
        session = self._sessions.get(sid)
        if session is None:
            log_ = self.logs.open(sid)
            if log_ is None:
                return None
            session = self._sessions[sid] = Session(log_, self.env)
        return session

    def session_ids(self) -> list[SessionId]:
        """Every session this host has a log for."""
        return self.logs.list()

    def recover(self) -> int:
        """Restart the runner of every session with open turns; how many were restarted."""
        count = 0
        for sid in self.logs.list():
            session = self.get(sid)
            if session is not None and session.log.open_turns():
                session.start()
                count += 1
        if count:
            log.info("recovering open turns in %d session(s)", count)
        return count

    def live_sessions(self) -> list[Session]:
        """Sessions loaded in memory."""
        return list(self._sessions.values())

    async def close(self) -> None:
        """Stop every session's runner and sandbox."""
        self.closing = True
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
