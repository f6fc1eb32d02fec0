"""One S3-compatible bucket under a prefix: the boto3 plumbing every S3 user in kit shares.

The transcript store (``kit.storage.s3``), the host's event log and its session leases all
talk to S3 through :class:`S3Bucket`: it parses ``s3://BUCKET/PREFIX?…`` URLs, runs boto3's
blocking calls in worker threads, and maps botocore's errors to kit's, once. A conditional
write that loses (412, or 409 from stores that report a concurrent conditional write that
way) is not an error here: ``put`` returns ``None``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from kit.storage.errors import StoreError, StoreUnavailable

T = TypeVar("T")
PARALLEL_GETS = 16
URL_OPTIONS = ("endpoint_url", "region", "checksums")


def endpoint_of(url: str) -> str:
    """Where an ``s3://`` URL's requests go, as ``host:port`` (an egress allowlist entry):
    its ``endpoint_url``, else AWS (``*.amazonaws.com``)."""
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    endpoint = urlsplit(query.get("endpoint_url", ""))
    if not endpoint.hostname:
        return "*.amazonaws.com"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    return f"{endpoint.hostname}:{port}"


class S3Bucket:
    """A bucket and a key prefix (``""`` or ``"some/prefix/"``), reached through boto3."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._gets = asyncio.Semaphore(PARALLEL_GETS)

    @classmethod
    def from_url(cls, url: str, *, what: str = "Store URL") -> S3Bucket:
        """Open ``s3://BUCKET/PREFIX?endpoint_url=…&region=…&checksums=when_required``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise StoreError(f"{what} {url!r}: write s3://BUCKET/PREFIX (the bucket is missing).")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - set(URL_OPTIONS)
        if unknown:
            raise StoreError(
                f"{what} {url!r}: unknown option {sorted(unknown)[0]!r}; "
                f"allowed: {', '.join(URL_OPTIONS)}."
            )
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StoreError("s3:// URLs need boto3: pip install 'kit[s3]'.") from None
        config = Config(
            max_pool_connections=PARALLEL_GETS * 2,
            retries={"max_attempts": 3, "mode": "standard"},
            # Some S3-compatible stores reject boto3's default CRC32 checksums.
            request_checksum_calculation=query.get("checksums", "when_supported"),
            response_checksum_validation=query.get("checksums", "when_supported"),
        )
        client = boto3.client(
            "s3",
            endpoint_url=query.get("endpoint_url"),
            region_name=query.get("region", "auto"),
            config=config,
        )
        return cls(client, parts.netloc, parts.path)

    def url(self, key: str = "") -> str:
        """``s3://bucket/key`` for messages."""
        return f"s3://{self.bucket}/{key}"

    # -- writes --------------------------------------------------------------------------

    async def put(
        self, key: str, body: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> str | None:
        """PUT ``body``; its new ETag, or ``None`` when the condition failed."""
        condition: dict[str, str] = {}
        if if_match is not None:
            condition["IfMatch"] = if_match
        if if_absent:
            condition["IfNoneMatch"] = "*"
        try:
            response = await self.call(
                lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **condition),
                conflicts=bool(condition),
            )
        except _Conflict:
            return None
        return str(response["ETag"])

    async def put_if_absent(self, key: str, body: bytes) -> bool:
        """Create ``key``; false when it already exists."""
        return await self.put(key, body, if_absent=True) is not None

    async def delete_many(self, keys: list[str]) -> None:
        """Delete keys, a thousand per request."""
        for start in range(0, len(keys), 1000):
            objects = [{"Key": k} for k in keys[start : start + 1000]]
            await self.call(partial(self._delete_objects, objects))

    def _delete_objects(self, objects: list[dict[str, str]]) -> None:
        self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})

    async def exists(self) -> bool:
        """Whether the bucket exists (and these keys may reach it)."""
        try:
            await self.call(lambda: self.client.head_bucket(Bucket=self.bucket))
        except _Missing:
            return False
        return True

    async def create(self) -> None:
        """Create the bucket (one these keys already own: no error)."""
        from botocore.exceptions import ClientError

        def run() -> None:
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

        await self.call(run)

    async def delete_bucket(self) -> None:
        """Delete every object, then the bucket (already gone: no error)."""
        if not await self.exists():
            return
        await self.delete_many(await self.list_keys(""))
        await self.call(lambda: self.client.delete_bucket(Bucket=self.bucket))

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or ``None`` if it does not exist."""
        got = await self.get_with_etag(key)
        return None if got is None else got[0]

    async def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or ``None`` if it does not exist."""
        async with self._gets:
            try:
                return await self.call(
                    lambda: _read(self.client.get_object(Bucket=self.bucket, Key=key))
                )
            except _Missing:
                return None

    async def list_objects(self, prefix: str) -> list[dict[str, Any]]:
        """Every object under ``prefix`` (boto3 listing items), sorted by key."""

        def run() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                items.extend(page.get("Contents", []))
            return sorted(items, key=lambda i: i["Key"])

        return await self.call(run)

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted."""
        return [item["Key"] for item in await self.list_objects(prefix)]

    async def list_children(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` (``prefix/<name>/…``), sorted."""

        def run() -> list[str]:
            names: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(prefix) :].rstrip("/"))
            return sorted(names)

        return await self.call(run)

    # -- errors --------------------------------------------------------------------------

    async def call(self, fn: Callable[[], T], *, conflicts: bool = False) -> T:
        """Run a boto3 call in a thread and map its errors to kit's."""
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            return await asyncio.to_thread(fn)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if conflicts and (
                status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict")
            ):
                raise _Conflict() from exc
            if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                raise _Missing() from exc
            if code == "NoSuchBucket":
                raise StoreError(
                    f"Bucket {self.bucket!r} does not exist; create it or fix the URL."
                ) from exc
            if status is not None and status >= 500:
                raise StoreUnavailable(f"S3 answered {status} {code}; try again.") from exc
            raise StoreError(f"S3 refused the request: {code} ({status}).") from exc
        except (BotoConnectionError, HTTPClientError) as exc:
            # Refused, reset or timed-out connections: the endpoint is down, not wrong.
            raise StoreUnavailable(f"Cannot reach S3: {exc}.") from exc
        except BotoCoreError as exc:
            raise StoreError(f"S3 client error: {exc}.") from exc


class _Conflict(StoreError):
    """A conditional write lost (412) or collided (409); :meth:`S3Bucket.put` answers None."""

    def __init__(self) -> None:
        super().__init__("A conditional S3 write lost to another writer; read and try again.")


class _Missing(StoreError):
    """The object does not exist; :meth:`S3Bucket.get_with_etag` answers None."""

    def __init__(self) -> None:
        super().__init__("The S3 object does not exist.")


def _read(response: dict[str, Any]) -> tuple[bytes, str]:
    return response["Body"].read(), str(response["ETag"])
