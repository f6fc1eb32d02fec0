"""What idle connected sessions cost one `kit dev`: sandboxes running and host memory.

    .venv/bin/python bench/sessions.py [--sessions 1000] [--pool 2] [--grace 5]

Starts `kit dev --port 0` on the example agent (as a user would, a subprocess with its own
state dir), waits for its sandbox pool to fill, then opens N sessions, each with a
connected `kit.client.SessionClient` that said hello and nothing else. Prints:

- sandboxes running with N idle clients connected (the target: no more than the pool);
- the host process's memory (PSS and RSS, from /proc) before and after, per idle session
  (the target: at most 1 MiB), and the whole process tree's (host + sandboxes);
- session creation and hello latency (p50 / p95) and creation throughput;
- after every client leaves: how long until every session is unloaded (``--grace``).

Talks only to loopback. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

from kit.cli.settings import EXAMPLE_PROJECT
from kit.client import SessionClient, create_session

KIT = str(Path(sys.executable).parent / "kit")
MiB = 1024 * 1024
START_TIMEOUT_S = 60.0
CONCURRENCY = 50


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, in ms."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index] * 1000


def memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in bytes (0, 0 if it is gone)."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


def tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_pss(root: int) -> int:
    return sum(memory(pid)[0] for pid in tree(root))


class KitDev:
    """`kit dev --port 0` in a subprocess."""

    def __init__(self, state: Path, project: Path, pool: int, grace: float) -> None:
        self.state, self.project, self.pool, self.grace = state, project, pool, grace
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.token = ""
        self._drainer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {
            **os.environ,
            "KIT_STATE_DIR": str(self.state),
            "KIT_SANDBOX_POOL": str(self.pool),
            "KIT_SANDBOX_GRACE_S": str(self.grace),
        }
        env.pop("ANTHROPIC_API_KEY", None)
        self.proc = await asyncio.create_subprocess_exec(
            KIT, "dev", "--port", "0", "--no-watch", "--project", str(self.project),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert self.proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            while not self.url:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise SystemExit("kit dev exited before printing its banner")
                if m := re.search(r"sessions\s+(http://\S+)/v1/sessions", line):
                    self.url = m.group(1)
        self.token = (self.state / "api-token").read_text().strip()
        self._drainer = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def control(self, path: str) -> dict:  # type: ignore[type-arg]
        async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
            response = await http.get(
                f"{self.url}/_kit{path}", headers={"authorization": f"Bearer {self.token}"}
            )
            response.raise_for_status()
            return dict(response.json())

    async def sandboxes(self) -> int:
        rows = (await self.control("/sandboxes"))["sandboxes"]
        return sum(1 for r in rows if r["state"] == "running")

    async def loaded(self) -> int:
        rows = (await self.control("/sessions"))["sessions"]
        return sum(1 for r in rows if r["loaded"])

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def until(check, what: str, timeout_s: float) -> float:  # type: ignore[no-untyped-def]
    """Poll ``await check()`` every 100 ms until true; the seconds it took."""
    t0 = time.monotonic()
    while not await check():
        if time.monotonic() - t0 > timeout_s:
            raise SystemExit(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=2, help="KIT_SANDBOX_POOL (default 2)")
    parser.add_argument(
        "--grace", type=float, default=5.0, help="KIT_SANDBOX_GRACE_S (default 5; kit's is 30)"
    )
    args = parser.parse_args()
    if not 1 <= args.sessions <= 10_000:
        raise SystemExit("--sessions: give 1 to 10000")
    root = Path(tempfile.mkdtemp(prefix="kit-bench-sessions-"))
    os.chmod(root, 0o755)
    project = root / "project"
    shutil.copytree(EXAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(".kit"))
    dev = KitDev(root / "state", project, args.pool, args.grace)
    clients: list[SessionClient] = []
    try:
        t0 = time.monotonic()
        await dev.start()
        started = time.monotonic() - t0

        async def pool_full() -> bool:
            return bool(await dev.sandboxes() >= args.pool)

        await until(pool_full, "the pool to fill", START_TIMEOUT_S)
        await asyncio.sleep(1.0)  # let the host settle before the baseline reading
        host0, tree0 = memory(dev.pid), tree_pss(dev.pid)

        creates: list[float] = []
        hellos: list[float] = []
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with gate:
                a = time.perf_counter()
                info = await create_session(dev.url, dev.token)
                b = time.perf_counter()
                client = SessionClient(info.ws_url, info.token)
                await client.connect()
                c = time.perf_counter()
                creates.append(b - a)
                hellos.append(c - b)
                clients.append(client)

        t1 = time.perf_counter()
        async with asyncio.timeout(600):
            await asyncio.gather(*(one() for _ in range(args.sessions)))
        opened_s = time.perf_counter() - t1
        await asyncio.sleep(2.0)  # a measurement settle, not synchronisation
        running = await dev.sandboxes()
        host1, tree1 = memory(dev.pid), tree_pss(dev.pid)
        n = args.sessions

        for client in clients:
            await client.close()
        clients.clear()

        async def all_unloaded() -> bool:
            return await dev.loaded() == 0

        unload_s = await until(all_unloaded, "every session to unload", args.grace + 120)
        host2 = memory(dev.pid)
        print(
            f"idle sessions on one `kit dev` (example agent, pool {args.pool}, grace "
            f"{args.grace:g} s, {n} sessions); kit dev start → banner {started:.2f} s"
        )
        print("| measure | value |")
        print("|---|---|")
        print(f"| sandboxes running, {n} idle clients connected | {running} (pool {args.pool}) |")
        print(
            f"| host PSS before → after | {host0[0] / MiB:.1f} → {host1[0] / MiB:.1f} MiB "
            f"(RSS {host0[1] / MiB:.1f} → {host1[1] / MiB:.1f}) |"
        )
        print(
            f"| host memory per idle session | PSS {(host1[0] - host0[0]) / n / 1024:.1f} KiB, "
            f"RSS {(host1[1] - host0[1]) / n / 1024:.1f} KiB |"
        )
        print(
            f"| process tree PSS (host + sandboxes) per idle session | "
            f"{(tree1 - tree0) / n / 1024:.1f} KiB (tree {tree0 / MiB:.0f} → {tree1 / MiB:.0f} MiB) |"
        )
        print(f"| create session p50 / p95 | {pct(creates, 50):.1f} / {pct(creates, 95):.1f} ms |")
        print(f"| connect + hello p50 / p95 | {pct(hellos, 50):.1f} / {pct(hellos, 95):.1f} ms |")
        print(f"| sessions opened per second ({CONCURRENCY} at a time) | {n / opened_s:.0f} |")
        print(
            f"| every session unloaded after the clients left | {unload_s:.1f} s "
            f"(host PSS then {host2[0] / MiB:.1f} MiB) |"
        )
        print(f"\nreproduce: .venv/bin/python bench/sessions.py --sessions {n} --pool {args.pool}")
    finally:
        for client in clients:
            await client.close()
        await dev.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
