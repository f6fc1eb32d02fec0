"""The runtime's HTTP face (see :mod:`kit.protocol.runtime_api`) and its process entry point.

Start-up: become non-dumpable (:func:`kit.runtime.jail.make_undumpable`: the agent's tools
run as this user, and this process holds the sandbox's tokens), wait for the provider's go
when it asks for one, read :class:`RuntimeConfig` from its file (:mod:`kit.runtime.config`),
verify the bundle against its digest, bind the listening socket and serve at once, then
connect the SDK client (the CLI boot is the slow part). ``GET /healthz`` says ``ready``
once the agent can take turns; with ``?wait_s=N`` it waits up to N seconds for that, so a
provider learns of readiness with one request. SIGTERM stops the server and the CLI and exits 0.
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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import uvicorn
import uvicorn.lifespan.off
import uvicorn.protocols.http.h11_impl  # imported here, so the fork server pays for it once

from kit.bundle import open_bundle
from kit.hoptrace import hop
from kit.protocol.errors import ProtocolError
from kit.protocol.runtime_api import (
    FILES_PATH,
    HARNESS_EXIT_CODE,
    HEALTH_PATH,
    INTERRUPT_PATH,
    MAX_FILE_BYTES,
    NDJSON,
    RUNTIME_KEEP_ALIVE_S,
    TURNS_PATH,
    RuntimeEvent,
    TurnRequest,
    file_path_parts,
)
from kit.protocol.runtime_config import RuntimeConfig, RuntimeConfigError
from kit.runtime import config as startup
from kit.runtime.agent import Agent, AgentBusy, AgentState, AgentStopped, HarnessDied
from kit.runtime.egress_forwarder import Forwarder, proxy_env, proxy_url
from kit.runtime.files import NotAFolder, write_file
from kit.runtime.jail import die_with_parent, make_undumpable

log = logging.getLogger("kit.runtime")


ASGIMessage = dict[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[ASGIMessage, Receive, Send], Awaitable[None]]


_terminated = False
MAX_HEALTH_WAIT_S = 120.0
"""The longest ``GET /healthz?wait_s=`` waits for readiness."""


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
            wait_s = _wait_s(scope.get("query_string", b""))
            if wait_s:
                with contextlib.suppress(Exception):  # timed out, or the agent stopped
                    await asyncio.wait_for(agent.wait_ready(), wait_s)
            await _json(send, 200, health(agent))
        elif route == ("POST", TURNS_PATH):
            await _turn(agent, await _body(receive), send)
        elif route == ("PUT", FILES_PATH):
            await _put_file(agent, scope.get("query_string", b""), receive, send)
        elif route == ("POST", INTERRUPT_PATH):
            await _body(receive)
            await _json(send, 202, {"interrupted": await agent.interrupt()})
        else:
            await _json(send, 404, {"error": "not_found"})

    return app


def health(agent: Agent) -> dict[str, object]:
    """What ``GET /healthz`` says: ``ready`` once the agent can take turns."""
    return {
        "ok": True,
        "ready": agent.state in (AgentState.READY, AgentState.BUSY),
        "session_id": agent.config.session_id,
        "state": agent.state.value,
        "resumed": agent.resumed,
        "bundle": agent.bundle.digest,
    }


def _wait_s(query: bytes) -> float:
    """``wait_s`` from a query string, within 0..MAX_HEALTH_WAIT_S (0 when absent or bad)."""
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"wait_s":
            try:
                seconds = float(value)
            except ValueError:
                return 0.0
            return min(max(seconds, 0.0), MAX_HEALTH_WAIT_S) if seconds == seconds else 0.0
    return 0.0


async def _turn(agent: Agent, body: bytes, send: Send) -> None:
    try:
        turn = TurnRequest.from_json(body)
    except ProtocolError as exc:
        await _json(send, 400, {"error": exc.code, "message": exc.message})
        return
    hop("runtime: turn received")
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
    hop("runtime: batch sent")
    async for batch in stream:
        await send({"type": "http.response.body", "body": _lines(batch), "more_body": True})
        hop("runtime: batch sent")
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _put_file(agent: Agent, query: bytes, receive: Receive, send: Send) -> None:
    paths = parse_qs(query.decode("latin-1")).get("path", [])
    try:
        parts = file_path_parts(paths[0] if len(paths) == 1 else "")
    except ProtocolError as exc:
        await _json(send, 400, {"error": exc.code, "message": exc.message})
        return
    body = await _bounded_body(receive, MAX_FILE_BYTES)
    if body is None:
        await _json(send, 413, {"error": "too_large", "message": f"over {MAX_FILE_BYTES} bytes"})
        return
    try:
        await asyncio.to_thread(write_file, agent.config.workspace, parts, body)
    except NotAFolder as exc:
        await _json(send, 409, {"error": "not_a_folder", "message": str(exc)})
        return
    except OSError as exc:
        await _json(send, 507, {"error": "write_failed", "message": str(exc)})
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _lines(batch: list[RuntimeEvent]) -> bytes:
    return b"".join(event.to_line() for event in batch)


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _bounded_body(receive: Receive, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (the rest is not kept)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks) if size <= limit else None


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


PRIVATE_IP = "${FLY_PRIVATE_IP}"
"""In ``listen``: the machine's private address (Fly puts it in ``FLY_PRIVATE_IP``; the
emulator gives each machine its own loopback address); ``::`` where it is not set."""


def bind(listen: str, environ: Mapping[str, str] = os.environ) -> socket.socket:
    """Bind the socket ``unix:/path`` or ``tcp:HOST:PORT`` names (HOST may be
    :data:`PRIVATE_IP`, and an IPv6 address with or without brackets)."""
    listen = listen.replace(PRIVATE_IP, environ.get("FLY_PRIVATE_IP") or "::")
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o660)
    elif listen.startswith("tcp:"):
        host, _, port = listen.removeprefix("tcp:").rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
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


def http_server(app: ASGIApp) -> uvicorn.Server:
    """The runtime's HTTP server for ``app`` (serve it with ``serve(sockets=[...])``): one
    connection from the host is kept between its requests for ``RUNTIME_KEEP_ALIVE_S``."""
    return _Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=int(RUNTIME_KEEP_ALIVE_S),
        )
    )


async def serve(config: RuntimeConfig) -> None:
    """Run the runtime until SIGTERM or SIGINT, with forwarders to the host's proxies when
    the config names an egress proxy (:mod:`kit.runtime.egress_forwarder`): to the egress
    proxy's Unix socket, and to a model proxy on TCP."""
    forwarders: list[Forwarder] = []
    egress_proxy = None
    try:
        if config.egress_url and config.egress_token:
            if config.egress_url.startswith("unix:"):
                forwarders.append(Forwarder(config.egress_url))
                await forwarders[-1].start()
                egress_proxy = forwarders[-1].proxy_url(config.egress_token)
            else:  # the proxy on TCP, reached directly
                egress_proxy = proxy_url(config.egress_url, config.egress_token)
            # The runtime's own requests (an s3:// transcript store) leave the same way.
            os.environ.update(proxy_env(egress_proxy))
            if not config.model_unix_socket:  # the model proxy on TCP: via localhost
                forwarders.append(Forwarder(config.model_base_url, "model proxy"))
                await forwarders[-1].start()
                config = replace(config, model_base_url=forwarders[-1].url)
        await _serve(config, egress_proxy)
    finally:
        for forwarder in forwarders:
            await forwarder.aclose()


async def _serve(config: RuntimeConfig, egress_proxy: str | None) -> None:
    t0 = time.perf_counter()
    bundle = open_bundle(config.bundle_dir)
    if config.bundle_digest is not None and bundle.digest != config.bundle_digest:
        raise RuntimeConfigError(
            f"The bundle at {config.bundle_dir} is {bundle.digest[:12]}…, not the "
            f"{config.bundle_digest[:12]}… the sandbox was started for; refusing to run it."
        )
    t1 = time.perf_counter()
    agent = Agent(config, bundle, egress_proxy=egress_proxy)
    sock = bind(config.listen)
    server = http_server(create_app(agent))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        global _terminated
        _terminated = sig == signal.SIGTERM
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    # The agent first: its CLI boots in another process while the server starts here.
    actor = asyncio.create_task(agent.run(), name="agent")
    await asyncio.sleep(0)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    ready = asyncio.create_task(agent.wait_ready())
    await asyncio.wait([actor, ready], return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    t2 = time.perf_counter()
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


def main() -> None:
    """Entry point: ``python -m kit.runtime``, configured by the file ``KIT_RUNTIME_CONFIG``
    names (:mod:`kit.runtime.config`)."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # Everything heavy is imported above, before the config arrives: a provider may start
    # this process ahead of time and hand it a session later (the fork server forks it
    # already imported).
    # Before any token is read: the agent's tools run as this user and must not read them
    # out of this process's memory or environment (/proc/<pid>/mem, /proc/<pid>/environ).
    make_undumpable()
    if os.environ.get("KIT_DIE_WITH_PARENT"):
        die_with_parent(int(os.environ["KIT_DIE_WITH_PARENT"]))
    startup.wait_for_gate(os.environ)
    try:
        startup.exec_with_config_file(os.environ)
        config = startup.load(os.environ)
    except RuntimeConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    adopt_session_folders(config)
    try:
        asyncio.run(serve(config))
    except RuntimeConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
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
