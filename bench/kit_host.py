"""kit's session host as bench/host.py measures it: one process, synthetic sandboxes.

    .venv/bin/python bench/kit_host.py --state DIR --api-token TOKEN [--port 0] [--profile FILE]
        [--log do|sqlite] [--durability fsync|os]

Prints one JSON line ``{"url", "pid"}`` once it listens, then serves until SIGTERM,
SIGINT or the end of its stdin. ``--profile`` writes a cProfile of the whole run on exit.

:func:`serve_kit_host` is the one place that wires kit for this bench: the gateway library
``kit dev`` runs (:func:`kit.host.gateway.open_gateway`) with its event log under ``DIR``
(by default the emulator's Durable Objects, as ``kit dev`` runs it; ``--log sqlite`` the
plain SQLite log store) and :class:`SyntheticProvider`, whose sandboxes are small HTTP
servers in this process speaking kit's host↔runtime wire (docs/protocol.md §11) with the
same synthetic turn as the Durable Object in ``bench/do_host`` (bench/synthetic_runtime.py). No SDK, no CLI, no model:
the bench measures the host, as the DO side has no container either. The runtimes share
the host's process and CPU, as the DO's synthetic turn shares the DO's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import itertools
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from synthetic_runtime import SyntheticRuntime, wait_for_stop

from emulator.durable_objects import DOLogStore
from kit.durability import Durability
from kit.host import (
    ExitInfo,
    LogStore,
    Release,
    Sandbox,
    SandboxProvider,
    SandboxSpec,
    SandboxState,
    SQLiteLogStore,
)
from kit.host.edge import EdgeLimits
from kit.host.gateway import GatewayConfig, open_gateway
from kit.host.sandbox import reason_of
from kit.ids import SandboxId, SessionId


class SyntheticSandbox(Sandbox):
    """One synthetic runtime (bench/synthetic_runtime.py) in this process, as a sandbox."""

    _ids = itertools.count(1)

    def __init__(self, spec: SandboxSpec) -> None:
        self.id = SandboxId(f"synthetic-{next(self._ids)}")
        self.session_id = spec.session_id
        self.resumed = False
        self.endpoint = ""
        self._runtime = SyntheticRuntime(spec.session_id, spec.runtime_token)
        self._exit: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()

    async def listen(self) -> None:
        """Start serving; sets :attr:`endpoint`."""
        self.endpoint = await self._runtime.listen()

    def _has_exited(self) -> bool:
        return self._exit.done()

    async def _reported_exit(self) -> ExitInfo:
        return await asyncio.shield(self._exit)

    async def _send_signal(self, sig: int, reason: str | None) -> None:
        self._runtime.close()
        if not self._exit.done():
            code = 128 + int(sig)
            self._exit.set_result(ExitInfo(code, reason or reason_of(code)))


class SyntheticProvider(SandboxProvider):
    """Starts :class:`SyntheticSandbox` runtimes (in this process, on loopback)."""

    def __init__(self) -> None:
        self.started: list[SyntheticSandbox] = []

    async def start(self, spec: SandboxSpec) -> Sandbox:
        sandbox = SyntheticSandbox(spec)
        await sandbox.listen()
        self.started.append(sandbox)
        return sandbox

    async def find(self, session_id: SessionId) -> Sandbox | None:
        return next(
            (
                s
                for s in self.started
                if s.session_id == session_id and s.state is not SandboxState.EXITED
            ),
            None,
        )

    async def reap(self, keep: Callable[[SessionId], bool]) -> list[SandboxId]:
        reaped = []
        for sandbox in self.started:
            if sandbox.state is not SandboxState.EXITED and not keep(sandbox.session_id):
                await sandbox.kill(signal.SIGKILL, reason="orphan")
                reaped.append(sandbox.id)
        return reaped

    async def close(self) -> None:
        for sandbox in self.started:
            await sandbox.kill(signal.SIGTERM, reason="stopped")


@contextlib.asynccontextmanager
async def serve_kit_host(
    state: Path,
    api_token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    durability: Durability = Durability.OS,
    log: str = "do",
) -> AsyncIterator[str]:
    """Run kit's session host on ``host:port`` with synthetic sandboxes; yields its base URL.

    ``log``: ``do`` (the emulator's Durable Objects, what ``kit dev`` runs) or ``sqlite``
    (``kit gateway``'s); ``durability``: ``KIT_DURABILITY`` (kit.durability).
    """
    provider = SyntheticProvider()
    release = Release(state, "synthetic", "lite", 3600)
    logs: LogStore
    if log == "sqlite":
        logs = SQLiteLogStore(state / "sessions", durability)
    else:
        logs = DOLogStore.in_dir(state / "sessions", durability=durability)
    # kit dev's gateway, but no cap on unauthenticated connections: bench/host.py (d) opens
    # --sessions sockets at once from one address (KIT_PEER_CONNECTIONS lifts it for kit dev).
    # Its proxies listen on loopback TCP, never called: the synthetic runtime has no model.
    config = GatewayConfig(
        api_token=api_token,
        upstream_key="bench-never-used",
        store_url=lambda session_id: "memory://",
        host=host,
        port=port,
        upstream_url="http://127.0.0.1:9",
        edge=EdgeLimits(unauthenticated_per_peer=None),
    )
    try:
        async with open_gateway(config, provider, logs, lambda: release) as gateway:
            yield gateway.url
    finally:
        if isinstance(logs, DOLogStore):
            await logs.aclose()


async def _serve(state: Path, api_token: str, port: int, durability: Durability, log: str) -> None:
    async with serve_kit_host(state, api_token, port=port, durability=durability, log=log) as url:
        print(json.dumps({"url": url, "pid": os.getpid()}), flush=True)
        await wait_for_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="folder for the event logs")
    parser.add_argument("--api-token", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", type=Path, help="write a cProfile of the run here")
    parser.add_argument(
        "--log",
        choices=["do", "sqlite"],
        default="do",
        help="event logs: the emulator's Durable Objects (kit dev's default) or plain SQLite",
    )
    parser.add_argument(
        "--durability",
        choices=[d.value for d in Durability],
        default=Durability.OS.value,
        help="KIT_DURABILITY of the event logs: os (kit dev's default) or fsync",
    )
    args = parser.parse_args()
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        asyncio.run(
            _serve(args.state, args.api_token, args.port, Durability(args.durability), args.log)
        )
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
