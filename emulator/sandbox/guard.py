"""What holds a running sandbox of this machine, process group or container, to its tier's
disk and to kit's maximum lifetime: a task per sandbox that measures its folders every
:data:`DISK_CHECK_S` and ends it (``disk``: SIGKILL, 137; ``lifetime``: SIGTERM, 143, then
SIGKILL after :data:`LIFETIME_GRACE_S`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from emulator.sandbox.cgroups import MAX_TREE_ENTRIES, tree_bytes, tree_usage
from kit.host.errors import SandboxError

log = logging.getLogger("emulator.sandbox")

MAX_LIFETIME_S = 24 * 3600.0
"""kit's own cap on one sandbox's life (neither platform documents one); then SIGTERM."""
LIFETIME_GRACE_S = 5.0
DISK_CHECK_S = 2.0
"""How often a running sandbox's folders are measured against its tier's disk."""

Kill = Callable[[int, str], Awaitable[None]]


def used_bytes(folders: Iterable[Path]) -> int:
    """Disk blocks used under ``folders`` (the sandbox's writable ones), as ``du`` counts."""
    return sum(tree_bytes(folder) for folder in folders if folder.is_dir())


def over_quota(folders: Iterable[Path], disk_bytes: int) -> bool:
    """Whether ``folders`` hold more than ``disk_bytes``. More than :data:`MAX_TREE_ENTRIES`
    files and folders in all counts as over: they cannot be measured every few seconds, and
    an unmeasured rest could hide any size."""
    used = entries = 0
    for folder in folders:
        if folder.is_dir():
            size, seen = tree_usage(folder, MAX_TREE_ENTRIES - entries + 1)
            used, entries = used + size, entries + seen
            if used > disk_bytes or entries > MAX_TREE_ENTRIES:
                return True
    return False


def refuse_if_full(session_id: str, folders: Iterable[Path], disk_bytes: int) -> None:
    """SandboxError, naming the fix, when a session's folders already hold more than its
    tier's disk (a sandbox started on them would be killed at once)."""
    folders = list(folders)
    if over_quota(folders, disk_bytes):
        raise SandboxError(
            f"The workspace of session {session_id} ({folders[0]}) holds more than its "
            f"tier's {disk_bytes / 1e9:g} GB of disk (or more than {MAX_TREE_ENTRIES:,} files "
            "and folders); delete files from it or pick a larger tier (kit.toml [sandbox] tier)."
        )


async def hold_to_limits(
    name: str,
    exited: asyncio.Future[Any],
    over_disk: Callable[[], bool],
    kill: Kill,
    max_lifetime_s: float | None,
) -> None:
    """Until ``exited`` is done: every :data:`DISK_CHECK_S`, kill with ``disk`` once
    ``over_disk()`` (run in a thread: a big tree takes a while); after ``max_lifetime_s``
    (None: :data:`MAX_LIFETIME_S`), stop with ``lifetime``. A kill that fails is logged and
    tried again at the next check."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_lifetime_s if max_lifetime_s else None
    checks = int((max_lifetime_s or MAX_LIFETIME_S) / DISK_CHECK_S) + 1
    for _ in range(checks):
        if exited.done():
            return
        if await asyncio.to_thread(over_disk):
            log.warning("sandbox %s: over its disk quota; killing it", name)
            await _try(kill(signal.SIGKILL, "disk"), name)
        now = loop.time()
        if deadline is not None and now >= deadline:
            break
        wait = DISK_CHECK_S if deadline is None else min(DISK_CHECK_S, deadline - now)
        try:
            await asyncio.wait_for(asyncio.shield(exited), wait)
            return
        except TimeoutError:
            continue
    log.info("sandbox %s reached its maximum lifetime; stopping it", name)
    await _try(kill(signal.SIGTERM, "lifetime"), name)
    for _ in range(3):
        try:
            await asyncio.wait_for(asyncio.shield(exited), LIFETIME_GRACE_S)
            return
        except TimeoutError:
            await _try(kill(signal.SIGKILL, "lifetime"), name)


async def _try(kill: Awaitable[None], name: str) -> None:
    try:
        await kill
    except SandboxError as exc:
        log.warning("sandbox %s: the kill failed (%s); trying again", name, exc)
