"""Errors of the session protocol.

::

    KitError
    └── ProtocolError      a frame broke the protocol; carries a stable ``code``
                           and, when the connection must end, a WebSocket ``close_code``

The codes are part of the public protocol (docs/protocol.md): clients may switch on them.
"""

from __future__ import annotations

from kit.errors import KitError

# Stable error codes sent in {"type":"error","code":...} frames.
BAD_JSON = "bad_json"
BAD_FRAME = "bad_frame"
UNKNOWN_TYPE = "unknown_type"
TOO_LARGE = "too_large"
HELLO_REQUIRED = "hello_required"
ALREADY_HELLO = "already_hello"
UNAUTHORIZED = "unauthorized"
UNKNOWN_SESSION = "unknown_session"
SEQ_AHEAD = "seq_ahead"
SLOW_CONSUMER = "slow_consumer"
SHUTTING_DOWN = "shutting_down"
SESSION_ELSEWHERE = "session_elsewhere"
INTERNAL = "internal"
PROTOCOL_VIOLATION = "protocol_violation"
FORBIDDEN_ORIGIN = "forbidden_origin"
"""An HTTP 403 to a WebSocket upgrade from a browser page whose origin is not allowed."""

# WebSocket close codes the host uses (4xxx are application codes).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009
CLOSE_INTERNAL = 1011
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_UNKNOWN_SESSION = 4404
CLOSE_SLOW_CONSUMER = 4408
CLOSE_SESSION_ELSEWHERE = 4409
CLOSE_ABNORMAL = 1006
"""Never sent: what a client reads when the connection dropped without a close frame."""


class ProtocolError(KitError):
    """A frame that breaks the protocol.

    ``code`` is one of the stable codes above; ``close_code`` is set when the peer must
    close the connection after reporting the error.
    """

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


class InvalidStateError(KitError):
    """A protocol object was asked to do something its current state does not allow."""
