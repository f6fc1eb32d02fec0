"""The runtime's start-up config: the transcript store waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kit.protocol.runtime_config import (
    CONFIG_ENV,
    STORE_DEADLINE_S,
    STORE_RETRY_S,
    RuntimeConfig,
    RuntimeConfigError,
)
from kit.runtime import config as startup
from kit.runtime.config import CONFIG_JSON_ENV

BASE = {
    "session_id": "s",
    "bundle_dir": "/b",
    "workspace": "/w",
    "home": "/h",
    "tmp_dir": "/t",
    "store_url": "memory://",
    "listen": "unix:/r.sock",
    "model_base_url": "http://localhost",
    "model_unix_socket": None,
    "model_token": "m",
    "runtime_token": "r",
}


def test_store_waits_default_and_round_trip() -> None:
    """Without them the defaults apply; set, they survive the trip over stdin."""
    config = RuntimeConfig.from_json(json.dumps(BASE))
    assert (config.store_retry_s, config.store_deadline_s) == (STORE_RETRY_S, STORE_DEADLINE_S)
    assert config.workspace == Path("/w")
    short = RuntimeConfig.from_json(json.dumps({**BASE, "store_retry_s": 1, "store_deadline_s": 3}))
    assert RuntimeConfig.from_json(short.to_json()) == short
    assert (short.store_retry_s, short.store_deadline_s) == (1, 3)


@pytest.mark.parametrize(
    ("retry", "deadline", "says"),
    [
        (0, 10, "positive"),
        (1, "soon", "positive"),
        (55, 120, "at most 50 s"),
        (10, 5, "at least store_retry_s"),
    ],
)
def test_bad_store_waits_are_refused(retry: object, deadline: object, says: str) -> None:
    """Waits the SDK could not honour, or that contradict each other, are a clear error."""
    raw = json.dumps({**BASE, "store_retry_s": retry, "store_deadline_s": deadline})
    with pytest.raises(RuntimeConfigError, match=says):
        RuntimeConfig.from_json(raw)


def test_egress_settings_default_to_none_and_round_trip() -> None:
    """Without egress settings there are none; set, they survive the trip through the file."""
    assert RuntimeConfig.from_json(json.dumps(BASE)).egress_url is None
    raw = {**BASE, "egress_url": "unix:/run/egress.sock", "egress_token": "kit-egress-x"}
    config = RuntimeConfig.from_json(json.dumps(raw))
    assert (config.egress_url, config.egress_token) == ("unix:/run/egress.sock", "kit-egress-x")
    assert RuntimeConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "extra", [{"egress_url": "unix:/run/egress.sock"}, {"egress_token": "kit-egress-x"}]
)
def test_egress_socket_and_token_go_together(extra: dict[str, str]) -> None:
    """One egress setting without the other is refused, naming both."""
    with pytest.raises(RuntimeConfigError, match="egress_url and egress_token"):
        RuntimeConfig.from_json(json.dumps({**BASE, **extra}))


def test_config_in_the_environment_leaves_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``KIT_RUNTIME_CONFIG_JSON`` (Cloudflare's start passes only env): the runtime execs
    itself on a private file holding it, without the variable; the file and its folder are
    gone once read."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    execs: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: execs.append((exe, argv, env)))
    raw = json.dumps(BASE)
    environ = {CONFIG_JSON_ENV: raw, "HOME": "/h"}
    startup.exec_with_config_file(environ)
    [(exe, argv, env)] = execs
    assert (exe, argv) == (sys.executable, [sys.executable, "-m", "kit.runtime"])
    assert CONFIG_JSON_ENV not in env
    assert env["HOME"] == "/h"
    path = Path(env[CONFIG_ENV])
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert startup.load(env) == RuntimeConfig.from_json(raw)
    assert not path.parent.exists()
    startup.exec_with_config_file({"HOME": "/h"})  # no variable: nothing to do
    assert len(execs) == 1


def test_a_config_in_the_environment_reaches_the_runtime_process() -> None:
    """The real exec: ``python -m kit.runtime`` with a config missing fields in the
    environment execs itself, reads the file, and says what is missing (exit 2)."""
    done = _runtime_with_config_in_env()
    assert done.returncode == 2, done.stderr
    assert "Runtime config is missing" in done.stderr


def _runtime_with_config_in_env(**extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m kit.runtime`` with a config missing fields in ``KIT_RUNTIME_CONFIG_JSON``
    (and ``extra`` in its environment): it execs itself, reads the file, and exits 2."""
    env = {**os.environ, CONFIG_JSON_ENV: json.dumps({"session_id": "s"}), **extra}
    env.pop(CONFIG_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", "kit.runtime"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_store_token_is_the_model_token_unless_set() -> None:
    """A kit host's store takes the model token; a do+https:// store its own token, which
    survives the trip through the file."""
    assert RuntimeConfig.from_json(json.dumps(BASE)).store_auth == "m"
    own = RuntimeConfig.from_json(json.dumps({**BASE, "store_token": "kit-store-x"}))
    assert RuntimeConfig.from_json(own.to_json()) == own
    assert own.store_auth == "kit-store-x"


def test_a_config_in_the_environment_costs_one_import_of_the_runtime() -> None:
    """The exec happens before the server and the Agent SDK are imported: a container
    start pays for them once (``PYTHONPROFILEIMPORTTIME`` lists each process's imports, and
    the exec'd process inherits it)."""
    done = _runtime_with_config_in_env(PYTHONPROFILEIMPORTTIME="1")
    assert done.returncode == 2, done.stderr
    assert "Runtime config is missing" in done.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    assert imported.count("kit.runtime.config") == 2  # both processes start light
    assert imported.count("kit.runtime.server") == 1
    assert imported.count("claude_agent_sdk") == 1
