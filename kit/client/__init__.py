"""The Python client for kit sessions, with automatic reconnect and resume."""

from kit.client.errors import ClientError, ConnectionLost, SessionRefused
from kit.client.session import SessionClient, SessionInfo, create_session, dumps_event

__all__ = [
    "ClientError",
    "ConnectionLost",
    "SessionClient",
    "SessionInfo",
    "SessionRefused",
    "create_session",
    "dumps_event",
]
