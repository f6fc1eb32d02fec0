"""The emulator's sandboxes: local runtime processes, sized and limited by tier."""

from emulator.sandbox.local import LocalSandboxProvider
from emulator.sandbox.process import LocalSandbox

__all__ = ["LocalSandbox", "LocalSandboxProvider"]
