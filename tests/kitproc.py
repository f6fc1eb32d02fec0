"""The ``kit`` command of this checkout's environment, started as a user would start it."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

KIT = str(Path(sys.executable).parent / "kit")


async def spawn_kit(*args: str, **kw: Any) -> asyncio.subprocess.Process:
    """Start ``kit ARGS`` (its stdout and stderr piped unless ``kw`` says otherwise)."""
    kw.setdefault("stdout", asyncio.subprocess.PIPE)
    kw.setdefault("stderr", asyncio.subprocess.PIPE)
    return await asyncio.create_subprocess_exec(KIT, *args, **kw)


async def start_gateway(
    env: dict[str, str], cwd: Path, timeout_s: float = 60.0
) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``kit gateway`` with ``env``; the process and the URL from its ready line (its
    stderr's tail in the failure when it exits first)."""
    proc = await spawn_kit("gateway", cwd=cwd, env=env)
    assert proc.stdout is not None
    async with asyncio.timeout(timeout_s):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                assert proc.stderr is not None
                raise AssertionError((await proc.stderr.read()).decode()[-3000:])
            if m := re.search(r"serving \w+ at (http://\S+)", line):
                return proc, m.group(1)
