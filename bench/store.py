"""Transcript store speed: append latency and load time, SQLite vs S3 (moto on loopback).

    .venv/bin/python bench/store.py [--sizes 1000 10000] [--batch 4]

Entries come in batches of ``--batch`` (the SDK's eager flush sends ~4 per append in a steady
turn), each ~0.5 KiB of JSON like the CLI's transcript lines. Prints append p50/p95 (ms) and
the time to load the whole transcript (ms), per backend and size.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kit.storage import open_store
from kit.storage.s3 import unique_prefix


def entry(i: int) -> dict[str, Any]:
    """A transcript-like entry of ~0.5 KiB."""
    return {
        "type": "assistant" if i % 2 else "user",
        "uuid": str(uuid.uuid4()),
        "parentUuid": str(uuid.uuid4()),
        "timestamp": "2026-11-22T12:00:00.000Z",
        "sessionId": "33333333-3333-4333-8333-333333333333",
        "message": {
            "role": "assistant",
            "content": [{"type": "text", "text": f"entry {i} " + "x" * 300}],
        },
    }


def pct(values: list[float], q: float) -> float:
    """q-th percentile of seconds, in ms."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000


async def run(url: str, size: int, batch: int) -> tuple[float, float, float]:
    """Append ``size`` entries in batches, then load them; (append p50, p95, load) in ms."""
    store: Any = open_store(url)
    key: Any = {"project_key": "-workspace", "session_id": str(uuid.uuid4())}
    times = []
    for start in range(0, size, batch):
        entries = [entry(i) for i in range(start, min(size, start + batch))]
        t = time.perf_counter()
        await store.append(key, entries)
        times.append(time.perf_counter() - t)
    fresh: Any = open_store(url)  # a new process resuming: nothing cached
    t = time.perf_counter()
    loaded = await fresh.load(key)
    load_ms = (time.perf_counter() - t) * 1000
    assert loaded is not None
    assert len(loaded) == size
    return pct(times, 50), pct(times, 95), load_ms


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    assert server._server is not None
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="kit-bench"
    )
    folder = Path(tempfile.mkdtemp(prefix="kit-store-bench-"))
    print(f"batch of {args.batch} entries per append; ms")
    print("| backend | entries | append p50 | append p95 | load all |")
    print("|---|---|---|---|---|")
    try:
        for size in args.sizes:
            for name, url in (
                ("sqlite", f"sqlite:///{folder}/{size}.db?durability=os"),
                (
                    "s3 (moto)",
                    f"s3://kit-bench/{unique_prefix()}?endpoint_url={endpoint}&region=us-east-1",
                ),
            ):
                p50, p95, load = await run(url, size, args.batch)
                print(f"| {name} | {size} | {p50:.2f} | {p95:.2f} | {load:.0f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
