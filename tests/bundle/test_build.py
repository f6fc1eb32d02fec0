"""Content-addressed bundles: stable digests, reuse, verification, refusal of symlinks."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kit.bundle import MANIFEST, BundleError, build_bundle, load_project, open_bundle
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


def _with_egress(tmp_path: Path, entries: str) -> Path:
    src = _copy_example(tmp_path)
    toml = (src / "kit.toml").read_text()
    (src / "kit.toml").write_text(toml.replace("[sandbox]", f"[sandbox]\negress = {entries}", 1))
    return src


def _rewrite_manifest(bundle: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit a bundle's manifest and re-seal its digest, as an older or forged build would."""
    manifest = json.loads((bundle / MANIFEST).read_bytes())
    change(manifest)
    body = {k: v for k, v in manifest.items() if k != "digest"}
    manifest["digest"] = hashlib.sha256(_canon(body)).hexdigest()
    (bundle / MANIFEST).write_bytes(_canon(manifest))


def _canon(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_egress_is_carried_in_the_manifest(tmp_path: Path) -> None:
    """The allowlist travels in the manifest's sandbox section and back out as Bundle.egress,
    and changing it changes the digest; with none, the manifest has no egress key."""
    plain = build_bundle(load_project(EXAMPLE_PROJECT), tmp_path / "plain")
    assert plain.egress == ()
    assert "egress" not in json.loads((plain.path / MANIFEST).read_bytes())["sandbox"]
    src = _with_egress(tmp_path, '["api.github.com", "*.pypi.org"]')
    bundle = build_bundle(load_project(src), tmp_path / "out")
    assert bundle.egress == ("api.github.com", "*.pypi.org")
    assert json.loads((bundle.path / MANIFEST).read_bytes())["sandbox"]["egress"] == [
        "api.github.com",
        "*.pypi.org",
    ]
    assert open_bundle(bundle.path).egress == bundle.egress
    assert bundle.digest != plain.digest


def test_a_bundle_from_before_egress_opens_with_none(tmp_path: Path) -> None:
    """A manifest without sandbox.egress (an older build) opens with an empty allowlist."""
    bundle = build_bundle(load_project(_with_egress(tmp_path, '["api.github.com"]')), tmp_path)
    _rewrite_manifest(bundle.path, lambda m: m["sandbox"].pop("egress"))
    assert open_bundle(bundle.path).egress == ()


def test_a_manifest_with_a_bad_egress_entry_does_not_open(tmp_path: Path) -> None:
    """A sealed manifest whose allowlist kit.toml would have refused is refused too."""
    bundle = build_bundle(load_project(_with_egress(tmp_path, '["api.github.com"]')), tmp_path)
    _rewrite_manifest(bundle.path, lambda m: m["sandbox"].update(egress=["http://x/"]))
    with pytest.raises(BundleError, match="egress entry 'http://x/' is not valid"):
        open_bundle(bundle.path)
