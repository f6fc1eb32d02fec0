"""One owner per session on object storage: a lease with a fencing token.

The lease is one small object, ``{prefix}sessions/{session_id}/lease``, holding
``{"owner", "epoch", "expires_at"}``. It is taken with ``If-None-Match: *`` (nobody had it),
renewed with ``If-Match: <etag>`` (nobody changed it since), and taken over once expired
with ``If-Match`` too, which bumps ``epoch``: the fencing token. An owner checks its epoch
before every write and writes log objects with ``If-None-Match: *``, so a host that lost its
lease (paused, partitioned, slow) finds out before it writes, or at the latest when its write
collides with the new owner's. Only strongly consistent buckets give these guarantees: on
Tigris use a single- or multi-region bucket (``docs``: reference/fly.md §11); R2 is strong.

::

    HostError
    ├── LeaseHeld       another host holds an unexpired lease
    └── LogError
        └── LeaseLost   this host's lease was taken over (or is gone); stop writing
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kit.host.errors import HostError, LogError
from kit.storage.s3io import S3Bucket

DEFAULT_TTL_S = 15.0
CLOCK_SKEW_S = 2.0
"""Grace past ``expires_at`` before another host may take over (clocks drift)."""


class LeaseHeld(HostError):
    """Another host owns the session's lease and it has not expired."""

    def __init__(self, session_id: str, owner: str, expires_in: float) -> None:
        super().__init__(
            f"Session {session_id} is owned by {owner} for another {expires_in:.1f} s; "
            "route the client to that host or retry after the lease expires."
        )
        self.owner = owner


class LeaseLost(LogError):
    """This host no longer owns the session: another host took over. Stop writing."""


@dataclass(frozen=True)
class Lease:
    """A held lease: ``epoch`` is the fencing token."""

    session_id: str
    owner: str
    epoch: int
    expires_at: float
    etag: str


class S3Leases:
    """Takes, renews, checks and releases session leases in an S3 bucket.

    ``info`` fields ride along in the lease object (the event log keeps ``open``: whether the
    session has unfinished turns, so another host knows which sessions to recover). Errors
    of the store itself (``StoreUnavailable``, ``StoreError``) pass through unchanged.
    """

    def __init__(
        self,
        bucket: S3Bucket,
        *,
        owner: str,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket = bucket
        self.owner = owner
        self.prefix = bucket.prefix
        self.ttl_s = ttl_s
        self._clock = clock

    def key(self, session_id: str) -> str:
        """The lease object's key."""
        return f"{self.prefix}sessions/{session_id}/lease"

    async def acquire(
        self, session_id: str, info: dict[str, Any] | None = None, *, _retries_left: int = 3
    ) -> Lease:
        """Take the lease: new, our own again, or an expired one (epoch + 1)."""
        body = self._body(1, info)
        etag = await self.bucket.put(self.key(session_id), _dump(body), if_absent=True)
        if etag is not None:
            return Lease(session_id, self.owner, 1, body["expires_at"], etag)
        current = await self._read(session_id)
        if current is None:  # deleted in between: try once more from scratch
            if _retries_left <= 0:
                raise HostError(f"The lease of session {session_id} keeps vanishing; retry.")
            return await self.acquire(session_id, info, _retries_left=_retries_left - 1)
        data, etag_now = current
        now = self._clock()
        if data["owner"] != self.owner and now < data["expires_at"] + CLOCK_SKEW_S:
            raise LeaseHeld(session_id, data["owner"], data["expires_at"] - now)
        body = self._body(int(data["epoch"]) + 1, info)
        etag = await self.bucket.put(self.key(session_id), _dump(body), if_match=etag_now)
        if etag is None:
            fresh = await self._read(session_id)
            owner = fresh[0]["owner"] if fresh else "another host"
            raise LeaseHeld(session_id, owner, self.ttl_s)
        return Lease(session_id, self.owner, body["epoch"], body["expires_at"], etag)

    async def renew(self, lease: Lease, info: dict[str, Any] | None = None) -> Lease:
        """Extend the lease; :class:`LeaseLost` if anyone changed it since."""
        body = self._body(lease.epoch, info)
        key = self.key(lease.session_id)
        etag = await self.bucket.put(key, _dump(body), if_match=lease.etag)
        if etag is None:
            # botocore retries a PUT whose answer was lost: the 412 may be our own write.
            current = await self._read(lease.session_id)
            if current is None or current[0] != body:
                raise LeaseLost(
                    f"Lost the lease of session {lease.session_id} (epoch {lease.epoch})."
                )
            etag = current[1]
        return Lease(lease.session_id, self.owner, lease.epoch, body["expires_at"], etag)

    async def check(self, lease: Lease) -> None:
        """The fencing check before a write: :class:`LeaseLost` unless we still hold ``lease``."""
        current = await self._read(lease.session_id)
        if current is None or current[1] != lease.etag or int(current[0]["epoch"]) != lease.epoch:
            raise LeaseLost(f"Lost the lease of session {lease.session_id} (epoch {lease.epoch}).")
        if self._clock() > lease.expires_at:
            raise LeaseLost(
                f"The lease of session {lease.session_id} expired before it was renewed."
            )

    async def write_fenced(self, lease: Lease, key: str, body: bytes) -> None:
        """Write a new object under the lease: fencing check, then ``If-None-Match: *``.

        :class:`LeaseLost` if the lease is gone or the key was already written (by a newer
        owner that took over).
        """
        await self.check(lease)
        if not await self.bucket.put_if_absent(key, body):
            raise LeaseLost(f"{key} was written by another owner of session {lease.session_id}.")

    async def release(self, lease: Lease, info: dict[str, Any] | None = None) -> None:
        """Give the lease up (expire it now) so another host can take over at once."""
        body = {**(info or {}), "owner": self.owner, "epoch": lease.epoch, "expires_at": 0.0}
        await self.bucket.put(self.key(lease.session_id), _dump(body), if_match=lease.etag)

    async def peek(self, session_id: str) -> dict[str, Any] | None:
        """The lease object as stored (owner, epoch, expires_at, info), or ``None``."""
        current = await self._read(session_id)
        return None if current is None else current[0]

    def expired(self, data: dict[str, Any]) -> bool:
        """Whether a lease read with :meth:`peek` may be taken over now."""
        return self._clock() >= float(data["expires_at"]) + CLOCK_SKEW_S

    # -- internals -----------------------------------------------------------------------

    def _body(self, epoch: int, info: dict[str, Any] | None) -> dict[str, Any]:
        return {
            **(info or {}),
            "owner": self.owner,
            "epoch": epoch,
            "expires_at": self._clock() + self.ttl_s,
        }

    async def _read(self, session_id: str) -> tuple[dict[str, Any], str] | None:
        got = await self.bucket.get_with_etag(self.key(session_id))
        return None if got is None else (json.loads(got[0]), got[1])


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
