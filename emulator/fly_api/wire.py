"""What the route modules share: reading a request (JSON body, lease nonce) and the
endpoint type they hand to ``emulator.fly_api.app``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from emulator.fly_api.errors import ApiError, RunnerError, bad_request
from emulator.fly_api.models import Machine

NONCE_HEADER = "fly-machine-lease-nonce"
LEASE_OWNER = "emulator@tokens.fly.io"
"""Who holds the emulator's leases: every client shares the one token."""

Handler = Callable[[Request], Awaitable[Any]]
Endpoint = tuple[str, str, str, Handler]
"""(path under /v1, method, the spec's operationId, handler). A handler answers a JSON-able
value (200) or a Response, or raises :class:`ApiError`."""


async def body(request: Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` when empty); 400 when it is not one."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        decoded = json.loads(raw)
    except ValueError:
        raise bad_request("the request body is not valid JSON") from None
    if not isinstance(decoded, dict):
        raise bad_request("the request body must be a JSON object")
    return decoded


def nonce(request: Request) -> str | None:
    """The lease nonce the request carries."""
    return request.headers.get(NONCE_HEADER)


def wrong_state(m: Machine, action: str) -> ApiError:
    """412: the machine's state does not allow ``action``."""
    return ApiError(
        412,
        f"unable to {action} machine from current state: '{m.state}'; wait for it "
        "to settle (GET …/wait?state=settled) and retry",
    )


async def run(work: Awaitable[Any]) -> Any:
    """Await a runner call; its failure is a 500 naming what broke."""
    try:
        return await work
    except RunnerError as exc:
        raise ApiError(500, f"the machine's runner failed: {exc}") from exc
