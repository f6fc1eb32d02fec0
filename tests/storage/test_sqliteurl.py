"""``sqlite:///`` store URLs (kit.storage.sqliteurl): whatever a path holds, the URL kit
builds for it reads back as that path, through every parser on the way (the host's
folder, a sandbox's view of it, the runtime's :func:`open_store`); hand-written URLs read
as documented."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.durability import Durability
from kit.host.gateway import store_urls
from kit.host.sandbox import (
    Endpoint,
    SandboxSpec,
    SandboxView,
    runtime_config,
    store_durability,
    store_folder,
)
from kit.ids import SessionId
from kit.storage import StoreError, open_store
from kit.storage.sqliteurl import SQLiteURL, read_sqlite_url, sqlite_url

NAMES = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b)
"""A folder name as the kernel takes it: any bytes but ``/`` and NUL (not UTF-8 needed)."""
FOLDERS = st.lists(NAMES, min_size=1, max_size=4).map(
    lambda names: Path(os.fsdecode(b"/" + b"/".join(names)))
)


def _spec(store_url: str) -> SandboxSpec:
    return SandboxSpec(
        session_id=SessionId("s1"),
        tier="basic",
        bundle_digest="ab" * 32,
        store_url=store_url,
        model=Endpoint("unix:/run/model.sock", "model-token"),
        runtime_token="runtime-token",
        idle_timeout_s=60,
    )


@given(FOLDERS, st.sampled_from(Durability))
def test_a_session_store_url_reads_back_as_its_path(folder: Path, durability: Durability) -> None:
    """``store_urls`` for a folder of any name: the host makes the folder the URL names,
    the durability survives, and a sandbox reads the same file, whether it sees the host's
    paths (local) or the folder mounted elsewhere (a container)."""
    url = store_urls(None, folder, durability)("s1")
    path = folder / "s1" / "transcript.sqlite"
    assert read_sqlite_url(url) == SQLiteURL(path, f"durability={durability.value}", "")
    assert store_folder(url) == folder / "s1"
    assert store_durability(url) is durability
    local = SandboxView("/b", "/w", "/h", "/t", "unix:/r.sock")
    assert runtime_config(_spec(url), local).store_url == url
    mounted = SandboxView("/b", "/w", "/h", "/t", "unix:/r.sock", {str(folder / "s1"): "/store"})
    inside = read_sqlite_url(runtime_config(_spec(url), mounted).store_url)
    assert inside == SQLiteURL(
        Path("/store/transcript.sqlite"), f"durability={durability.value}", ""
    )
    container_folder = SandboxView(
        "/b", "/w", "/h", "/t", "unix:/r.sock", {"/store": str(folder)}
    )  # a container path with odd characters, mapped back: still exact
    mapped = runtime_config(_spec(sqlite_url("/store/s1/t.db")), container_folder).store_url
    assert read_sqlite_url(mapped) == SQLiteURL(folder / "s1" / "t.db", "", "")


def test_a_path_a_url_would_misread_opens_its_own_file(tmp_path: Path) -> None:
    """A folder named with a ``?``, a ``#``, spaces and ``%41``: open_store opens the file
    the host named, not ``…/a`` with options ``b #1 %41/…``."""
    folder = tmp_path / "a ?b #1 %41"
    url = store_urls(None, folder, Durability.OS)("s1")
    store = open_store(url)
    try:
        assert store.path == folder / "s1" / "transcript.sqlite"
        assert store.path.is_file()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data/t.db", "/data/t.db"),
        ("sqlite:////data/t.db", "/data/t.db"),  # four slashes: the same absolute path
        ("sqlite:///data/a%20b/t.db", "/data/a b/t.db"),
        ("sqlite:///data/a%3Fb/t.db?durability=os", "/data/a?b/t.db"),
        ("sqlite:///data/100%/t.db", "/data/100%/t.db"),  # no hex after it: a plain %
        ("sqlite:///data/5%zz/t.db", "/data/5%zz/t.db"),
        ("sqlite:///data/%2541/t.db", "/data/%41/t.db"),  # a literal %41 written %2541
        ("sqlite:///donn%C3%A9es/t.db", "/données/t.db"),
        ("sqlite:///données/t.db", "/données/t.db"),  # unencoded non-ASCII, as before
    ],
)
def test_hand_written_urls_read_as_documented(url: str, path: str) -> None:
    """A KIT_STORE_URL a user wrote: ``%XX`` decoded, any other ``%`` kept as written."""
    parts = read_sqlite_url(url)
    assert parts is not None
    assert parts.path == Path(path)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite:///data/a#b/t.db", "a # ends the path .* %23"),
        ("sqlite:///data/a%00b/t.db", "no NUL"),
        ("sqlite:///data/a?b/t.db", "one option, .*'b/t.db'.* %3F"),
    ],
)
def test_a_path_written_unencoded_is_refused_with_the_fix(url: str, match: str) -> None:
    """A ``#`` or ``?`` written raw in a path is refused, naming its escape, rather than
    opening a file at a shorter path."""
    with pytest.raises(StoreError, match=match):
        open_store(url)


def test_other_urls_are_not_sqlite() -> None:
    """Other schemes, and ``sqlite://`` with two slashes (open_store refuses it), are not
    read as SQLite paths."""
    assert read_sqlite_url("s3://bucket/prefix") is None
    assert read_sqlite_url("sqlite://relative.db") is None
    assert store_folder("memory://") is None
    assert store_durability("kit+http://127.0.0.1:1/store") is None
    assert store_durability("sqlite:///a/t.db?durability=sometimes") is Durability.FSYNC
