"""Private files: made 0600 whatever the umask, old ones tightened, links never followed."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.private import open_private, private_folder, private_sqlite, tighten, write_private


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Umask 0: any mode left to it would come out world-readable (and writable)."""
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_new_database_and_its_wal_and_shm_are_0600_whatever_the_umask(
    tmp_path: Path, no_umask: None
) -> None:
    """SQLite gives -wal and -shm the main file's mode: made 0600 first, all three are."""
    db_path = tmp_path / "log.sqlite"
    private_sqlite(db_path)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    modes = {p.name: _mode(p) for p in tmp_path.iterdir()}  # before close() removes two
    db.close()
    assert modes == dict.fromkeys(["log.sqlite", "log.sqlite-shm", "log.sqlite-wal"], 0o600)


def test_an_older_world_readable_database_and_its_sidecars_are_tightened(tmp_path: Path) -> None:
    """Files an older kit left 0644 (and a 0755 one) lose only their group and other bits."""
    db_path = tmp_path / "log.sqlite"
    sqlite3.connect(db_path).close()
    for suffix, mode in (("", 0o644), ("-wal", 0o644), ("-shm", 0o755), ("-journal", 0o666)):
        Path(f"{db_path}{suffix}").touch()
        os.chmod(f"{db_path}{suffix}", mode)
    private_sqlite(db_path)
    modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
    assert modes == {
        "log.sqlite": 0o600,
        "log.sqlite-wal": 0o600,
        "log.sqlite-shm": 0o700,
        "log.sqlite-journal": 0o600,
    }


def test_links_are_never_followed(tmp_path: Path) -> None:
    """A link where a log or sidecar should be (a sandbox user's doing) changes nothing it
    points at: private_sqlite skips it, open_private refuses it, tighten walks past it."""
    tmp_path.chmod(0o755)
    outside = tmp_path / "outside.txt"
    outside.write_text("someone else's")
    outside.chmod(0o644)
    folder = tmp_path / "session"
    folder.mkdir(mode=0o755)
    (folder / "transcript.sqlite-wal").symlink_to(outside)
    (folder / "runtime.log").symlink_to(outside)
    (folder / "elsewhere").symlink_to(tmp_path)
    private_sqlite(folder / "transcript.sqlite")
    with pytest.raises(OSError, match="symbolic links"):  # ELOOP
        os.close(open_private(folder / "runtime.log"))
    tighten(folder, depth=2)
    tighten(folder / "elsewhere", depth=2)
    assert (_mode(outside), _mode(tmp_path)) == (0o644, 0o755)
    assert _mode(folder) == 0o700
    assert outside.read_text() == "someone else's"


def test_write_private_replaces_the_content_0600(tmp_path: Path, no_umask: None) -> None:
    """A new file is 0600 under umask 0; an older 0644 one is 0600 once rewritten."""
    new, old = tmp_path / "host-id", tmp_path / "dev.json"
    old.write_text("an older, longer content")
    old.chmod(0o644)
    write_private(new, "host-1\n")
    write_private(old, "{}")
    assert (new.read_text(), old.read_text()) == ("host-1\n", "{}")
    assert (_mode(new), _mode(old)) == (0o600, 0o600)


def test_a_private_folder_is_0700_or_a_passage_for_one_group(tmp_path: Path) -> None:
    """0700; with a group, 0710 owned by that group (pass through, never list or read)."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    private_folder(folder)
    assert _mode(folder) == 0o700
    group = os.getgid()
    private_folder(folder, group)
    assert (_mode(folder), folder.stat().st_gid) == (0o710, group)


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in this thread if the block is still running after ``seconds``
    (an ``open`` blocked on a FIFO is interrupted by the signal)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("blocked")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("flags", [os.O_WRONLY | os.O_APPEND, os.O_RDONLY, os.O_RDWR])
def test_a_fifo_or_a_hard_link_in_place_of_a_log_is_refused_at_once(
    tmp_path: Path, flags: int
) -> None:
    """A FIFO where a log goes (no one reading it) is refused without blocking the caller,
    for writing and reading alike; so is a hard link to another file, left as it was."""
    fifo = tmp_path / "runtime.log"
    os.mkfifo(fifo)
    with _deadline(5), pytest.raises(OSError, match="not a regular file"):
        os.close(open_private(fifo, flags))
    other = tmp_path / "transcript.sqlite"
    other.write_text("another session's")
    os.link(other, tmp_path / "linked.log")
    with _deadline(5), pytest.raises(OSError, match="not a regular file"):
        os.close(open_private(tmp_path / "linked.log", flags | os.O_TRUNC))
    assert other.read_text() == "another session's"


def test_a_private_file_opens_blocking(tmp_path: Path) -> None:
    """What open_private returns is an ordinary, blocking descriptor (a child's stderr)."""
    fd = open_private(tmp_path / "runtime.log")
    try:
        assert os.get_blocking(fd)
    finally:
        os.close(fd)
