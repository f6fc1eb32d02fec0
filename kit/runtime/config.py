"""The runtime's start-up: wait for the provider's go (when it asks for one), then read the
config file the environment names and delete it.

The config's fields are :class:`kit.protocol.runtime_config.RuntimeConfig`'s. Environment:

- ``KIT_RUNTIME_CONFIG`` (required): the path of the config file (JSON). The runtime
  deletes it once read, so the tokens in it are gone before any of the agent's tools run.
- ``KIT_RUNTIME_GATE=stdin`` (optional): wait for one line on stdin first (the local
  provider confines the process to its cgroups, then writes the line).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import MutableMapping

from kit.protocol.runtime_config import CONFIG_ENV, GATE_ENV, RuntimeConfig, RuntimeConfigError

MAX_CONFIG_BYTES = 1 << 20


def wait_for_gate(environ: MutableMapping[str, str]) -> None:
    """Block until the provider says go, if it asked to (``KIT_RUNTIME_GATE=stdin``); once."""
    if environ.pop(GATE_ENV, "") == "stdin":
        sys.stdin.readline()
        sys.stdin.close()


def load(environ: MutableMapping[str, str]) -> RuntimeConfig:
    """Read the config file ``KIT_RUNTIME_CONFIG`` names, then delete it (where it can)."""
    path = environ.pop(CONFIG_ENV, "")
    if not path:
        raise RuntimeConfigError(
            f"{CONFIG_ENV} is not set: a sandbox provider names the runtime's config file there."
        )
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise RuntimeConfigError(
            f"Cannot read the runtime config {path}: {exc.strerror or exc}."
        ) from None
    with contextlib.suppress(OSError):  # read-only (a mounted file): the provider removes it
        os.unlink(path)
    if len(raw) > MAX_CONFIG_BYTES:
        raise RuntimeConfigError(f"The runtime config {path} is over 1 MiB.")
    return RuntimeConfig.from_json(raw.decode("utf-8", errors="replace"))
