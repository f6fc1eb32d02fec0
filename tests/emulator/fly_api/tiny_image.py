"""A tiny image for the Docker runner's tests, made here without any registry: this host's
dash and a few coreutils with the libraries they load, ``docker import``ed."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

from tests.dockerhost import need_docker

TOOLS = ("sh", "sleep", "tail", "cat", "ls", "touch", "head")
"""Programs the image holds (``sh`` is the host's, dash on Debian)."""


def _libraries(binary: str) -> set[str]:
    done = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    return set(re.findall(r"(/\S+\.so[.\d]*)", done.stdout))


@functools.cache
def tiny_image() -> str:
    """The image's tag, imported the first time (a few MB); skips the test without Docker."""
    need_docker()
    binaries = {f"/bin/{tool}": os.path.realpath(f"/bin/{tool}") for tool in TOOLS}
    libraries = sorted({lib for real in binaries.values() for lib in _libraries(real)})
    digest = hashlib.sha256()
    for path in sorted(binaries.values()) + libraries:
        digest.update(path.encode() + Path(path).read_bytes())
    tag = f"kit-fly-tiny:{digest.hexdigest()[:12]}"
    found = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    if found.returncode == 0:
        return tag
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for folder, mode in (
            ("tmp", 0o1777),
            ("proc", 0o755),
            ("sys", 0o755),
            ("dev", 0o755),
            ("etc", 0o755),
            ("root", 0o700),
        ):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for inside, real in binaries.items():
            tar.add(real, arcname=inside.lstrip("/"))
        for lib in libraries:
            tar.add(os.path.realpath(lib), arcname=lib.lstrip("/"))
    subprocess.run(
        ["docker", "import", "--change", 'CMD ["/bin/sleep", "100000"]', "-", tag],
        input=archive.getvalue(),
        capture_output=True,
        check=True,
        timeout=120,
    )
    return tag
