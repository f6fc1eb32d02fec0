"""Files only their owner may read: event logs, transcripts, tokens, kit's own state.

Modes are set explicitly, never left to the umask. A SQLite database is created 0600
before SQLite opens it: SQLite gives its ``-wal``, ``-shm`` and ``-journal`` files the
main file's mode (and, as root, its owner), so they are private too.

Some of these files sit in folders a sandbox user owns (a session's transcript folder),
where root must never follow a link that user put there. What is guaranteed: the last
component of a path given here is never followed when it is a link (``O_NOFOLLOW``), and
:func:`tighten` walks below it only through descriptors, never following a link; modes are
changed through the opened descriptor and only ever lose bits. The folders *on the way* to
that last component are followed as they are: callers pass paths whose folders the sandbox
user cannot change (the host's own), or walk to them by descriptor themselves
(:mod:`emulator.sandbox.local`). :func:`open_private` opens only a regular file with one
link: a FIFO, socket or device planted in its place is refused at once, never waited on
(``O_NONBLOCK``), and so is a hard link to some other file.
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
    file loses any group and other bits. Anything but a regular file with one link is
    refused (``OSError``) without blocking: a FIFO there would otherwise hang the caller.
    Returns a blocking descriptor."""
    truncate = bool(flags & os.O_TRUNC)  # only once it is known to be the file meant
    flags = (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        created = True
    except FileExistsError:
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a FIFO no one reads, or a socket
                raise _not_a_file(path) from None
            raise
        created = False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise _not_a_file(path)
        if created:
            os.fchmod(fd, FILE_MODE)  # whatever the umask took away or left
        else:
            _strip(fd, st)
        if truncate:
            os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_a_file(path: Path) -> OSError:
    return OSError(errno.EINVAL, "not a regular file with one link; remove it", str(path))


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
