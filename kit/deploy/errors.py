"""Errors of deploying kit.

::

    KitError
    └── DeployError            a deploy step could not be planned or carried out
        └── ImageError         the runtime image cannot be planned or built
"""

from __future__ import annotations

from kit.errors import KitError


class DeployError(KitError):
    """A deploy step could not be planned or carried out; the message says what to do."""


class ImageError(DeployError):
    """The runtime image cannot be planned or built; the message says what to do."""
