"""Files only their owner may read: event logs, transcripts, tokens, kit's own state.

Modes are set explicitly, never left to the umask. A SQLite database is created 0600
before SQLite opens it: SQLite gives its ``-wal``, ``-shm`` and ``-journal`` files the
main file's mode (and, as root, its owner), so they are private too.

Some of these files sit in folders a sandbox user owns (a session's transcript folder, its
sandbox folder), where root must never follow a link that user put there: everything here
opens with ``O_NOFOLLOW`` and changes modes through the opened descriptor, and only ever
takes bits away.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
PASSAGE_MODE = 0o710
"""A folder its group may pass through (to a path it is given) but not list or read."""
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
"""What SQLite keeps beside a database file."""
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """``os.open`` ``path`` (created 0600 when missing, never through a link); an existing
    file loses any group and other bits. Returns the descriptor."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _strip(fd)
        except BaseException:
            os.close(fd)
            raise
    else:
        os.fchmod(fd, FILE_MODE)  # whatever the umask took away or left
    return fd


def write_private(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text``, the file 0600."""
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as f:
        f.write(text)


def private_sqlite(path: Path) -> None:
    """Make SQLite database ``path`` private before it is opened: created 0600 when missing,
    else it and its sidecars lose any group and other bits (files of older kits)."""
    os.close(open_private(path, os.O_RDONLY))
    for suffix in SQLITE_SIDECARS:
        tighten(Path(f"{path}{suffix}"))


def tighten(path: Path, depth: int = 0) -> None:
    """Take the group and other bits off ``path`` (a file or folder) and, ``depth`` levels
    down, off what it holds. Links are never followed, sockets and devices are left alone,
    and what is not there is skipped."""
    try:
        fd = os.open(path, _OPEN)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        if _skippable(exc):
            return
        raise
    try:
        _tighten_fd(fd, depth)
    finally:
        os.close(fd)


def _tighten_fd(fd: int, depth: int) -> None:
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return
    _strip(fd, st)
    if depth <= 0 or not stat.S_ISDIR(st.st_mode):
        return
    for name in os.listdir(fd):
        try:
            child = os.open(name, _OPEN, dir_fd=fd)
        except FileNotFoundError:
            continue  # gone meanwhile
        except OSError as exc:
            if _skippable(exc):
                continue
            raise
        try:
            _tighten_fd(child, depth - 1)
        finally:
            os.close(child)


def _strip(fd: int, st: os.stat_result | None = None) -> None:
    st = st or os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        os.fchmod(fd, mode & ~0o077)


def _skippable(exc: OSError) -> bool:
    """A link (``ELOOP``), a socket (``ENXIO``): not a file or folder to tighten."""
    return exc.errno in (errno.ELOOP, errno.ENXIO)


def private_folder(path: Path, passage_for: int | None = None) -> None:
    """Make folder ``path`` 0700, or with ``passage_for`` (a group id) 0710 owned by that
    group: its members may pass through to paths they are given inside, never list or read
    it. Never follows a link."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if passage_for is not None:
            os.fchown(fd, -1, passage_for)
        os.fchmod(fd, DIR_MODE if passage_for is None else PASSAGE_MODE)
    finally:
        os.close(fd)
