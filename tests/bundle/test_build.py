"""Content-addressed bundles: stable digests, reuse, verification, refusal of symlinks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kit.bundle import BundleError, build_bundle, load_project, open_bundle
from kit.cli.settings import EXAMPLE_PROJECT


def _copy_example(tmp_path: Path) -> Path:
    dest = tmp_path / "proj"
    shutil.copytree(EXAMPLE_PROJECT, dest, ignore=shutil.ignore_patterns(".kit", "__pycache__"))
    return dest


def test_same_project_same_digest(tmp_path: Path) -> None:
    """Building twice gives the same digest and folder; the plugin manifest names 'kit'."""
    project = load_project(EXAMPLE_PROJECT)
    a = build_bundle(project, tmp_path / "b1")
    b = build_bundle(project, tmp_path / "b2")
    assert a.digest == b.digest
    assert a.path.name == b.path.name
    assert (a.path / ".claude-plugin" / "plugin.json").read_text().find('"name":"kit"') >= 0
    assert (a.path / "skills" / "order-lookup" / "SKILL.md").is_file()
    assert build_bundle(project, tmp_path / "b1").path == a.path


def test_a_changed_skill_changes_the_digest(tmp_path: Path) -> None:
    """Editing any skill file gives a new digest."""
    src = _copy_example(tmp_path)
    before = build_bundle(load_project(src), tmp_path / "out").digest
    (src / "skills" / "order-lookup" / "SKILL.md").write_text(
        (src / "skills" / "order-lookup" / "SKILL.md").read_text() + "\nMore.\n"
    )
    assert build_bundle(load_project(src), tmp_path / "out").digest != before


def test_tampered_bundle_does_not_open(tmp_path: Path) -> None:
    """A file changed after the build makes open_bundle refuse, naming the file."""
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), tmp_path)
    target = bundle.path / "skills" / "order-lookup" / "SKILL.md"
    target.write_text("tampered")
    with pytest.raises(BundleError, match="changed since the bundle was built"):
        open_bundle(bundle.path)


def test_symlinks_are_refused(tmp_path: Path) -> None:
    """A symlink inside a skill is refused with a message naming it."""
    src = _copy_example(tmp_path)
    (src / "skills" / "order-lookup" / "link").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="symlinks are not bundled"):
        build_bundle(load_project(src), tmp_path / "out")
