"""The container emulator served on loopback (port 0) over a Docker runner with its own
runner id, and an httpx client holding its token."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator.containers import DockerRunner, LocalRunner, Served, serve
from emulator.containers.runner import LABEL_RUNNER
from kit.deploy.image import BaseRecipe
from tests.dockerhost import runtime_image
from tests.emulator.fly_api.tiny_image import tiny_image

TOKEN = "containers-emulator-test-token"
ECHO_SERVER = (Path(__file__).parent / "echo_server.py").read_text()
CALL_LIMIT_S = 90.0


def python_image() -> str:
    """An image with ``python3`` for the port proxy's server: kit's base image (Debian),
    made (with the runtime image) the first time."""
    tag = BaseRecipe().tag
    found = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    if found.returncode != 0:
        runtime_image()
    return tag


def containers_of(runner_id: str) -> list[str]:
    """Every Docker container (running or not) carrying the runner id."""
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_RUNNER}={runner_id}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return done.stdout.split()


@dataclass
class Emu:
    """A served emulator, its runner and a client with the token."""

    served: Served
    runner: DockerRunner | LocalRunner
    http: httpx.AsyncClient

    @property
    def runner_id(self) -> str:
        """The Docker runner's id (its containers' label)."""
        assert isinstance(self.runner, DockerRunner)
        return self.runner.runner_id

    async def start(self, cid: str, **body: Any) -> httpx.Response:
        """``POST /containers/{cid}/start`` (instance ``lite`` unless given)."""
        body.setdefault("instance", "lite")
        body.setdefault("env", {})
        return await self.http.post(f"/containers/{cid}/start", json=body)

    async def monitor(self, cid: str, timeout_s: float = 60) -> httpx.Response:
        """One long-poll of ``monitor``."""
        return await self.http.get(
            f"/containers/{cid}/monitor", params={"timeout_s": str(timeout_s)}
        )

    async def serve_echo(self, cid: str, port: int = 8080) -> None:
        """Start ``cid`` running :mod:`echo_server` on ``port`` (``NAME=cid``); return once
        it answers."""
        host = isinstance(self.runner, LocalRunner)  # its own python3; Docker not needed
        r = await self.start(
            cid,
            image="host" if host else python_image(),
            env={"NAME": cid},
            entrypoint=["python3", "-c", ECHO_SERVER, str(port)],
        )
        assert r.status_code == 201, r.text
        for _ in range(400):  # bounded: the interpreter starts in well under a second
            r = await self.http.get(f"/containers/{cid}/ports/{port}/hello")
            if r.status_code != 503:
                break
            await self.monitor(cid, timeout_s=0.05)  # paces the loop; also sees an early exit
        assert r.status_code == 200, r.text


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    """The emulator (default image: the tiny one) over a fresh Docker runner."""
    image = tiny_image()
    async with (
        DockerRunner(runner_id=f"test-{secrets.token_hex(4)}") as runner,
        serve(token=TOKEN, runner=runner, image=image) as served,
        httpx.AsyncClient(
            base_url=served.url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=CALL_LIMIT_S,
        ) as http,
    ):
        yield Emu(served, runner, http)


@pytest.fixture
async def local_emu(kit_tmp: Path) -> AsyncIterator[Emu]:
    """The emulator over local processes (no Docker; the image is ignored)."""
    async with (
        LocalRunner(root=kit_tmp / "containers") as runner,
        serve(token=TOKEN, runner=runner, image="host") as served,
        httpx.AsyncClient(
            base_url=served.url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=CALL_LIMIT_S,
        ) as http,
    ):
        yield Emu(served, runner, http)
