"""The agent server that runs inside a sandbox: one session, one ``ClaudeSDKClient``.

Kept light: this is what a sandbox image installs (kit.protocol, kit.bundle, kit.storage,
the Agent SDK and uvicorn).
"""

from kit.protocol.runtime_config import RuntimeConfig, RuntimeConfigError
from kit.runtime.agent import Agent, AgentState
from kit.runtime.errors import AgentRuntimeError

__all__ = ["Agent", "AgentRuntimeError", "AgentState", "RuntimeConfig", "RuntimeConfigError"]
