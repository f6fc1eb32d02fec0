"""Transcript stores (the Agent SDK's ``SessionStore``), opened from a URL.

=================================================  ==========================================
URL                                                store
=================================================  ==========================================
``memory://``                                      a new in-memory store (this process only)
``sqlite:///ABSOLUTE/PATH.db``                     one SQLite file (created if missing);
                                                   the path percent-encoded
                                                   (:mod:`kit.storage.sqliteurl`),
                                                   ``?durability=os|fsync``
``s3://BUCKET/PREFIX?endpoint_url=URL&region=R``   S3-compatible storage (Tigris, R2, AWS);
                                                   credentials from the usual AWS variables;
                                                   ``&checksums=when_required`` for stores that
                                                   reject boto3's default checksums
``kit+http://HOST:PORT/PATH``                      the session host's store, over HTTP with the
                                                   sandbox's session token (``token=``):
                                                   :mod:`kit.storage.remote`
``do+https://HOST/v1/sessions/ID/store``           the Cloudflare shim's store in session ID's
                                                   Durable Object, over HTTPS with a store
                                                   token the DO minted (``token=``):
                                                   :mod:`kit.storage.remote`
``do+http://HOST:PORT/v1/sessions/ID/store``       the same in clear text: the local rehearsal
                                                   (``wrangler dev`` on loopback)
=================================================  ==========================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kit.storage.errors import StoreError, StoreUnavailable
from kit.storage.sqliteurl import check_sqlite_url

if TYPE_CHECKING:
    from kit.storage.memory import MemorySessionStore
    from kit.storage.sqlite import SQLiteSessionStore

_LAZY = {
    "MemorySessionStore": "kit.storage.memory",
    "SQLiteSessionStore": "kit.storage.sqlite",
}
"""Stores built on the Agent SDK's types, imported when first used: importing the SDK takes
~0.6 s (its MCP types), and a host that only needs ``kit.storage.s3io`` (leases, S3 logs)
should not pay it at start (bench/startup.py)."""

REMOTE_SCHEMES = frozenset({"kit+http", "do+https", "do+http"})
"""Schemes of stores reached over HTTP (:mod:`kit.storage.remote`, which imports httpx:
loaded only for them)."""

__all__ = [
    "MemorySessionStore",
    "SQLiteSessionStore",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str, *, token: str | None = None) -> Any:
    """Open the transcript store ``url`` names; :class:`StoreError` names the fix if it is
    wrong. ``token``: a remote store's token (``kit+http://``, ``do+https://``,
    ``do+http://``)."""
    parts = urlsplit(url)
    if parts.scheme in REMOTE_SCHEMES:
        from kit.storage.remote import RemoteSessionStore, check_url

        check_url(url)
        if not token:
            raise StoreError(
                f"Store URL {url!r}: a {parts.scheme}:// store needs the session token (token=)."
            )
        return RemoteSessionStore(url, token)
    if parts.scheme == "memory":
        from kit.storage.memory import MemorySessionStore

        return MemorySessionStore()
    if parts.scheme == "sqlite":
        path, durability = check_sqlite_url(url)
        from kit.storage.sqlite import SQLiteSessionStore

        return SQLiteSessionStore(path, durability)
    if parts.scheme == "s3":
        from kit.storage.s3 import S3SessionStore

        return S3SessionStore.from_url(url)
    raise StoreError(
        f"Store URL {url!r}: unknown scheme {parts.scheme!r}; "
        "use memory://, sqlite:///PATH, s3://BUCKET/PREFIX, kit+http://HOST:PORT/PATH "
        "or do+https://HOST/v1/sessions/ID/store."
    )
