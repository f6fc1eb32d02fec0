"""The same API over local processes, where Docker cannot run (:class:`LocalRunner`)."""

from __future__ import annotations

import json
import os
import signal

import anyio
import pytest

from tests.emulator.containers.conftest import Emu
from tests.emulator.containers.test_outbound import FETCH

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="a local container's own network and cgroup need root"
)


async def test_exit_code_and_signal(local_emu: Emu) -> None:
    """The process's exit code comes back from ``monitor``; SIGTERM reads 143."""
    await local_emu.start("c1", entrypoint=["sh", "-c", "exit 3"])
    assert (await local_emu.monitor("c1")).json() == {"exit_code": 3, "oom": False}
    await local_emu.start("c2", entrypoint=["sleep", "1000"])
    assert (await local_emu.start("c2", entrypoint=["sleep", "1"])).status_code == 409
    r = await local_emu.http.post("/containers/c2/signal", json={"signo": int(signal.SIGTERM)})
    assert r.status_code == 202
    assert (await local_emu.monitor("c2")).json() == {"exit_code": 143, "oom": False}


async def test_oom_kills_the_whole_run(local_emu: Emu) -> None:
    """Past the instance's memory (lite: 256 MiB) the run dies whole: 137, ``oom``."""
    hog = "head -c 600000000 /dev/zero | tail -c 500000000 > /dev/null"
    await local_emu.start("c1", instance="lite", entrypoint=["sh", "-c", hog])
    assert (await local_emu.monitor("c1")).json() == {"exit_code": 137, "oom": True}


async def test_destroy_kills_and_is_idempotent(local_emu: Emu) -> None:
    """``destroy`` twice: 204 both times; the run is gone (137)."""
    await local_emu.start("c1", entrypoint=["sleep", "1000"])
    for _ in range(2):
        assert (await local_emu.http.post("/containers/c1/destroy")).status_code == 204
    assert (await local_emu.monitor("c1", timeout_s=5)).json()["exit_code"] == 137


async def test_ports_stream_in_the_runs_own_network(local_emu: Emu) -> None:
    """Two runs both on 8080 (each its own loopback); NDJSON event by event; nothing
    listening is 503 ``not_listening``."""
    await local_emu.start("idle", entrypoint=["sleep", "1000"])
    r = await local_emu.http.get("/containers/idle/ports/8080/x")
    assert r.status_code == 503
    assert r.json()["error"] == "not_listening"
    for cid in ("c1", "c2"):
        await local_emu.serve_echo(cid)
        assert (await local_emu.http.get(f"/containers/{cid}/ports/8080/a")).json()["name"] == cid
    seen: list[int] = []
    with anyio.fail_after(30):
        async with local_emu.http.stream("GET", "/containers/c1/ports/8080/events?n=2") as r:
            async for line in r.aiter_lines():
                if line:
                    seen.append(json.loads(line)["i"])
                    if len(seen) < 2:
                        await local_emu.http.post("/containers/c1/ports/8080/next")
    assert seen == [0, 1]


async def test_a_loopback_url_in_the_env_is_reachable(local_emu: Emu) -> None:
    """The run fetches the emulator's ``/healthz`` at the URL its env names: exit 0."""
    await local_emu.start(
        "c1",
        env={"TARGET": f"{local_emu.served.url}/healthz"},
        entrypoint=["python3", "-c", FETCH],
    )
    assert (await local_emu.monitor("c1")).json() == {"exit_code": 0, "oom": False}
