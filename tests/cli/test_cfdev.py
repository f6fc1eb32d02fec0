"""``kit dev --target cloudflare``'s shim vars and config (the rehearsal itself runs in
tests/e2e/test_cloudflare_rehearsal.py and tests/browser/test_chat_cloudflare.py, under
Docker)."""

from __future__ import annotations

import json
from pathlib import Path

from kit.bundle import build_bundle, load_project
from kit.cli.cfdev import LOCAL_SESSIONS_VAR, rehearsal_vars
from kit.cli.wrangler import write_config
from kit.deploy.cloudflare.target import LIMITS_VAR, PAGE, limits_var
from kit.web import WEB_DIR
from tests.agents import write_agent


def test_the_rehearsal_passes_the_bundles_limits_as_a_deploy_does(tmp_path: Path) -> None:
    """The shim in wrangler dev gets the bundle's [limits] in the var a deploy sets, made by
    the same function, next to where it is and what it runs."""
    project = write_agent(
        tmp_path / "agent", extra_toml='[limits]\nmodels = ["claude-haiku-*"]\nturn_tokens = 777\n'
    )
    bundle = build_bundle(load_project(project), tmp_path / "bundles")
    got = rehearsal_vars(
        bundle,
        worker_url="http://127.0.0.1:1234",
        model_upstream="http://127.0.0.1:5678",
        containers_url="http://127.0.0.1:9012",
        image="kit-bundle:x",
    )
    assert got == {
        "KIT_WORKER_URL": "http://127.0.0.1:1234",
        LOCAL_SESSIONS_VAR: "1",
        "KIT_MODEL_UPSTREAM": "http://127.0.0.1:5678",
        "KIT_BUNDLE_DIGEST": bundle.digest,
        "KIT_CONTAINER_EMULATOR": "http://127.0.0.1:9012",
        "KIT_CONTAINER_IMAGE": "kit-bundle:x",
        LIMITS_VAR: limits_var(bundle.limits),
    }
    assert json.loads(got[LIMITS_VAR]) == {"models": ["claude-haiku-*"], "turn_tokens": 777}


def test_the_rehearsal_serves_the_page_as_a_deploy_ships_it(tmp_path: Path) -> None:
    """The shim's config in wrangler dev has the chat page's files (those of kit/web it
    serves, nothing else) as its assets, in a folder of its own by absolute path, and
    local sessions are asked for in the rehearsal's vars alone."""
    folder = tmp_path / "cloudflare"
    (folder / "web").mkdir(parents=True)
    (folder / "web" / "README.md").write_text("left from an older kit")
    path = write_config(
        folder, name="agent", tier="basic", variables={"A": "b"}, secrets={"S": "t"}
    )
    config = json.loads(path.read_text())
    assets = config["assets"]
    assert assets["directory"] == str(folder / "web")
    assert (assets["binding"], assets["run_worker_first"]) == ("ASSETS", True)
    assert sorted(p.name for p in (folder / "web").iterdir()) == sorted(PAGE)
    for name in PAGE:
        assert (folder / "web" / name).read_bytes() == (WEB_DIR / name).read_bytes()
    assert LOCAL_SESSIONS_VAR not in config["vars"]
