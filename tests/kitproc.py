"""The ``kit`` command of this checkout's environment, started as a user would start it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

KIT = str(Path(sys.executable).parent / "kit")


async def spawn_kit(*args: str, **kw: Any) -> asyncio.subprocess.Process:
    """Start ``kit ARGS`` (its stdout and stderr piped unless ``kw`` says otherwise)."""
    kw.setdefault("stdout", asyncio.subprocess.PIPE)
    kw.setdefault("stderr", asyncio.subprocess.PIPE)
    return await asyncio.create_subprocess_exec(KIT, *args, **kw)
