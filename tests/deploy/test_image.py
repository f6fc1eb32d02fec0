"""The runtime image: its plan as data, its content-addressed tag, and what it runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kit.cli.main import main
from kit.deploy.image import (
    IMAGE_REPOSITORY,
    ImageError,
    StepKind,
    image_tag,
    plan_image,
    prune_images,
    source_digest,
    source_files,
)
from tests.dockerhost import need_docker, runtime_image


def _checkout(root: Path) -> Path:
    (root / "kit").mkdir(parents=True)
    (root / "kit" / "__init__.py").write_text("__version__ = '9.9.9'\n")
    (root / "kit" / "__pycache__").mkdir()
    (root / "kit" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (root / "pyproject.toml").write_text(
        '[project]\nname = "kit"\nversion = "9.9.9"\ndependencies = ["anyio"]\n'
        '[project.optional-dependencies]\nruntime = ["boto3"]\n'
    )
    return root


def test_source_digest_follows_the_sources_and_ignores_caches(tmp_path: Path) -> None:
    """The digest is stable, ignores __pycache__, and changes when a source file changes."""
    checkout = _checkout(tmp_path / "src")
    first = source_digest(checkout)
    assert [p.as_posix() for p in source_files(checkout)] == ["pyproject.toml", "kit/__init__.py"]
    (checkout / "kit" / "__pycache__" / "y.pyc").write_bytes(b"more junk")
    assert source_digest(checkout) == first
    (checkout / "kit" / "__init__.py").write_text("__version__ = '9.9.10'\n")
    assert source_digest(checkout) != first


def test_tag_names_the_version_and_a_digest_of_every_input() -> None:
    """Same inputs, same tag; any one input changed, another tag."""
    tag = image_tag("1.2.3", "sha256:base", b"lock", "src")
    assert tag == image_tag("1.2.3", "sha256:base", b"lock", "src")
    assert tag.startswith(f"{IMAGE_REPOSITORY}:1.2.3-")
    others = {
        image_tag("1.2.3", "sha256:other", b"lock", "src"),
        image_tag("1.2.3", "sha256:base", b"lock2", "src"),
        image_tag("1.2.3", "sha256:base", b"lock", "src2"),
    }
    assert tag not in others
    assert len(others) == 3


def test_a_folder_without_pyproject_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Planning from a folder that is not kit's checkout names --source."""
    with pytest.raises(ImageError, match="--source"):
        plan_image(tmp_path, tmp_path / "cache")


def test_dry_run_prints_the_plan_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kit image build --dry-run` lists the three steps and creates no cache or image."""
    need_docker()
    checkout = _checkout(tmp_path / "src")
    cache = tmp_path / "cache"
    plan = plan_image(checkout, cache)
    assert [s.kind for s in plan.steps] == [StepKind.BASE, StepKind.WHEELS, StepKind.IMAGE]
    assert plan.requirements == ("anyio", "boto3")
    assert plan.tag is None  # the wheels are not resolved yet
    assert not plan.up_to_date
    with pytest.raises(SystemExit) as exited:
        main(["image", "build", "--dry-run", "--source", str(checkout), "--cache-dir", str(cache)])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "kit 9.9.9 runtime image" in out
    assert "wheels" in out
    assert not cache.exists()


@pytest.mark.slow
def test_the_image_runs_the_runtime_as_a_non_root_user_without_network() -> None:
    """The image's entrypoint is `python -m kit.runtime`, as uid 10001, with the Agent SDK's
    bundled CLI and the s3 store's boto3 importable, on a read-only root with no network."""
    image = runtime_image()
    run = ["docker", "run", "--rm", "--network", "none", "--read-only"]
    probe = (
        "import os, json, shutil, subprocess, boto3, kit.runtime.server, kit.storage.s3io;"
        "import claude_agent_sdk, pathlib;"
        "cli = pathlib.Path(claude_agent_sdk.__file__).parent / '_bundled' / 'claude';"
        "v = subprocess.run([str(cli), '--version'], capture_output=True, text=True).stdout;"
        "print(json.dumps({'uid': os.getuid(), 'cli': v.strip(),"
        " 'curl': shutil.which('curl'), 'pip': shutil.which('pip')}))"
    )
    done = subprocess.run(
        [*run, "--entrypoint", "/opt/kit/bin/python", image.tag, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["uid"] == 10001
    assert "Claude Code" in facts["cli"]
    assert facts["curl"] is None  # no network tools
    assert facts["pip"] is None  # nothing to install with at run time
    # The entrypoint is the runtime: without its config file it refuses to start, naming it.
    started = subprocess.run([*run, image.tag], capture_output=True, text=True, timeout=120)
    assert started.returncode == 2
    assert "KIT_RUNTIME_CONFIG is not set" in started.stderr


@pytest.mark.slow
def test_a_second_build_with_the_same_inputs_is_skipped() -> None:
    """Building again with nothing changed finds the tag and builds nothing."""
    image = runtime_image()
    from kit.cli.image import default_cache_dir, default_checkout
    from kit.deploy.image import apply_image

    plan = plan_image(default_checkout(), default_cache_dir())
    assert plan.up_to_date
    assert plan.tag == image.tag
    again = apply_image(plan)
    assert not again.built
    assert again.image_id == image.image_id
    assert shutil.which("docker")


@pytest.mark.slow
def test_prune_removes_the_other_images_and_keeps_the_given_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """prune_images removes every tag of the repository but the one to keep (a dry run
    only lists them); `kit image prune` refuses, naming `kit image build`, when this
    checkout's image is not built, and its dry run changes nothing."""
    image = runtime_image()
    repo = "kit-prune-test"
    tags = [f"{repo}:{name}" for name in ("old-1", "old-2", "current")]
    for tag in tags:
        subprocess.run(["docker", "tag", image.tag, tag], check=True, timeout=60)
    try:
        listed = prune_images("docker", tags[2], dry_run=True, repository=repo)
        assert listed == tags[:2]
        assert prune_images("docker", tags[2], repository=repo) == tags[:2]
        left = subprocess.run(
            ["docker", "image", "ls", repo, "--format", "{{.Repository}}:{{.Tag}}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        assert left == [tags[2]]
    finally:
        subprocess.run(["docker", "image", "rm", *tags], capture_output=True, timeout=60)
    checkout = _checkout(tmp_path / "src")
    with pytest.raises(SystemExit) as refused:
        main(["image", "prune", "--source", str(checkout), "--cache-dir", str(tmp_path / "c")])
    assert refused.value.code == 1
    assert "run `kit image build` first" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["image", "prune", "--dry-run"])
    assert exited.value.code == 0
    assert f"kept {image.tag}" in capsys.readouterr().out
    assert (
        subprocess.run(["docker", "image", "inspect", image.tag], capture_output=True).returncode
        == 0
    )
