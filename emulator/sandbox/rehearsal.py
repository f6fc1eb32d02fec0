"""Rehearsals: failures the emulator can cause on purpose, which production sandboxes only
meet (``kit sandbox oom``). Not part of the provider seam: Fly Machines and Cloudflare
containers offer no such hook, so the host never needs one."""

from __future__ import annotations

from abc import ABC, abstractmethod


class Rehearsable(ABC):
    """A sandbox the emulator can push into a failure now."""

    @abstractmethod
    async def oom(self) -> None:
        """Push the sandbox past its memory limit now, to rehearse an OOM kill (exit 137,
        reason ``oom``). :class:`~kit.host.errors.SandboxError` where it has no limit."""
