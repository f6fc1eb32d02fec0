"""When a turn passes each hop between kit's processes, for ``bench/turn_latency.py --hops``.

Off unless ``KIT_HOP_TRACE`` names a folder: then each process that calls :func:`hop`
appends ``<CLOCK_MONOTONIC ns> <label>`` lines to ``<folder>/<pid>.log``. The monotonic
clock is one clock for every process on the machine, so the host's, the proxy's, the
runtime's and the offline model's lines sort into one timeline of a turn. The local sandbox
provider hands the variable to its sandboxes: an unconfined one writes there, a confined
one cannot see the folder and marks nothing (the bench runs with isolation off). A process
that cannot open its file marks nothing; a turn never fails for its trace.

A call costs two global looks while tracing is off: the hot path keeps its marks.
"""

from __future__ import annotations

import os
import time
from typing import TextIO

ENV = "KIT_HOP_TRACE"

_looked = False
_out: TextIO | None = None


def hop(label: str) -> None:
    """Mark that this process's side of a turn reached ``label`` now (when tracing)."""
    global _out
    if _looked and _out is None:
        return  # the common case: tracing is off
    out = _open()
    if out is not None:
        try:
            out.write(f"{time.monotonic_ns()} {label}\n")
        except OSError:  # the disk filled up, say: the trace stops here
            _out = None


def _open() -> TextIO | None:
    """This process's trace file, or None when tracing is off."""
    global _looked, _out
    if not _looked:
        _looked = True
        folder = os.environ.get(ENV)
        if folder:
            try:  # never through a link another user put in the (shared) folder
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(os.path.join(folder, f"{os.getpid()}.log"), flags, 0o600)
                _out = open(fd, "a", buffering=1)  # noqa: SIM115
            except OSError:  # e.g. a confined sandbox, which cannot see the folder: no marks
                _out = None
    return _out


def _forked() -> None:
    """A forked runtime looks again: its own environment, its own file."""
    global _looked, _out
    _looked, _out = False, None


os.register_at_fork(after_in_child=_forked)


def read(folder: str) -> list[tuple[int, str]]:
    """Every mark written under ``folder``, in the order they happened."""
    marks: list[tuple[int, str]] = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".log"):
            with open(os.path.join(folder, name)) as f:
                for line in f:
                    ns, _, label = line.rstrip("\n").partition(" ")
                    marks.append((int(ns), label))
    marks.sort()
    return marks
