"""Container sandboxes: a real turn of the example agent in a container of the runtime image,
its exits, and how a new host finds and reaps what an old one left."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from emulator.model import ScenarioSource
from emulator.model import create_app as create_model_app
from emulator.sandbox.docker import LABEL_SESSION, DockerSandboxProvider
from kit.bundle import Bundle, build_bundle, load_project
from kit.cli.settings import EXAMPLE_PROJECT
from kit.host.runtime_client import RuntimeClient
from kit.host.sandbox import Endpoint, SandboxSpec
from kit.ids import new_session_id
from kit.protocol.runtime_api import RuntimeEvent, TurnRequest
from tests.dockerhost import runtime_image

pytestmark = pytest.mark.slow


@dataclass
class World:
    provider: DockerSandboxProvider
    bundle: Bundle
    model: Endpoint
    root: Path
    image: str


@pytest.fixture
async def world(kit_tmp: Path) -> AsyncIterator[World]:
    """The runtime image, the example bundle, the offline model on a unix socket, a provider."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = load_project(EXAMPLE_PROJECT)
    bundle = build_bundle(project, kit_tmp / "bundles")
    key = "kit-test-" + secrets.token_urlsafe(12)
    app = create_model_app(ScenarioSource.from_paths(list(project.scenarios)), api_key=key)
    sock = kit_tmp / "model.sock"
    server = uvicorn.Server(uvicorn.Config(app, uds=str(sock), log_level="warning"))
    serving = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    sock.chmod(0o666)
    provider = DockerSandboxProvider(kit_tmp / "sandboxes", kit_tmp / "bundles", image.tag)
    try:
        yield World(provider, bundle, Endpoint(f"unix:{sock}", key), kit_tmp, image.tag)
    finally:
        await provider.reap(lambda _: False)
        await provider.close()
        server.should_exit = True
        await serving


def _spec(world: World, tier: str = "standard-1") -> SandboxSpec:
    return SandboxSpec(
        session_id=new_session_id(),
        tier=tier,
        bundle_digest=world.bundle.digest,
        store_url="memory://",
        model=world.model,
        runtime_token="tok-" + secrets.token_hex(8),
        idle_timeout_s=60,
    )


async def test_a_real_turn_runs_in_a_container(world: World) -> None:
    """The example agent answers a turn that runs a Skill and a Bash tool, inside a container
    with no network; SIGTERM stops it (143, stopped) and it is gone from Docker."""
    spec = _spec(world)
    sandbox = await world.provider.start(spec)
    assert await world.provider.find(spec.session_id) is sandbox
    client = RuntimeClient(sandbox.endpoint, spec.runtime_token)
    events: list[RuntimeEvent] = []
    async with asyncio.timeout(120):
        async for batch in client.stream_turn(TurnRequest("t1", "Can I still return order 1042?")):
            events += batch
    kinds = [e.kind for e in events]
    assert kinds[-1] == "result"
    tools = [e.data.get("name") for e in events if e.kind == "tool_use"]
    assert "Bash" in tools
    results = [e.data for e in events if e.kind == "tool_result"]
    assert results
    assert not any(r["is_error"] for r in results)  # python3 ran the skill's script inside
    assert "1042" in " ".join(str(e.data["text"]) for e in events if e.kind == "assistant")
    info = await sandbox.stop()
    assert (info.exit_code, info.reason) == (143, "stopped")
    assert await world.provider.find(spec.session_id) is None
    assert await world.provider.client.list({LABEL_SESSION: spec.session_id}) == []


async def test_a_new_host_finds_the_old_hosts_container_and_reaps_it(world: World) -> None:
    """A provider that did not start the container finds it by its labels, and reap() kills
    and removes the containers whose session it does not keep."""
    spec = _spec(world)
    sandbox = await world.provider.start(spec)
    successor = DockerSandboxProvider(world.root / "sandboxes", world.root / "bundles", world.image)
    try:
        found = await successor.find(spec.session_id)
        assert found is not None
        assert found.id == sandbox.id
        assert await successor.reap(lambda s: s != spec.session_id) == [sandbox.id]
        assert (await sandbox.wait()).exit_code == 137
        assert await successor.client.list({LABEL_SESSION: spec.session_id}) == []
    finally:
        await successor.close()


async def test_a_killed_container_reports_killed(world: World) -> None:
    """SIGKILL: exit 137, reason killed (not oom: the kernel did not kill it)."""
    sandbox = await world.provider.start(_spec(world))
    await sandbox.kill()
    info = await sandbox.wait()
    assert (info.exit_code, info.reason) == (137, "killed")


async def test_oom_rehearsal_ends_the_container_as_an_oom_kill(world: World) -> None:
    """`kit sandbox oom` on a container: exit 137, reason oom; usage was measured before."""
    sandbox = await world.provider.start(_spec(world))
    usage = await sandbox.usage()
    assert usage is not None
    assert usage.peak_memory_mib > 50  # the CLI and the runtime
    await sandbox.oom()
    info = await sandbox.wait()
    assert (info.exit_code, info.reason) == (137, "oom")


async def test_an_oom_kill_of_any_process_ends_the_whole_container(world: World) -> None:
    """The kernel OOM-kills one process past the tier's memory (here one started beside the
    runtime, which itself is fine): the provider kills the whole container, as a local
    sandbox ends, and it reports exit 137, reason oom. (Broken on purpose once: without the
    provider's watch of Docker's oom events the container ran on and this timed out.)"""
    sandbox = await world.provider.start(_spec(world, tier="lite"))
    hog = await asyncio.create_subprocess_exec(
        "docker",
        "exec",
        sandbox.container,
        "python3",
        "-c",
        "x = b'x' * (400 * 2**20)",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(60):
        info = await sandbox.wait()
        await hog.wait()
    assert (info.exit_code, info.reason) == (137, "oom")
    assert hog.returncode != 0
