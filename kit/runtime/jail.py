"""Confining one local sandbox: its own namespaces, a filesystem of a few binds, no network.

The host describes what a sandbox may see as a :class:`Jail`: folders and files bound
read-only (the system's ``/usr`` and a few ``/etc`` files, the interpreter, kit's own code,
the bundle, the model proxy's socket) or read-write (the workspace, home, temp folder, the
runtime's socket folder, a local transcript store), each at its own path. Nothing else of
the host exists inside: not the project, not the state folder, not other sessions, not the
host's processes. The network namespace holds only a loopback interface; the unix sockets
bound in (the model proxy, the egress proxy) are the only ways out.

Two ways to enforce the same view:

* :func:`confine`, in the fork server's child when kit runs as root: unshare the mount,
  network, pid, ipc and uts namespaces; fork the sandbox's pid 1 (:func:`_init`), which
  builds the new root (a tmpfs of mount points, the binds, a fresh ``/proc``, a minimal
  ``/dev``, a tmpfs ``/tmp``), pivots into it, brings loopback up, drops to the sandbox
  user with ``no_new_privs`` and forks the runtime. A fork and a few dozen mounts: the fork
  server keeps its speed.
* :meth:`Jail.bwrap_args`: bubblewrap with the same view, for a freshly started interpreter
  (no fork server, or kit not run as root: bwrap then uses an unprivileged user namespace).

The process tree on the fork server path::

    fork server (root) ── C: relays the exit status; the sandbox's process group (pgid = C)
                     └── G: pid 1 of the sandbox's pid namespace; reaps orphans
                         └── R: the runtime (pid 2) ── the CLI ── its tools

C, G and R share one process group. When G ends, the kernel kills everything left in the
namespace, so nothing of a sandbox outlives it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from kit.runtime.errors import AgentRuntimeError

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
_OCTAL = re.compile(r"\\([0-7]{3})")
"""mountinfo's escapes (``\\040`` for a space)."""
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_ST_TO_MS = {MS_NOEXEC: os.ST_NOEXEC, 1024: os.ST_NOATIME, 2048: os.ST_NODIRATIME}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
HOSTNAME = "sandbox"

Kind = Literal["ro", "rw", "symlink"]


class JailError(AgentRuntimeError):
    """The sandbox could not be confined (a namespace or mount the machine refused)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(f"[Errno {err}] {message}")
        self.errno = err
        """The ``errno`` of the refused call."""


@dataclass(frozen=True)
class Bind:
    """One entry of the sandbox's filesystem: ``path`` inside, ``source`` on the host.

    ``ro`` and ``rw`` bind ``source`` (a folder, a file or a socket) at ``path``;
    ``symlink`` makes ``path`` a symlink to ``source`` (as ``/bin`` → ``usr/bin``)."""

    kind: Kind
    source: str
    path: str


@dataclass(frozen=True)
class Jail:
    """What one sandbox may see, and whom it runs as (``uid``/``gid``; None: as is)."""

    binds: tuple[Bind, ...]
    uid: int | None = None
    gid: int | None = None
    tmp_bytes: int = 64 * 2**20
    """The size of the sandbox's own ``/tmp`` (its memory counts against the tier)."""
    hostname: str = field(default=HOSTNAME)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (the fork server's spawn request carries it)."""
        return {
            "binds": [[b.kind, b.source, b.path] for b in self.binds],
            "uid": self.uid,
            "gid": self.gid,
            "tmp_bytes": self.tmp_bytes,
            "hostname": self.hostname,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Jail:
        """The inverse of :meth:`to_json`."""
        return cls(
            binds=tuple(Bind(kind, source, path) for kind, source, path in obj["binds"]),
            uid=obj["uid"],
            gid=obj["gid"],
            tmp_bytes=obj["tmp_bytes"],
            hostname=obj["hostname"],
        )

    def bwrap_args(self, bwrap: str, cwd: str) -> list[str]:
        """The same view as a bubblewrap command line working in ``cwd`` (ends with ``--``)."""
        args = [bwrap, "--unshare-all", "--die-with-parent", "--hostname", self.hostname]
        args += ["--dev", "/dev", "--size", str(16 * 2**20), "--perms", "1777"]
        args += ["--tmpfs", "/dev/shm", "--proc", "/proc", "--size", str(self.tmp_bytes)]
        args += ["--perms", "1777", "--tmpfs", "/tmp", "--chdir", cwd]
        for bind in _ordered(self.binds):
            if bind.kind == "symlink":
                args += ["--symlink", bind.source, bind.path]
            else:
                args += ["--ro-bind" if bind.kind == "ro" else "--bind", bind.source, bind.path]
        return [*args, "--remount-ro", "/dev", "--remount-ro", "/", "--"]


def _ordered(binds: Sequence[Bind]) -> list[Bind]:
    """Parents before children, so a bind never hides one made inside it."""
    return sorted(binds, key=lambda b: (b.path.rstrip("/").count("/"), b.path))


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]

    def check(self, result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise JailError(err, f"{what}: {os.strerror(err)}")

    def unshare(self, flags: int) -> None:
        self.check(self.lib.unshare(flags), "unshare")

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str = ""
    ) -> None:
        encoded = [s.encode() if s is not None else None for s in (source, target, fstype)]
        result = self.lib.mount(*encoded, flags, data.encode() if data else None)
        self.check(result, f"mount {source or fstype} on {target}")

    def umount(self, target: str, flags: int) -> None:
        self.check(self.lib.umount2(target.encode(), flags), f"umount {target}")

    def pivot_root(self, new: str, old: str) -> None:
        number = _PIVOT_ROOT.get(platform.machine())
        if number is None:
            raise JailError(errno.ENOSYS, f"pivot_root: unknown machine {platform.machine()}")
        self.check(self.lib.syscall(number, new.encode(), old.encode()), "pivot_root")

    def prctl(self, option: int, value: int) -> None:
        self.check(self.lib.prctl(option, value, 0, 0, 0), f"prctl {option}")

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        self.check(self.lib.sethostname(raw, len(raw)), "sethostname")


NAMESPACES = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS


def probe() -> str:
    """Empty when this process may confine sandboxes natively; otherwise why not."""
    if os.geteuid() != 0:
        return "kit is not running as root"
    if platform.machine() not in _PIVOT_ROOT:
        return f"pivot_root is not known on {platform.machine()}"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "util-linux's unshare is not installed to check for namespaces"
    # A throwaway process: forking this one (threads, locks) to try would be unsafe.
    trial = [unshare, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "true"]
    try:
        done = subprocess.run(trial, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"namespaces could not be tried: {exc}"
    if done.returncode != 0:
        return (
            "this machine refuses new namespaces: " + done.stderr.decode(errors="replace").strip()
        )
    return ""


def confine(jail: Jail, run: Callable[[], int], die_with: int | None = None) -> int:
    """Run ``run`` as the runtime of a confined sandbox; return its exit as a wait status.

    Called in the fork server's child (C), as root, after the host has put C into the
    sandbox's cgroups. C stays outside the new namespaces, drops to the sandbox user and
    waits; ``die_with``: a pid (the fork server) whose death takes the sandbox down.
    """
    libc = _Libc()
    status_r, status_w = os.pipe()
    libc.unshare(NAMESPACES)
    init = os.fork()
    if init == 0:  # pragma: no cover - G, pid 1 of the sandbox; measured by the sandbox tests
        os.close(status_r)
        code = 1
        try:
            code = _init(libc, jail, run, status_w)
        except BaseException as exc:  # never return into the fork server's code
            os.write(2, f"kit sandbox: could not confine the sandbox: {exc}\n".encode())
        os._exit(code)
    os.close(status_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the runtime decides how SIGTERM ends
    _drop(jail)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
    if die_with is not None:
        die_with_parent(die_with)
    while True:
        try:
            _, init_status = os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
    reported = os.read(status_r, 64)
    os.close(status_r)
    return int(reported) if reported else init_status


def exit_like(status: int) -> NoReturn:
    """End this process as the wait status ``status`` ended its own: the same exit code, or
    killed by the same signal (with no core dump)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be caught or reset
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if status >= 0 else 1)


def _init(libc: _Libc, jail: Jail, run: Callable[[], int], status_w: int) -> int:
    """G: build the root, drop privileges, fork the runtime, reap until it ends."""
    _build_root(libc, jail)
    _loopback_up()
    libc.sethostname(jail.hostname)
    _drop_bounding_set(libc)
    _drop(jail)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # C gone (killed): the namespace goes
    runtime = os.fork()
    if runtime == 0:
        os.close(status_w)
        os._exit(run())
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 1
        if pid == runtime:
            os.write(status_w, str(status).encode())
            return 0


def _build_root(libc: _Libc, jail: Jail) -> None:
    """Mount the sandbox's filesystem and pivot into it (bubblewrap's two-step recipe)."""
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    libc.mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for name in ("newroot", "oldroot"):
        os.mkdir(f"/tmp/{name}", 0o755)
    libc.pivot_root("/tmp", "/tmp/oldroot")
    os.chdir("/")
    libc.mount("tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    # /tmp first: binds below it (the runtime's socket folder often is) go on top of it.
    _mount_point("/newroot/tmp", is_dir=True)
    libc.mount(
        "tmpfs", "/newroot/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={jail.tmp_bytes}"
    )
    for bind in _ordered(jail.binds):
        target = "/newroot" + bind.path
        if bind.kind == "symlink":
            _folders(os.path.dirname(target))
            os.symlink(bind.source, target)
            continue
        source = "/oldroot" + bind.source
        _mount_point(target, is_dir=os.path.isdir(source))
        libc.mount(source, target, None, MS_BIND | MS_REC)
        # Every mount the recursive bind brought along, not only its top: a tmpfs mounted
        # somewhere under /usr must be read-only in here too.
        for point in _mounts_at_or_under(target):
            flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | _kept_flags(point)
            libc.mount(None, point, None, flags | (MS_RDONLY if bind.kind == "ro" else 0))
    _dev(libc)
    os.mkdir("/newroot/proc", 0o555)
    libc.mount("proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir("/newroot")
    libc.pivot_root(".", ".")
    libc.umount(".", MNT_DETACH)  # the old root, stacked under the new one
    os.chdir("/")
    libc.mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _mounts_at_or_under(target: str) -> list[str]:
    """Mount points at ``target`` or below it, from this process's mountinfo."""
    points = []
    # Between the two pivots the host's /proc is under /oldroot.
    with open("/oldroot/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), line.split(" ")[4])
            if point == target or point.startswith(target.rstrip("/") + "/"):
                points.append(point)
    return points


def _dev(libc: _Libc) -> None:
    os.mkdir("/newroot/dev", 0o755)
    libc.mount("tmpfs", "/newroot/dev", "tmpfs", MS_NOSUID, "mode=0755,size=64k")
    for name in DEVICES:
        target = f"/newroot/dev/{name}"
        _mount_point(target, is_dir=False)
        libc.mount(f"/oldroot/dev/{name}", target, None, MS_BIND)
    for name, link in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(link, f"/newroot/dev/{name}")
    os.mkdir("/newroot/dev/shm", 0o1777)
    libc.mount("tmpfs", "/newroot/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=16m")
    libc.mount(None, "/newroot/dev", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID)


def _mount_point(target: str, *, is_dir: bool) -> None:
    if is_dir:
        _folders(target)
        return
    _folders(os.path.dirname(target))
    if not os.path.lexists(target):
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o444))


def _folders(path: str) -> None:
    """``os.makedirs(path)``, each folder made 0755 whatever the umask: under umask 077 they
    would be root's alone, and the sandbox user could not reach what is mounted below."""
    parent = os.path.dirname(path)
    if parent != path and not os.path.lexists(parent):
        _folders(parent)
    if not os.path.lexists(path):
        os.mkdir(path)
        os.chmod(path, 0o755)


def _kept_flags(target: str) -> int:
    """Flags of the mount under ``target`` that a bind remount must keep (noexec, atime)."""
    have = os.statvfs(target).f_flag
    return sum(ms for ms, st in _ST_TO_MS.items() if have & st)


def _drop_bounding_set(libc: _Libc) -> None:
    """Empty the capability bounding set: nothing run in the sandbox can ever gain one."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            last = int(f.read())
    except OSError:
        last = 40
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING)
        fcntl.ioctl(sock, SIOCSIFFLAGS, request)


def _drop(jail: Jail) -> None:
    if jail.uid is None or jail.gid is None or os.geteuid() != 0:
        return
    os.setgroups([])
    os.setresgid(jail.gid, jail.gid, jail.gid)
    os.setresuid(jail.uid, jail.uid, jail.uid)


def die_with_parent(parent_pid: int) -> None:
    """Take the whole sandbox down (this process group) if ``parent_pid`` dies.

    For local sandboxes only: a host killed with SIGKILL must not leave its sandboxes running,
    or a restarted host would run a second sandbox beside the orphan. The kernel clears the
    parent-death signal when credentials change, so call this after the drop to the sandbox
    user; the parent is checked once more in case it died in between.
    """
    signal.signal(signal.SIGUSR1, lambda *_: os.killpg(0, signal.SIGKILL))
    try:
        _Libc().prctl(PR_SET_PDEATHSIG, signal.SIGUSR1)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os.killpg(0, signal.SIGKILL)


def make_undumpable() -> None:
    """Keep this process's memory from its own user: ``prctl(PR_SET_DUMPABLE, 0)``.

    The runtime holds the sandbox's tokens (its runtime token, the store's, the model
    proxy's), and the agent's tools run as the same user. A dumpable process's
    ``/proc/<pid>/mem``, ``environ``, ``fd`` and the like are open to every process of its
    user; a non-dumpable one's belong to root, and it leaves no core dump. For every kind of
    sandbox, not only the local ones: call it first thing, before the config is read. (A
    runtime :func:`confine` forks after dropping from root is non-dumpable already, as the
    kernel makes a process whose credentials change; one started by ``exec``, under
    bubblewrap, in a container or unconfined, is not.)

    It holds for this process and the children it forks until they ``exec``: the CLI and
    its tools are dumpable again (docs/security.md §9 says what they hold). Nothing needs
    this process's own ``/proc`` files to be its user's afterwards: a sandbox's namespaces,
    mounts and ``uid_map`` are all made before the runtime starts (by :func:`confine`,
    bubblewrap or the container runtime), and a process may always read its own ``/proc``.
    Only root can now write its ``oom_score_adj`` (see ``OOM_PROGRAM`` in
    :mod:`kit.host.fly_sandbox`).
    """
    if sys.platform != "linux":
        return  # no /proc to read another process through
    _Libc().prctl(PR_SET_DUMPABLE, 0)
