"""Scenario files: the scripted replies of the offline model, and the checks ``kit test`` runs.

A scenario file is TOML (see docs/scenarios.md) holding ``[[rule]]`` tables, each with
``[[rule.step]]`` tables, and ``[[check]]`` tables. :func:`load_scenario_file` reads one
file into a :class:`~emulator.model.schema.Scenario`; :class:`ScenarioSource` holds a list
of files and folders and re-reads a file whenever its modification time changes, so
``kit dev`` picks up edits without a restart. Every problem is a
:class:`~emulator.model.schema.ScenarioError`.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterable
from pathlib import Path

from emulator.model.parse import parse_scenario
from emulator.model.schema import Check, Rule, Scenario, ScenarioError


def load_scenario_file(path: Path) -> Scenario:
    """Read and validate one scenario file; raise :class:`ScenarioError` on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ScenarioError(f"{path}: no such scenario file; create it or fix the path.") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: is not UTF-8 text; save it as UTF-8.") from exc
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: is not valid TOML: {exc}.") from exc
    return parse_scenario(data, path)


class ScenarioSource:
    """Scenario files and folders, re-read when a file's modification time changes.

    A folder stands for the ``*.toml`` files directly inside it, in sorted name order
    (names starting with ``.`` are skipped); paths are taken in the order given. Rules are
    tried in that file order, then in file order within a file. Every file is loaded when
    the source is made, so a broken file fails fast; later edits are picked up on the next
    call to :meth:`rules` or :meth:`checks`, which raise :class:`ScenarioError` if an edit
    broke a file.
    """

    def __init__(self, paths: Iterable[Path] = ()) -> None:
        self._paths = tuple(Path(path) for path in paths)
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, int], Scenario]] = {}
        self.scenarios()

    @classmethod
    def from_paths(cls, paths: Iterable[Path]) -> ScenarioSource:
        """Load the scenario files and folders at ``paths``."""
        return cls(paths)

    @classmethod
    def empty(cls) -> ScenarioSource:
        """A source with no rules: every request gets the default reply."""
        return cls(())

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files and folders scenarios are read from."""
        return self._paths

    def move(self, paths: Iterable[Path]) -> None:
        """Read scenarios from ``paths`` from now on (kit.toml's ``[dev] scenarios``
        changed); a :class:`ScenarioError` if they do not load, and the old paths stay."""
        new = tuple(Path(path) for path in paths)
        old, self._paths = self._paths, new
        try:
            self.scenarios()
        except ScenarioError:
            self._paths = old
            raise

    def files(self) -> list[Path]:
        """The scenario files the paths stand for right now, in rule order."""
        found: list[Path] = []
        for path in self._paths:
            if path.is_dir():
                found.extend(
                    sorted(
                        child
                        for child in path.glob("*.toml")
                        if child.is_file() and not child.name.startswith(".")
                    )
                )
            elif path.exists():
                found.append(path)
            else:
                raise ScenarioError(
                    f"{path}: no such scenario file or folder; create it or fix the path."
                )
        return found

    def scenarios(self) -> list[Scenario]:
        """Every scenario, re-reading the files that changed since the last call."""
        with self._lock:
            files = self.files()
            loaded: list[Scenario] = []
            for path in files:
                try:
                    stat = path.stat()
                except OSError as exc:
                    raise ScenarioError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
                stamp = (stat.st_mtime_ns, stat.st_size)
                cached = self._cache.get(path)
                if cached is None or cached[0] != stamp:
                    cached = (stamp, load_scenario_file(path))
                    self._cache[path] = cached
                loaded.append(cached[1])
            for gone in set(self._cache) - set(files):
                del self._cache[gone]
            return loaded

    def rules(self) -> list[Rule]:
        """Every rule, in the order they are tried."""
        return [rule for scenario in self.scenarios() for rule in scenario.rules]

    def checks(self) -> list[Check]:
        """Every check, in file order."""
        return [check for scenario in self.scenarios() for check in scenario.checks]

    def __repr__(self) -> str:
        return f"ScenarioSource({list(self._paths)!r})"
