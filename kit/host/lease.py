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
    ├── LeaseHeld   another host holds an unexpired lease
    └── LeaseLost   this host's lease was taken over (or is gone); stop writing
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kit.host.errors import HostError

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


class LeaseLost(HostError):
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
    """Takes, renews, checks and releases session leases in an S3 bucket (boto3 client)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        owner: str,
        prefix: str = "",
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s3 = client
        self.bucket = bucket
        self.owner = owner
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.ttl_s = ttl_s
        self._clock = clock

    def key(self, session_id: str) -> str:
        """The lease object's key."""
        return f"{self.prefix}sessions/{session_id}/lease"

    async def acquire(self, session_id: str) -> Lease:
        """Take the lease: new, our own again, or an expired one (epoch + 1)."""
        body = self._body(1)
        etag = await self._put(self.key(session_id), body, {"IfNoneMatch": "*"})
        if etag is not None:
            return Lease(session_id, self.owner, 1, body["expires_at"], etag)
        current = await self._read(session_id)
        if current is None:  # deleted in between: try once more from scratch
            return await self.acquire(session_id)
        data, etag_now = current
        now = self._clock()
        if data["owner"] != self.owner and now < data["expires_at"] + CLOCK_SKEW_S:
            raise LeaseHeld(session_id, data["owner"], data["expires_at"] - now)
        body = self._body(int(data["epoch"]) + 1)
        etag = await self._put(self.key(session_id), body, {"IfMatch": etag_now})
        if etag is None:
            fresh = await self._read(session_id)
            owner = fresh[0]["owner"] if fresh else "another host"
            raise LeaseHeld(session_id, owner, self.ttl_s)
        return Lease(session_id, self.owner, body["epoch"], body["expires_at"], etag)

    async def renew(self, lease: Lease) -> Lease:
        """Extend the lease; :class:`LeaseLost` if anyone changed it since."""
        body = self._body(lease.epoch)
        etag = await self._put(self.key(lease.session_id), body, {"IfMatch": lease.etag})
        if etag is None:
            raise LeaseLost(f"Lost the lease of session {lease.session_id} (epoch {lease.epoch}).")
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
        if await self._put(key, body, {"IfNoneMatch": "*"}, raw=True) is None:
            raise LeaseLost(f"{key} was written by another owner of session {lease.session_id}.")

    async def release(self, lease: Lease) -> None:
        """Give the lease up (expire it now) so another host can take over at once."""
        body = {"owner": self.owner, "epoch": lease.epoch, "expires_at": 0.0}
        await self._put(self.key(lease.session_id), body, {"IfMatch": lease.etag})

    # -- internals -----------------------------------------------------------------------

    def _body(self, epoch: int) -> dict[str, Any]:
        return {"owner": self.owner, "epoch": epoch, "expires_at": self._clock() + self.ttl_s}

    async def _read(self, session_id: str) -> tuple[dict[str, Any], str] | None:
        from botocore.exceptions import ClientError

        def get() -> tuple[dict[str, Any], str] | None:
            try:
                response = self._s3.get_object(Bucket=self.bucket, Key=self.key(session_id))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return json.loads(response["Body"].read()), str(response["ETag"])

        try:
            return await asyncio.to_thread(get)
        except ClientError as exc:
            raise HostError(f"The lease store refused a read: {exc}.") from exc

    async def _put(
        self,
        key: str,
        body: dict[str, Any] | bytes,
        condition: dict[str, str],
        *,
        raw: bool = False,
    ) -> str | None:
        """Conditional PUT; the new ETag, or None when the condition failed (409/412)."""
        from botocore.exceptions import ClientError

        data = body if raw and isinstance(body, bytes) else json.dumps(body).encode()

        def put() -> str | None:
            try:
                response = self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, **condition)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status in (409, 412):
                    return None
                raise
            return str(response["ETag"])

        try:
            return await asyncio.to_thread(put)
        except ClientError as exc:
            raise HostError(f"The lease store refused a write: {exc}.") from exc
