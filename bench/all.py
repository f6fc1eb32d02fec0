"""Every benchmark of issue 16's table in one go, and one table of ratios.

    .venv/bin/python bench/all.py                 # about 7 minutes on 2 vCPUs
    .venv/bin/python bench/all.py --quick         # smaller samples
    .venv/bin/python bench/all.py --only startup host --out /tmp/table.md

Runs, one after the other (each its own process, so one's memory and threads do not weigh
on the next): ``bench/startup.py`` (kit dev and wrangler dev start), ``bench/turn_latency.py``
(warm turn and first turn against the Agent SDK alone), ``bench/host.py --target both``
(replay of 10,000 events and 100 sessions x 20 messages against a Durable Object under
``wrangler dev``), ``bench/host.py`` again with ``--kit-durability fsync`` (what the fsync
costs; kit dev runs ``os``, kit gateway ``fsync``), ``bench/chaos.py`` (resume after a sandbox kill) and, when Docker answers,
``bench/fly_rehearsal.py`` (the Fly rehearsal's first event and resume after a machine
kill) and ``bench/cf_rehearsal.py`` (the same on the Cloudflare rehearsal, beside
Cloudflare's stated container start). Each writes JSON; this script reads it and prints
one Markdown table: each figure, its reference, the ratio, the target and whether it is
met. ``--out`` also writes the table to a file. A benchmark that fails is reported in the
table as failed (with its stderr's tail) and the others still run; the exit status is 1 if
any failed.

Loopback only, as every script here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BENCH_TIMEOUT_S = 3600.0
CF_STATED_START_S = 0.6
CF_STATED_START = "Cloudflare's stated container start: median < 600 ms, `start()` → first command"
"""What Cloudflare states for its containers under Sandbox SDK 1.0 (~4 s on 0.x):
https://developers.cloudflare.com/sandbox/1-0-preview/."""


@dataclass(frozen=True)
class Bench:
    name: str
    args: list[str]
    quick: list[str]
    needs: Callable[[], str | None] = lambda: None
    """None when it can run here; else why not."""


def _docker() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker command (scripts/docker-up installs and starts Docker)"
    done = subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False)
    return None if done.returncode == 0 else "Docker is not running (run scripts/docker-up)"


BENCHES = [
    Bench("startup", ["bench/startup.py", "--runs", "5"], ["--runs", "3"]),
    Bench(
        "turns",
        ["bench/turn_latency.py", "--turns", "60", "--sessions", "10"],
        ["--turns", "30", "--sessions", "5"],
    ),
    Bench(
        "host",
        ["bench/host.py", "--target", "both"],
        ["--messages", "200", "--burst", "5000", "--replay", "5000"],
    ),
    Bench(
        "host-fsync",
        ["bench/host.py", "--target", "kit", "--kit-durability", "fsync"],
        ["--messages", "200", "--burst", "5000", "--replay", "5000"],
    ),
    Bench(
        "chaos",
        ["bench/chaos.py", "--sessions", "6", "--kills", "30", "--interval", "1.0"],
        ["--kills", "12"],
    ),
    Bench("fly", ["bench/fly_rehearsal.py", "--sessions", "6"], ["--sessions", "3"], _docker),
    Bench("cf", ["bench/cf_rehearsal.py", "--sessions", "6"], ["--sessions", "3"], _docker),
]


def run_bench(bench: Bench, quick: bool, work: Path) -> tuple[dict[str, Any] | None, str]:
    """Run one benchmark; its JSON (None if it failed or could not run) and a note."""
    why_not = bench.needs()
    if why_not is not None:
        return None, f"not run: {why_not}"
    out = work / f"{bench.name}.json"
    args = [PYTHON, *bench.args, *(bench.quick if quick else []), "--json", str(out)]
    shown = " ".join([".venv/bin/python", *args[1:-2]])
    print(f"bench/all.py: {shown}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            args, cwd=ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"failed: no end within {BENCH_TIMEOUT_S:.0f} s ({shown})"
    took = time.monotonic() - t0
    if done.returncode != 0 or not out.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return None, f"failed (exit {done.returncode}): {' / '.join(tail)} ({shown})"
    return json.loads(out.read_text()), f"{shown} ({took:.0f} s)"


@dataclass(frozen=True)
class Row:
    figure: str
    kit: float | None
    reference: float | None
    reference_name: str
    unit: str
    target: str
    met: bool | None


def _ratio(row: Row) -> str:
    if row.kit is None or not row.reference:
        return "—"
    return f"{row.kit / row.reference:.2f}x"


def rows(results: dict[str, dict[str, Any] | None]) -> list[Row]:
    """The table's rows from the benchmarks' JSON (a missing benchmark gives empty cells)."""
    out: list[Row] = []
    start = results.get("startup")
    if start:
        kit, ref = start["kit dev"]["p50"], start["wrangler dev"]["p50"]
        out.append(
            Row("`kit dev` start → /healthz, p50", kit, ref, "`wrangler dev`", "s",
                "≤ 0.5x wrangler", kit <= 0.5 * ref)
        )  # fmt: skip
    turns = results.get("turns")
    if turns:
        w = turns["warm"]
        gap_ms = (w["kit"]["p50"] - w["sdk"]["p50"]) * 1000
        out.append(
            Row("warm turn, p50", w["kit"]["p50"] * 1000, w["sdk"]["p50"] * 1000,
                "SDK alone", "ms", f"≤ +2 ms (now {gap_ms:+.1f} ms)", gap_ms <= 2.0)
        )  # fmt: skip
        if "cold" in turns:
            c = turns["cold"]
            kit, ref = c["kit"]["p50"], c["sdk"]["p50"]
            out.append(
                Row("first turn, no pool, p50", kit * 1000, ref * 1000, "one-shot `query()`",
                    "ms", "≤ 1.05x", kit <= 1.05 * ref)
            )  # fmt: skip
        if "first" in turns:
            f = turns["first"]
            out.append(
                Row("first turn, pool of 2, p50", f["kit"]["p50"] * 1000,
                    f["sdk"]["p50"] * 1000, "one-shot `query()`", "ms", "—", None)
            )  # fmt: skip
    host = results.get("host")
    if host:
        by = {r["target"]: r for r in host["results"]}
        kit, do = by.get("kit"), by.get("do")
        if kit and do:
            k, d = kit["replay"]["median_s"], do["replay"]["median_s"]
            events = kit["replay"]["events"]
            out.append(
                Row(f"replay of {events:,} events, median", k, d, "DO (`wrangler dev`)", "s",
                    "≤ 0.5x the DO", k <= 0.5 * d)
            )  # fmt: skip
            k, d = kit["many"]["eps"], do["many"]["eps"]
            sessions = f"{kit['many']['sessions']} sessions x {kit['many']['per_session']}"
            out.append(
                Row(f"{sessions} messages, events/s", k, d, "DO (`wrangler dev`)",
                    "events/s", "≥ 2x the DO", k >= 2 * d)
            )  # fmt: skip
    host_fsync = results.get("host-fsync")
    if host and host_fsync:
        plain = {r["target"]: r for r in host["results"]}.get("kit")
        fsync = {r["target"]: r for r in host_fsync["results"]}.get("kit")
        if fsync and plain:
            out.append(
                Row("100 sessions, events/s, `KIT_DURABILITY=fsync` (kit gateway's)",
                    fsync["many"]["eps"], plain["many"]["eps"], "`os` (kit dev's)",
                    "events/s", "—", None)
            )  # fmt: skip
            out.append(
                Row("one session's `user` → `result` p50, `fsync`",
                    fsync["latency"]["result_ms"]["50"], plain["latency"]["result_ms"]["50"],
                    "`os`", "ms", "—", None)
            )  # fmt: skip
    chaos = results.get("chaos")
    if chaos and chaos.get("resume_p50_s") is not None:
        p50 = chaos["resume_p50_s"]
        out.append(
            Row(f"resume after a sandbox kill, p50 (n={chaos['resume_n']}, "
                f"{chaos['events_lost']} lost, {chaos['events_duplicated']} duplicated)",
                p50, 0.6, "CF container start (stated < 600 ms)", "s", "≤ 1.0 s", p50 <= 1.0)
        )  # fmt: skip
    fly = results.get("fly")
    if fly:
        for key, label in (
            ("new: first event", "Fly rehearsal: new session → first event, p50"),
            ("kill: resumed text", "Fly rehearsal: machine kill → resumed text, p50"),
        ):
            if key in fly:
                out.append(Row(label, fly[key]["p50"], None, "", "s", "—", None))
    cf = results.get("cf")
    if cf:
        for key, label in (
            ("new: first event", "CF rehearsal: new session → first event, p50"),
            ("new: sandbox running", "CF rehearsal: new session → sandbox running, p50"),
            ("kill: resumed text", "CF rehearsal: container kill → resumed text, p50"),
        ):
            if key in cf:
                out.append(
                    Row(label, cf[key]["p50"], CF_STATED_START_S, CF_STATED_START, "s", "—", None)
                )
    return out


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "events/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.3f} s"


def table(found: list[Row], notes: dict[str, str]) -> str:
    lines = [
        "| figure | kit | reference | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in found:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        ref = f"{_number(r.reference, r.unit)} ({r.reference_name})" if r.reference_name else "—"
        lines.append(
            f"| {r.figure} | {_number(r.kit, r.unit)} | {ref} | {_ratio(r)} | {r.target} | {met} |"
        )
    lines.append("")
    lines += [f"- {name}: {note}" for name, note in notes.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller samples")
    parser.add_argument(
        "--only", nargs="+", choices=[b.name for b in BENCHES], help="run only these"
    )
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    results: dict[str, dict[str, Any] | None] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="kit-bench-all-") as tmp:
        for bench in chosen:
            results[bench.name], notes[bench.name] = run_bench(bench, args.quick, Path(tmp))
    text = table(rows(results), notes)
    print(text)
    print(f"\ncommand: .venv/bin/python bench/all.py {' '.join(sys.argv[1:])}".rstrip())
    if args.out is not None:
        args.out.write_text(text + "\n")
    if any(
        value is None and not notes[name].startswith("not run") for name, value in results.items()
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
