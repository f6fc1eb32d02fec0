"""``kit deploy --target cloudflare`` and ``kit destroy --target cloudflare``: the dry run
through the real wrangler, offline; bad settings refused before anything is written; the
apply and destroy paths through a fake ``wrangler`` on ``PATH`` (tests/deploy/
fake_wrangler.py: the network is not for tests), which records what it was given."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kit.bundle import load_project
from kit.cli import cfdeploy
from kit.cli.errors import CliError
from kit.cli.settings import EXAMPLE_PROJECT
from kit.deploy.cloudflare.target import PAGE
from kit.deploy.cloudflare.wrangler import SHIM_WRANGLER
from kit.deploy.errors import WranglerError
from tests.deploy import fake_wrangler
from tests.kitproc import spawn_kit

REPO = Path(__file__).resolve().parents[2]
SHIM_WRANGLER_PATH = REPO / "worker_shim" / SHIM_WRANGLER
WORKER = "kit-cf-deploy-test"
MODEL_KEY = "sk-ant-test-not-real-4f1c"
CF_TOKEN = "cf-test-token-not-real"


def _env(kit_tmp: Path, **extra: str) -> dict[str, str]:
    drop = ("ANTHROPIC_API_KEY", "KIT_API_TOKEN", "KIT_WRANGLER", "KIT_CF_WORKER")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith("CLOUDFLARE_") and not k.lower().endswith("_proxy")
    }
    return {**env, "KIT_STATE_DIR": str(kit_tmp / "state"), "HOME": str(kit_tmp / "home"), **extra}


async def _kit(*args: str, env: dict[str, str], cwd: Path = REPO) -> tuple[int, str, str]:
    proc = await spawn_kit(*args, cwd=cwd, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def _connection_counter() -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback port that counts the connections made to it (and answers none)."""
    seen: list[int] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(1)
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        await server.wait_closed()


async def test_the_dry_run_prints_the_plan_and_wranglers_offline_build(kit_tmp: Path) -> None:
    """`--dry-run` with no Cloudflare credentials: the plan table, then the real wrangler's
    `deploy --dry-run` of the generated config, which bundles the Worker and lists the
    container; wrangler tries no connection (every proxy variable points at a loopback port
    that counts them), no token file is written and the shim's folder is untouched."""
    if not SHIM_WRANGLER_PATH.exists():
        pytest.skip(
            f"wrangler is not installed in {SHIM_WRANGLER_PATH.parent}: run scripts/setup-workers "
            "(scripts/test does)"
        )
    shim_before = sorted(p.name for p in (REPO / "worker_shim").iterdir())
    async with _connection_counter() as (proxy, connections):
        proxies = {name: proxy for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy")}
        env = _env(kit_tmp, KIT_WRANGLER=str(SHIM_WRANGLER_PATH), **proxies)
        args = ("--target", "cloudflare", "--project", "skills/support-bot", "--app", WORKER)
        code, out, err = await _kit("deploy", *args, "--dry-run", env=env)
    assert code == 0, err
    assert out.splitlines()[1].split() == ["step", "what", "why"]
    for step in ("write config", "write Dockerfile", "put secret", "deploy worker"):
        assert step in out
    assert "--dry-run: exiting now." in out
    assert f"{WORKER}-sandboxes" in out
    assert "(a deploy needs CLOUDFLARE_API_TOKEN and ANTHROPIC_API_KEY)" in out
    assert connections == []
    build = kit_tmp / "state" / "cloudflare" / WORKER
    assert (build / "dist" / "index.js").is_file()
    config = json.loads("".join(ln for ln in (build / "wrangler.jsonc").open() if ln[:2] != "//"))
    assert config["containers"][0]["instance_type"] == "basic"  # support-bot's tier
    # The chat page ships as the Worker's assets, which wrangler read (--dry-run prints them).
    assert config["assets"]["directory"] == str(build / "web")
    assert sorted(p.name for p in (build / "web").iterdir()) == sorted(PAGE)
    assert "write page" in out
    assert not (kit_tmp / "state" / f"cloudflare-{WORKER}.json").exists()
    assert sorted(p.name for p in (REPO / "worker_shim").iterdir()) == shim_before


def _project(kit_tmp: Path, tier: str) -> Path:
    project = kit_tmp / "agent"
    shutil.copytree(EXAMPLE_PROJECT, project)
    toml = project / "kit.toml"
    toml.write_text(toml.read_text().replace('tier = "basic"', f'tier = "{tier}"'))
    assert load_project(project).sandbox.tier == tier
    return project


@pytest.mark.parametrize(
    ("tier", "args", "drop", "named"),
    [
        ("shared-cpu-2x", (), "", "[sandbox] tier 'shared-cpu-2x' in kit.toml is a Fly"),
        ("basic", ("--app", "Not_A_Worker"), "", "pass another with --app"),
        ("basic", (), "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_API_TOKEN is not set"),
        ("basic", (), "ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY is not set"),
        ("basic", ("--region", "iad"), "", "--region is a Fly setting"),
        ("basic", (), "PATH", "wrangler is not installed"),
    ],
)
async def test_a_bad_setting_is_named_and_nothing_is_written(
    kit_tmp: Path, tier: str, args: tuple[str, ...], drop: str, named: str
) -> None:
    """A Fly tier, a bad Worker name, a missing credential, a Fly flag or no wrangler: one
    line naming the fix, exit 1, and no state dir at all (no bundle, build folder, token)."""
    project = _project(kit_tmp, tier)
    env = _env(
        kit_tmp,
        CLOUDFLARE_API_TOKEN=CF_TOKEN,
        ANTHROPIC_API_KEY=MODEL_KEY,
        KIT_WORKER_SHIM=str(REPO / "worker_shim"),
    )
    if drop == "PATH":
        env["PATH"] = str(kit_tmp / "empty-bin")
        env["KIT_WORKER_SHIM"] = str(_shim_without_tools(kit_tmp))
    else:
        env.pop(drop, None)
        env["KIT_WRANGLER"] = str(fake_wrangler.install(kit_tmp / "bin"))
    cli = ("deploy", "--target", "cloudflare", "--project", str(project), *args)
    code, _out, err = await _kit(*cli, env=env)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert not (kit_tmp / "state").exists()


def _shim_without_tools(kit_tmp: Path) -> Path:
    """A copy of the shim's source without node_modules (wrangler not installed)."""
    copy = kit_tmp / "shim"
    shutil.copytree(REPO / "worker_shim", copy, ignore=shutil.ignore_patterns("node_modules"))
    return copy


# --- apply and destroy, through the fake wrangler ---------------------------------------


class FakeCloudflare:
    """The fake wrangler's account and call log."""

    def __init__(self, folder: Path) -> None:
        self.account = folder / "account.json"
        self.log = folder / "calls.jsonl"
        self.account.write_text(json.dumps({"workers": {}, "apps": []}))
        self.log.write_text("")

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def state(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.account.read_text())
        return found

    def forget_calls(self) -> None:
        self.log.write_text("")


@pytest.fixture
def fake(kit_tmp: Path) -> FakeCloudflare:
    return FakeCloudflare(kit_tmp)


def _settings(kit_tmp: Path, fake: FakeCloudflare, **extra: str) -> cfdeploy.CloudflareSettings:
    """The settings as the CLI reads them, with the fake wrangler first on PATH."""
    bin_dir = fake_wrangler.install(kit_tmp / "bin").parent
    environ = _env(
        kit_tmp,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        CLOUDFLARE_API_TOKEN=CF_TOKEN,
        ANTHROPIC_API_KEY=MODEL_KEY,
        FAKE_WRANGLER_ACCOUNT=str(fake.account),
        FAKE_WRANGLER_LOG=str(fake.log),
        **extra,
    )
    project = load_project(EXAMPLE_PROJECT)
    return cfdeploy.cloudflare_settings(
        project=EXAMPLE_PROJECT,
        state_dir=kit_tmp / "state",
        agent_name=project.agent.name,
        tier=project.sandbox.tier,
        app=WORKER,
        max_instances=None,
        checkout=REPO,
        environ=environ,
    )


def _no_image_build(dry_run: bool) -> str:
    return "kit-runtime:0.0.0-test"


async def test_a_deploy_puts_the_secrets_on_stdin_then_deploys_and_prints_the_url(
    kit_tmp: Path, fake: FakeCloudflare, capsys: pytest.CaptureFixture[str]
) -> None:
    """A first deploy: checks the Worker has no host token yet, keeps the new one (0600),
    puts both secrets with their values on stdin only (never in argv or wrangler's
    environment), deploys the generated config and prints the workers.dev URL with the
    `kit chat --url` line."""
    settings = _settings(kit_tmp, fake)
    assert settings.wrangler == kit_tmp / "bin" / "wrangler"
    assert await cfdeploy.run_deploy(settings, _no_image_build, dry_run_only=False) == 0
    out = capsys.readouterr().out
    url = f"https://{WORKER}.kit-test.workers.dev"
    assert f"kit chat --url {url}" in out
    token_file = kit_tmp / "state" / f"cloudflare-{WORKER}.json"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = json.loads(token_file.read_text())["api_token"]
    calls = fake.calls()
    commands = [[a for a in c["argv"] if not a.startswith("-")][:3] for c in calls]
    config = str(settings.build_dir / "wrangler.jsonc")
    assert commands == [
        ["secret", "list", "json"],
        ["secret", "put", "ANTHROPIC_API_KEY"],
        ["secret", "put", "KIT_API_TOKEN"],
        ["deploy", config],
    ]
    assert [c["stdin"] for c in calls[1:3]] == [MODEL_KEY, token]
    for call in calls:
        assert call["argv"][-2:] == ["-c", config]
        assert MODEL_KEY not in " ".join(call["argv"])
        assert token not in " ".join(call["argv"])
        assert "ANTHROPIC_API_KEY" not in call["env"]
        assert "KIT_API_TOKEN" not in call["env"]
    assert MODEL_KEY not in out
    assert token not in out
    deployed = fake.state()["workers"][WORKER]
    assert deployed["secrets"] == ["ANTHROPIC_API_KEY", "KIT_API_TOKEN"]
    assert deployed["config"]["containers"][0]["name"] == f"{WORKER}-sandboxes"
    assert (settings.build_dir / "Dockerfile").read_text().startswith("# kit's runtime image")

    fake.forget_calls()  # a second deploy keeps the token and does not ask again
    assert await cfdeploy.run_deploy(settings, _no_image_build, dry_run_only=False) == 0
    assert [c["argv"][:2] for c in fake.calls()] == [
        ["secret", "put"],
        ["secret", "put"],
        ["deploy", "-c"],
    ]
    assert [c["stdin"] for c in fake.calls()[:2]] == [MODEL_KEY, token]
    assert json.loads(token_file.read_text())["api_token"] == token


async def test_a_worker_with_a_token_this_machine_does_not_know_is_not_redeployed(
    kit_tmp: Path, fake: FakeCloudflare
) -> None:
    """No KIT_API_TOKEN and no token file, but the Worker has one: refused, naming
    KIT_API_TOKEN, before any secret is put (a new token would lock clients out)."""
    fake.account.write_text(
        json.dumps({"workers": {WORKER: {"secrets": ["KIT_API_TOKEN"]}}, "apps": []})
    )
    settings = _settings(kit_tmp, fake)
    with pytest.raises(CliError, match="set KIT_API_TOKEN to it"):
        await cfdeploy.run_deploy(settings, _no_image_build, dry_run_only=False)
    assert [c["argv"][:2] for c in fake.calls()] == [["secret", "list"]]
    assert not (kit_tmp / "state" / f"cloudflare-{WORKER}.json").exists()


async def test_a_failing_wrangler_is_one_error_with_its_last_lines(
    kit_tmp: Path, fake: FakeCloudflare
) -> None:
    """wrangler exiting non-zero (here: its credentials refused) is a WranglerError carrying
    wrangler's own words, and nothing after it runs."""
    settings = _settings(kit_tmp, fake)
    environ = {k: v for k, v in settings.environ.items() if k != "CLOUDFLARE_API_TOKEN"}
    broken = dataclasses.replace(settings, environ=environ)  # read, but not passed on
    with pytest.raises(WranglerError, match=r"wrangler secret list failed .*CLOUDFLARE_API_TOKEN"):
        await cfdeploy.run_deploy(broken, _no_image_build, dry_run_only=False)
    assert len(fake.calls()) == 1


async def test_destroy_lists_without_yes_then_deletes_the_worker_and_its_containers(
    kit_tmp: Path, fake: FakeCloudflare, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --yes: what would go (the Worker and its container application), refused,
    nothing deleted. With it: `wrangler delete` and `wrangler containers delete <id>`
    (which `wrangler delete` alone would leave running); then there is nothing left."""
    settings = _settings(kit_tmp, fake)
    await cfdeploy.run_deploy(settings, _no_image_build, dry_run_only=False)
    (app,) = fake.state()["apps"]
    capsys.readouterr()
    with pytest.raises(CliError, match="--yes"):
        await cfdeploy.run_destroy(settings, yes=False)
    out = capsys.readouterr().out
    assert f"Would remove: Worker {WORKER}" in out
    assert f"container application {WORKER}-sandboxes ({app['id']})" in out
    assert WORKER in fake.state()["workers"]
    fake.forget_calls()
    assert await cfdeploy.run_destroy(settings, yes=True) == 0
    assert [c["argv"][:2] for c in fake.calls()][-2:] == [
        ["delete", WORKER],
        ["containers", "delete"],
    ]
    assert fake.state() == {"workers": {}, "apps": []}
    assert "Removed: " in capsys.readouterr().out
    assert await cfdeploy.run_destroy(settings, yes=False) == 0
    assert "Nothing to remove" in capsys.readouterr().out


async def test_destroy_needs_the_cloudflare_token(kit_tmp: Path, fake: FakeCloudflare) -> None:
    """No CLOUDFLARE_API_TOKEN: refused naming it, before wrangler runs."""
    settings = _settings(kit_tmp, fake)
    broken = dataclasses.replace(settings, cf_token="")
    with pytest.raises(CliError, match="CLOUDFLARE_API_TOKEN is not set"):
        await cfdeploy.run_destroy(broken, yes=True)
    assert fake.calls() == []
