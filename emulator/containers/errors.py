"""Errors of the container emulator (``ctx.container`` for the shim under ``wrangler dev``).

::

    KitError
    └── ContainersEmulatorError   the emulator cannot do what was asked (no token to serve
        │                         with, a host that is not loopback)
        ├── ApiError              an answer to the shim: an HTTP status and the JSON body
        │                         ``{"error": code, "message": sentence}``; the wire layer
        │                         (``emulator.containers.app``) turns it into the response
        ├── RunnerError           the runner could not start, signal or remove a container
        │                         (Docker refused, the image is missing); answered as 502
        └── NotListening          nothing listens on the container's port the proxy was
                                  asked for (or it is gone); answered as 503 ``not_listening``
"""

from __future__ import annotations

from typing import Any

from kit.errors import KitError


class ContainersEmulatorError(KitError):
    """The container emulator cannot do what was asked."""


class ApiError(ContainersEmulatorError):
    """An error answer: an HTTP status, a short code and a sentence naming the fix."""

    def __init__(self, http_status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": code, "message": sentence}``."""
        return {"error": self.code, "message": self.message}


class RunnerError(ContainersEmulatorError):
    """The runner could not do what a container's lifecycle asked of it."""


class NotListening(ContainersEmulatorError):
    """Nothing listens on the container's port (the connection was refused)."""
