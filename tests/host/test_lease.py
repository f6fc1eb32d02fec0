"""Invariant 6 on object storage: two hosts, one moto S3 server, one owner per session."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import pytest

from kit.host.lease import CLOCK_SKEW_S, LeaseHeld, LeaseLost, S3Leases
from kit.ids import new_session_id
from kit.storage.s3 import unique_prefix
from kit.storage.s3io import S3Bucket
from tests.conftest import BUCKET


class Clock:
    """Shared wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _hosts(endpoint: str, clock: Clock) -> tuple[S3Leases, S3Leases, Any]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    prefix = unique_prefix()
    bucket = S3Bucket(client, BUCKET, prefix)
    a = S3Leases(bucket, owner="host-a", ttl_s=10, clock=clock)
    b = S3Leases(bucket, owner="host-b", ttl_s=10, clock=clock)
    return a, b, client


async def test_only_the_owner_writes(s3_endpoint: str) -> None:
    """A holds the lease: B cannot take it, and only A's fenced writes land."""
    clock = Clock()
    a, b, client = _hosts(s3_endpoint, clock)
    sid = new_session_id()
    lease_a = await a.acquire(sid)
    with pytest.raises(LeaseHeld, match="owned by host-a"):
        await b.acquire(sid)
    await a.write_fenced(lease_a, f"{a.prefix}sessions/{sid}/log/000001", b"event 1")
    lease_a = await a.renew(lease_a)
    await a.write_fenced(lease_a, f"{a.prefix}sessions/{sid}/log/000002", b"event 2")
    keys = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"{a.prefix}sessions/{sid}/log/")[
            "Contents"
        ]
    ]
    assert len(keys) == 2


async def test_takeover_after_expiry_fences_the_old_owner(s3_endpoint: str) -> None:
    """A stops renewing (dead or paused); once its lease expires B takes over with a higher
    epoch, and every later renew, check or write of A fails with LeaseLost."""
    clock = Clock()
    a, b, _ = _hosts(s3_endpoint, clock)
    sid = new_session_id()
    lease_a = await a.acquire(sid)
    clock.now += 10 + CLOCK_SKEW_S / 2  # expired, but within the skew grace
    with pytest.raises(LeaseHeld):
        await b.acquire(sid)
    clock.now += CLOCK_SKEW_S
    lease_b = await b.acquire(sid)
    assert lease_b.epoch == lease_a.epoch + 1
    with pytest.raises(LeaseLost):
        await a.renew(lease_a)
    with pytest.raises(LeaseLost):
        await a.check(lease_a)
    with pytest.raises(LeaseLost):
        await a.write_fenced(lease_a, f"{a.prefix}sessions/{sid}/log/000003", b"stale")
    await b.write_fenced(lease_b, f"{b.prefix}sessions/{sid}/log/000003", b"event 3")


async def test_a_write_racing_the_new_owner_loses(s3_endpoint: str) -> None:
    """Between A's fencing check and its PUT, B takes over and writes the same log key:
    A's conditional write fails instead of overwriting B's."""
    clock = Clock()
    a, b, _ = _hosts(s3_endpoint, clock)
    sid = new_session_id()
    await a.acquire(sid)
    clock.now += 20
    lease_b = await b.acquire(sid)
    key = f"{b.prefix}sessions/{sid}/log/000007"
    await b.write_fenced(lease_b, key, b"from b")
    with pytest.raises(LeaseLost):
        await b.write_fenced(lease_b, key, b"again")  # same key twice is refused too


async def test_simultaneous_acquires_have_one_winner(s3_endpoint: str) -> None:
    """Five hosts racing for a free session: exactly one gets the lease."""
    clock = Clock()
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    prefix = unique_prefix()
    bucket = S3Bucket(client, BUCKET, prefix)
    hosts = [S3Leases(bucket, owner=f"host-{i}", clock=clock) for i in range(5)]
    sid = new_session_id()
    results = await asyncio.gather(*(h.acquire(sid) for h in hosts), return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, LeaseHeld) for r in results if isinstance(r, BaseException))


async def test_release_lets_another_host_in_at_once(s3_endpoint: str) -> None:
    """A graceful shutdown releases the lease; B takes over without waiting for expiry."""
    clock = Clock()
    a, b, _ = _hosts(s3_endpoint, clock)
    sid = new_session_id()
    await a.release(await a.acquire(sid))
    lease_b = await b.acquire(sid)
    assert lease_b.epoch == 2
