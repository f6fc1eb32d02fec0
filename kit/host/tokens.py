"""Per-session credentials for the host's proxies (the model proxy, the egress proxy).

A token is issued when a sandbox starts and revoked when it is gone; a proxy asks which
session a presented credential belongs to. Tokens are kept by their SHA-256, so the lookup
takes the same time whatever the credential shares with a live token.
"""

from __future__ import annotations

import hashlib
import secrets

from kit.ids import SessionId


class SessionTokens:
    """Live tokens (``<prefix><random>``) and the sessions they belong to."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._sessions: dict[bytes, SessionId] = {}

    def issue(self, session_id: SessionId) -> str:
        """A new token for ``session_id``'s sandbox."""
        token = self.prefix + secrets.token_urlsafe(24)
        self._sessions[_digest(token.encode())] = session_id
        return token

    def revoke(self, token: str) -> None:
        """Stop accepting ``token``."""
        self._sessions.pop(_digest(token.encode()), None)

    def session_for(self, credential: bytes) -> SessionId | None:
        """The session a presented credential belongs to, if it is a live token."""
        return self._sessions.get(_digest(credential))


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()
