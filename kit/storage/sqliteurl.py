"""``sqlite:///PATH?durability=os|fsync`` store URLs, built and read in one place: by the
host (a session's own store, :func:`kit.host.gateway.store_urls`), by the sandbox views
(:func:`kit.host.sandbox.runtime_config`, a container's path for the file) and by the
runtime (:func:`kit.storage.open_store`).

``PATH`` is a URL path: percent-encoded (RFC 3986), so a folder named ``a?b #1`` is
``a%3Fb%20%231``. kit encodes every path it puts in a URL (:func:`sqlite_url`), so any
path, whatever it holds, reads back as itself. A URL someone wrote by hand is decoded the
same way: ``%XX`` is byte ``XX``, and a ``%`` that is not followed by two hex digits is a
plain ``%`` (``/data/100%/t.db`` reads as written); a path holding ``%`` and two hex digits
must write that ``%`` as ``%25``. A ``#`` ends the path (``%23`` is one in it), so a URL
with a fragment is refused rather than read as a shorter path.

No import of the Agent SDK: the host reads these URLs without paying for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, quote, unquote_to_bytes, urlsplit

from kit.durability import DEFAULT, Durability, parse_durability
from kit.storage.errors import StoreError

SQLITE_PREFIX = "sqlite:///"

__all__ = [
    "SQLITE_PREFIX",
    "SQLiteURL",
    "check_sqlite_url",
    "read_sqlite_url",
    "sqlite_durability",
    "sqlite_url",
    "unparse_sqlite_url",
]


class SQLiteURL(NamedTuple):
    """A ``sqlite:///`` URL's parts: the file's path (decoded) and the rest as written."""

    path: Path
    query: str
    """The options, without the ``?`` (``""``: none)."""
    fragment: str
    """What followed a ``#`` (``""``: nothing); :func:`kit.storage.open_store` refuses one."""


def sqlite_url(path: Path | str, durability: Durability | None = None) -> str:
    """The URL of the SQLite file at absolute ``path`` (``?durability=…`` when given); every
    byte of the path a URL would read otherwise is percent-encoded."""
    encoded = quote(os.fsencode(path).lstrip(b"/"), safe="/")
    option = f"?durability={durability.value}" if durability is not None else ""
    return f"{SQLITE_PREFIX}{encoded}{option}"


def read_sqlite_url(url: str) -> SQLiteURL | None:
    """The parts of a ``sqlite:///PATH[?OPTIONS]`` URL, its path decoded; None for any
    other URL (another scheme, or not three slashes: :func:`kit.storage.open_store` says
    what is wrong with those)."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    parts = urlsplit(url)
    path = os.fsdecode(unquote_to_bytes(parts.path))
    return SQLiteURL(Path("/" + path.lstrip("/")), parts.query, parts.fragment)


def unparse_sqlite_url(parts: SQLiteURL) -> str:
    """The URL of ``parts``: :func:`read_sqlite_url` gives them back."""
    query = f"?{parts.query}" if parts.query else ""
    return sqlite_url(parts.path) + query + (f"#{parts.fragment}" if parts.fragment else "")


def check_sqlite_url(url: str) -> tuple[Path, Durability]:
    """The file a ``sqlite:`` store URL names and how durable its writes are;
    StoreError naming the fix when the URL is not one kit can open (checked before anything
    is made on the disk for it)."""
    sqlite = read_sqlite_url(url)
    if urlsplit(url).netloc or sqlite is None or sqlite.path == Path("/"):
        raise StoreError(
            f"Store URL {url!r}: write sqlite:///ABSOLUTE/PATH.db (three slashes, then the "
            "path; ?durability=os or fsync after it, as KIT_DURABILITY)."
        )
    if sqlite.fragment or "\0" in str(sqlite.path):
        raise StoreError(
            f"Store URL {url!r}: a # ends the path and a path holds no NUL; write a # in "
            "the path as %23."
        )
    return sqlite.path, sqlite_durability(url, sqlite.query)


def sqlite_durability(url: str, query: str) -> Durability:
    """The durability a ``sqlite:///`` store URL's query asks for (``durability=os`` or
    ``fsync``; :data:`kit.durability.DEFAULT` when it says nothing); StoreError naming the
    fix for anything else."""
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - {"durability"})
    if unknown or len(options.get("durability", [])) > 1:
        raise StoreError(
            f"Store URL {url!r}: a sqlite:/// store takes one option, durability=os or "
            f"fsync{f' (not {unknown[0]!r})' if unknown else ', given once'}; write a ? "
            "in the path as %3F, a # as %23."
        )
    given = options.get("durability", [None])[0]
    if given == "":
        raise StoreError(f"Store URL {url!r}: durability= needs a value, os or fsync.")
    try:
        return parse_durability(given, DEFAULT, "durability")
    except ValueError as exc:
        raise StoreError(f"Store URL {url!r}: {exc}") from None
