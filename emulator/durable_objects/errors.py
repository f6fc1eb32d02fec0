"""Errors of the Durable Objects emulator.

::

    KitError
    └── DurableObjectError          a Durable Object call failed
        ├── StorageError            a storage call failed (its message is Cloudflare's text)
        │   └── LimitExceeded       a write or statement over one of Cloudflare's limits
        ├── ObjectEvicted           the instance was evicted; its storage calls fail now
        └── MessageTooLarge         an incoming WebSocket message over 32 MiB (close 1009)

Messages are the platform's own where it has one (``string or blob too big:
SQLITE_TOOBIG``), so code that handles them in ``kit dev`` handles them on Cloudflare.
"""

from __future__ import annotations

from kit.errors import KitError


class DurableObjectError(KitError):
    """A Durable Object call failed."""


class StorageError(DurableObjectError):
    """A storage call failed; the message is the text workerd gives (``<sqlite message>:
    <SQLITE_CODE>``)."""


class LimitExceeded(StorageError):
    """A value, row, statement or binding list over Cloudflare's limits; nothing was written."""


class ObjectEvicted(DurableObjectError):
    """The instance this call was made on has been evicted (a new one serves its id)."""


class MessageTooLarge(DurableObjectError):
    """An incoming WebSocket message over Cloudflare's 32 MiB limit."""

    close_code = 1009
