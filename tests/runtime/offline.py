"""A runtime :class:`Agent` over the test agent's bundle whose CLI is never reached: for the
runtime's routes that need no model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.bundle import build_bundle, load_project
from kit.ids import new_session_id
from kit.protocol.runtime_config import RuntimeConfig
from kit.runtime.agent import Agent
from tests.agents import write_agent


def offline_agent(kit_tmp: Path, workspace: Path, **config: Any) -> Agent:
    """The agent of a runtime whose workspace is ``workspace`` (runtime token ``r``)."""
    bundle = build_bundle(load_project(write_agent(kit_tmp / "agent")), kit_tmp / "bundles")
    settings: dict[str, Any] = {
        "session_id": str(new_session_id()),
        "bundle_dir": bundle.path,
        "workspace": workspace,
        "home": kit_tmp,
        "tmp_dir": kit_tmp,
        "store_url": "memory://",
        "listen": "unix:/unused.sock",
        "model_base_url": "http://localhost",
        "model_unix_socket": None,
        "model_token": "m",
        "runtime_token": "r",
        **config,
    }
    return Agent(RuntimeConfig(**settings), bundle)
