"""Start, monitor, exit codes, OOM, signal, destroy and the sweep, against real Docker."""

from __future__ import annotations

import asyncio
import secrets
import signal

import pytest

from emulator.containers import CLOUDFLARE_INSTANCES, DockerRunner
from emulator.containers import runner as runner_module
from emulator.containers.errors import NotListening
from emulator.containers.runner import LABEL_CONTAINER, LABEL_RUNNER
from emulator.sandbox.dockerapi import ContainerSpec, DockerClient
from tests.emulator.containers.conftest import Emu, containers_of
from tests.emulator.fly_api.tiny_image import tiny_image

SLEEP = ["sleep", "1000"]


async def test_exit_code_reaches_monitor_and_status(emu: Emu) -> None:
    """A container's own exit code comes back from ``monitor`` and ``GET``; not an OOM."""
    r = await emu.start("c1", entrypoint=["sh", "-c", "exit 3"])
    assert r.status_code == 201
    assert r.json() == {"running": True}
    r = await emu.monitor("c1")
    assert r.status_code == 200
    assert r.json() == {"exit_code": 3, "oom": False}
    r = await emu.http.get("/containers/c1")
    assert r.json() == {"running": False, "exit_code": 3, "oom": False}


async def test_monitor_answers_204_while_it_runs(emu: Emu) -> None:
    """A long-poll that ends before the container does is a 204: ask again."""
    assert (await emu.start("c1", entrypoint=SLEEP)).status_code == 201
    r = await emu.monitor("c1", timeout_s=0.2)
    assert r.status_code == 204
    assert (await emu.http.get("/containers/c1")).json()["running"] is True


async def test_second_start_while_running_is_409(emu: Emu) -> None:
    """One container per id: starting a running one is refused, and it keeps running."""
    assert (await emu.start("c1", entrypoint=SLEEP)).status_code == 201
    r = await emu.start("c1", entrypoint=SLEEP)
    assert r.status_code == 409
    assert r.json()["error"] == "running"
    assert len(containers_of(emu.runner_id)) == 1


async def test_start_after_exit_is_a_new_run(emu: Emu) -> None:
    """Once it exited, the same id starts again (its record is the new run's)."""
    await emu.start("c1", entrypoint=["sh", "-c", "exit 1"])
    assert (await emu.monitor("c1")).json()["exit_code"] == 1
    assert (await emu.start("c1", entrypoint=SLEEP)).status_code == 201
    assert (await emu.http.get("/containers/c1")).json() == {
        "running": True,
        "exit_code": None,
        "oom": False,
    }


async def test_bad_instance_is_422_and_makes_nothing(emu: Emu) -> None:
    """An instance type Cloudflare does not have (a Fly preset, a typo) is a 422 naming
    the valid ones, and no container is made."""
    for bad in ("shared-cpu-1x", "huge", 3):
        r = await emu.start("c1", instance=bad, entrypoint=SLEEP)
        assert r.status_code == 422
        assert r.json()["error"] == "bad_instance"
        for name in CLOUDFLARE_INSTANCES:
            assert name in r.json()["message"]
    assert containers_of(emu.runner_id) == []
    assert (await emu.http.get("/containers/c1")).json()["running"] is False


async def test_oom_is_137_and_oom_true(emu: Emu) -> None:
    """Past the instance's memory (lite: 256 MiB) the kernel kills it: 137, ``oom``."""
    hog = "head -c 600000000 /dev/zero | tail -c 500000000 > /dev/null"
    await emu.start("c1", instance="lite", entrypoint=["sh", "-c", hog])
    r = await emu.monitor("c1")
    assert r.json() == {"exit_code": 137, "oom": True}


async def test_the_oom_hook_kills_it_as_at_its_memory_limit(emu: Emu) -> None:
    """``POST …/oom`` (kit sandbox oom's rehearsal hook) answers once the container died,
    as the kernel's OOM kill reports it (137, ``oom``), and so does ``monitor``; on a
    container that is not running it is a 409; a plain SIGKILL of the next run is no OOM."""
    await emu.start("c1", entrypoint=SLEEP)
    r = await emu.http.post("/containers/c1/oom")
    assert (r.status_code, r.json()) == (200, {"exit_code": 137, "oom": True})
    assert (await emu.monitor("c1")).json() == {"exit_code": 137, "oom": True}
    r = await emu.http.post("/containers/c1/oom")
    assert (r.status_code, r.json()["error"]) == (409, "not_running")
    assert (await emu.http.post("/containers/nope/oom")).status_code == 404
    await emu.start("c1", entrypoint=SLEEP)  # a new run: a kill is a kill again
    await emu.http.post("/containers/c1/signal", json={"signo": 9})
    assert (await emu.monitor("c1")).json() == {"exit_code": 137, "oom": False}


async def test_signal_reaches_the_process(emu: Emu) -> None:
    """``signal(15)`` stops the container's process: 143, not an OOM. (Signalled once its
    server answers: a signal that reaches init before it set its handlers is lost.)"""
    await emu.serve_echo("c1")
    r = await emu.http.post("/containers/c1/signal", json={"signo": int(signal.SIGTERM)})
    assert r.status_code == 202
    assert (await emu.monitor("c1")).json() == {"exit_code": 143, "oom": False}
    r = await emu.http.post("/containers/c1/signal", json={"signo": 15})
    assert r.status_code == 409
    assert r.json()["error"] == "not_running"


async def test_destroy_is_idempotent(emu: Emu) -> None:
    """``destroy`` of a never-started, running or destroyed container is 204; the Docker
    container is gone and the monitor learns it ended."""
    assert (await emu.http.post("/containers/nope/destroy")).status_code == 204
    await emu.start("c1", entrypoint=SLEEP)
    for _ in range(2):
        assert (await emu.http.post("/containers/c1/destroy")).status_code == 204
    assert containers_of(emu.runner_id) == []
    r = await emu.monitor("c1", timeout_s=5)
    assert r.status_code == 200
    assert r.json()["exit_code"] == 137
    assert (await emu.http.get("/containers/c1")).json()["running"] is False


async def test_leftovers_of_a_killed_emulator_are_swept() -> None:
    """A new runner with the same id removes the containers a killed one left."""
    runner_id = f"test-{secrets.token_hex(4)}"
    docker = DockerClient()
    try:
        left = await docker.create(
            ContainerSpec(
                image=tiny_image(),
                name=f"kit-cf-left-{runner_id}",
                user="",
                labels={LABEL_RUNNER: runner_id, LABEL_CONTAINER: "c1"},
                cmd=SLEEP,
            )
        )
        await docker.start(left)
        assert containers_of(runner_id) == [left[:12]]
        async with DockerRunner(runner_id=runner_id):
            assert containers_of(runner_id) == []
    finally:
        await docker.remove(f"kit-cf-left-{runner_id}")
        await docker.close()


async def test_a_container_gone_before_its_ports_are_forwarded_is_a_start_failure(
    emu: Emu, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that exits before the emulator enters its namespace (no process to enter) is a
    502 ``start_failed`` naming the port, and leaves no container: not a 500 with the
    container left behind."""

    async def gone(pid: int, port: int, **_: object) -> asyncio.Server:
        raise NotListening(f"The container's process {pid} is gone.")

    monkeypatch.setattr(runner_module, "forward_out", gone)
    r = await emu.start("c1", entrypoint=SLEEP, env={"URL": "http://127.0.0.1:8787/x"})
    assert r.status_code == 502
    assert r.json()["error"] == "start_failed"
    assert "Cannot forward port 8787" in r.json()["message"]
    assert containers_of(emu.runner_id) == []
