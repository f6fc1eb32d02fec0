"""What the Machines API client raises. Every failure of a call is a :class:`FlyError`; nothing
above this package sees httpx.

::

    FlyError                      any failed call: status, Fly's error status, fly-request-id
    ├── Unauthorized              401: the token is missing, wrong or lacks the scope
    ├── NotFound                  404: no such app, machine, secret or metadata key
    ├── WaitTimedOut              408 past the caller's whole wait
    ├── Conflict                  409: a stale current_version, or a lease held by another
    │   └── LeaseHeld             409 on a lease or on a mutation without the holder's nonce
    ├── PreconditionFailed        412: metadata changed since machine_version, or a
    │                             machine that must be stopped first (destroy without force)
    ├── Unprocessable             422: invalid input
    │   └── NameTaken             422 name_taken: app names are global
    ├── InsufficientCapacity      no room in the region: try another
    ├── RateLimited               429 after the client's retries
    ├── ServerError               5xx after the client's retries
    ├── Unreachable               no answer: connection refused, reset or timed out
    └── ExecFailed                exec ran, and the command exited non-zero
"""

from __future__ import annotations

from typing import Any


class FlyError(Exception):
    """A Machines API call failed. ``status`` is the HTTP status (0 when no answer came),
    ``fly_status`` Fly's ``ErrorResponse.status`` (``insufficient_capacity``, ``name_taken``…),
    ``request_id`` the ``fly-request-id`` to quote to Fly support."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        fly_status: str | None = None,
        request_id: str | None = None,
        method: str = "",
        path: str = "",
    ) -> None:
        self.status = status
        self.fly_status = fly_status
        self.request_id = request_id
        self.method = method
        self.path = path
        where = f"{method} {path}: " if method else ""
        rid = f" (fly-request-id {request_id})" if request_id else ""
        super().__init__(f"{where}{message}{rid}")


class Unauthorized(FlyError):
    """401."""


class NotFound(FlyError):
    """404."""


class WaitTimedOut(FlyError):
    """A machine did not reach the state before the caller's deadline (Fly answers 408 per
    call; the client re-issues the wait until its own deadline)."""


class Conflict(FlyError):
    """409: a stale ``current_version`` or a lease."""


class LeaseHeld(Conflict):
    """409: the machine is leased by someone else (or the nonce sent is not the lease's)."""


class PreconditionFailed(FlyError):
    """412: the machine's metadata changed since ``machine_version``."""


class Unprocessable(FlyError):
    """422: Fly refused the input."""


class NameTaken(Unprocessable):
    """422 ``name_taken``: app names are global across Fly."""


class InsufficientCapacity(FlyError):
    """The region has no room for the machine: create it in another region."""


class RateLimited(FlyError):
    """429 after the client's backoff ran out."""


class ServerError(FlyError):
    """5xx after the client's retries."""


class Unreachable(FlyError):
    """No answer from the API (refused, reset, timed out)."""


class ExecFailed(FlyError):
    """``exec`` ran the command and it exited non-zero (Fly answers 200 either way)."""

    def __init__(self, message: str, *, exit_code: int, stdout: str, stderr: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


_FIXES = {
    401: "check the token (FLY_API_TOKEN; `fly tokens deploy` makes one for an app, "
    "`fly tokens create org` one that can create apps)",
    429: "Fly allows about 1 request per second per action per machine; slow down",
}


def error_for(
    status: int, body: Any, *, request_id: str | None, method: str, path: str
) -> FlyError:
    """The :class:`FlyError` for an answer with ``status`` and (decoded) ``body``."""
    message = ""
    fly_status: str | None = None
    if isinstance(body, dict):
        message = str(body.get("error") or body.get("message") or "")
        raw = body.get("status")
        fly_status = raw if isinstance(raw, str) else None
    elif isinstance(body, str):
        message = body.strip()[:500]
    message = message or f"HTTP {status}"
    fix = _FIXES.get(status)
    if fix:
        message = f"{message}: {fix}"
    kind: type[FlyError]
    if fly_status == "insufficient_capacity" or fly_status == "volume_placement_capacity":
        kind = InsufficientCapacity
        message = f"{message}: no capacity in that region; create the machine in another region"
    elif fly_status == "name_taken":
        kind = NameTaken
        message = f"{message}: app names are global across Fly; pick another name"
    elif status == 409 and "lease" in message.lower():
        kind = LeaseHeld
    else:
        kind = {
            401: Unauthorized,
            403: Unauthorized,
            404: NotFound,
            408: WaitTimedOut if path.endswith("/wait") else FlyError,
            409: Conflict,
            412: PreconditionFailed,
            422: Unprocessable,
            429: RateLimited,
        }.get(status, ServerError if status >= 500 else FlyError)
    return kind(
        message,
        status=status,
        fly_status=fly_status,
        request_id=request_id,
        method=method,
        path=path,
    )
