"""A killed container whose exit Docker never reports (a containerd shim that died can lose
it) still ends its sandbox: every wait for the sandbox (a session's close, a stack's
shutdown) would otherwise last forever. No Docker needed: the client is scripted."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

import kit.host.sandbox
from emulator.sandbox.docker import DockerSandbox
from kit.ids import SandboxId, new_session_id


class LosesExits:
    """A Docker client whose ``wait`` never answers; ``inspect`` says ``running``."""

    def __init__(self, running: bool) -> None:
        self.running = running
        self.killed: list[int] = []
        self.removed: list[str] = []

    async def wait(self, container: str) -> int:
        await asyncio.Event().wait()  # the exit is never reported
        raise AssertionError("unreachable")

    async def kill(self, container: str, sig: int) -> bool:
        self.killed.append(sig)
        return True

    async def inspect(self, container: str) -> dict[str, Any]:
        status = "running" if self.running else "exited"
        state = {"Running": self.running, "Status": status, "ExitCode": 137, "OOMKilled": False}
        return {"State": state}

    async def logs(self, container: str) -> str:
        return ""

    async def remove(self, container: str) -> None:
        for _ in range(20):  # a daemon's answer takes some turns of the loop
            await asyncio.sleep(0)
        self.removed.append(container)


@pytest.mark.parametrize("running", [False, True])
async def test_a_killed_container_whose_exit_docker_lost_still_ends(
    monkeypatch: pytest.MonkeyPatch, running: bool
) -> None:
    """After a SIGTERM the sandbox waits for Docker as long as it takes; after a SIGKILL
    Docker gets LOST_EXIT_S (kit.host.sandbox's bound, for every provider) to report the
    exit, then the sandbox ends as killed (137), whatever the container's record says, and
    the container is removed. (Broken on purpose once: with the plain wait, the sandbox
    never ended and this test timed out.)"""
    monkeypatch.setattr(kit.host.sandbox, "LOST_EXIT_S", 0.0)
    client = LosesExits(running)
    sandbox = DockerSandbox(
        client,  # type: ignore[arg-type]
        "c1",
        new_session_id(),
        SandboxId("s1"),
        "tcp:127.0.0.1:9",
    )
    await sandbox.kill(signal.SIGTERM)
    for _ in range(50):  # the reaper gets every chance to run; it must not give up yet
        await asyncio.sleep(0)
    assert sandbox.alive()
    await sandbox.kill(signal.SIGKILL)
    async with asyncio.timeout(10):
        ended = await sandbox.wait()
    # When wait() answers, the container is gone and never taken for running: a recovery's
    # find() must not hand it back (broken on purpose once, wait() answering before the
    # reaper's remove: removed was [] and alive() True).
    assert client.removed == ["c1"]
    assert not sandbox.alive()
    await sandbox.kill(signal.SIGKILL, reason="orphan")  # as launch() does to a found one
    assert client.killed == [signal.SIGTERM, signal.SIGKILL]
    async with asyncio.timeout(10):
        reaped = await sandbox._reported_exit()  # the provider's own watch lets go too
    assert (ended.exit_code, ended.reason) == (137, "killed")
    assert reaped.exit_code == 137
