"""Files the host puts into the sandbox's workspace (``PUT /v1/files``, see
:mod:`kit.protocol.runtime_api`): a session's email attachments, put into each of its
sandboxes before a turn runs.

The runtime writes them as the sandbox user, so they belong to the agent like any file it
made. The walk goes by descriptor and never follows a link (the agent may have planted one
where a folder goes); the file is written under a temporary name and renamed into place, so
a link at its name is replaced, never written through, and a reader sees the old file or the
new one whole.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from kit.runtime.errors import AgentRuntimeError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_MODE = 0o644
DIR_MODE = 0o755


class NotAFolder(AgentRuntimeError):
    """A folder on the path is a link or a file, or the file's name is a folder's."""


def write_file(workspace: Path, parts: tuple[str, ...], data: bytes) -> None:
    """Write ``data`` at ``workspace/parts...`` (parts checked by
    :func:`kit.protocol.runtime_api.file_path_parts`), making missing folders."""
    *folders, name = parts
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, DIR_MODE, dir_fd=fd)
            try:
                child = os.open(folder, _DIR, dir_fd=fd)
            except OSError:
                raise NotAFolder(f"{'/'.join(parts)}: {folder!r} is not a plain folder") from None
            os.close(fd)
            fd = child
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise NotAFolder(f"{'/'.join(parts)}: {name!r} is a folder")
        except FileNotFoundError:
            pass
        # A short name of its own: a name of 255 bytes leaves no room for more, and two
        # writes of one path at once must not share a temporary file.
        tmp = f".kit-tmp-{secrets.token_hex(8)}"
        out = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            FILE_MODE,
            dir_fd=fd,
        )
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view) :]
            finally:
                os.close(out)
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)  # no half file left behind
            raise
    finally:
        os.close(fd)
