"""The Python client for kit sessions: reconnects, resumes and re-sends on its own.

:class:`SessionClient` is the client; :class:`ReconnectPolicy` says how long it keeps
trying when the host goes away and :class:`StatusChange` tells the application (through
``on_status``) what the connection is doing. :class:`InterruptAcked` is the host's answer
to :meth:`SessionClient.interrupt`.
"""

from kit.client.errors import ClientError, ConnectionLost, SessionRefused
from kit.client.reconnect import (
    FOREVER,
    LIBRARY_POLICY,
    ConnectionStatus,
    ReconnectPolicy,
    StatusChange,
)
from kit.client.session import SessionClient, SessionInfo, create_session, dumps_event
from kit.protocol.client import InterruptAcked

__all__ = [
    "FOREVER",
    "LIBRARY_POLICY",
    "ClientError",
    "ConnectionLost",
    "ConnectionStatus",
    "InterruptAcked",
    "ReconnectPolicy",
    "SessionClient",
    "SessionInfo",
    "SessionRefused",
    "StatusChange",
    "create_session",
    "dumps_event",
]
