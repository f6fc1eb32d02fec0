"""Errors of the Python client.

::

    KitError
    └── ClientError            the client cannot go on
        ├── SessionRefused     the host refused the session (wrong token, unknown id)
        └── ConnectionLost     the host stayed unreachable past the retry budget
"""

from __future__ import annotations

from kit.errors import KitError


class ClientError(KitError):
    """The client cannot go on."""


class SessionRefused(ClientError):
    """The host refused the session for good (wrong token, unknown session, bad request)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"The host refused the session ({code}): {message}")
        self.code = code


class ConnectionLost(ClientError):
    """The host could not be reached again within the reconnect budget."""
