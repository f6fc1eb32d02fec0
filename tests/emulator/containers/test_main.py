"""``python -m emulator.containers``: serves on loopback behind the token, prints its URL,
stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx

TOKEN = "main-test-token"


def test_the_entry_serves_and_stops() -> None:
    """The printed URL answers with the token (401 without); SIGTERM ends it with 0."""
    env = {**os.environ, "KIT_CONTAINER_EMULATOR_TOKEN": TOKEN}
    with subprocess.Popen(
        [sys.executable, "-m", "emulator.containers", "--runner", "local"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            r = httpx.get(f"{url}/containers/x", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.json() == {"running": False, "exit_code": None, "oom": False}
            assert httpx.get(f"{url}/containers/x").status_code == 401
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0


def test_the_entry_wants_a_token() -> None:
    """Without ``KIT_CONTAINER_EMULATOR_TOKEN`` it refuses, naming the variable."""
    env = {k: v for k, v in os.environ.items() if k != "KIT_CONTAINER_EMULATOR_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "emulator.containers"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "KIT_CONTAINER_EMULATOR_TOKEN" in done.stderr
