"""Errors of deploying kit.

::

    KitError
    └── DeployError            a deploy step could not be planned or carried out
        ├── ImageError         the runtime image cannot be planned or built
        └── WranglerError      wrangler (``kit deploy --target cloudflare``) failed; the
                               message has its last lines
"""

from __future__ import annotations

from kit.errors import KitError


class DeployError(KitError):
    """A deploy step could not be planned or carried out; the message says what to do."""


class ImageError(DeployError):
    """The runtime image cannot be planned or built; the message says what to do."""


class WranglerError(DeployError):
    """wrangler exited non-zero; ``output`` holds what it printed (it never sees a secret
    but on stdin)."""

    def __init__(self, message: str, *, output: str) -> None:
        super().__init__(message)
        self.output = output
