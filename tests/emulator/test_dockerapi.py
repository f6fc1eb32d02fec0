"""The Docker Engine API client against a real dockerd: lifecycle, labels, limits, errors."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emulator.sandbox.dockerapi import (
    Bind,
    ContainerSpec,
    DockerClient,
    DockerUnavailable,
)
from kit.host.errors import SandboxError
from tests.dockerhost import runtime_image

PYTHON = ["/opt/kit/bin/python", "-c"]


@pytest.fixture
async def docker() -> AsyncIterator[DockerClient]:
    """A client, and every container the test made (label kit.test) removed after it."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    client = DockerClient()
    client.image = image.tag  # type: ignore[attr-defined]
    run = uuid.uuid4().hex[:12]
    client.labels = {"kit.test": run}  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        for found in await client.list({"kit.test": run}):
            await client.remove(found["Id"])
        await client.close()


def _spec(docker: DockerClient, code: str, **kw: object) -> ContainerSpec:
    return ContainerSpec(
        image=docker.image,  # type: ignore[attr-defined]
        name=f"kit-test-{uuid.uuid4().hex[:12]}",
        user="10001:10001",
        labels=dict(docker.labels),  # type: ignore[attr-defined]
        entrypoint=[*PYTHON, code],
        **kw,  # type: ignore[arg-type]
    )


async def test_a_container_runs_exits_and_is_found_by_label(docker: DockerClient) -> None:
    """create → start → wait gives the exit code; list finds it by label; remove forgets it."""
    spec = _spec(docker, "import os, sys; sys.exit(3 if os.getuid() == 10001 else 1)")
    cid = await docker.create(spec)
    await docker.start(cid)
    assert await asyncio.wait_for(docker.wait(cid), 60) == 3
    found = await docker.list(dict(spec.labels))
    assert [c["Id"] for c in found] == [cid]
    await docker.remove(cid)
    assert await docker.list(dict(spec.labels)) == []


async def test_no_network_and_a_read_only_root_but_writable_mounts(
    docker: DockerClient, kit_tmp: Path
) -> None:
    """network none: only loopback; the root refuses writes; a bind and the tmpfs take them."""
    kit_tmp.chmod(0o777)
    code = (
        "import os, socket, sys\n"
        "names = [n for _, n in socket.if_nameindex()]\n"
        "try:\n    open('/opt/x', 'w')\n    sys.exit(10)\nexcept OSError: pass\n"
        "open('/tmp/ok', 'w').write('t')\n"
        "open('/work/ok', 'w').write('w')\n"
        "sys.exit(0 if names == ['lo'] else 11)\n"
    )
    spec = _spec(
        docker,
        code,
        binds=(Bind(str(kit_tmp), "/work"),),
        tmpfs={"/tmp": "rw,nosuid,nodev,size=16m"},
    )
    cid = await docker.create(spec)
    await docker.start(cid)
    assert await asyncio.wait_for(docker.wait(cid), 60) == 0
    assert (kit_tmp / "ok").read_text() == "w"


async def test_past_the_memory_limit_the_kernel_kills_it_and_inspect_says_oom(
    docker: DockerClient,
) -> None:
    """A container that outgrows its memory limit exits 137 with State.OOMKilled."""
    spec = _spec(
        docker,
        "b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096])",
        memory_bytes=64 * 2**20,
    )
    cid = await docker.create(spec)
    await docker.start(cid)
    assert await asyncio.wait_for(docker.wait(cid), 60) == 137
    assert (await docker.inspect(cid))["State"]["OOMKilled"] is True


async def test_kill_sends_the_signal(docker: DockerClient) -> None:
    """SIGTERM to a sleeping container ends it with 143; a second kill finds it not running."""
    spec = _spec(docker, "import time\nfor _ in range(600): time.sleep(0.1)")
    cid = await docker.create(spec)
    await docker.start(cid)
    for _ in range(100):  # running, as Docker reports it
        if (await docker.inspect(cid))["State"]["Running"]:
            break
        await asyncio.sleep(0.05)
    assert await docker.kill(cid, signal.SIGTERM)
    assert await asyncio.wait_for(docker.wait(cid), 60) == 143
    assert not await docker.kill(cid, signal.SIGKILL)


def test_the_default_bridge_is_refused() -> None:
    """A spec asking for any network but none/host fails before Docker is called."""
    spec = ContainerSpec(image="x", name="x", user="1", network="bridge")  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="ARCHITECTURE §9"):
        spec.body()


async def test_no_daemon_is_reported_with_the_fix(kit_tmp: Path) -> None:
    """A socket nobody serves gives DockerUnavailable naming scripts/docker-up."""
    client = DockerClient(str(kit_tmp / "nobody.sock"))
    try:
        with pytest.raises(DockerUnavailable, match="scripts/docker-up"):
            await client.version()
    finally:
        await client.close()
