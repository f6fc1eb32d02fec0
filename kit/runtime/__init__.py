"""The agent server that runs inside a sandbox: one session, one ``ClaudeSDKClient``.

Kept light: this is what a sandbox image installs (kit.protocol, kit.bundle, kit.storage,
the Agent SDK and uvicorn). Importing this package loads none of it: the host imports
:mod:`kit.runtime.jail` to confine sandboxes, and the Agent SDK takes ~0.6 s to import
(bench/startup.py); :class:`Agent` and the rest load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kit.protocol.runtime_config import RuntimeConfig, RuntimeConfigError
    from kit.runtime.agent import Agent, AgentState
    from kit.runtime.errors import AgentRuntimeError

_LAZY = {
    "Agent": "kit.runtime.agent",
    "AgentState": "kit.runtime.agent",
    "AgentRuntimeError": "kit.runtime.errors",
    "RuntimeConfig": "kit.protocol.runtime_config",
    "RuntimeConfigError": "kit.protocol.runtime_config",
}

__all__ = ["Agent", "AgentRuntimeError", "AgentState", "RuntimeConfig", "RuntimeConfigError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
