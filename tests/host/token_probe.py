"""Run inside a sandbox (by the "steal the tokens" scenario rule): what tokens can a tool take?

It does what a hostile tool would: for every process it can see, it reads the environment,
the open descriptors and the memory (``/proc/<pid>/mem``: every resident page but those of
code and read-only files), and it reads the runtime's config files (the path a process was started
with, ``/tmp/kit-config-*``, a container's ``/run/kit``). From all of it, it keeps whatever
looks like a credential (``Bearer …``, ``…_token": "…"``, ``kit-model-…``, ``…TOKEN=…``)
and prints one JSON report. It is given no token: the test looks for the sandbox's tokens
in what this prints, as a user would read it.

Plain stdlib: it runs under the system's python3, as the sandbox user.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import struct
import time

ANCHOR = re.compile(rb"Bearer |_token|kit-(?:model|egress|store)-|(?:API_KEY|TOKEN|CONFIG)=")
"""Where a credential may start (a plain search: the memory scanned is large)."""
CREDENTIAL = re.compile(
    rb"(?:Bearer |_token\W{1,4}|kit-(?:model|egress|store)-|(?:API_KEY|TOKEN|CONFIG)=)"
    rb"[A-Za-z0-9._~+/=-]{8,400}"
)
CHUNK = 16 * 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")
OVERLAP = 512
MAX_S_PER_PROCESS = 60.0


def _err(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc))


def found(data: bytes) -> set[str]:
    """The credential-like strings in ``data``."""
    hits = set()
    for anchor in ANCHOR.finditer(data):
        match = CREDENTIAL.match(data, anchor.start())
        if match:
            hits.add(match.group().decode(errors="replace"))
    return hits


def read_file(path: str) -> list[str] | str:
    try:
        with open(path, "rb") as f:
            return sorted(found(f.read()))
    except OSError as exc:
        return _err(exc)


def regions(pid: str) -> list[tuple[int, int]]:
    """The process's mappings that are readable, resident and either writable or anonymous
    (``/proc/<pid>/smaps``: the CLI's JavaScript engine reserves far more than it touches)."""
    kept: list[tuple[int, int]] = []
    region: list[str] = []
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's first line
                region = fields
            elif fields[0] == "Rss:" and int(fields[1]) > 0 and "r" in region[1]:
                name = region[5] if len(region) > 5 else ""
                if "w" in region[1] or name in ("", "[heap]", "[stack]"):  # not code or files
                    start, end = (int(x, 16) for x in region[0].split("-"))
                    kept.append((start, end))
    return kept


def resident(pagemap: int, start: int, end: int) -> list[tuple[int, int]]:
    """The runs of pages in ``start``-``end`` that are in memory (``/proc/<pid>/pagemap``)."""
    raw = os.pread(pagemap, (end - start) // PAGE * 8, start // PAGE * 8)
    runs: list[tuple[int, int]] = []
    for n, (entry,) in enumerate(struct.iter_unpack("<Q", raw)):
        if entry >> 63:  # present
            at = start + n * PAGE
            if runs and runs[-1][1] == at:
                runs[-1] = (runs[-1][0], at + PAGE)
            else:
                runs.append((at, at + PAGE))
    return runs


def read_memory(pid: str) -> tuple[list[str] | str, int]:
    """The credentials in the process's memory and the number of bytes read; or why its
    memory could not be opened."""
    try:
        mapped = regions(pid)
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    except OSError as exc:
        return _err(exc), 0
    hits: set[str] = set()
    deadline = time.monotonic() + MAX_S_PER_PROCESS
    scanned = 0
    try:
        for start, end in (run for region in mapped for run in resident(pagemap, *region)):
            at, tail = start, b""
            while at < end and time.monotonic() < deadline:
                try:
                    data = os.pread(mem, min(CHUNK, end - at), at)
                except OSError:
                    break
                if not data:
                    break
                scanned += len(data)
                hits.update(found(tail + data))
                tail, at = data[-OVERLAP:], at + len(data)
    finally:
        os.close(mem)
        os.close(pagemap)
    return sorted(hits), scanned


def process(pid: str) -> dict[str, object] | None:
    """What a tool can take from process ``pid`` (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    seen: dict[str, object] = {
        "cmdline": cmdline[:160],
        "ppid": int(stat[stat.rfind(b")") + 2 :].split()[1]),
        "environ": read_file(f"/proc/{pid}/environ"),
    }
    try:
        seen["fd"] = [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
    except OSError as exc:
        seen["fd"] = _err(exc)
    seen["mem"], seen["mem_bytes"] = read_memory(pid)
    if isinstance(seen["mem"], str) and seen["environ"] == seen["fd"] == seen["mem"]:
        return {"cmdline": seen["cmdline"], "ppid": seen["ppid"], "refused": seen["mem"]}
    return seen


def main() -> None:
    processes = {}
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        if pid != str(os.getpid()) and (seen := process(pid)) is not None:
            processes[pid] = seen
    paths = set(glob.glob("/tmp/kit-config-*/*")) | set(glob.glob("/run/kit/*"))
    for seen in processes.values():
        environ = seen.get("environ")
        for entry in environ if isinstance(environ, list) else []:
            if entry.startswith("CONFIG="):  # KIT_RUNTIME_CONFIG: the config file's path
                paths.add(entry.removeprefix("CONFIG="))
    report = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "env": sorted(found("\0".join(f"{k}={v}" for k, v in os.environ.items()).encode())),
        "files": {path: read_file(path) for path in sorted(paths)},
        "processes": processes,
    }
    print("TOKENS " + json.dumps(report))


if __name__ == "__main__":
    main()
