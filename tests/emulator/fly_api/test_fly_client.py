"""kit's own ``fly/`` client against the emulator: the calls a deploy and the Fly sandbox
provider make, end to end over loopback, with Fly's errors mapped as the client expects."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

import fly
from emulator.fly_api import FakeClock, InProcessRunner, Served, serve
from tests.emulator.fly_api.conftest import TOKEN
from tests.emulator.fly_api.spec_check import checked

APP = "kit-client"


@pytest.fixture
async def api() -> AsyncIterator[tuple[fly.FlyClient, Served, InProcessRunner, FakeClock]]:
    """The emulator (Fly's rate limits on) and a FlyClient pointed at it, whose backoff
    sleeps move the emulator's clock instead of waiting."""
    runner, clock = InProcessRunner(), FakeClock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    async with (
        serve(token=TOKEN, runner=runner, clock=clock) as served,
        fly.FlyClient(TOKEN, base_url=fly.base_url(served.url), sleep=sleep) as client,
    ):
        yield client, served, runner, clock


async def test_a_deploy_and_a_session_machine_through_the_client(
    api: tuple[fly.FlyClient, Served, InProcessRunner, FakeClock],
) -> None:
    """App, secrets, IPs; a leased machine started, stopped and restarted; metadata; exec;
    events; destroy — every call through FlyClient, its errors the client's own."""
    client, served, runner, _clock = api
    await client.create_app(APP, "personal")
    with pytest.raises(fly.NameTaken):
        await client.create_app(APP, "personal")
    assert [a.name for a in await client.list_apps("personal")] == [APP]
    await client.set_secrets(APP, {"ANTHROPIC_API_KEY": "sk-test"})
    assert [s.name for s in await client.list_secrets(APP)] == ["ANTHROPIC_API_KEY"]
    await client.assign_ip(APP, "shared_v4")
    assert len(await client.list_ips(APP)) == 1

    config: fly.MachineConfig = {
        "image": "kit-runtime:test",
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1024},
        "metadata": {"kit_session_id": "s1"},
        "restart": {"policy": "no"},
    }
    machine = await client.create_machine(APP, config, lease_ttl=30)
    assert machine.nonce
    await client.wait(APP, machine.id, "started", version=machine.version)
    with pytest.raises(fly.LeaseHeld):
        await client.stop_machine(APP, machine.id)
    await client.stop_machine(APP, machine.id, nonce=machine.nonce)
    await client.wait(APP, machine.id, "stopped")
    await client.release_lease(APP, machine.id, machine.nonce)

    async with client.leased(APP, machine.id, ttl_s=10) as lease:
        await client.start_machine(APP, machine.id, nonce=lease.nonce)
        await client.wait(APP, machine.id, "started")
        await client.update_metadata(
            APP, machine.id, {"kit_turn": "1"}, machine_version=machine.version, nonce=lease.nonce
        )
        with pytest.raises(fly.LeaseHeld):
            await client.acquire_lease(APP, machine.id, ttl_s=10)
    found = await client.list_machines(APP, states=["started"], metadata={"kit_session_id": "s1"})
    assert [m.id for m in found] == [machine.id]
    assert (await client.get_metadata(APP, machine.id))["kit_turn"] == "1"

    done = await client.exec(APP, machine.id, ["echo", "hi"])
    assert done.stdout == "hi\n"
    with pytest.raises(fly.ExecFailed):
        await client.exec(APP, machine.id, ["exit", "3"])

    runner.exit(machine.id, 137, oom_killed=True)
    await client.wait(APP, machine.id, "stopped")
    events = await client.list_events(APP, machine.id)
    assert events[0].raw["request"]["exit_event"]["oom_killed"] is True

    await client.delete_machine(APP, machine.id, force=True)
    await client.wait(APP, machine.id, "destroyed")
    assert await client.list_machines(APP) == []
    await client.delete_app(APP)
    assert await client.find_app(APP) is None
    async with httpx.AsyncClient(base_url=served.url) as anonymous:
        checked(await anonymous.get("/v1/apps"), "Apps_list", 401)
