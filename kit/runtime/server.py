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
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from kit.bundle import open_bundle
from kit.protocol.errors import ProtocolError
from kit.protocol.sandbox import (
    HARNESS_EXIT_CODE,
    HEALTH_PATH,
    INTERRUPT_PATH,
    NDJSON,
    TURNS_PATH,
    RuntimeEvent,
    TurnRequest,
)
from kit.runtime.agent import Agent, AgentBusy, AgentStopped, HarnessDied
from kit.runtime.config import RuntimeConfig, RuntimeConfigError
from kit.runtime.egress_forwarder import EgressForwarder, proxy_env
from kit.runtime.jail import die_with_parent

log = logging.getLogger("kit.runtime")


ASGIMessage = dict[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[ASGIMessage, Receive, Send], Awaitable[None]]


_terminated = False


def create_app(agent: Agent) -> ASGIApp:
    """The runtime's routes as a bare ASGI app, every one behind the runtime token.

    Bare ASGI rather than a framework: every event of every turn passes through here, and
    the sandbox image should install as little as possible.
    """
    token = f"Bearer {agent.config.runtime_token}".encode()

    async def app(scope: ASGIMessage, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        if not hmac.compare_digest(headers.get(b"authorization", b""), token):
            await _json(send, 401, {"error": "unauthorized"})
            return
        route = (scope["method"], scope["path"])
        if route == ("GET", HEALTH_PATH):
            await _json(
                send,
                200,
                {
                    "ok": True,
                    "session_id": agent.config.session_id,
                    "state": agent.state.value,
                    "resumed": agent.resumed,
                    "bundle": agent.bundle.digest,
                },
            )
        elif route == ("POST", TURNS_PATH):
            await _turn(agent, await _body(receive), send)
        elif route == ("POST", INTERRUPT_PATH):
            await _body(receive)
            await _json(send, 202, {"interrupted": await agent.interrupt()})
        else:
            await _json(send, 404, {"error": "not_found"})

    return app


async def _turn(agent: Agent, body: bytes, send: Send) -> None:
    try:
        turn = TurnRequest.from_json(body)
    except ProtocolError as exc:
        await _json(send, 400, {"error": exc.code, "message": exc.message})
        return
    stream = agent.stream_turn(turn)
    try:
        first = await anext(stream)
    except (AgentBusy, AgentStopped) as exc:
        await _json(send, 409, {"error": "busy", "message": str(exc)})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", NDJSON.encode())],
        }
    )
    # One chunk per batch: the host commits a chunk's events in one transaction.
    await send({"type": "http.response.body", "body": _lines(first), "more_body": True})
    async for batch in stream:
        await send({"type": "http.response.body", "body": _lines(batch), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _lines(batch: list[RuntimeEvent]) -> bytes:
    return b"".join(event.to_line() for event in batch)


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _json(send: Send, status: int, obj: object) -> None:
    body = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
        raise RuntimeConfigError(f"listen must be unix:/path or tcp:HOST:PORT, got {listen!r}.")
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


async def serve(config: RuntimeConfig) -> None:
    """Run the runtime until SIGTERM or SIGINT, with the egress forwarder when the config
    names the host's egress proxy (:mod:`kit.runtime.egress_forwarder`)."""
    forwarder, egress_proxy = None, None
    if config.egress_unix_socket and config.egress_token:
        forwarder = EgressForwarder(config.egress_unix_socket)
        await forwarder.start()
        egress_proxy = forwarder.proxy_url(config.egress_token)
        # The runtime's own requests (an s3:// transcript store) leave the same way.
        os.environ.update(proxy_env(egress_proxy, config.model_base_url))
    try:
        await _serve(config, egress_proxy)
    finally:
        if forwarder is not None:
            await forwarder.aclose()


async def _serve(config: RuntimeConfig, egress_proxy: str | None) -> None:
    t0 = time.perf_counter()
    bundle = open_bundle(config.bundle_dir)
    t1 = time.perf_counter()
    agent = Agent(config, bundle, egress_proxy=egress_proxy)
    sock = bind(config.listen)
    actor = asyncio.create_task(agent.run(), name="agent")
    await agent.wait_ready()
    t2 = time.perf_counter()
    server = _Server(
        uvicorn.Config(
            create_app(agent), log_level="warning", lifespan="off", timeout_graceful_shutdown=5
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        global _terminated
        _terminated = sig == signal.SIGTERM
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
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
    log.info(
        "session %s ready in %.0f ms (bundle %.0f ms, SDK connect %.0f ms, resumed=%s)",
        config.session_id,
        (t2 - t0) * 1000,
        (t1 - t0) * 1000,
        (t2 - t1) * 1000,
        agent.resumed,
    )
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


def main(config_json: str | None = None) -> None:
    """Entry point: ``python -m kit.runtime`` with the config JSON on stdin (or
    ``config_json``: a confined sandbox's runtime, whose config its parent read)."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # Everything heavy is imported above, before the config arrives: a provider may start
    # this process ahead of time and hand it a session later (the fork server forks it
    # already imported).
    if os.environ.get("KIT_DIE_WITH_PARENT"):
        die_with_parent(int(os.environ["KIT_DIE_WITH_PARENT"]))
    sys.stdout.write('{"imported": true}\n')
    sys.stdout.flush()
    if config_json is None:
        config_json = sys.stdin.readline()
        sys.stdin.close()
    config = RuntimeConfig.from_json(config_json)
    adopt_session_folders(config)
    try:
        asyncio.run(serve(config))
    except HarnessDied as exc:
        log.error("%s; this sandbox stops so a new one can take the session", exc)
        sys.exit(HARNESS_EXIT_CODE)
    if _terminated:
        sys.exit(128 + signal.SIGTERM)  # stopped by SIGTERM, as a shell would report it


def adopt_session_folders(config: RuntimeConfig) -> None:
    """Work in the session's workspace, with its home and temp folders."""
    os.chdir(config.workspace)
    os.environ["HOME"] = str(config.home)
    os.environ["TMPDIR"] = str(config.tmp_dir)
    tempfile.tempdir = None  # forget any temp dir chosen before the session was known
