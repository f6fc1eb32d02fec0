"""Who may read what in ``kit dev``'s state dir: its user, and each sandbox its own folders.

===============================  =========================  ==================================
path                             mode                       why
===============================  =========================  ==================================
the state dir                    0700 (0710†)               nothing in it is anyone else's
``api-token``, ``host-id``,      0600                       the host's secrets and its state
``dev.json``, ``host.lock``,
``chat-sessions.json``
``sessions/``                    0700                       the event logs (DO SQLite files):
``sessions/*.sqlite`` (+ -wal,   0600                       every prompt, reply and tool
-shm)                                                       result; only the host reads them
``transcripts/``                 0700 (0710†)
``transcripts/<id>/``            0700, the sandbox user's   its runtime writes the transcript
``transcripts/<id>/*.sqlite``    0600, the sandbox user's   (the host reads it as root, or as
(+ -wal, -shm)                                              the same user when not root)
``bundles/``                     0700 (0710†)               a bundle inside keeps the modes it
                                                            ships with (0644/0755)
``sandboxes/``                   0700 (0710†)               the provider's (:mod:`emulator.
``sandboxes/<id>/``              0700, the sandbox user's   sandbox.local`): each sandbox's
``sandboxes/**/*.log``           0600                       workspace, home and temp; the
                                                            runtime's stderr
===============================  =========================  ==================================

A sandbox reaches its bundle, its folders and the proxies' sockets through binds root makes
(the fork server's namespaces, or bubblewrap with its staging namespace), so nothing here
has to be open to it. † Only when sandboxes run as another user *without* those binds
(``KIT_SANDBOX_ISOLATION=off`` as root, or no isolation available) do they walk in as that
user: then these folders are 0710 to its group, which may pass through to a path it is
given but never list or read one; event logs stay 0700/0600 whatever the mode.

A state dir an older kit left (0755 folders, 0644 logs) is tightened at start.
"""

from __future__ import annotations

import fcntl
import grp
import os
import secrets
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from kit.cli.errors import CliError
from kit.private import DIR_MODE, open_private, private_folder, tighten, write_private

HOST_FILES = ("api-token", "host-id", "dev.json", "host.lock", "chat-sessions.json")
"""The state dir's own files (only these: it may be a folder the user gave, with others)."""
PASSAGES = ("bundles", "transcripts")
"""Folders on a sandbox's way to its bundle and transcript (``sandboxes/`` is the
provider's: it sets its own mode)."""
LOGS = "sessions"


def lock(state: Path, name: str = "host.lock", what: str = "kit host") -> TextIO:
    """Hold ``state/<name>`` for the host's life (close the returned file to let go): two
    hosts on one state dir would share its sockets, files, host id and containers. The lock
    goes with the process, however it ends. ``what`` names the holder in the refusal."""
    fd = open_private(state / name, os.O_RDWR | os.O_APPEND)
    handle = os.fdopen(fd, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise CliError(
            f"Another {what} ({holder}) is using the state dir {state}; stop it, or give "
            "this one its own KIT_STATE_DIR."
        ) from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def host_id(state: Path) -> str:
    """This host's id, made once per state dir (which one host holds at a time): it owns
    the host's S3 leases and labels its containers, so a host restarted on the same state
    dir takes back what it left, and never touches another state dir's."""
    path = state / "host-id"
    if path.is_file():
        found = path.read_text(errors="replace").strip()
        if found and found.isprintable() and len(found) <= 128:
            return found
    made = f"{socket.gethostname()}-{secrets.token_hex(4)}"
    write_private(path, made + "\n")
    return made


def make_private(state: Path) -> None:
    """Create ``state`` if needed and make it 0700, before anything is written in it."""
    state.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = state.lstat()
    if st.st_mode & stat.S_ISVTX or state.resolve() == Path("/"):
        raise CliError(
            f"The state dir {state} is a shared folder (like /tmp); kit makes its state dir "
            "private (0700): give it a folder of its own with KIT_STATE_DIR."
        )
    _apply(private_folder, state)


def secure(state: Path, passage_for: int | None) -> None:
    """Give every folder of the state dir its mode, and take group and other bits off what
    an older kit left world-readable. ``passage_for``: the group sandboxes walk in with
    (:attr:`LocalSandboxProvider.traverse_gid`), or None: nothing is open to anyone."""
    for name in HOST_FILES:
        _apply(tighten, state / name)
    logs = state / LOGS
    logs.mkdir(mode=DIR_MODE, exist_ok=True)
    _apply(tighten, logs, 1)
    for name in PASSAGES:
        folder = state / name
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        if name == "transcripts":  # each session's folder and its SQLite files
            _apply(tighten, folder, 2)
        _apply(private_folder, folder, passage_for)
    _apply(private_folder, state, passage_for)


def passage_warning(state: Path, user: str | None, gid: int) -> str:
    """The one line ``kit dev`` logs when sandboxes walk into the state dir themselves."""
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return (
        f"Sandboxes run unconfined as {user}, so they walk to their own folders: {state} and "
        f"its bundles/, sandboxes/ and transcripts/ let group {group} pass through (0710: no "
        "listing, no reading); event logs stay private. Confined sandboxes need none of it "
        "(KIT_SANDBOX_ISOLATION=auto or bwrap)."
    )


def _apply(change: Callable[..., None], path: Path, *args: object) -> None:
    """``change(path, *args)``, an OSError as a :class:`CliError` naming the path."""
    try:
        change(path, *args)
    except OSError as exc:
        owner = ""
        if isinstance(exc, PermissionError):
            owner = " (it belongs to another user: remove it, or run kit as that user)"
        raise CliError(
            f"Cannot make {exc.filename or path} private: {exc.strerror or exc}{owner}."
        ) from None
