"""Transcript stores (the Agent SDK's ``SessionStore``), opened from a URL.

================================  ============================================
URL                               store
================================  ============================================
``memory://``                     a new in-memory store (this process only)
``sqlite:///ABSOLUTE/PATH.db``    one SQLite file (created if missing)
================================  ============================================

``s3://BUCKET/PREFIX?endpoint_url=…`` and ``do+https://…`` come with the durable-session
and Cloudflare work; until then they are refused with a message saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kit.storage.errors import StoreError, StoreUnavailable
from kit.storage.memory import MemorySessionStore
from kit.storage.sqlite import SQLiteSessionStore

__all__ = [
    "MemorySessionStore",
    "SQLiteSessionStore",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]


def open_store(url: str) -> Any:
    """Open the transcript store ``url`` names; :class:`StoreError` names the fix if it is wrong."""
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return MemorySessionStore()
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise StoreError(
                f"Store URL {url!r}: write sqlite:///ABSOLUTE/PATH.db (three slashes, then the path)."
            )
        return SQLiteSessionStore(Path(parts.path))
    raise StoreError(
        f"Store URL {url!r}: unknown scheme {parts.scheme!r}; use memory:// or sqlite:///PATH."
    )
