"""Serve the emulator on loopback: :func:`serve` for tests and ``kit dev --target
cloudflare``, :func:`main` for ``python -m emulator.containers``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from emulator.containers.app import create_app
from emulator.containers.backend import ContainersBackend
from emulator.containers.egress import EgressRelay
from emulator.containers.errors import ContainersEmulatorError
from emulator.containers.local_runner import LocalRunner
from emulator.containers.runner import DockerRunner, Runner
from emulator.loopback import serve_app
from emulator.sandbox.dockerapi import DEFAULT_SOCKET, DockerClient
from kit.host.errors import SandboxError

TOKEN_ENV = "KIT_CONTAINER_EMULATOR_TOKEN"


@dataclass(frozen=True)
class Served:
    """A running emulator: its base URL (``http://127.0.0.1:<port>``) and backend."""

    url: str
    backend: ContainersBackend


@contextlib.asynccontextmanager
async def serve(
    *,
    token: str,
    runner: Runner,
    image: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[Served]:
    """Run the container API on ``host:port`` (port 0: a free one) until the block ends;
    containers still running then are removed. ``image`` is the default image of a start
    that names none (kit's runtime image)."""
    relay = EgressRelay()
    backend = ContainersBackend(runner, image=image, relay=relay)
    try:
        async with (
            serve_app(
                relay,
                host="127.0.0.1",
                port=0,
                what="container emulator's egress relay",
                error=ContainersEmulatorError,
            ) as relay_url,
            serve_app(
                create_app(backend, token=token),
                host=host,
                port=port,
                what="container emulator",
                error=ContainersEmulatorError,
            ) as url,
        ):
            relay.port = int(relay_url.rsplit(":", 1)[1])
            yield Served(url, backend)
    finally:
        await backend.close()
        await relay.close()


async def docker_answers(socket_path: str = DEFAULT_SOCKET) -> bool:
    """Whether a Docker daemon answers on ``socket_path``."""
    client = DockerClient(socket_path)
    try:
        await client.version()
    except SandboxError:
        return False
    finally:
        await client.close()
    return True


async def _run(token: str, image: str | None, port: int, runner_id: str | None, kind: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if kind == "auto":
        kind = "docker" if await docker_answers() else "local"
    runner: DockerRunner | LocalRunner = (
        DockerRunner(runner_id=runner_id) if kind == "docker" else LocalRunner()
    )
    async with (
        runner,
        serve(token=token, runner=runner, image=image or "host", port=port) as served,
    ):
        print(served.url, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m emulator.containers [--image TAG] [--port N] [--runner-id ID]
    [--runner auto|docker|local]``: serve
    on 127.0.0.1 behind the token in ``KIT_CONTAINER_EMULATOR_TOKEN`` and print the URL
    (one line) once it answers; SIGTERM or Ctrl-C stops it and removes its containers."""
    parser = argparse.ArgumentParser(prog="python -m emulator.containers")
    parser.add_argument("--image", help="default image of a start that names none")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument(
        "--runner-id", help="stable id: containers a killed emulator left are removed at start"
    )
    parser.add_argument(
        "--runner",
        choices=("auto", "docker", "local"),
        default="auto",
        help="Docker containers, local processes, or Docker when a daemon answers (default)",
    )
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        sys.exit(f"Set {TOKEN_ENV} to the token the shim sends (its Worker secret).")
    if args.runner == "docker" and not args.image:
        sys.exit("Pass --image (kit's runtime image: kit image build) to run containers.")
    asyncio.run(_run(token, args.image, args.port, args.runner_id, args.runner))
