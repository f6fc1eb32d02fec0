"""The root of kit's exceptions.

Every package draws its own family under :class:`KitError`::

    KitError
    ├── kit.bundle.errors.ConfigError      kit.toml / bundle problems
    ├── kit.protocol.errors.ProtocolError  a frame that breaks the session protocol
    ├── kit.storage.errors.StoreError      a transcript store failed or its URL is wrong
    ├── kit.host.errors.HostError          session host failures (unknown session, sandbox)
    └── kit.client.errors.ClientError      the Python client gave up

Messages read as sentences and name the fix (the setting, the file, the flag). The CLI's
single top-level handler prints ``str(error)`` and exits 1.
"""

from __future__ import annotations


class KitError(Exception):
    """Base class of every error kit raises on purpose."""
