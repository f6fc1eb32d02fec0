"""A fork server for local sandboxes: imports the runtime once, forks one per sandbox.

``python -m kit.runtime.forkserver`` (started by the local provider, as the sandbox user or, when
it confines sandboxes (:mod:`kit.runtime.jail`), as root, with a
``SOCK_SEQPACKET`` control socket on the fd named by ``KIT_ZYGOTE_FD``) pays the runtime's
imports (~0.6 s of CPU, mostly the Agent SDK) once. Each request is one message: JSON
``{"spawn": ID, "cwd": DIR, "env": {...}, "jail": {...} | null}`` carrying three file descriptors (the child's
stdin, stdout and stderr; stdin only ever carries the host's go, ``KIT_RUNTIME_GATE``). the fork server forks a child that, in its own session (process group),
becomes a runtime exactly like ``python -m kit.runtime``. the fork server answers
``{"spawned": ID, "pid": PID}`` and, when a child ends, ``{"exited": PID, "code": RC}``
(negative: killed by that signal). A fork costs milliseconds, and every sandbox shares the
imported modules' memory.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import kit.storage.memory
import kit.storage.remote
import kit.storage.sqlite
from kit.runtime import config, jail, server  # the heavy imports, paid once here

PRELOADED = (kit.storage.memory, kit.storage.remote, kit.storage.sqlite)
"""The transcript stores a sandbox opens (kit.storage imports them lazily): loaded once here,
before the fork, so no sandbox pays for them."""


def _child(request: dict[str, Any], fds: list[int], ctl: socket.socket) -> None:
    """In the forked child: become a sandbox runtime (confined, when the request carries a
    jail), then exit with its status."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        ctl.close()
        os.setsid()
        for fd, target in zip(fds, (0, 1, 2), strict=True):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - process-lifetime streams
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("jail"):
            code = _run(lambda: _confined(jail.Jail.from_json(request["jail"])))
        else:
            code = _run(server.main)
    finally:
        with _quiet():
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _confined(spec: jail.Jail) -> NoReturn:
    """Run the runtime in its own namespaces; end this process as the runtime ended."""
    # The host puts this process into the sandbox's cgroups before it says go: wait for
    # it, so everything forked from here on starts inside the tier's limits.
    config.wait_for_gate(os.environ)
    parent = os.environ.pop("KIT_DIE_WITH_PARENT", "")
    status = jail.confine(spec, lambda: _run(server.main), int(parent) if parent else None)
    with _quiet():
        sys.stdout.flush()
        sys.stderr.flush()
    jail.exit_like(status)


def _run(main: Callable[[], None]) -> int:
    """``main``'s exit code (it must never return into the fork server's loop)."""
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    return 0


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def main() -> None:
    """The fork server's loop: spawn requests in, spawn and exit reports out."""
    parent = os.environ.get("KIT_DIE_WITH_PARENT")
    if parent:
        jail.die_with_parent(int(parent))
    ctl = socket.socket(fileno=int(os.environ["KIT_ZYGOTE_FD"]))
    reap_r, reap_w = os.pipe()
    os.set_blocking(reap_w, False)
    signal.set_wakeup_fd(reap_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "request")
    sel.register(reap_r, selectors.EVENT_READ, "reap")
    ctl.sendall(b'{"imported": true}')
    while True:
        for key, _ in sel.select():
            if key.data == "reap":
                os.read(reap_r, 4096)
            else:
                message, fds, _, _ = socket.recv_fds(ctl, 65536, 3)
                if not message:
                    return  # the host is gone; children follow through their death signal
                request = json.loads(message)
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    os.close(reap_r)
                    os.close(reap_w)
                    _child(request, fds, ctl)
                for fd in fds:
                    os.close(fd)
                ctl.sendall(json.dumps({"spawned": request["spawn"], "pid": pid}).encode())
        _reap(ctl)


def _reap(ctl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        ctl.sendall(json.dumps({"exited": pid, "code": code}).encode())


if __name__ == "__main__":
    main()
