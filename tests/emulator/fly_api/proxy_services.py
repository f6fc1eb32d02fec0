"""Machines for the proxy tests: the Fly API emulator (in-process runner) with an app whose
machines each run a small real HTTP/WebSocket service (uvicorn) on the machine's own
loopback private_ip and the service's internal_port."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from emulator.fly_api import Served
from tests.emulator.fly_api.spec_check import checked

APP = "kit-gw"
Scope = dict[str, Any]
Message = dict[str, Any]


@dataclass
class Service:
    """One machine's service: what it saw, and how it answers.

    ``replay`` set: every request (a WebSocket upgrade too) is answered 409 with
    ``fly-replay: <replay>`` (after reading the body), unless it carries ``fly-replay-failed`` (a fallback; answered
    200 ``fallback``). ``/stream`` sends ``first``, waits for ``gate``, then sends ``rest``.
    Anything else is echoed as JSON. WebSockets echo ``<machine id>:<text>``; ``close`` closes with code 4000."""

    machine_id: str
    replay: str | None = None
    seen: list[Scope] = field(default_factory=list)
    accepted: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        self.seen.append(scope)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        body = b""
        for _ in range(10_000 if scope["type"] == "http" else 0):
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.replay is not None and "fly-replay-failed" not in headers:
            prefix = "websocket." if scope["type"] == "websocket" else ""
            await send(
                {
                    "type": f"{prefix}http.response.start",
                    "status": 409,
                    "headers": [(b"fly-replay", self.replay.encode())],
                }
            )
            await send({"type": f"{prefix}http.response.body", "body": b"go elsewhere"})
            return
        if scope["type"] == "websocket":
            await self._websocket(receive, send)
            return
        if "fly-replay-failed" in headers:
            await _respond(send, 200, b"fallback")
        elif scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await self.gate.wait()
            await send({"type": "http.response.body", "body": b"rest"})
        else:
            echo = {
                "machine": self.machine_id,
                "method": scope["method"],
                "path": scope["path"],
                "headers": headers,
                "body": body.decode(),
            }
            await _respond(send, 200, json.dumps(echo).encode())

    async def _websocket(self, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        self.accepted += 1
        for _ in range(1000):
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "close":
                await send({"type": "websocket.close", "code": 4000})
                return
            text = f"{self.machine_id}:{message.get('text')}"
            await send({"type": "websocket.send", "text": text})


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"x-machine", b"yes")]}
    )
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def listening(service: Service, host: str, port: int) -> AsyncIterator[None]:
    """Serve ``service`` on ``host:port``; the socket listens before this returns, so
    connections wait in its backlog until uvicorn takes them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    sock.setblocking(False)
    config = uvicorn.Config(
        service, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()


def free_port() -> int:
    """A port the kernel just had free (machines listen on it, each on its own address)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Cloud:
    """The emulator, an API client, the app's services and the port they listen on."""

    served: Served
    api: httpx.AsyncClient
    stack: AsyncExitStack
    port: int = field(default_factory=free_port)
    services: dict[str, Service] = field(default_factory=dict)

    async def machine(
        self,
        *,
        autostart: bool = False,
        state: str = "started",
        listen: bool = True,
        app: str = APP,
    ) -> Service:
        """A machine of ``app`` with an HTTP service, brought to ``state`` (started or
        stopped), its service listening when ``listen``."""
        service_config = {
            "protocol": "tcp",
            "internal_port": self.port,
            "autostart": autostart,
            "autostop": "off",
            "ports": [{"port": 443, "handlers": ["tls", "http"]}],
        }
        config = {"image": "kit:test", "restart": {"policy": "no"}, "services": [service_config]}
        r = await self.api.post(f"/v1/apps/{app}/machines", json={"config": config})
        body: dict[str, Any] = checked(r, "Machines_create", 200)
        mid = str(body["id"])
        await self.wait(mid, "started", app)
        if state == "stopped":
            checked(await self.api.post(f"/v1/apps/{app}/machines/{mid}/stop"), "Machines_stop")
            await self.wait(mid, "stopped", app)
        service = Service(mid)
        self.services[mid] = service
        if listen:
            await self.stack.enter_async_context(
                listening(service, str(body["private_ip"]), self.port)
            )
        return service

    async def wait(self, mid: str, state: str, app: str = APP) -> None:
        """``/wait`` until the machine is in ``state``."""
        r = await self.api.get(
            f"/v1/apps/{app}/machines/{mid}/wait", params={"state": state, "timeout": 10}
        )
        checked(r, "Machines_wait", 200)

    async def state(self, mid: str) -> str:
        """The machine's state as the API shows it."""
        r = await self.api.get(f"/v1/apps/{APP}/machines/{mid}")
        return str(checked(r, "Machines_show", 200)["state"])
