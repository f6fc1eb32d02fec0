"""The containers' image on Cloudflare: kit's Dockerfile for it, built by Docker as wrangler
builds it (the bundle's folder as the context), holds the bundle byte for byte, with its
modes, at /bundles/<digest[:32]> (where the runtime finds it on Fly too)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.bundle import build_bundle, load_project
from kit.cli.settings import EXAMPLE_PROJECT
from kit.deploy.cloudflare.target import bundle_path, dockerfile
from tests.dockerhost import need_docker

BASE = "kit-test-empty-base:cf"
"""A base with no files (``docker import`` of an empty archive): no registry is reachable."""


def _docker(*args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout


@pytest.fixture
def image(kit_tmp: Path) -> Iterator[tuple[str, Path, str]]:
    """The image built from kit's Dockerfile over the empty base: (tag, bundle, digest)."""
    need_docker()
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w"):
        pass
    _docker("import", "-", BASE, stdin=empty.getvalue())
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), kit_tmp / "bundles")
    (kit_tmp / "Dockerfile").write_text(dockerfile(BASE, bundle.digest))
    tag = f"kit-test-cf-bundle:{bundle.digest[:12]}"
    _docker("build", "-q", "-t", tag, "-f", str(kit_tmp / "Dockerfile"), str(bundle.path))
    try:
        yield tag, bundle.path, bundle.digest
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag, BASE], capture_output=True, check=False)


def test_the_image_holds_the_bundle_unchanged(image: tuple[str, Path, str]) -> None:
    """Every file of the bundle is in the image, same bytes, same mode, owned by root; the
    image names the bundle in its label."""
    tag, bundle, digest = image
    container = _docker("create", tag, "/none").decode().strip()
    try:
        archive = _docker("export", container)
    finally:
        _docker("rm", container)
    with tarfile.open(fileobj=io.BytesIO(archive)) as exported:
        _check_bundle(exported, bundle, digest)
    label = _docker("image", "inspect", "--format", '{{index .Config.Labels "kit.bundle"}}', tag)
    assert label.decode().strip() == digest


def _check_bundle(exported: tarfile.TarFile, bundle: Path, digest: str) -> None:
    root = bundle_path(digest).lstrip("/") + "/"
    inside = {m.name[len(root) :]: m for m in exported.getmembers() if m.name.startswith(root)}
    files = {p.relative_to(bundle).as_posix(): p for p in bundle.rglob("*") if p.is_file()}
    assert files
    for rel, path in files.items():
        member = inside[rel]
        extracted = exported.extractfile(member)
        assert extracted is not None
        assert extracted.read() == path.read_bytes(), rel
        assert member.mode & 0o7777 == path.stat().st_mode & 0o7777, rel
        assert (member.uid, member.gid) == (0, 0), rel
    assert {rel for rel, m in inside.items() if m.isfile()} == set(files)
