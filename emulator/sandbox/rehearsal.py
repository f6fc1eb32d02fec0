"""Rehearsals: failures the emulator can cause on purpose, which production sandboxes only
meet (``kit sandbox oom``). The marker lives in the seam (:class:`kit.host.sandbox.Rehearsable`)
because Fly machines have it too; it is named here for the emulator's providers."""

from __future__ import annotations

from kit.host.sandbox import Rehearsable

__all__ = ["Rehearsable"]
