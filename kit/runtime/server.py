"""The runtime's HTTP face (see :mod:`kit.protocol.sandbox`) and its process entry point.

Start-up: read :class:`RuntimeConfig` from stdin, verify the bundle, bind the listening
socket, connect the SDK client (the CLI boot is the slow part), then print one line
``{"ready": true, ...}`` on stdout. The host waits for that line instead of polling.
SIGTERM stops the server and the CLI and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kit.bundle import open_bundle
from kit.protocol.errors import ProtocolError
from kit.protocol.sandbox import (
    HEALTH_PATH,
    INTERRUPT_PATH,
    NDJSON,
    TURNS_PATH,
    TurnRequest,
)
from kit.runtime.agent import Agent, AgentBusy, AgentStopped
from kit.runtime.config import RuntimeConfig

log = logging.getLogger("kit.runtime")


def create_app(agent: Agent) -> Starlette:
    """The runtime's routes, every one behind the runtime token."""
    token = agent.config.runtime_token.encode()

    def authorized(request: Request) -> bool:
        got = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
        return hmac.compare_digest(got, token)

    async def health(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return JSONResponse(
            {
                "ok": True,
                "session_id": agent.config.session_id,
                "state": agent.state.value,
                "resumed": agent.resumed,
                "bundle": agent.bundle.digest,
            }
        )

    async def turns(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            turn = TurnRequest.from_json(await request.body())
        except ProtocolError as exc:
            return JSONResponse({"error": exc.code, "message": exc.message}, status_code=400)
        stream = agent.stream_turn(turn)
        try:
            first = await anext(stream)
        except (AgentBusy, AgentStopped) as exc:
            return JSONResponse({"error": "busy", "message": str(exc)}, status_code=409)

        async def body() -> AsyncIterator[bytes]:
            yield first.to_line()
            async for event in stream:
                yield event.to_line()

        return StreamingResponse(body(), media_type=NDJSON)

    async def interrupt(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return JSONResponse({"interrupted": await agent.interrupt()}, status_code=202)

    return Starlette(
        routes=[
            Route(HEALTH_PATH, health),
            Route(TURNS_PATH, turns, methods=["POST"]),
            Route(INTERRUPT_PATH, interrupt, methods=["POST"]),
        ]
    )


def bind(listen: str) -> socket.socket:
    """Bind the socket ``unix:/path`` or ``tcp:HOST:PORT`` names."""
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o660)
    elif listen.startswith("tcp:"):
        host, _, port = listen.removeprefix("tcp:").rpartition(":")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, int(port)))
    else:
        raise ValueError(f"listen must be unix:/path or tcp:HOST:PORT, got {listen!r}")
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


async def serve(config: RuntimeConfig) -> None:
    """Run the runtime until SIGTERM or SIGINT."""
    bundle = open_bundle(config.bundle_dir)
    agent = Agent(config, bundle)
    sock = bind(config.listen)
    actor = asyncio.create_task(agent.run(), name="agent")
    await agent.wait_ready()
    server = _Server(
        uvicorn.Config(
            create_app(agent), log_level="warning", lifespan="off", timeout_graceful_shutdown=5
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    endpoint = (
        config.listen
        if config.listen.startswith("unix:")
        else f"tcp:{sock.getsockname()[0]}:{sock.getsockname()[1]}"
    )
    sys.stdout.write(
        json.dumps({"ready": True, "endpoint": endpoint, "resumed": agent.resumed}) + "\n"
    )
    sys.stdout.flush()
    done, _ = await asyncio.wait(
        [asyncio.create_task(stop.wait()), actor, serving], return_when=asyncio.FIRST_COMPLETED
    )
    server.should_exit = True
    agent.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(serving, actor, return_exceptions=True), 10)
    for task in done:
        if task is actor and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def main() -> None:
    """Entry point: ``python -m kit.runtime`` with the config JSON on stdin."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # Everything heavy is imported above, before the config arrives: a provider may start
    # this process ahead of time (a warm spare) and hand it a session later.
    config = RuntimeConfig.from_json(sys.stdin.readline())
    sys.stdin.close()
    adopt_session_folders(config)
    asyncio.run(serve(config))


def adopt_session_folders(config: RuntimeConfig) -> None:
    """Work in the session's workspace, with its home and temp folders."""
    os.chdir(config.workspace)
    os.environ["HOME"] = str(config.home)
    os.environ["TMPDIR"] = str(config.tmp_dir)
    tempfile.tempdir = None  # forget any temp dir chosen before the session was known
