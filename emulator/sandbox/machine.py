"""What the emulator's providers share: sandboxes on this machine, one folder per session
under ``root``, bundles in a local bundle store, sockets in a short ``run_root``.

:class:`~emulator.sandbox.local.LocalSandboxProvider` (process groups forked by the fork
server) and :class:`~emulator.sandbox.docker.DockerSandboxProvider` (containers of the
runtime image) are both one; ``kit dev --sandbox local|docker`` picks which, and its
control API, banner and tests see them through this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from pathlib import Path
from typing import Any, ClassVar

from emulator.sandbox.folders import LOGS
from kit.bundle.build import MANIFEST
from kit.host.errors import SandboxError
from kit.host.sandbox import Sandbox, SandboxProvider
from kit.ids import SessionId, is_session_id


class MachineProvider(SandboxProvider):
    """A provider whose sandboxes run on this machine (see the module docstring)."""

    kind: ClassVar[str]
    """``local`` or ``docker``: what ``kit dev --sandbox`` calls it."""

    root: Path
    """The sessions' folders: ``<root>/<session_id>/workspace`` and the rest."""
    run_root: Path
    """A short folder for Unix sockets (the proxies', each runtime's)."""
    bundles: Path
    """The bundle store: each bundle in a folder named by the first 32 digits of its digest."""
    running: dict[SessionId, Any]
    """The live sandbox of each session."""
    uid: int | None = None
    """The user sandboxes run as (None: this user)."""
    gid: int | None = None
    isolation: str = ""
    """How sandboxes are confined: ``native``, ``bwrap``, ``container``; empty: not at all."""
    unisolated: str = ""
    """Empty when sandboxes are isolated; otherwise why not."""
    unenforced: str = ""
    """Empty when tier limits are enforced; otherwise why not."""

    @property
    def traverse_gid(self) -> int | None:
        """The group that must pass through the host's folders to reach a sandbox's own
        (0710); None: nobody but this user (the state dir stays 0700)."""
        return None

    def workspace(self, session_id: str) -> Path:
        """The session's workspace folder (the agent's cwd)."""
        return self.root / session_id / "workspace"

    def files_owner(self) -> tuple[int | None, int | None]:
        """Who owns what the sandbox writes in its workspace (None: this user)."""
        return self.uid, self.gid

    def inside(self, host_path: Path) -> str:
        """Where a sandbox sees ``host_path`` (a bundle's file): the same path, unless the
        provider mounts it elsewhere."""
        return str(host_path)

    def bundle_dir(self, digest: str) -> Path:
        """Where the bundle ``digest`` is on this machine (SandboxError if it is not)."""
        path = self.bundles / digest[:32]
        if not (path / MANIFEST).is_file():
            raise SandboxError(
                f"Bundle {digest[:12]}… is not in {self.bundles}; build it first (kit dev "
                "builds the project's bundle at start and on every save)."
            )
        return path

    def sandbox(self, session_id: str) -> Sandbox | None:
        """The session's running sandbox, if any."""
        found: Sandbox | None = self.running.get(SessionId(session_id))
        return found

    async def kill(
        self, session_id: str, sig: int = signal.SIGKILL, reason: str | None = None
    ) -> bool:
        """Send ``sig`` to the session's sandbox (``reason``: what it reports); False if none."""
        sandbox = self.sandbox(session_id)
        if sandbox is None:
            return False
        await sandbox.kill(sig, reason)
        return True

    async def discard(self, session_id: str) -> None:
        if not is_session_id(session_id):  # never a path of our choosing
            raise SandboxError(f"not a session id: {session_id!r}")
        if SessionId(session_id) in self.running:
            raise SandboxError(f"session {session_id} still has a sandbox running")
        for folder in (self.root / session_id, self.run_root / session_id[:13]):
            await asyncio.to_thread(shutil.rmtree, folder, True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / LOGS / f"{session_id}.log").unlink()

    async def settled(self) -> None:
        """Return once the provider is warmed up (benchmarks start from a quiet machine)."""
