"""The runtime's start-up: wait for the provider's go (when it asks for one), then read the
config file the environment names and delete it.

The config's fields are :class:`kit.protocol.runtime_config.RuntimeConfig`'s. Environment:

- ``KIT_RUNTIME_CONFIG`` (required): the path of the config file (JSON). The runtime
  deletes it once read, so the tokens in it are gone before any of the agent's tools run.
- ``KIT_RUNTIME_CONFIG_JSON`` (instead, where a provider can pass only environment, as
  Cloudflare's ``start({env})``): the config itself. The runtime writes it to a private
  file, removes the variable and starts itself again on that file
  (:func:`exec_with_config_file`), so the tokens are in no process's environment.
- ``KIT_RUNTIME_GATE=stdin`` (optional): wait for one line on stdin first (the local
  provider confines the process to its cgroups, then writes the line).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import MutableMapping

from kit.protocol.runtime_config import CONFIG_ENV, GATE_ENV, RuntimeConfig, RuntimeConfigError

MAX_CONFIG_BYTES = 1 << 20
CONFIG_JSON_ENV = "KIT_RUNTIME_CONFIG_JSON"


def exec_with_config_file(environ: MutableMapping[str, str]) -> None:
    """With the config in ``KIT_RUNTIME_CONFIG_JSON``: write it to a new private file, drop
    the variable, and exec ``python -m kit.runtime`` again with ``KIT_RUNTIME_CONFIG``
    naming the file (the file is deleted once read). Without it: return."""
    raw = environ.get(CONFIG_JSON_ENV)
    if raw is None:
        return
    if len(raw.encode()) > MAX_CONFIG_BYTES:
        raise RuntimeConfigError(f"{CONFIG_JSON_ENV} is over 1 MiB.")
    folder = tempfile.mkdtemp(prefix="kit-config-")  # 0700
    path = os.path.join(folder, "config.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(raw)
    env = {k: v for k, v in environ.items() if k != CONFIG_JSON_ENV}
    env[CONFIG_ENV] = path
    os.execve(sys.executable, [sys.executable, "-m", "kit.runtime"], env)


def exec_early(environ: MutableMapping[str, str]) -> None:
    """What ``main`` does first, for a config in the environment, before anything heavy is
    imported: become non-dumpable (the tokens are in this process's environment), wait for
    the provider's go, and exec on a config file. A config it cannot take (over 1 MiB) is
    left for ``main``, which says why."""
    from kit.runtime.jail import make_undumpable

    make_undumpable()
    wait_for_gate(environ)
    with contextlib.suppress(RuntimeConfigError):
        exec_with_config_file(environ)


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
    folder = os.path.dirname(path)
    if os.path.basename(folder).startswith("kit-config-"):  # made by exec_with_config_file
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    if len(raw) > MAX_CONFIG_BYTES:
        raise RuntimeConfigError(f"The runtime config {path} is over 1 MiB.")
    return RuntimeConfig.from_json(raw.decode("utf-8", errors="replace"))
