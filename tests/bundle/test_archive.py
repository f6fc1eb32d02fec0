"""A bundle as one file: the same bytes every time, and unpacked only when it is exactly
the bundle its digest names."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from kit.bundle import build_bundle, load_project
from kit.bundle.archive import pack, unpack
from kit.bundle.build import Bundle
from kit.bundle.errors import BundleError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return build_bundle(load_project(REPO / "skills" / "support-bot"), tmp_path / "built")


def test_a_bundle_round_trips_with_the_same_bytes(bundle: Bundle, tmp_path: Path) -> None:
    """Packing twice gives the same bytes; unpacked elsewhere it is the same bundle, modes
    (executable scripts) included."""
    data = pack(bundle)
    assert pack(bundle) == data
    copy = unpack(data, tmp_path / "store", bundle.digest)
    assert copy.digest == bundle.digest
    assert copy.path == tmp_path / "store" / bundle.digest[:32]
    for path in bundle.path.rglob("*"):
        twin = copy.path / path.relative_to(bundle.path)
        assert twin.stat().st_mode == path.stat().st_mode
    assert unpack(data, tmp_path / "store", bundle.digest) == copy  # already there: kept


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in entries:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_anything_but_the_named_bundle_is_refused_and_nothing_kept(
    bundle: Bundle, tmp_path: Path
) -> None:
    """A changed file, another bundle's digest, a path out of the folder or a link: each is
    a BundleError and the store holds nothing. (Broken on purpose once: without the
    ``..`` check the entry was written beside the store.)"""
    store = tmp_path / "store"
    data = pack(bundle)
    with pytest.raises(BundleError, match="not"):
        unpack(data, store, "f" * 64)
    tampered = data.replace(b"Acme Outfitters", b"Evil Outfitters", 1)
    assert tampered != data
    with pytest.raises(BundleError):
        unpack(tampered, store, bundle.digest)
    link = tarfile.TarInfo("skills/x")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    for evil in (_tar([(tarfile.TarInfo("../../../escaped"), b"x")]), _tar([(link, b"")])):
        with pytest.raises(BundleError):
            unpack(evil, store, bundle.digest)
    assert not (tmp_path / "escaped").exists()
    assert [p.name for p in store.iterdir()] == []
