"""Shared fixtures: world-traversable temp dirs (sandboxes run as another user) and a
running local stack on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import uvicorn
from moto.server import ThreadedMotoServer

from kit.cli.settings import EXAMPLE_PROJECT, DevSettings
from kit.cli.stack import Stack, run_stack

BUCKET = "kit-test-bucket"

# The CLI must never try the network or phone home from tests.
os.environ.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
os.environ.pop("ANTHROPIC_API_KEY", None)


@pytest.fixture
def kit_tmp() -> Iterator[Path]:
    """A temp dir the sandbox user can traverse (pytest's own tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="kit-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def stack_settings(state: Path, project: Path = EXAMPLE_PROJECT, **kw: object) -> DevSettings:
    """Settings for an in-process stack on a free port.

    No sandbox pool unless a test asks (``pool_size=…``): most tests count sandboxes or
    processes, and a pool would start two more for every stack. The pool's own tests and
    the ``kit dev`` subprocess tests run with one.
    """
    kw.setdefault("pool_size", 0)
    return DevSettings(project_dir=project, state_dir=state, port=0, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "docker"])
def sandbox_kind(request: pytest.FixtureRequest) -> str:
    """Each sandbox kind ``kit dev --sandbox`` offers, for the recovery and isolation tests
    that must hold on both: ``local`` (the fork server's process groups) and ``docker``
    (containers of kit's runtime image, built the first time; skipped, saying why, where
    Docker cannot run)."""
    kind = str(request.param)
    if kind == "docker":
        from tests.dockerhost import runtime_image

        runtime_image()
    return kind


@pytest.fixture
async def stack(kit_tmp: Path) -> AsyncIterator[Stack]:
    """The example agent's whole local stack, on a free port."""
    async with run_stack(stack_settings(kit_tmp / "state")) as running:
        yield running


class _Server(uvicorn.Server):
    """uvicorn without signal handlers (the test runner owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def serve_on_loopback(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a free loopback port; yields its http:// base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (real HTTP, real conditional writes) with one bucket."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "kit-test")  # moto takes any; never real ones
    mp.setenv("AWS_SECRET_ACCESS_KEY", "kit-test")
    mp.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    assert server._server is not None
    url = f"http://127.0.0.1:{server._server.server_port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield url
    server.stop()
    mp.undo()
