"""The Docker runner behind the API: a machine is a container with the guest's limits, its
env and files; stop resets the root filesystem, suspend keeps the process, OOM is 137."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from emulator.fly_api import RunnerError, serve
from emulator.fly_api.docker_runner import LABEL_RUNNER, DockerRunner
from tests.emulator.fly_api.conftest import TOKEN
from tests.emulator.fly_api.spec_check import checked
from tests.emulator.fly_api.tiny_image import tiny_image

pytestmark = pytest.mark.slow

APP = "kit-docker"
LOOP = "while true; do sleep 1; done"


class Machines:
    """An HTTP client of the emulator for one app, and its Docker runner."""

    def __init__(self, http: httpx.AsyncClient, runner: DockerRunner, image: str) -> None:
        self.http, self.runner, self.image = http, runner, image

    async def create(self, script: str = LOOP, **config: Any) -> str:
        config = {
            "image": self.image,
            "init": {"exec": ["/bin/sh", "-c", script]},
            "restart": {"policy": "no"},
            **config,
        }
        r = await self.http.post(f"/v1/apps/{APP}/machines", json={"config": config})
        mid = str(checked(r, "Machines_create", 200)["id"])
        await self.wait(mid, "started")
        return mid

    async def wait(self, mid: str, state: str) -> None:
        for _ in range(3):  # 3 times 60 s at most; re-issued on 408 as a client does
            r = await self.http.get(
                f"/v1/apps/{APP}/machines/{mid}/wait", params={"state": state, "timeout": 60}
            )
            if r.status_code != 408:
                checked(r, "Machines_wait", 200)
                return
        raise AssertionError(f"machine {mid} never reached {state}")

    async def exec(self, mid: str, *command: str) -> dict[str, Any]:
        r = await self.http.post(
            f"/v1/apps/{APP}/machines/{mid}/exec", json={"command": list(command), "timeout": 20}
        )
        found: dict[str, Any] = checked(r, "Machines_exec", 200)
        return found

    async def post(self, mid: str, action: str, body: Any = None) -> None:
        r = await self.http.post(f"/v1/apps/{APP}/machines/{mid}/{action}", json=body)
        assert r.status_code == 200, r.text

    def inspect(self, mid: str) -> dict[str, Any]:
        done = subprocess.run(
            ["docker", "inspect", self.runner.container(mid)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        found: dict[str, Any] = json.loads(done.stdout)[0]
        return found


@pytest.fixture
async def machines() -> AsyncIterator[Machines]:
    """The emulator with a Docker runner and the tiny image (skips without a daemon)."""
    image = tiny_image()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        DockerRunner() as runner,
        serve(token=TOKEN, runner=runner, rate_limits=None) as served,
        httpx.AsyncClient(base_url=served.url, headers=headers, timeout=90) as http,
    ):
        r = await http.post("/v1/apps", json={"name": APP, "org_slug": "personal"})
        checked(r, "Apps_create", 201)
        yield Machines(http, runner, image)


def _containers_of(runner: DockerRunner) -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_RUNNER}={runner.runner_id}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.split()


async def test_a_machine_runs_with_its_guest_env_files_and_no_network(
    machines: Machines,
) -> None:
    """memory_mb and cpus become limits, env and files reach the container, network none."""
    files = [
        {
            "guest_path": "/etc/kit/hello.txt",
            "raw_value": base64.b64encode(b"hello from config").decode(),
            "mode": 0o600,
        }
    ]
    mid = await machines.create(
        "echo $GREETING > /tmp/env; " + LOOP,
        env={"GREETING": "hi there"},
        files=files,
        guest={"cpu_kind": "shared", "cpus": 1, "memory_mb": 512},
    )
    assert (await machines.exec(mid, "cat", "/etc/kit/hello.txt"))["stdout"] == "hello from config"
    assert (await machines.exec(mid, "cat", "/tmp/env"))["stdout"] == "hi there\n"
    env = machines.inspect(mid)["Config"]["Env"]
    assert f"FLY_MACHINE_ID={mid}" in env
    assert f"FLY_APP_NAME={APP}" in env
    failed = await machines.exec(mid, "cat", "/nope")
    assert failed["exit_code"] == 1
    assert "No such file" in failed["stderr"]
    host = machines.inspect(mid)["HostConfig"]
    assert host["Memory"] == 512 * 1024 * 1024
    assert host["NanoCpus"] == 1_000_000_000
    assert host["NetworkMode"] == "none"


async def test_stop_then_start_resets_the_root_filesystem(machines: Machines) -> None:
    """A file written in one run is gone after stop → start (a new container)."""
    mid = await machines.create()
    assert (await machines.exec(mid, "touch", "/tmp/marker"))["exit_code"] == 0
    assert (await machines.exec(mid, "ls", "/tmp/marker"))["exit_code"] == 0
    await machines.post(mid, "stop", {"signal": "SIGTERM", "timeout": "5s"})
    await machines.wait(mid, "stopped")
    await machines.post(mid, "start")
    await machines.wait(mid, "started")
    assert (await machines.exec(mid, "ls", "/tmp/marker"))["exit_code"] != 0


async def test_suspend_then_start_keeps_the_process(machines: Machines) -> None:
    """Suspend pauses the container; start thaws the same processes (PID 1 keeps its start
    time and the file it wrote)."""
    mid = await machines.create()
    before = (await machines.exec(mid, "cat", "/proc/1/stat"))["stdout"]
    await machines.exec(mid, "touch", "/tmp/kept")
    await machines.post(mid, "suspend")
    await machines.wait(mid, "suspended")
    assert machines.inspect(mid)["State"]["Paused"] is True
    await machines.post(mid, "start")
    await machines.wait(mid, "started")
    assert machines.inspect(mid)["State"]["Paused"] is False
    assert (await machines.exec(mid, "cat", "/proc/1/stat"))["stdout"].split()[21] == (
        before.split()[21]
    )
    assert (await machines.exec(mid, "ls", "/tmp/kept"))["exit_code"] == 0


async def test_an_oom_kill_is_exit_137_with_oom_killed(machines: Machines) -> None:
    """A process that outgrows memory_mb is killed; the exit event says 137, oom_killed."""
    mid = await machines.create("tail /dev/zero", guest={"cpus": 1, "memory_mb": 256})
    await machines.wait(mid, "stopped")
    r = await machines.http.get(f"/v1/apps/{APP}/machines/{mid}/events")
    events = checked(r, "Machines_list_events", 200)
    exit_event = next(e for e in events if e["type"] == "exit")["request"]["exit_event"]
    assert exit_event["exit_code"] == 137
    assert exit_event["oom_killed"] is True


async def test_leaving_the_emulator_and_closing_the_runner_removes_every_container() -> None:
    """Machines still running when the emulator stops are killed; close() leaves nothing
    of the runner's on the daemon."""
    image = tiny_image()
    runner = DockerRunner()
    try:
        async with serve(token=TOKEN, runner=runner, rate_limits=None) as served:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=served.url, headers=headers, timeout=90) as http:
                await http.post("/v1/apps", json={"name": APP, "org_slug": "personal"})
                mid = await Machines(http, runner, image).create()
                assert len(_containers_of(runner)) == 1
        assert _containers_of(runner) == []
        with pytest.raises(RunnerError):
            runner.container(mid)
    finally:
        await runner.close()
    assert _containers_of(runner) == []


async def test_the_network_can_be_chosen_per_machine() -> None:
    """A function given as ``network`` picks each launch's: host for one app, none else."""
    image = tiny_image()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    runner = DockerRunner(network=lambda spec: "host" if spec.app == "kit-gw" else "none")
    async with (
        runner,
        serve(token=TOKEN, runner=runner, rate_limits=None) as served,
        httpx.AsyncClient(base_url=served.url, headers=headers, timeout=90) as http,
    ):
        for app in (APP, "kit-gw"):
            await http.post("/v1/apps", json={"name": app, "org_slug": "personal"})
        sandbox = await Machines(http, runner, image).create()
        config = {"image": image, "init": {"exec": ["/bin/sh", "-c", LOOP]}}
        r = await http.post("/v1/apps/kit-gw/machines", json={"config": config})
        gateway = checked(r, "Machines_create", 200)["id"]
        r = await http.get(f"/v1/apps/kit-gw/machines/{gateway}/wait", params={"timeout": 60})
        checked(r, "Machines_wait", 200)
        machines = Machines(http, runner, image)
        assert machines.inspect(sandbox)["HostConfig"]["NetworkMode"] == "none"
        assert machines.inspect(gateway)["HostConfig"]["NetworkMode"] == "host"


def _leave_container(runner_id: str, image: str) -> None:
    """A container labelled as ``runner_id``'s, as a runner that was killed leaves one."""
    subprocess.run(
        [
            "docker",
            "create",
            "--network",
            "none",
            "--label",
            f"{LABEL_RUNNER}={runner_id}",
            image,
            "true",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )


async def test_a_runner_removes_what_a_killed_runner_of_its_id_left() -> None:
    """A container labelled with the runner's id, left by a runner that never closed (its
    process was SIGKILLed), is removed when a runner of that id starts; another id's is not."""
    image = tiny_image()
    mine, theirs = (
        DockerRunner(runner_id="kit-test-sweep-a"),
        DockerRunner(runner_id="kit-test-sweep-b"),
    )
    try:
        _leave_container(mine.runner_id, image)
        _leave_container(theirs.runner_id, image)
        assert len(_containers_of(mine)) == 1
        async with DockerRunner(runner_id=mine.runner_id) as again:
            assert _containers_of(again) == []
        assert len(_containers_of(theirs)) == 1
    finally:
        await theirs.close()
        await mine.close()
    assert _containers_of(theirs) == []
