"""Errors of the session host.

::

    KitError
    └── HostError                 the session host could not do what was asked
        ├── UnknownSession        no session with that id
        ├── LogError              the durable event log failed
        └── SandboxError          a sandbox could not be started or reached
"""

from __future__ import annotations

from kit.errors import KitError


class HostError(KitError):
    """The session host could not do what was asked."""


class UnknownSession(HostError):
    """No session has this id."""


class LogError(HostError):
    """The durable event log failed."""


class SandboxError(HostError):
    """A sandbox could not be started or reached."""
