"""Errors of the Fly Machines API emulator.

::

    KitError
    └── FlyEmulatorError        the emulator cannot do what was asked (no token to serve with,
        │                       a machine config it cannot run)
        ├── ApiError            an answer to an API client: Fly's HTTP status, its
        │                       ``ErrorResponse{error, status}`` body; the wire layer
        │                       (``emulator.fly_api.app``) turns it into the response
        ├── RunnerError         a runner could not launch, stop, suspend, resume or exec a
        │                       machine (Docker refused, the image is missing); the machine
        │                       is marked ``failed`` and the message is kept in its events
        ├── Unroutable          the proxy has no machine for a request (``routing``): it
        │                       answers its status (503) and a ``fly-replay-failed`` reason
        └── MachineConnectionError  a machine took the proxy's connection but gave no
                                usable HTTP answer (``relay``): the proxy answers 502
"""

from __future__ import annotations

from typing import Any

from kit.errors import KitError

UNKNOWN = "unknown"
NAME_TAKEN = "name_taken"
INSUFFICIENT_CAPACITY = "insufficient_capacity"


class FlyEmulatorError(KitError):
    """The Fly Machines API emulator cannot do what was asked."""


class ApiError(FlyEmulatorError):
    """An error answer, as Fly gives it: an HTTP status and ``{"error", "status"}``."""

    def __init__(self, http_status: int, message: str, *, status: str = UNKNOWN) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        """The ``ErrorResponse`` JSON body."""
        return {"error": self.message, "status": self.status}


class RunnerError(FlyEmulatorError):
    """A runner could not do what the machine's lifecycle asked of it."""


def bad_request(message: str) -> ApiError:
    """A 400: the request itself is wrong."""
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    """A 404: no such app, machine, lease, key or secret."""
    return ApiError(404, message)
