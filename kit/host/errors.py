"""Errors of the session host.

::

    KitError
    └── HostError                 the session host could not do what was asked (a bad
        │                         argument to one of its constructors, too)
        ├── UnknownSession        no session with that id
        ├── LeaseHeld             another host owns the session (kit.host.lease)
        ├── LogError              the durable event log failed
        │   └── LeaseLost         another host took the session over (kit.host.lease)
        ├── FilesError            a session's files could not be kept or read (kit.host.files)
        │   └── FileRefused       a file past the limits or with a bad path (kit.host.files)
        └── SandboxError          a sandbox could not be started or reached
            └── SandboxGone       the runtime stopped answering mid-turn
                                  (kit.host.runtime_client)

Foreign errors are mapped where they are met: sqlite3 and ``OSError`` in
:mod:`kit.host.eventlog`, S3's in ``kit.storage.s3io`` (as ``StoreError``, which
:mod:`kit.host.s3log` and :mod:`kit.host.lease` turn into ``LogError``), a runtime's broken
connection in :mod:`kit.host.runtime_client`. The proxies' private refusals
(``egress._Refused``, ``usage._Unreadable``) are ``HostError`` too, though they never
leave their module.
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
