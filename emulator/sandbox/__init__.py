"""The emulator's sandboxes: local runtime processes, sized and limited by tier."""

from emulator.sandbox.local import LocalSandbox, LocalSandboxProvider

__all__ = ["LocalSandbox", "LocalSandboxProvider"]
