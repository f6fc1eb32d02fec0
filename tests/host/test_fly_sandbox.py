"""Sandboxes as Fly Machines (kit.host.fly_sandbox) on the Fly API emulator, whose machines
are containers of kit's runtime image on this host's Docker (host network, each machine on
its own loopback address): a real turn, a kill read back from the machine's exit event,
find and reap, and a stopped machine claimed by the next session."""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest

from emulator.fly_api import DockerRunner, InProcessRunner, Served, serve
from emulator.model import ScenarioSource
from emulator.model import create_app as create_model_app
from fly import FlyClient
from kit.bundle import Bundle, build_bundle, load_project
from kit.cli.flygateway import reap_once
from kit.cli.settings import EXAMPLE_PROJECT
from kit.host.fly_sandbox import FlySandboxProvider
from kit.host.lease import S3Leases
from kit.host.runtime_client import RuntimeClient
from kit.host.s3log import S3LogStore
from kit.host.sandbox import Endpoint, SandboxSpec
from kit.ids import SandboxId, new_session_id
from kit.protocol.runtime_api import RuntimeEvent, TurnRequest
from kit.storage.s3 import unique_prefix
from kit.storage.s3io import S3Bucket
from tests.conftest import BUCKET, serve_on_loopback
from tests.dockerhost import runtime_image

pytestmark = pytest.mark.slow

TOKEN = "fly-sandbox-test-token"
APP = "kit-fly-sandboxes-test"


@dataclass
class World:
    provider: FlySandboxProvider
    api: FlyClient
    served: Served
    bundle: Bundle
    model: Endpoint


@pytest.fixture
async def world(kit_tmp: Path) -> AsyncIterator[World]:
    """The emulator running machines as host-network containers, the offline model on
    loopback TCP, the example bundle, and a provider for one sandbox app."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = load_project(EXAMPLE_PROJECT)
    bundle = build_bundle(project, kit_tmp / "bundles")
    key = "kit-test-" + secrets.token_urlsafe(12)
    model_app = create_model_app(ScenarioSource.from_paths(list(project.scenarios)), api_key=key)
    async with (
        serve_on_loopback(model_app) as model_url,
        DockerRunner(network="host") as runner,
        serve(token=TOKEN, runner=runner) as served,
        FlyClient(TOKEN, base_url=served.url) as api,
    ):
        await api.create_app(APP, "personal")
        provider = FlySandboxProvider(
            api, APP, kit_tmp / "bundles", lambda: image.tag, host_id="test-host"
        )
        try:
            yield World(provider, api, served, bundle, Endpoint(model_url, key))
        finally:
            await provider.close()


def _spec(world: World, tier: str = "basic") -> SandboxSpec:
    return SandboxSpec(
        session_id=new_session_id(),
        tier=tier,
        bundle_digest=world.bundle.digest,
        store_url="memory://",
        model=world.model,
        runtime_token="tok-" + secrets.token_hex(8),
        idle_timeout_s=60,
    )


async def _answer(endpoint: str, token: str, text: str) -> list[RuntimeEvent]:
    client = RuntimeClient(endpoint, token)
    events: list[RuntimeEvent] = []
    async with asyncio.timeout(180):
        async for batch in client.stream_turn(TurnRequest("t1", text)):
            events += batch
    return events


async def test_a_turn_in_a_machine_then_a_kill_then_a_claim(world: World) -> None:
    """The example agent answers in a machine (a Skill and Bash ran inside); SIGKILL is read
    back as 137 ``killed`` from the machine's exit event; the stopped machine is claimed,
    with the next session's config, by the next start."""
    spec = _spec(world)
    sandbox = await world.provider.start(spec)
    assert sandbox.endpoint.startswith("http://127.")
    assert await world.provider.find(spec.session_id) is sandbox
    events = await _answer(sandbox.endpoint, spec.runtime_token, "Can I still return order 1042?")
    assert events[-1].kind == "result"
    assert "1042" in " ".join(str(e.data.get("text")) for e in events if e.kind == "assistant")
    assert any(e.data.get("name") == "Bash" for e in events if e.kind == "tool_use")
    machine = await world.api.get_machine(APP, sandbox.id)
    assert machine.config["guest"] == {"cpu_kind": "shared", "cpus": 4, "memory_mb": 1024}
    modes = {f["guest_path"].rsplit("/", 1)[-1]: f["mode"] for f in machine.config["files"]}
    assert modes["lookup.py"] == 0o555  # scripts stay executable
    assert modes["config.json"] == 0o644
    await sandbox.kill(signal.SIGKILL, reason="killed")
    info = await asyncio.wait_for(sandbox.wait(), 60)
    assert (info.exit_code, info.reason) == (137, "killed")
    assert await world.provider.find(spec.session_id) is None

    second = _spec(world)
    again = await world.provider.start(second)
    assert again.id == sandbox.id  # the stopped machine, claimed
    claimed = await world.api.get_machine(APP, again.id)
    assert claimed.metadata["kit_session"] == second.session_id
    events = await _answer(again.endpoint, second.runtime_token, "Can I still return order 1042?")
    assert events[-1].kind == "result"
    info = await again.stop(grace_s=5)
    assert info.exit_code in (0, 143)


async def test_reap_stops_what_no_session_keeps(world: World) -> None:
    """A started machine whose session the host does not keep is stopped by reap; a new
    provider (another gateway) finds a kept one by its metadata."""
    kept, orphan = _spec(world), _spec(world)
    first = await world.provider.start(kept)
    second = await world.provider.start(orphan)
    other = FlySandboxProvider(
        world.api, APP, world.provider.bundles, world.provider.image, host_id="other"
    )
    try:
        found = await other.find(kept.session_id)
        assert found is not None
        assert found.id == first.id
        reaped = await other.reap(lambda s: s == kept.session_id)
        assert reaped == [second.id]
        info = await asyncio.wait_for(second.wait(), 60)
        assert info.exit_code == 137
        assert first.alive()
    finally:
        await other.close()
        await first.stop(grace_s=5)


async def test_a_claim_from_a_stale_listing_takes_no_machine_another_host_claimed(
    kit_tmp: Path,
) -> None:
    """Gateway B lists the stopped machines; gateway A claims the one there is; then B tries
    it: B re-reads it under the lease, sees it is no longer stopped and claims nothing (it
    will create its own). (Broken on purpose once: without the re-read, B's update gave A's
    running machine to B's session: two sessions on one machine.)"""
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), kit_tmp / "bundles")
    async with (
        serve(token=TOKEN, runner=InProcessRunner()) as served,
        FlyClient(TOKEN, base_url=served.url) as api_a,
    ):
        await api_a.create_app(APP, "personal")
        a = FlySandboxProvider(api_a, APP, kit_tmp / "bundles", lambda: "img:1", host_id="a")
        first = _spec_for(bundle)
        machine = await api_a.create_machine(APP, a.machine_config(first))
        await api_a.wait(APP, machine.id, "started")
        await api_a.stop_machine(APP, machine.id)
        await api_a.wait(APP, machine.id, "stopped")
        spec_a, spec_b = _spec_for(bundle), _spec_for(bundle)
        claimed: list[str] = []

        class ClaimMeanwhile(httpx.AsyncHTTPTransport):
            """B's network: the answer to its listing of stopped machines arrives only
            after A has claimed the machine."""

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                answer = await super().handle_async_request(request)
                if request.url.params.get("state") == "stopped" and not claimed:
                    got = await a._claim(spec_a, a.machine_config(spec_a))
                    claimed.append(got.id if got else "")
                return answer

        async with FlyClient(TOKEN, base_url=served.url, transport=ClaimMeanwhile()) as api_b:
            b = FlySandboxProvider(api_b, APP, kit_tmp / "bundles", lambda: "img:1", host_id="b")
            assert await b._claim(spec_b, b.machine_config(spec_b)) is None
        assert claimed == [machine.id]
        now = await api_a.get_machine(APP, machine.id)
        assert now.metadata["kit_session"] == spec_a.session_id


def _spec_for(bundle: Bundle) -> SandboxSpec:
    return SandboxSpec(
        session_id=new_session_id(),
        tier="basic",
        bundle_digest=bundle.digest,
        store_url="memory://",
        model=Endpoint("http://127.0.0.1:9", "k"),
        runtime_token="tok-" + secrets.token_hex(8),
        idle_timeout_s=60,
    )


async def test_a_gateways_reaper_stops_machines_no_live_session_holds(
    kit_tmp: Path, s3_endpoint: str
) -> None:
    """A machine whose session some gateway holds a live lease on stays; one whose
    gateway died (no live lease) is stopped by any gateway's reaper. (Broken on purpose
    once: keeping every session, the orphan ran on.)"""
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), kit_tmp / "bundles")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    logs = S3LogStore(S3Bucket(client, BUCKET, unique_prefix()), owner="gateway-b")
    async with (
        serve(token=TOKEN, runner=InProcessRunner()) as served,
        FlyClient(TOKEN, base_url=served.url) as api,
    ):
        await api.create_app(APP, "personal")
        provider = FlySandboxProvider(api, APP, kit_tmp / "bundles", lambda: "i:1", host_id="b")
        held, orphan = _spec_for(bundle), _spec_for(bundle)
        machines = {}
        for spec in (held, orphan):
            made = await api.create_machine(APP, provider.machine_config(spec))
            await api.wait(APP, made.id, "started")
            machines[spec.session_id] = made.id
        await S3Leases(logs.bucket, owner="gateway-a").acquire(held.session_id)
        assert await reap_once(provider, logs) == [SandboxId(machines[orphan.session_id])]
        assert (await api.get_machine(APP, machines[orphan.session_id])).state == "stopped"
        assert (await api.get_machine(APP, machines[held.session_id])).state == "started"
