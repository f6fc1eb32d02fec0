"""Shared fixtures: world-traversable temp dirs (sandboxes run as another user) and a
running local stack on port 0."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kit.cli.settings import EXAMPLE_PROJECT, DevSettings
from kit.cli.stack import Stack, run_stack

# The CLI must never try the network or phone home from tests.
os.environ.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
os.environ.pop("ANTHROPIC_API_KEY", None)


@pytest.fixture
def kit_tmp() -> Iterator[Path]:
    """A temp dir the sandbox user can traverse (pytest's own tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="kit-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def stack_settings(state: Path, project: Path = EXAMPLE_PROJECT, **kw: object) -> DevSettings:
    """Settings for an in-process stack on a free port."""
    return DevSettings(project_dir=project, state_dir=state, port=0, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def stack(kit_tmp: Path) -> AsyncIterator[Stack]:
    """The example agent's whole local stack, on a free port."""
    async with run_stack(stack_settings(kit_tmp / "state")) as running:
        yield running
