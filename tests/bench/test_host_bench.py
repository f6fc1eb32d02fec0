"""bench/host.py keeps working: its kit, DO and shim targets on tiny sizes, its seq check."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "host.py"
TINY = [
    *("--messages", "5", "--warmup", "1", "--burst", "50", "--clients", "2"),
    *("--replay", "40", "--replay-reps", "2", "--sessions", "3", "--per-session", "2"),
    *("--per-commit", "7", "--max-seconds", "120"),
]


def run_bench(target: str, tmp: Path) -> dict[str, Any]:
    """Run bench/host.py on tiny sizes; its JSON report."""
    out = tmp / "host.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--target", target, *TINY, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "command: .venv/bin/python bench/host.py --target" in done.stdout
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def check_counts(result: dict[str, Any]) -> None:
    """Every measure ran and saw the events it should (the driver checked each seq)."""
    assert result["latency"]["messages"] == 5
    assert result["burst_1"]["events"] == 52
    assert result["burst_2"]["events"] == 52
    assert result["replay"]["events"] >= 40
    assert result["many"]["events"] == 3 * 2 * 3
    assert result["open"]["sessions"] == 3
    assert result["host_rss_mib"]["now"] > 0


def test_kit_target_runs_every_measure(tmp_path: Path) -> None:
    """The kit target runs (a)-(d) on tiny sizes and reports figures and RSS."""
    report = run_bench("kit", tmp_path)
    [kit] = report["results"]
    assert kit["target"] == "kit"
    check_counts(kit)


def test_do_target_runs_every_measure(tmp_path: Path) -> None:
    """The Durable Object under wrangler dev runs (a)-(d) on tiny sizes."""
    if not (ROOT / "bench" / "do_host" / "node_modules" / ".bin" / "wrangler").exists():
        pytest.fail("wrangler is not installed: run scripts/setup-workers (scripts/test does).")
    report = run_bench("do", tmp_path)
    [do] = report["results"]
    assert do["target"] == "do"
    check_counts(do)


def test_shim_target_runs_every_measure(tmp_path: Path) -> None:
    """kit's shim under wrangler dev, its containers synthetic runtimes behind kit's
    container emulator, runs (a)-(e) on tiny sizes; the emulator is measured apart."""
    if not (ROOT / "worker_shim" / "node_modules" / ".bin" / "wrangler").exists():
        pytest.fail("wrangler is not installed: run scripts/setup-workers (scripts/test does).")
    report = run_bench("shim", tmp_path)
    [shim] = report["results"]
    assert shim["target"] == "shim"
    check_counts(shim)
    assert shim["runtimes_rss_mib"] > 0
    assert shim["versions"]["wrangler"]


@pytest.fixture
def bench_host(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/host.py as a module (bench/ is scripts, not a package)."""
    monkeypatch.syspath_prepend(str(BENCH.parent))  # for its sibling host_targets
    spec = importlib.util.spec_from_file_location("bench_host", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


async def _gappy_host(ws: ServerConnection) -> None:
    """A host that welcomes, then skips seq 2."""
    await ws.recv()
    await ws.send(json.dumps({"type": "welcome", "resume": "none", "last_seq": 0}))
    for seq in (1, 3):
        await ws.send(json.dumps({"type": "event", "seq": seq, "kind": "text_delta"}))
    await ws.wait_closed()


@pytest.fixture
async def gappy_url() -> AsyncIterator[str]:
    """A WebSocket server on a free loopback port that sends a gap."""
    async with serve(_gappy_host, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/sessions/x/ws"


async def test_client_fails_loudly_on_a_gap(bench_host: ModuleType, gappy_url: str) -> None:
    """The driver's client stops the run when a host skips a seq."""
    info = bench_host.SessionInfo("x", "token", gappy_url)
    client = await bench_host.Client.connect(info, "gappy")
    assert (await client.event())["seq"] == 1
    with pytest.raises(bench_host.BenchError, match="seq 3 after 1: a gap"):
        await client.event()
    client.close()
