"""The host side of the runtime fork server (:mod:`kit.runtime.forkserver`).

One fork server per provider, started as the sandbox user with a ``SOCK_SEQPACKET`` control
socket. :meth:`ForkServer.spawn` creates the child's stdin pipe, sends its child end and the log with the
request (``SCM_RIGHTS``) and returns a :class:`ForkedChild` whose exit code the fork server
reports when it reaps the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.host.errors import SandboxError
from kit.private import open_private


@dataclass
class ForkedChild:
    """A runtime forked by the fork server: its pid (= its process group) and exit code."""

    pid: int
    _stdin_fd: int
    _exited: asyncio.Future[int] = field(repr=False)

    def open_gate(self) -> None:
        """Tell the child go (``KIT_RUNTIME_GATE``: one line on its stdin), then close it."""
        try:
            os.write(self._stdin_fd, b"go\n")
        finally:
            os.close(self._stdin_fd)

    async def wait(self) -> int:
        """The child's return code (negative: the signal that killed it)."""
        return await asyncio.shield(self._exited)


class ForkServer:
    """A running fork server."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._spawned: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._early_exits: dict[int, int] = {}
        self._ids = itertools.count(1)

    @property
    def alive(self) -> bool:
        """Whether the fork server is running."""
        return (
            self.proc is not None
            and self.proc.returncode is None
            and self._reader is not None
            and not self._reader.done()
        )

    async def start(
        self, argv: Sequence[str], env: dict[str, str], cwd: Path, log_path: Path, timeout_s: float
    ) -> None:
        """Start the fork server and wait until it has imported the runtime."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with os.fdopen(open_private(log_path), "ab") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log_file,
                cwd=cwd,
                env={**env, "KIT_ZYGOTE_FD": str(theirs.fileno())},
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        theirs.close()
        ours.setblocking(False)
        self._sock = ours
        loop = asyncio.get_running_loop()
        try:
            first = await asyncio.wait_for(loop.sock_recv(ours, 65536), timeout_s)
        except TimeoutError:
            first = b""
        if first != b'{"imported": true}':
            await self.stop()
            raise SandboxError(f"The runtime fork server did not start; see {log_path}.")
        self._reader = asyncio.create_task(self._read_reports(), name="fork-server-reports")

    async def spawn(
        self, cwd: Path, env: dict[str, str], log_path: Path, jail: dict[str, Any] | None = None
    ) -> ForkedChild:
        """Fork a runtime child working in ``cwd`` with exactly ``env`` (confined to ``jail``,
        :meth:`kit.runtime.jail.Jail.to_json`, when given)."""
        if not self.alive or self._sock is None or self.proc is None:
            raise SandboxError("The runtime fork server is not running.")
        loop = asyncio.get_running_loop()
        in_r, in_w = os.pipe()
        # Never through a link, never blocking on a FIFO (open_private). stdout goes there too.
        err = open_private(log_path)
        ident = next(self._ids)
        spawned: asyncio.Future[int] = loop.create_future()
        self._spawned[ident] = spawned
        try:
            request = json.dumps(
                {"spawn": ident, "cwd": str(cwd), "env": env, "jail": jail}
            ).encode()
            socket.send_fds(self._sock, [request], [in_r, err, err])
        finally:
            for fd in (in_r, err):
                os.close(fd)
        try:
            pid = await asyncio.wait_for(spawned, 10)
        except TimeoutError:
            os.close(in_w)
            raise SandboxError("The runtime fork server did not answer a spawn request.") from None
        exited = self._exits.setdefault(pid, loop.create_future())
        if pid in self._early_exits and not exited.done():
            exited.set_result(self._early_exits.pop(pid))
        return ForkedChild(pid, in_w, exited)

    async def _read_reports(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            message = await loop.sock_recv(self._sock, 65536)
            if not message:
                break
            report: dict[str, Any] = json.loads(message)
            if "spawned" in report:
                future = self._spawned.pop(int(report["spawned"]), None)
                if future is not None and not future.done():
                    future.set_result(int(report["pid"]))
            elif "exited" in report:
                pid, code = int(report["exited"]), int(report["code"])
                future = self._exits.get(pid)
                if future is None:
                    self._early_exits[pid] = code  # reaped before the spawn reply was read
                elif not future.done():
                    future.set_result(code)
        # the fork server is gone; children die with it (parent-death signal): report them killed.
        for future in self._exits.values():
            if not future.done():
                future.set_result(-signal.SIGKILL)

    async def stop(self) -> None:
        """Stop the fork server (its children follow it)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader
        if self._sock is not None:
            self._sock.close()
