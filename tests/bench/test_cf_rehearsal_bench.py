"""bench/cf_rehearsal.py's figures reach bench/all.py's table beside Cloudflare's stated
container start, and the bench refuses a turn whose answer is not the scenario's. (The
bench itself needs Docker and wrangler and takes minutes: docs/benchmarks.md has its run.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    """bench/<name>.py as a module (bench/ is no package: its scripts import each other
    with bench/ first on the path, as ``python bench/<name>.py`` has it)."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_cf_rows_sit_beside_cloudflares_stated_start() -> None:
    bench_all = load("all")
    cf = {
        "new: first event": {"p50": 0.06, "p95": 0.1},
        "new: sandbox running": {"p50": 1.2, "p95": 1.5},
        "kill: resumed text": {"p50": 3.0, "p95": 3.3},
    }
    found = bench_all.rows({"cf": cf})
    assert [(r.figure, r.kit, r.reference) for r in found] == [
        ("CF rehearsal: new session → first event, p50", 0.06, 0.6),
        ("CF rehearsal: new session → sandbox running, p50", 1.2, 0.6),
        ("CF rehearsal: container kill → resumed text, p50", 3.0, 0.6),
    ]
    text = bench_all.table(found, {"cf": "ran"})
    assert "| CF rehearsal: new session → sandbox running, p50 | 1.200 s | 0.600 s " in text
    assert "| 2.00x |" in text
    assert "| 5.00x |" in text
    assert "median < 600 ms" in text


def test_the_cf_bench_stops_on_a_wrong_answer() -> None:
    cf_rehearsal = load("cf_rehearsal")
    cf_rehearsal.answer(
        {"is_error": False, "text": cf_rehearsal.RECOVERED_REPLY}, cf_rehearsal.RECOVERED_REPLY, "x"
    )
    with pytest.raises(SystemExit, match=r"the resumed turn answered 'Working on it\.'"):
        cf_rehearsal.answer(
            {"is_error": False, "text": "Working on it."}, cf_rehearsal.RECOVERED_REPLY, "resumed"
        )
    with pytest.raises(SystemExit, match="the first turn answered"):
        cf_rehearsal.answer(
            {"is_error": True, "text": cf_rehearsal.HELLO_REPLY}, cf_rehearsal.HELLO_REPLY, "first"
        )
