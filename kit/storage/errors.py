"""Errors of the transcript stores.

::

    KitError
    └── StoreError           a store URL is wrong or the backend failed
        └── StoreUnavailable the backend cannot be reached right now (retrying may help)

Foreign errors are mapped once, where a backend calls its library: botocore's in
``kit.storage.s3io`` (``S3Bucket.call``; its private ``_Conflict`` and ``_Missing`` are
``StoreError`` too, answered as None before they leave it), sqlite3's and ``OSError`` in
``kit.storage.sqlite``.
"""

from __future__ import annotations

from kit.errors import KitError


class StoreError(KitError):
    """A transcript store URL is wrong, or its backend failed."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached now; the caller may retry."""
