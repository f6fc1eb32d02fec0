"""The wire under :class:`fly.FlyClient`: one ``httpx.AsyncClient``, the auth header, the
lease nonce header, retries with jittered backoff, and httpx's errors and Fly's error bodies
mapped to :mod:`fly.errors` once, here."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from fly.errors import FlyError, Unreachable, error_for

DEFAULT_BASE_URL = "https://api.machines.dev"
"""Fly's public Machines API (inside a Fly org's private network: ``http://_api.internal:4280``)."""
NONCE_HEADER = "fly-machine-lease-nonce"
REQUEST_ID_HEADER = "fly-request-id"
MACAROON_PREFIXES = ("fm1_", "fm1r_", "fm1a_", "fm2_")
CALL_TIMEOUT_S = 75.0
"""Per call: ``/wait`` holds a call up to 60 s, and Fly's proxy cuts there."""


def base_url(hostname: str | None) -> str:
    """The API's base URL from flyctl's ``FLY_API_HOSTNAME`` (a URL, or ``host:port``, which
    means plain http as on Fly's private network); :data:`DEFAULT_BASE_URL` when unset."""
    if not hostname or not hostname.strip():
        return DEFAULT_BASE_URL
    hostname = hostname.strip().rstrip("/").removesuffix("/v1")
    if "://" not in hostname:
        hostname = f"http://{hostname}"
    parts = urlsplit(hostname)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"FLY_API_HOSTNAME={hostname!r} is not an http(s) URL or host:port; "
            f"unset it to use {DEFAULT_BASE_URL}"
        )
    return hostname


def auth_header(token: str) -> str:
    """``Authorization`` for ``token``: a macaroon token (any comma-separated part starting
    ``fm1_``, ``fm1r_``, ``fm1a_`` or ``fm2_``, as fly-go tells them) goes as ``FlyV1``, the
    rest as ``Bearer``; a token that names its scheme keeps it."""
    token = token.strip()
    scheme, _, rest = token.partition(" ")
    if rest and scheme.lower() in ("flyv1", "bearer"):
        return f"{'FlyV1' if scheme.lower() == 'flyv1' else 'Bearer'} {rest.strip()}"
    if any(part.strip().startswith(MACAROON_PREFIXES) for part in token.split(",")):
        return f"FlyV1 {token}"
    return f"Bearer {token}"


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries: 429 always (Fly refused before acting); 5xx and no answer
    only for calls safe to repeat (reads, deletes, creates with an idempotency key). Delay
    before retry ``n`` (from 0): ``min(cap_s, base_s * 2**n)``, jittered by half."""

    attempts: int = 5
    base_s: float = 0.25
    cap_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_s < 0 or self.cap_s < self.base_s:
            raise ValueError("RetryPolicy needs attempts >= 1 and 0 <= base_s <= cap_s")

    def delay(self, attempt: int, rand: float) -> float:
        step = min(self.cap_s, self.base_s * 2.0**attempt)
        return step / 2 + step / 2 * rand


class Wire:
    """Sends calls and maps their failures; :class:`fly.FlyClient` adds the endpoints."""

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        user_agent: str = "kit-fly",
    ) -> None:
        if not token.strip():
            raise ValueError("a Fly API token is required (set FLY_API_TOKEN)")
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rand = rand
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            timeout=httpx.Timeout(CALL_TIMEOUT_S, connect=10.0),
            headers={"Authorization": auth_header(token), "User-Agent": user_agent},
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        nonce: str | None = None,
        safe: bool | None = None,
        expect: tuple[int, ...] = (200, 201, 202, 204),
        timeout_s: float | None = None,
        deadline: float | None = None,
    ) -> httpx.Response:
        """``method path``; the answer when its status is in ``expect``, else a
        :class:`FlyError`. ``safe`` (default: GET and DELETE) allows retrying 5xx and calls
        that got no answer; 429 and refused connections (nothing was sent) are always
        retried, but never past ``deadline`` (the clock's time). ``timeout_s``: this call's
        own timeout (default :data:`CALL_TIMEOUT_S`)."""
        safe = method in ("GET", "DELETE") if safe is None else safe
        headers = {NONCE_HEADER: nonce} if nonce else {}
        query = {k: v for k, v in (params or {}).items() if v is not None}
        timeout = httpx.Timeout(timeout_s or CALL_TIMEOUT_S, connect=10.0)
        for attempt in range(self.retry.attempts):
            delay = self.retry.delay(attempt, self._rand())
            last = attempt == self.retry.attempts - 1 or (
                deadline is not None and self._clock() + delay >= deadline
            )
            try:
                answer = await self._http.request(
                    method, path, params=query, json=body, headers=headers, timeout=timeout
                )
            except httpx.TransportError as exc:
                if (safe or isinstance(exc, httpx.ConnectError)) and not last:
                    await self._sleep(delay)
                    continue
                raise Unreachable(
                    f"no answer from the Fly API at {self._http.base_url} ({exc!r}); check "
                    "the network, or FLY_API_HOSTNAME",
                    method=method,
                    path=path,
                ) from exc
            except httpx.HTTPError as exc:  # a body that would not decode, a bad URL
                raise FlyError(f"the call failed: {exc!r}", method=method, path=path) from exc
            if answer.status_code in expect:
                return answer
            if not last and (answer.status_code == 429 or (safe and answer.status_code >= 500)):
                await self._sleep(delay)
                continue
            raise self.error(answer)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def error(answer: httpx.Response) -> FlyError:
        """The :class:`FlyError` for a failed answer."""
        try:
            body: Any = answer.json()
        except ValueError:
            body = answer.text
        return error_for(
            answer.status_code,
            body,
            request_id=answer.headers.get(REQUEST_ID_HEADER),
            method=answer.request.method,
            path=answer.request.url.path,
        )

    @staticmethod
    def json(answer: httpx.Response) -> Any:
        """The decoded body (None when empty); a body that is not JSON is a FlyError."""
        if not answer.content:
            return None
        try:
            return answer.json()
        except ValueError as exc:
            raise FlyError(
                f"the Fly API answered {answer.status_code} with a body that is not JSON",
                status=answer.status_code,
                request_id=answer.headers.get(REQUEST_ID_HEADER),
                method=answer.request.method,
                path=answer.request.url.path,
            ) from exc
