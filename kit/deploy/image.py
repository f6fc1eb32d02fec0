"""The runtime image (shared/ARCHITECTURE.md §7): planned as data, then applied.

``plan_image`` looks at what already exists (the base image, the cached wheels, the runtime
image itself) and returns an :class:`ImagePlan` without changing anything; ``apply_image``
carries it out. ``kit image build --dry-run`` prints the plan and stops.

Three steps, each skipped when its result is already there:

1. **base** — a Debian root made with ``debootstrap --variant=minbase`` (Debian's mirror is
   reachable where registries are not) with Debian's ``python3``, trimmed of apt's caches and
   docs, and ``docker import``-ed as ``kit-base:<suite>-<recipe key>``.
2. **wheels** — every dependency of ``kit[runtime]`` as wheels, resolved once on this machine
   with its Python (which must be the base's minor version), pinned to the versions installed
   in that Python's environment (``pip freeze``: what kit was tested with), and cached by
   requirements and pins; ``lock.txt`` lists each wheel's sha256.
3. **image** — kit's own wheel built from the checkout, then ``docker build --network none``
   of kit's Dockerfile (``kit/deploy/templates/Dockerfile``) on the base with those wheels.

The image is tagged ``kit-runtime:<kit version>-<digest>``, the digest covering the
Dockerfile, the base image's id, the wheels' lock and kit's source files: the same inputs give
the same tag, and a build whose tag exists is skipped. The agent bundle is not part of the
image: a sandbox mounts it read-only and checks its digest, so a new bundle needs no rebuild.

Errors: :class:`~kit.deploy.errors.ImageError`, its message naming the fix.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from kit.deploy.errors import ImageError

__all__ = [
    "BaseRecipe",
    "BuiltImage",
    "ImageError",
    "ImagePlan",
    "Step",
    "StepKind",
    "apply_image",
    "dockerfile",
    "image_tag",
    "plan_image",
    "prune_images",
    "source_digest",
    "source_files",
]

IMAGE_REPOSITORY = "kit-runtime"
BASE_REPOSITORY = "kit-base"
PACKAGE_DIRS = ("kit", "emulator", "fly")
"""The checkout's folders that go into kit's wheel (pyproject's ``packages.find``)."""
_SKIP_PARTS = {"__pycache__", "node_modules", ".mypy_cache", ".ruff_cache"}


@dataclass(frozen=True)
class BaseRecipe:
    """How the base image's Debian root is made."""

    suite: str = "bookworm"
    python_version: str = "3.11"
    """The suite's ``python3`` minor version; the wheels are resolved for it."""
    packages: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
    mirror: str = "http://deb.debian.org/debian"

    @property
    def key(self) -> str:
        """A short digest of the recipe: a changed recipe makes a new base."""
        text = json.dumps([self.suite, sorted(self.packages), self.mirror], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        """The base image's tag, e.g. ``kit-base:bookworm-0123456789ab``."""
        return f"{BASE_REPOSITORY}:{self.suite}-{self.key}"


class StepKind(enum.StrEnum):
    """What one step of a plan makes."""

    BASE = "base"
    WHEELS = "wheels"
    IMAGE = "image"


@dataclass(frozen=True)
class Step:
    """One step: what it makes, whether that already exists, and how it would be made."""

    kind: StepKind
    target: str
    present: bool
    how: str


@dataclass(frozen=True)
class ImagePlan:
    """Everything ``apply_image`` will do, decided before anything is done."""

    checkout: Path
    version: str
    source_digest: str
    requirements: tuple[str, ...]
    base: BaseRecipe
    wheelhouse: Path
    constraints: tuple[str, ...]
    """``name==version`` pins from the build Python's environment, applied to the wheels."""
    tag: str | None
    """The runtime image's tag; None while the base or the wheels are still to be made."""
    steps: tuple[Step, ...]
    docker: str = "docker"
    python: str = field(default=sys.executable)

    @property
    def up_to_date(self) -> bool:
        """True when every step's result exists: applying the plan does nothing."""
        return all(step.present for step in self.steps)


@dataclass(frozen=True)
class BuiltImage:
    """The result of ``apply_image``."""

    tag: str
    image_id: str
    size_bytes: int
    built: bool
    """False when the tag already existed and nothing was built."""
    seconds: float


def dockerfile() -> bytes:
    """kit's Dockerfile for the runtime image (``kit/deploy/templates/Dockerfile``)."""
    return resources.files("kit.deploy").joinpath("templates/Dockerfile").read_bytes()


def plan_image(
    checkout: Path,
    cache_dir: Path,
    *,
    docker: str = "docker",
    python: str = sys.executable,
    base: BaseRecipe = BaseRecipe(),
) -> ImagePlan:
    """Plan the runtime image for kit's source ``checkout``, caching under ``cache_dir``.

    Reads the checkout and asks Docker which images exist; changes nothing."""
    pyproject = checkout / "pyproject.toml"
    if not pyproject.is_file():
        raise ImageError(
            f"{checkout} is not kit's source checkout (no pyproject.toml); pass --source with "
            "the folder that holds kit's pyproject.toml."
        )
    project = tomllib.loads(pyproject.read_text())["project"]
    version = str(project["version"])
    requirements = _runtime_requirements(project)
    constraints = _constraints(python)
    wheelhouse = cache_dir / f"wheels-{_wheelhouse_key(requirements, constraints, base)}"
    digest = source_digest(checkout)

    base_id = _image_id(docker, base.tag)
    lock = wheelhouse / "lock.txt"
    wheels_present = lock.is_file()
    tag = None
    if base_id is not None and wheels_present:
        tag = image_tag(version, base_id, lock.read_bytes(), digest)
    steps = (
        Step(
            StepKind.BASE,
            base.tag,
            base_id is not None,
            f"debootstrap --variant=minbase {base.suite} with {', '.join(base.packages)}, "
            "then docker import",
        ),
        Step(
            StepKind.WHEELS,
            str(wheelhouse),
            wheels_present,
            f"pip wheel {len(requirements)} requirements, pinned to {python}'s versions",
        ),
        Step(
            StepKind.IMAGE,
            tag or f"{IMAGE_REPOSITORY}:{version}-<digest once base and wheels exist>",
            tag is not None and _image_id(docker, tag) is not None,
            "build kit's wheel from the checkout; docker build --network none",
        ),
    )
    return ImagePlan(
        checkout=checkout,
        version=version,
        source_digest=digest,
        requirements=requirements,
        constraints=constraints,
        base=base,
        wheelhouse=wheelhouse,
        tag=tag,
        steps=steps,
        docker=docker,
        python=python,
    )


def apply_image(plan: ImagePlan, progress: Callable[[str], None] = lambda _: None) -> BuiltImage:
    """Carry out ``plan``: make what is missing, in order, and return the image."""
    started = time.monotonic()
    base_id = _image_id(plan.docker, plan.base.tag)
    if base_id is None:
        progress(f"making the base image {plan.base.tag} with debootstrap (about a minute)")
        base_id = _make_base(plan.docker, plan.base, plan.wheelhouse.parent)
    lock = plan.wheelhouse / "lock.txt"
    if not lock.is_file():
        progress(f"resolving kit[runtime]'s wheels into {plan.wheelhouse}")
        _make_wheelhouse(
            plan.python, plan.requirements, plan.constraints, plan.base, plan.wheelhouse
        )
    tag = image_tag(plan.version, base_id, lock.read_bytes(), plan.source_digest)
    built = False
    if _image_id(plan.docker, tag) is None:
        progress(f"building {tag}")
        _build(plan, tag)
        built = True
    image_id = _image_id(plan.docker, tag)
    if image_id is None:
        raise ImageError(f"docker build reported success but {tag} is missing; build again.")
    size = int(_docker(plan.docker, "image", "inspect", "--format", "{{.Size}}", tag).strip())
    return BuiltImage(tag, image_id, size, built, time.monotonic() - started)


def image_tag(version: str, base_id: str, wheels_lock: bytes, source_digest: str) -> str:
    """``kit-runtime:<version>-<digest>`` for these inputs (and kit's Dockerfile)."""
    h = hashlib.sha256()
    for part in (dockerfile(), base_id.encode(), wheels_lock, source_digest.encode()):
        h.update(hashlib.sha256(part).digest())
    return f"{IMAGE_REPOSITORY}:{version}-{h.hexdigest()[:12]}"


def source_files(checkout: Path) -> list[Path]:
    """The checkout's files that make kit's wheel, relative to it, in a stable order."""
    found = [Path(name) for name in ("pyproject.toml", "README.md", "LICENSE")]
    found = [p for p in found if (checkout / p).is_file()]
    for top in PACKAGE_DIRS:
        root = checkout / top
        if root.is_dir():
            found += sorted(
                p.relative_to(checkout)
                for p in root.rglob("*")
                if p.is_file() and not _SKIP_PARTS & set(p.parts) and p.suffix != ".pyc"
            )
    return found


def source_digest(checkout: Path) -> str:
    """The sha256 of kit's source files in ``checkout`` (their paths and contents)."""
    h = hashlib.sha256()
    for rel in source_files(checkout):
        h.update(f"{rel.as_posix()}\0".encode())
        h.update(hashlib.sha256((checkout / rel).read_bytes()).digest())
    return h.hexdigest()


def _runtime_requirements(project: dict[str, object]) -> tuple[str, ...]:
    deps = project.get("dependencies", [])
    extras = project.get("optional-dependencies", {})
    if not isinstance(deps, list) or not isinstance(extras, dict) or "runtime" not in extras:
        raise ImageError(
            "pyproject.toml has no [project.optional-dependencies] runtime extra; add one "
            "listing what kit.runtime needs beyond kit's dependencies."
        )
    return tuple(sorted({str(d) for d in deps} | {str(d) for d in extras["runtime"]}))


def _constraints(python: str) -> tuple[str, ...]:
    """The build Python's installed versions (``pip freeze``): the image gets the versions
    kit was tested with here, not whatever PyPI has newest today."""
    done = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ImageError(f"pip freeze with {python} failed: {_tail(done.stderr)}")
    pins = (line.strip() for line in done.stdout.splitlines())
    return tuple(sorted(p for p in pins if "==" in p and not p.startswith(("-", "#"))))


def _wheelhouse_key(
    requirements: Sequence[str], constraints: Sequence[str], base: BaseRecipe
) -> str:
    text = json.dumps(
        [list(requirements), list(constraints), base.python_version, os.uname().machine]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def prune_images(
    docker: str, keep: str, *, dry_run: bool = False, repository: str = IMAGE_REPOSITORY
) -> list[str]:
    """Remove every image of ``repository`` (kit's runtime images) but ``keep``: each source
    change of kit makes a new one, ~600 MB. Return the tags removed (or, with ``dry_run``,
    that would be). An image a container still uses is left, and the error says which."""
    listed = _docker(docker, "image", "ls", repository, "--format", "{{.Repository}}:{{.Tag}}")
    old = sorted(t for t in listed.split() if t != keep and not t.endswith(":<none>"))
    if dry_run:
        return old
    removed, in_use = [], []
    for tag in old:
        try:
            _docker(docker, "image", "rm", tag)
        except ImageError:
            in_use.append(tag)
            continue
        removed.append(tag)
    if in_use:
        raise ImageError(
            f"removed {len(removed)}; {', '.join(in_use)} could not be removed (a container "
            "still uses it: stop the kit dev or gateway that runs it, then prune again)."
        )
    return removed


def _docker(docker: str, *args: str, stdin: int | None = None) -> str:
    try:
        done = subprocess.run(
            [docker, *args], stdin=stdin, capture_output=True, text=True, check=False
        )
    except FileNotFoundError as exc:
        raise ImageError(
            f"the Docker CLI ({docker}) is not installed; run scripts/docker-up."
        ) from exc
    if done.returncode != 0:
        raise ImageError(f"docker {args[0]} failed: {_tail(done.stderr)}")
    return done.stdout


def _image_id(docker: str, tag: str) -> str | None:
    try:
        done = subprocess.run(
            [docker, "image", "inspect", "--format", "{{.Id}}", tag],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ImageError(
            f"the Docker CLI ({docker}) is not installed; run scripts/docker-up."
        ) from exc
    if done.returncode == 0:
        return done.stdout.strip()
    if "No such image" in done.stderr or "No such object" in done.stderr:
        return None
    raise ImageError(
        f"Docker does not answer ({_tail(done.stderr)}); start it with scripts/docker-up."
    )


def _make_base(docker: str, base: BaseRecipe, cache_dir: Path) -> str:
    if os.geteuid() != 0:
        raise ImageError("making the base image needs root (debootstrap); run as root.")
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed; run scripts/docker-up (or apt-get).")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _tempdir(cache_dir, "rootfs-") as rootfs:
        done = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(base.packages)}",
                base.suite,
                str(rootfs),
                base.mirror,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ImageError(f"debootstrap {base.suite} failed: {_tail(done.stdout + done.stderr)}")
        for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."],
            stdout=subprocess.PIPE,
        )
        assert tar.stdout is not None
        try:
            _docker(
                docker,
                "import",
                "--message",
                f"kit base {base.key}",
                "-",
                base.tag,
                stdin=tar.stdout.fileno(),
            )
        finally:
            tar.stdout.close()
            tar.wait()
    image_id = _image_id(docker, base.tag)
    if image_id is None:
        raise ImageError(f"docker import did not produce {base.tag}; build again.")
    return image_id


def _make_wheelhouse(
    python: str,
    requirements: Sequence[str],
    constraints: Sequence[str],
    base: BaseRecipe,
    wheelhouse: Path,
) -> None:
    have = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if have != base.python_version:
        raise ImageError(
            f"the wheels must be resolved with Python {base.python_version} ({base.suite}'s "
            f"python3), but {python} is {have or 'not runnable'}; run kit from a Python "
            f"{base.python_version} virtualenv."
        )
    wheelhouse.parent.mkdir(parents=True, exist_ok=True)
    with _tempdir(wheelhouse.parent, "wheels-partial-") as partial:
        reqs = partial / "requirements.txt"
        pins = partial / "constraints.txt"
        reqs.write_text("\n".join(requirements) + "\n")
        pins.write_text("".join(f"{pin}\n" for pin in constraints))
        _pip(python, "wheel", "--wheel-dir", str(partial), "-r", str(reqs), "-c", str(pins))
        reqs.unlink()
        pins.unlink()
        lock = "".join(
            f"{hashlib.sha256(w.read_bytes()).hexdigest()}  {w.name}\n"
            for w in sorted(partial.glob("*.whl"))
        )
        (partial / "lock.txt").write_text(lock)
        shutil.rmtree(wheelhouse, ignore_errors=True)
        partial.rename(wheelhouse)


def _build(plan: ImagePlan, tag: str) -> None:
    with _tempdir(plan.wheelhouse.parent, "context-") as context:
        src, wheels = context / "src", context / "wheels"
        for rel in source_files(plan.checkout):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(plan.checkout / rel, src / rel)
        wheels.mkdir()
        _pip(plan.python, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src))
        shutil.rmtree(src)
        for wheel in plan.wheelhouse.glob("*.whl"):
            os.link(wheel, wheels / wheel.name)
        (context / "Dockerfile").write_bytes(dockerfile())
        _docker(
            plan.docker,
            "build",
            "--quiet",
            "--network",
            "none",
            "--build-arg",
            f"BASE={plan.base.tag}",
            "--label",
            f"kit.version={plan.version}",
            "--label",
            f"kit.source={plan.source_digest}",
            "--tag",
            tag,
            str(context),
        )
    # The install stage's image is left dangling by the classic builder; it is only a cache.
    _docker(plan.docker, "image", "prune", "--force", "--filter", "label=kit.stage=install")


def _pip(python: str, *args: str) -> None:
    done = subprocess.run(
        [python, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ImageError(
            f"pip {args[0]} failed: {_tail(done.stderr)} (behind a TLS-intercepting proxy, "
            "set PIP_CERT to the machine's CA bundle)."
        )


@contextlib.contextmanager
def _tempdir(parent: Path, prefix: str) -> Iterator[Path]:
    """A scratch folder next to the cache (same file system: hard links and renames work)."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:]) or "no output"


BUNDLE_REPOSITORY = "kit-bundle"


def bundle_image(runtime_tag: str, bundle_dir: Path, digest: str, docker: str = "docker") -> str:
    """``kit-bundle:<digest>-<runtime>``: the image ``kit deploy --target cloudflare`` ships
    (the runtime image with the bundle in ``/bundles/<digest>``, from the same Dockerfile),
    built here once with ``docker build --network none``: what the rehearsal's containers
    run. The runtime checks the digest before it runs anything."""
    from kit.deploy.cloudflare.target import dockerfile

    runtime_id = _image_id(docker, runtime_tag)
    if runtime_id is None:
        raise ImageError(f"The runtime image {runtime_tag} is missing: run `kit image build`.")
    tag = f"{BUNDLE_REPOSITORY}:{digest[:16]}-{runtime_id.removeprefix('sha256:')[:12]}"
    if _image_id(docker, tag) is not None:
        return tag
    with tempfile.TemporaryDirectory(prefix="kit-bundle-image-") as scratch:
        context = Path(scratch) / "bundle"
        shutil.copytree(bundle_dir, context, symlinks=True)
        for path in [context, *context.rglob("*")]:
            if not path.is_symlink():  # readable by the runtime's user, never writable
                mode = path.stat().st_mode
                path.chmod((0o555 if path.is_dir() else 0o444) | (mode & 0o111))
        (Path(scratch) / "Dockerfile").write_text(dockerfile(runtime_tag, digest))
        _docker(
            docker,
            "build",
            "--quiet",
            "--network",
            "none",
            "--tag",
            tag,
            "--file",
            str(Path(scratch) / "Dockerfile"),
            str(context),
        )
    return tag
