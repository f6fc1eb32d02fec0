"""The kit command: `kit new` then `kit test`, and errors as one line with exit code 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kit.bundle import load_project
from kit.cli.main import build_parser
from kit.cli.settings import dev_settings
from kit.cli.testing import run_checks
from kit.durability import Durability
from kit.host.edge import UNAUTHENTICATED_PER_PEER, EdgeLimits
from tests.kitproc import KIT

SCAFFOLD_TIER = "standard-1"
"""What `kit new` scaffolds: a hello turn takes ~1 s here (docs/tiers.md has the figures)."""


def _kit(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KIT, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env or dict(os.environ),
        check=False,
    )


def test_new_project_passes_its_own_scenario_test(kit_tmp: Path) -> None:
    """`kit new demo` scaffolds a project at tier standard-1 whose `kit test` and generated
    pytest file pass."""
    result = _kit("new", "demo", cwd=kit_tmp)
    assert result.returncode == 0, result.stderr
    demo = kit_tmp / "demo"
    assert (demo / "kit.toml").read_text().count('name = "demo"') == 1
    assert load_project(demo).sandbox.tier == SCAFFOLD_TIER
    checks = _kit("test", cwd=demo)
    assert checks.returncode == 0, checks.stdout + checks.stderr
    assert "1 passed, 0 failed" in checks.stdout
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=demo,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_kit_test_reports_each_check(kit_tmp: Path) -> None:
    """run_checks on the example agent passes every check it declares."""
    report = run_checks(Path(__file__).resolve().parents[2] / "skills" / "support-bot")
    assert report.ok, report.summary()
    assert len(report.results) >= 4


def test_new_refuses_a_bad_name_and_an_existing_folder(kit_tmp: Path) -> None:
    """Bad names and existing folders are one-line errors, exit 1, nothing written."""
    bad = _kit("new", "Bad_Name", cwd=kit_tmp)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1
    assert "a-z, 0-9" in bad.stderr
    (kit_tmp / "taken").mkdir()
    taken = _kit("new", "taken", cwd=kit_tmp)
    assert taken.returncode == 1
    assert "already exists" in taken.stderr
    assert sorted(p.name for p in kit_tmp.iterdir()) == ["taken"]


def test_dev_with_broken_config_is_one_line(kit_tmp: Path) -> None:
    """`kit dev` on a broken kit.toml exits 1 with one line naming the file and the key."""
    (kit_tmp / "kit.toml").write_text("[agent]\nname = 'ok'\n[sandbox]\ntier = 'gigantic'\n")
    result = _kit("dev", "--port", "0", cwd=kit_tmp)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(kit_tmp / "kit.toml") in lines[0]
    assert "sandbox.tier" in lines[0]
    assert not (kit_tmp / ".kit").exists()


def test_chat_without_dev_says_what_to_do(kit_tmp: Path) -> None:
    """`kit chat` with no running `kit dev` tells the user to start it."""
    (kit_tmp / "kit.toml").write_text("[agent]\nname = 'ok'\n")
    result = _kit("chat", "-m", "hi", cwd=kit_tmp)
    assert result.returncode == 1
    assert "start `kit dev`" in result.stderr


async def test_a_second_host_on_one_state_dir_is_refused(kit_tmp: Path) -> None:
    """Two hosts on one state dir would share its model socket: the second one stops with a
    message naming the first and the fix, and the first keeps working."""
    from kit.cli.stack import run_stack
    from kit.client import SessionClient, create_session
    from kit.errors import KitError
    from tests.conftest import stack_settings

    settings = stack_settings(kit_tmp / "state")
    async with run_stack(settings) as first:
        with pytest.raises(KitError, match=rf"pid {os.getpid()}.*own KIT_STATE_DIR"):
            async with run_stack(settings):
                pass
        info = await create_session(first.url, first.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            assert [e.kind async for e in client.turn("hello")][-1] == "result"
    async with run_stack(settings):  # released when the first one ended
        pass


def test_bad_host_settings_name_the_variable(kit_tmp: Path) -> None:
    """A wrong KIT_LEASE_TTL_S, KIT_LOG_URL, KIT_SANDBOX_POOL, KIT_SANDBOX_GRACE_S,
    KIT_PEER_CONNECTIONS, KIT_DURABILITY or KIT_SANDBOX (or an s3:// KIT_STORE_URL for Docker sandboxes) is
    one line naming the variable and the fix, and creates nothing."""
    for name, value, hint in [
        ("KIT_LEASE_TTL_S", "soon", "number of seconds"),
        ("KIT_LEASE_TTL_S", "0", "1 to 3600"),
        ("KIT_LOG_URL", "sqlite:///tmp/x", "s3://BUCKET/PREFIX"),
        ("KIT_SANDBOX_POOL", "1.5", "whole number of sandboxes"),
        ("KIT_SANDBOX_POOL", "100", "0 to 64 sandboxes"),
        ("KIT_SANDBOX_GRACE_S", "nan", "1 to 3600 seconds"),
        ("KIT_SANDBOX_GRACE_S", "0", "1 to 3600 seconds"),
        ("KIT_PEER_CONNECTIONS", "0", "1 to 65536 connections"),
        ("KIT_DURABILITY", "sometimes", "give fsync (a commit is on the disk"),
        ("KIT_SANDBOX", "kubernetes", "give local (process groups on this machine) or docker"),
        ("KIT_STORE_URL", "s3://bucket/prefix", "--sandbox docker: containers reach no network"),
    ]:
        env = {**os.environ, name: value, "KIT_STATE_DIR": str(kit_tmp / "state")}
        if name == "KIT_STORE_URL":
            env["KIT_SANDBOX"] = "docker"
        result = _kit("dev", "--port", "0", cwd=kit_tmp, env=env)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert name in lines[0]
        assert hint in lines[0]
    assert not (kit_tmp / "state").exists()  # nothing was created


def test_peer_connections_setting(kit_tmp: Path) -> None:
    """KIT_PEER_CONNECTIONS sets the host edge's cap on unauthenticated connections per
    peer; the other edge limits keep their defaults."""

    def edge(environ: dict[str, str]) -> EdgeLimits:
        return dev_settings(project=kit_tmp, host=None, port=0, environ=environ).edge

    assert edge({}) == EdgeLimits()
    assert edge({}).unauthenticated_per_peer == UNAUTHENTICATED_PER_PEER
    assert edge({"KIT_PEER_CONNECTIONS": "500"}) == EdgeLimits(unauthenticated_per_peer=500)


def test_durability_setting(kit_tmp: Path) -> None:
    """KIT_DURABILITY: kit dev's default is os, kit gateway's fsync; either says otherwise
    with the variable (any case, spaces around it ignored)."""

    def durability(environ: dict[str, str], default: Durability = Durability.OS) -> Durability:
        return dev_settings(
            project=kit_tmp, host=None, port=0, environ=environ, durability=default
        ).durability

    assert durability({}) is Durability.OS
    assert durability({"KIT_DURABILITY": ""}) is Durability.OS
    assert durability({"KIT_DURABILITY": " FSYNC "}) is Durability.FSYNC
    assert durability({}, Durability.FSYNC) is Durability.FSYNC
    assert durability({"KIT_DURABILITY": "os"}, Durability.FSYNC) is Durability.OS


SUBCOMMANDS = ["new", "dev", "chat", "sessions", "logs", "sandbox", "do", "test"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_each_command_has_help_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kit COMMAND -h` has a description and an example, and `kit -h` lists it in one line."""
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "-h"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith(f"usage: kit {command}")
    assert len(description.split()) >= 8
    assert re.search(rf"^examples:\n  kit {command}\b", text, re.MULTILINE)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-h"])
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert any(len(words) > 2 and words[0] == command for words in listed)
