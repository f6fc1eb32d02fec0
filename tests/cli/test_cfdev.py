"""``kit dev --target cloudflare``'s shim vars (the rehearsal itself runs in
tests/e2e/test_cloudflare_rehearsal.py, under Docker)."""

from __future__ import annotations

import json
from pathlib import Path

from kit.bundle import build_bundle, load_project
from kit.cli.cfdev import rehearsal_vars
from kit.deploy.cloudflare.target import LIMITS_VAR, limits_var
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
        "KIT_MODEL_UPSTREAM": "http://127.0.0.1:5678",
        "KIT_BUNDLE_DIGEST": bundle.digest,
        "KIT_CONTAINER_EMULATOR": "http://127.0.0.1:9012",
        "KIT_CONTAINER_IMAGE": "kit-bundle:x",
        LIMITS_VAR: limits_var(bundle.limits),
    }
    assert json.loads(got[LIMITS_VAR]) == {"models": ["claude-haiku-*"], "turn_tokens": 777}
