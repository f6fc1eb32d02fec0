"""The shim's containers as bench/host.py measures it: kit's container emulator, whose
containers are synthetic runtimes (bench/synthetic_runtime.py) in this one process.

    KIT_CONTAINER_EMULATOR_TOKEN=... .venv/bin/python bench/shim_containers.py

Prints one JSON line ``{"url", "pid"}`` once it listens on 127.0.0.1, then serves until
SIGTERM, SIGINT or the end of its stdin; every runtime goes with it.

The shim under ``wrangler dev --enable-containers=false`` reaches its containers through
kit's container emulator (``KIT_CONTAINER_EMULATOR``), as ``kit dev --target cloudflare``
runs it: its real routes (start, monitor, destroy, the port proxy) with
:class:`SyntheticRunner` in place of Docker. A start serves a :class:`SyntheticRuntime` for
the session named in the container's ``KIT_RUNTIME_CONFIG_JSON``, with its runtime token,
on a loopback port of this process; the emulator's port proxy reaches it there. So the shim
pays what it pays on Cloudflare (a start, ``/healthz``, one streamed ``POST /v1/turns`` per
turn through the container's port), but no image, no Python start and no SDK: like kit's
synthetic sandboxes, the bench measures the host.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass

import httpx
from synthetic_runtime import SyntheticRuntime, wait_for_stop

from emulator.containers import Exit, LaunchSpec, RunnerError, serve
from emulator.containers.serve import TOKEN_ENV
from kit.protocol.runtime_config import RuntimeConfig, RuntimeConfigError
from kit.runtime.config import CONFIG_JSON_ENV

KILLED = 128 + int(signal.SIGKILL)


class _ToPort(httpx.AsyncBaseTransport):
    """HTTP to ``127.0.0.1:<port>`` whatever port a request names (the proxy asks for the
    container's 8080, the runtime listens on a port of its own), over ``http``: the
    runner's one transport (a transport costs ~17 ms to make, its TLS context), so closing
    this leaves it open."""

    def __init__(self, http: httpx.AsyncHTTPTransport, port: int) -> None:
        self._http = http
        self._port = port

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(host="127.0.0.1", port=self._port)
        return await self._http.handle_async_request(request)


@dataclass
class _Run:
    runtime: SyntheticRuntime
    exit: asyncio.Future[Exit]

    def end(self, code: int) -> None:
        self.runtime.close()
        if not self.exit.done():
            self.exit.set_result(Exit(code))


class SyntheticRunner:
    """The container emulator's :class:`~emulator.containers.Runner`: each container one
    :class:`SyntheticRuntime` in this process (a signal or a removal ends it)."""

    intercepts = True
    """The DO intercepts every container's HTTP before it starts; a synthetic runtime
    calls nothing out, so its route (``spec.egress``) goes unused."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._http = httpx.AsyncHTTPTransport()

    def _run(self, container_id: str) -> _Run:
        try:
            return self._runs[container_id]
        except KeyError:
            raise RunnerError(f"Container {container_id} was never started.") from None

    async def launch(self, spec: LaunchSpec) -> None:
        """Serve a runtime for the session in ``spec``'s runtime config."""
        await self.remove(spec.container_id)
        try:
            config = RuntimeConfig.from_json(spec.env[CONFIG_JSON_ENV])
        except (KeyError, RuntimeConfigError) as exc:
            raise RunnerError(f"No runtime config in {CONFIG_JSON_ENV}: {exc}.") from exc
        runtime = SyntheticRuntime(config.session_id, config.runtime_token)
        await runtime.listen()
        self._runs[spec.container_id] = _Run(runtime, asyncio.get_running_loop().create_future())

    async def wait(self, container_id: str) -> Exit:
        """Until the runtime is ended."""
        return await asyncio.shield(self._run(container_id).exit)

    async def signal(self, container_id: str, signo: int) -> None:
        """Any signal ends the runtime (exit 128 + ``signo``)."""
        self._run(container_id).end(128 + signo)

    async def remove(self, container_id: str) -> None:
        """End the runtime (exit 137) and forget it; absent is fine."""
        run = self._runs.pop(container_id, None)
        if run is not None:
            run.end(KILLED)

    async def transport(self, container_id: str) -> httpx.AsyncBaseTransport:
        """To the runtime's own port."""
        return _ToPort(self._http, self._run(container_id).runtime.port)

    async def close(self) -> None:
        """End every runtime."""
        for container_id in list(self._runs):
            await self.remove(container_id)
        await self._http.aclose()


async def _serve(token: str) -> None:
    runner = SyntheticRunner()
    try:
        async with serve(token=token, runner=runner, image="synthetic") as served:
            print(json.dumps({"url": served.url, "pid": os.getpid()}), flush=True)
            await wait_for_stop()
            await runner.close()  # each monitor long-poll is answered before the server stops
    finally:
        await runner.close()


def main() -> None:
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        sys.exit(f"Set {TOKEN_ENV} to the token the shim sends (its Worker secret).")
    asyncio.run(_serve(token))


if __name__ == "__main__":
    main()
