"""The host's folders for local sandboxes: made and handed to the sandbox user without ever
following a link that user may have planted, and the short socket folder under the temp dir."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from kit.durability import Durability, sync_folder
from kit.host.errors import SandboxError
from kit.host.sandbox import store_durability
from kit.private import DIR_MODE, open_private, private_folder

LOGS = ".logs"
"""The host's folder of runtime logs under the provider's root (0700)."""
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def own_folders(uid: int | None, gid: int | None, anchor: Path, *names: str) -> None:
    """Make folder ``anchor/names...`` (each one missing made) and give every folder
    after ``anchor`` to the sandbox user (``uid``/``gid``; None: keep this user), 0700. ``anchor`` is the host's; below it the
    walk goes by descriptor and never follows a link: the sandbox user may have put one
    there, or swap a folder for one meanwhile (root would chown, chmod or bind whatever
    it points at)."""
    fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, DIR_MODE, dir_fd=fd)
            try:
                child = os.open(name, _NOFOLLOW_DIR, dir_fd=fd)
            except OSError:
                raise SandboxError(
                    f"{anchor.joinpath(*names)} is not a plain folder (a symlink?); remove "
                    "it and retry."
                ) from None
            os.close(fd)
            fd = child
            if uid is not None and gid is not None:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


class EntrySync:
    """At fsync durability (the ``sqlite:///`` store URL's), the fsync of the folder that
    holds a session's transcript folder, started in a thread when made (beside the rest of
    a sandbox's start); at os durability, nothing.

    The store fsyncs its own folder (its file's name), not that folder's name in its
    parent: the host made the folder, so the host syncs it. A start awaits :meth:`synced`
    before it returns, so no turn runs, and no ``result`` is durable, before the folder its
    transcript is in is on the disk. It runs at every start, not only when the folder is
    new: a start that failed, or a host that died, after the mkdir left a name that may not
    be on the disk. Needs a running event loop."""

    def __init__(self, folder: Path, store_url: str) -> None:
        self.parent = folder.parent
        self._sync = (
            sync_folder(self.parent) if store_durability(store_url) is Durability.FSYNC else None
        )

    async def synced(self) -> None:
        """Return once the folder's name is on the disk (at once at os durability);
        SandboxError if the fsync failed."""
        if self._sync is None:
            return
        try:
            await self._sync
        except OSError as exc:
            raise SandboxError(
                f"Cannot fsync {self.parent} (the folder of the session's transcript folder): "
                f"{exc}; check the disk, then start the session again."
            ) from exc


def short_run_dir(root: Path, passage_for: int | None = None) -> Path:
    """A short per-root folder under the temp dir for Unix sockets, owned by this user:
    0700, or 0710 to group ``passage_for`` (the sandbox user's, when it is another user).

    Its name is predictable, so one made by someone else (who could swap the sockets in
    it) is refused rather than used."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"kit-{os.geteuid()}-{digest}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxError(
            f"{path} (the sandboxes' socket folder) is not a folder of this user's that only "
            "it can write; someone else may have made it. Remove it and start again."
        )
    private_folder(path, passage_for)
    return path


def first_shut(path: Path, uid: int | None, gid: int | None) -> Path | None:
    """The first folder on ``path`` that user ``uid`` (group ``gid``) cannot enter; None
    if it can enter all of them, or when sandboxes run as this user (``uid`` None)."""
    if uid is None or gid is None:
        return None
    for folder in [*reversed(path.resolve().parents), path.resolve()]:
        st = folder.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return folder
    return None


def write_owned(path: Path, text: str, uid: int | None, gid: int | None) -> None:
    """A new file ``path`` holding ``text``: 0600, given to ``uid``/``gid`` (the sandbox
    user, who reads and deletes it) when set. Whatever was at ``path`` is removed first,
    and a link planted there is never followed."""
    path.unlink(missing_ok=True)
    fd = open_private(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
        if uid is not None and gid is not None:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
