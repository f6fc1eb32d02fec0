"""Chaos benchmark: sessions talking while their sandboxes are SIGKILLed.

    .venv/bin/python bench/chaos.py --sessions 20 --kills 200 [--interval 1.0] [--seed 1]

Prints kills, turns completed, events lost, events duplicated and resume latency p50/p95
(kill → first event of the resumed turn). Real local stack, real CLI, offline model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path

from kit.cli.chaos import run_chaos
from kit.tiers import tier_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0, help="mean seconds between kills")
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument(
        "--think-min", type=float, default=1.0, help="shortest pause between turns (s)"
    )
    parser.add_argument(
        "--think-max", type=float, default=4.0, help="longest pause between turns (s)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=1500.0)
    parser.add_argument(
        "--isolation",
        choices=["auto", "bwrap", "off"],
        default="auto",
        help="as KIT_SANDBOX_ISOLATION",
    )
    parser.add_argument(
        "--tier",
        default="basic",
        choices=tier_names(),
        help="the agent's sandbox tier (default basic: 1/4 vCPU, which bounds how fast a new "
        "sandbox's runtime and CLI start; standard-4's quota never binds on 2 cores)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    report = asyncio.run(
        run_chaos(
            sessions=args.sessions,
            kills=args.kills,
            interval_s=args.interval,
            think_s=(args.think_min, args.think_max),
            seed=args.seed,
            max_seconds=args.max_seconds,
            isolation=args.isolation,
            tier=args.tier,
        )
    )
    print(report.summary())
    if args.json:
        lat = sorted(report.resume_latencies_s)
        args.json.write_text(
            json.dumps(
                {
                    "kills": report.kills,
                    "turns_completed": report.turns_completed,
                    "turns_sent": report.turns_sent,
                    "events_lost": report.events_lost,
                    "events_duplicated": report.events_duplicated,
                    "resume_p50_s": statistics.median(lat) if lat else None,
                    "resume_n": len(lat),
                },
                indent=2,
            )
            + "\n"
        )
    failed = [s for s in report.sessions if s.turns_failed]
    if failed:
        print(f"sessions with failed turns: {len(failed)}")


if __name__ == "__main__":
    main()
