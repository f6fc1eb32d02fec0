"""What a local sandbox sees of this machine, and how it is confined to that.

:func:`sandbox_view` lists the binds of one sandbox (:class:`kit.runtime.jail.Jail`):

=============================  ==========  ===============================================
what                           mode        why
=============================  ==========  ===============================================
``/usr`` (and ``/bin``,        read-only   the sandbox image: shells, coreutils, python3
``/lib``… as symlinks or
binds, as on the host)
a few ``/etc`` files           read-only   users, name service, CA certificates, ld.so
the interpreter's prefixes     read-only   the runtime's Python and its packages (the SDK,
                                           its bundled CLI)
kit's own package              read-only   the runtime's code, where it is installed
the bundle                     read-only   the agent: prompt, skills, manifest
the model / egress sockets     read-only   the only ways out (connecting needs no write)
workspace, home, temp          read-write  the session's own folders
the runtime's socket folder    read-write  the host talks to the runtime there
a local transcript store       read-write  that session's own SQLite folder
=============================  ==========  ===============================================

plus a fresh ``/proc`` (the sandbox's processes only), a minimal ``/dev``, a tmpfs ``/tmp``
and a network namespace with only loopback. :func:`choose` picks how it is enforced on this
machine: ``native`` (the fork server's children, as root), ``bwrap`` (bubblewrap around a
fresh interpreter, root or not) or nothing, said once.

Bubblewrap runs as the sandbox user, so it can bind only what that user can reach. A
project, state folder or virtualenv behind a folder only root may enter (``/root`` is 0700)
is first bound by root into a staging folder the sandbox user can reach, in a mount
namespace of the sandbox's own (:func:`staged`, :func:`stage_command`): the sandbox sees
the same view at the same paths, the host's mount table does not change, and no process of
the sandbox runs as root.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import kit
from kit.runtime.jail import Bind, Jail, probe

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "group",
    "host.conf",
    "hosts",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "protocols",
    "services",
    "ssl",
    "timezone",
)
PROBE_TIMEOUT_S = 10.0
STAGE_TMPFS = "mode=0755,size=64k"
"""The staging folder's own tmpfs: mount points only, no data."""


def sandbox_view(
    *,
    python: str,
    readable: Iterable[Path | str],
    writable: Iterable[Path],
    uid: int | None,
    gid: int | None,
) -> Jail:
    """One sandbox's view: the system, the runtime, ``readable`` read-only (the bundle, the
    sockets it may connect to), ``writable`` read-write (its own folders)."""
    binds: dict[str, Bind] = {}
    for path in [*SYSTEM_DIRS, *(f"/etc/{name}" for name in ETC_FILES)]:
        if os.path.islink(path):  # kept a link: it resolves inside the sandbox, as here
            binds[path] = Bind("symlink", os.readlink(path), path)
        elif os.path.exists(path):
            binds[path] = Bind("ro", path, path)
    for path in _runtime_paths(python):
        binds.setdefault(path, Bind("ro", path, path))
    for item in readable:
        path = str(Path(item).resolve())
        binds[path] = Bind("ro", path, path)
    for folder in writable:
        path = str(folder.resolve())
        binds[path] = Bind("rw", path, path)
    return Jail(binds=_outermost(binds.values()), uid=uid, gid=gid)


def _runtime_paths(python: str) -> list[str]:
    """Folders the runtime's interpreter and kit's code live in (outside ``/usr``)."""
    exe = Path(python)
    found = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    if exe.is_file():
        if (exe.parent.parent / "pyvenv.cfg").is_file():
            found.add(exe.parent.parent)
        found.add(exe.resolve().parent.parent)
    found.add(Path(kit.__file__).resolve().parent)
    return sorted(str(p.resolve()) for p in found if p.is_dir() and p.resolve() != Path("/"))


def _outermost(binds: Iterable[Bind]) -> tuple[Bind, ...]:
    """Drop read-only binds already inside another read-only bind (``/usr/lib/python3``
    under ``/usr``); read-write binds are kept wherever they are."""
    kept: list[Bind] = []
    ro = sorted({b.path for b in binds if b.kind == "ro"})
    for bind in binds:
        inside = bind.kind == "ro" and any(
            bind.path != other and bind.path.startswith(other.rstrip("/") + "/") for other in ro
        )
        if not inside:
            kept.append(bind)
    return tuple(kept)


def staged(jail: Jail, hidden: Callable[[str], bool], stage: Path) -> tuple[Jail, list[str]]:
    """``jail`` with every bind whose source is ``hidden`` from the sandbox user taken from
    ``stage/0``, ``stage/1``… instead (at the same path inside), and those sources in that
    order, for :func:`stage_command` to bind there."""
    binds: list[Bind] = []
    sources: list[str] = []
    for bind in jail.binds:
        if bind.kind != "symlink" and hidden(bind.source):
            binds.append(Bind(bind.kind, str(stage / str(len(sources))), bind.path))
            sources.append(bind.source)
        else:
            binds.append(bind)
    return dataclasses.replace(jail, binds=tuple(binds)), sources


def stage_command(unshare: str, mount: str, stage: Path, sources: Sequence[str]) -> list[str]:
    """The command prefix (run as root) that binds each of ``sources`` at ``stage/<n>`` in a
    private mount namespace, then runs the rest of the command line in it."""
    private = [unshare, "--mount", "--propagation", "private"]
    return [*private, "/bin/sh", "-c", _STAGE, "sh", mount, str(stage), *sources, "--"]


_STAGE = (
    'set -e; mount=$1; stage=$2; shift 2; "$mount" -t tmpfs -o '
    + STAGE_TMPFS
    + ' kit-stage "$stage"; n=0; while [ "$1" != -- ]; do '
    'if [ -d "$1" ]; then mkdir "$stage/$n"; else : > "$stage/$n"; fi; '
    '"$mount" --rbind "$1" "$stage/$n"; n=$((n + 1)); shift; done; shift; exec "$@"'
)
"""``sh -c`` script for :func:`stage_command`: a tmpfs on the staging folder, then each
source (folder, file or socket) bound recursively (its submounts too) at the next number."""


def choose(*, fork_server: bool, drop: Sequence[str]) -> tuple[str, str]:
    """How sandboxes are confined here: ``("native" | "bwrap" | "", why_not)``.

    ``native`` needs root and the fork server; ``bwrap`` works for fresh interpreters,
    run as the sandbox user (``drop``: the command prefix that becomes that user)."""
    why = probe() if fork_server else "the fork server is off"
    if not why:
        return "native", ""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "", cannot_confine(f"{why}, and bubblewrap (bwrap) is not installed")
    trial = [*drop, bwrap, "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "true"]
    try:
        done = subprocess.run(trial, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", cannot_confine(f"{why}, and bubblewrap did not run: {exc}")
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        return "", cannot_confine(
            f"{why}, and bubblewrap cannot make namespaces here ({said[-1] if said else done.returncode})"
        )
    return "bwrap", ""


def cannot_confine(reason: str) -> str:
    """The one-line warning when sandboxes run without isolation."""
    return (
        "Sandbox filesystem and network isolation is NOT enforced on this machine: "
        f"{reason}. Sandboxes can read what their user can read and connect anywhere "
        "(run kit dev as root, or install bubblewrap: apt-get install bubblewrap)."
    )
