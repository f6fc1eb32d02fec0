"""`kit dev --target cloudflare` refuses what cannot work before it builds or writes
anything: a Fly tier, a missing wrangler."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.cli.cfdev import rehearse_cloudflare
from kit.cli.errors import CliError
from tests.agents import write_agent


@pytest.mark.parametrize(
    ("tier", "wrangler", "says"),
    [
        ("shared-cpu-1x", None, "no Cloudflare instance type"),
        ("basic", "/nonexistent/wrangler", "KIT_WRANGLER=/nonexistent/wrangler"),
    ],
)
async def test_bad_input_is_named_and_nothing_is_written(
    kit_tmp: Path, monkeypatch: pytest.MonkeyPatch, tier: str, wrangler: str | None, says: str
) -> None:
    project = write_agent(kit_tmp / "agent", tier=tier)
    if wrangler is not None:
        monkeypatch.setenv("KIT_WRANGLER", wrangler)
    state = kit_tmp / "state"
    with pytest.raises(CliError, match=says):
        async with rehearse_cloudflare(project, state, "kit-runtime:never-built"):
            pass
    assert not state.exists()
