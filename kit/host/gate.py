"""Caps on the connections a proxy holds open, and a quiet log for the errors of a full host.

Every sandbox reaches the host's proxies through the same sockets, so a connection that has
not yet shown a live session token is anybody's: :class:`ConnectionGate` caps those across
the whole proxy, and once a connection has shown a token, caps the connections open per
token. A connection over a cap is closed at once, with no answer and no log line each.

When the process runs out of file descriptors anyway, asyncio reports every failed
``accept()`` with a traceback, many times a second. :func:`quiet_accept_errors` turns those
reports into one log line per :data:`ACCEPT_ERROR_LOG_S`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

log = logging.getLogger("kit.host")

ACCEPT_ERROR_LOG_S = 10.0
"""At most one log line per this many seconds about connections that could not be accepted."""
_ACCEPT_ERROR = "socket.accept() out of system resource"
_quieted: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


class ConnectionGate:
    """Counts open connections: at most ``unproven`` without a token, ``per_token`` per token."""

    def __init__(self, *, unproven: int, per_token: int) -> None:
        self.unproven_cap, self.per_token_cap = unproven, per_token
        self.unproven = 0
        """Connections open that have not shown a live token."""
        self._per_token: dict[bytes, int] = {}

    def enter(self) -> Ticket | None:
        """A new connection's ticket; None when :attr:`unproven_cap` are already open."""
        if self.unproven >= self.unproven_cap:
            return None
        self.unproven += 1
        return Ticket(self)

    def open_for(self, key: bytes) -> int:
        """Connections open that showed ``key``."""
        return self._per_token.get(key, 0)

    def _prove(self, key: bytes) -> bool:
        if self._per_token.get(key, 0) >= self.per_token_cap:
            return False
        self._per_token[key] = self._per_token.get(key, 0) + 1
        self.unproven -= 1
        return True

    def _leave(self, key: bytes | None) -> None:
        if key is None:
            self.unproven -= 1
            return
        left = self._per_token.get(key, 0) - 1
        if left > 0:
            self._per_token[key] = left
        else:
            self._per_token.pop(key, None)


class Ticket:
    """One open connection's place in its :class:`ConnectionGate`."""

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self.key: bytes | None = None
        """The token (or its digest) the connection showed; None while it has shown none."""
        self._left = False

    def prove(self, key: bytes) -> bool:
        """The connection showed ``key``: count it under that key. False (and nothing
        changes) when that key already has its cap of connections open."""
        if self.key is not None:
            return self.key == key
        if not self._gate._prove(key):
            return False
        self.key = key
        return True

    def leave(self) -> None:
        """The connection closed (idempotent)."""
        if not self._left:
            self._left = True
            self._gate._leave(self.key)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log ``loop``'s failed ``accept()`` calls (EMFILE and the like) once per
    :data:`ACCEPT_ERROR_LOG_S` at most, without a traceback; other reports go on as before."""
    if loop in _quieted:
        return
    _quieted.add(loop)
    previous = loop.get_exception_handler()
    last = -ACCEPT_ERROR_LOG_S
    dropped = 0

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal last, dropped
        if context.get("message") != _ACCEPT_ERROR:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = loop.time()
        if now - last < ACCEPT_ERROR_LOG_S:
            dropped += 1
            return
        log.error(
            "cannot accept connections: %s (%d more such errors since the last line)",
            context.get("exception"),
            dropped,
        )
        last, dropped = now, 0

    loop.set_exception_handler(handler)
