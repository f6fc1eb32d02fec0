"""Errors of the Python client.

::

    KitError
    └── ClientError            the client cannot go on (or was asked something it cannot do,
        │                      such as a ReconnectPolicy that cannot be)
        ├── SessionRefused     the host refused the session (wrong token, unknown id, too large)
        └── ConnectionLost     the host stayed unreachable past the reconnect budget

The protocol's :class:`~kit.protocol.errors.ProtocolError` and websockets' connection
errors are mapped to these once, in :mod:`kit.client.session`.
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
    """The host could not be reached again within the reconnect budget.

    ``unsent`` holds the messages (``client_msg_id`` → text) whose ``user`` event never
    arrived: the host may not have them. Send them again with the same ids once the host
    is back; it applies each at most once.
    """

    def __init__(self, message: str, unsent: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.unsent = dict(unsent or {})
