"""Errors of the transcript stores.

::

    KitError
    └── StoreError           a store URL is wrong or the backend failed
        └── StoreUnavailable the backend cannot be reached right now (retrying may help)
"""

from __future__ import annotations

from kit.errors import KitError


class StoreError(KitError):
    """A transcript store URL is wrong, or its backend failed."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached now; the caller may retry."""
