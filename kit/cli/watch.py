"""``kit dev`` watches the project: a saved change rebuilds the bundle, said in one line.

Polling, not inotify: it works the same on every filesystem (bind mounts, network folders,
editors that replace files by renaming), costs a ``stat`` per file every
:data:`POLL_S`, and needs nothing installed. A change is acted on once the files have
settled (an editor's save can be several writes), so one save gives one line.

What it says:

- ``kit dev: reloaded (skills/orders/SKILL.md): bundle 1a2b… (orders, tier basic); new
  sandboxes run it.``
- ``kit dev: not reloaded: kit.toml: … Bundle 1a2b… keeps serving.`` (a broken edit; said
  once until the error changes)
- ``kit dev: scenarios reloaded (scenarios/orders.toml).`` (the offline model's files,
  read again on its next request); ``kit dev: scenarios now read from other.`` when
  kit.toml's ``[dev] scenarios`` moved them

Sandboxes of running turns keep their bundle; idle ones are replaced (see
:meth:`kit.host.SessionHost.refresh`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from kit.cli import console
from kit.cli.stack import Reload, Stack

log = logging.getLogger("kit.cli")

POLL_S = 0.5
"""How often the project's files are looked at."""
SETTLE_S = 0.2
"""A change is acted on once two looks this far apart agree."""
MAX_SETTLE = 25
"""Looks before acting anyway on files that keep changing (a log written in the project)."""
MAX_FILES = 20_000
"""Files watched at most; a project with more is watched in part (said once)."""
SKIP_DIRS = frozenset({"node_modules", "__pycache__"})
"""Folders never watched, besides hidden ones (``.kit``, ``.git``, ``.venv``)."""

Stamps = dict[str, tuple[int, int]]


def snapshot(roots: Iterable[Path], skip: Iterable[Path] = ()) -> tuple[Stamps, bool]:
    """(mtime, size) of every file under ``roots`` (hidden and :data:`SKIP_DIRS` folders
    and ``skip`` left out), and whether :data:`MAX_FILES` cut the walk short."""
    skipped = {str(p) for p in skip}
    stamps: Stamps = {}
    for root in roots:
        if root.is_file():
            _stamp(stamps, str(root))
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith(".")
                and d not in SKIP_DIRS
                and os.path.join(folder, d) not in skipped
            )
            for name in files:
                if len(stamps) >= MAX_FILES:
                    return stamps, True
                _stamp(stamps, os.path.join(folder, name))
    return stamps, False


def _stamp(stamps: Stamps, path: str) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return  # removed while we looked: the next look notices
    stamps[path] = (st.st_mtime_ns, st.st_size)


def changed(before: Stamps, after: Stamps) -> list[str]:
    """Paths added, removed or modified between two snapshots."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


class Watcher:
    """Watches ``stack``'s project and reloads it on a change."""

    def __init__(
        self,
        stack: Stack,
        *,
        say: Callable[[str], None] = console.out,
        poll_s: float = POLL_S,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.stack = stack
        self.say = say
        self.poll_s = poll_s
        self.settle_s = settle_s
        self.skip = [stack.settings.state_dir]
        self._error: str | None = None
        self._truncated_said = False
        self.ready = asyncio.Event()
        """Set once the first look is taken: edits from then on are noticed."""

    @property
    def scenario_paths(self) -> tuple[Path, ...]:
        """Where the offline model reads scenarios now (kit.toml may move them)."""
        return self.stack.scenarios.paths if self.stack.scenarios is not None else ()

    @property
    def roots(self) -> list[Path]:
        """The project, and scenario paths outside it."""
        project = self.stack.settings.project_dir
        return [project, *(p for p in self.scenario_paths if not p.is_relative_to(project))]

    def _look(self) -> Stamps:
        stamps, truncated = snapshot(self.roots, self.skip)
        if truncated and not self._truncated_said:
            self._truncated_said = True
            self.say(
                f"kit dev: the project has over {MAX_FILES} files; only the first are watched "
                "(use --no-watch and restart kit dev after edits, or move data out of it)."
            )
        return stamps

    async def run(self) -> None:
        """Watch until cancelled."""
        before = await asyncio.to_thread(self._look)
        self.ready.set()
        while True:
            await asyncio.sleep(self.poll_s)
            now = await asyncio.to_thread(self._look)
            if now == before:
                continue
            for _ in range(MAX_SETTLE):
                await asyncio.sleep(self.settle_s)
                again = await asyncio.to_thread(self._look)
                if again == now:
                    break
                now = again
            paths = changed(before, now)
            before = now
            read_from = self.scenario_paths
            try:
                result = await self.stack.reload()
            except Exception as exc:  # the watcher must outlive any one bad save
                log.exception("reloading the project failed")
                result = Reload(self.stack.bundle, changed=False, error=f"{exc}.")
            self.report(paths, result, moved=self.scenario_paths != read_from)

    def report(self, paths: list[str], result: Reload, *, moved: bool = False) -> None:
        """Say what a reload after changes to ``paths`` did (one line, or none); ``moved``:
        the offline model now reads scenarios from other paths."""
        digest = result.bundle.digest[:16]
        if result.error is not None:
            if result.error != self._error:
                self.say(f"kit dev: not reloaded: {result.error} Bundle {digest} keeps serving.")
            self._error = result.error
            return
        was_broken, self._error = self._error is not None, None
        names = self._names(paths)
        if result.changed:
            skills = ", ".join(result.bundle.skills) or "no skills"
            self.say(
                f"kit dev: reloaded ({names}): bundle {digest} ({skills}, tier "
                f"{result.bundle.tier}); new sandboxes run it."
            )
        elif was_broken:
            self.say(f"kit dev: the project loads again; bundle {digest} unchanged.")
        elif moved:
            where = self._names([str(p) for p in self.scenario_paths], most=5)
            self.say(f"kit dev: scenarios now read from {where or 'nowhere'}.")
        elif any(p.startswith(tuple(str(r) for r in self.scenario_paths)) for p in paths):
            self.say(f"kit dev: scenarios reloaded ({names}).")

    def _names(self, paths: list[str], most: int = 3) -> str:
        project = self.stack.settings.project_dir
        shown = []
        for path in paths[:most]:
            p = Path(path)
            shown.append(str(p.relative_to(project)) if p.is_relative_to(project) else path)
        more = f" and {len(paths) - most} more" if len(paths) > most else ""
        return ", ".join(shown) + more
