"""A built bundle as one file, to ship it: ``kit deploy`` uploads it to the bucket by digest,
a gateway downloads and unpacks it into its own bundle store.

The archive is an uncompressed tar, the same bytes for the same bundle (entries sorted, no
owners, no times). Unpacking trusts nothing in it: only regular files and folders with
relative paths inside the bundle, within :data:`~kit.bundle.build.MAX_BUNDLE_BYTES`, and the
result must open as the bundle ``digest`` names (:func:`~kit.bundle.build.open_bundle`
checks every file against the manifest), or nothing is kept.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from kit.bundle.build import (
    DIR_MODE,
    EXEC_MODE,
    FILE_MODE,
    MAX_BUNDLE_BYTES,
    Bundle,
    open_bundle,
)
from kit.bundle.errors import BundleError

MAX_ENTRIES = 10_000


def pack(bundle: Bundle) -> bytes:
    """The bundle's folder as a reproducible tar."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(bundle.path.rglob("*")):
            if not path.is_file():
                continue
            info = tarfile.TarInfo(path.relative_to(bundle.path).as_posix())
            data = path.read_bytes()
            info.size = len(data)
            info.mode = EXEC_MODE if os.access(path, os.X_OK) else FILE_MODE
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def unpack(data: bytes, root: Path, digest: str) -> Bundle:
    """Unpack an archive of bundle ``digest`` into ``root/<digest[:32]>`` (kept when it is
    already there, intact); BundleError, and nothing kept, for anything else."""
    final = root / digest[:32]
    try:
        found = open_bundle(final)
        if found.digest == digest:
            return found
    except BundleError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root)) / digest[:32]
    try:
        tmp.mkdir()
        _extract(data, tmp)
        bundle = open_bundle(tmp)
        if bundle.digest != digest:
            raise BundleError(
                f"the archive holds bundle {bundle.digest[:12]}…, not {digest[:12]}…; deploy again."
            )
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return open_bundle(final)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _extract(data: bytes, dest: Path) -> None:
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_ENTRIES:
                raise BundleError(f"the bundle archive has over {MAX_ENTRIES} entries.")
            for member in members:
                rel = PurePosixPath(member.name)
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise BundleError(f"the bundle archive names {member.name!r}, outside it.")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BundleError(f"the bundle archive holds {member.name!r}, not a file.")
                total += member.size
                if total > MAX_BUNDLE_BYTES:
                    raise BundleError("the bundle archive is over the bundle size limit.")
                source = tar.extractfile(member)
                assert source is not None
                target = dest.joinpath(*rel.parts)
                for folder in reversed([p for p in target.parents if not p.exists()]):
                    folder.mkdir()
                    os.chmod(folder, DIR_MODE)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(source, f)
                    os.fchmod(fd, EXEC_MODE if member.mode & 0o111 else FILE_MODE)
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"the bundle archive cannot be read ({exc}); deploy again.") from None
    os.chmod(dest, DIR_MODE)
