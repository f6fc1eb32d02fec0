"""Run inside a sandbox (by the "probe the sandbox" scenario rule): what can it see and reach?

Reads ``probe.json`` from its working directory (the workspace), prints one JSON report.
Plain stdlib: it runs under the system's python3, as the sandbox user.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

MAX_FILES = 50_000
MAX_FILE_BYTES = 4 * 2**20
MAX_SCAN_S = 60.0


def _err(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc))


def try_read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.read(1)
        return "read"
    except OSError as exc:
        return _err(exc)


def try_write(path: str) -> str:
    try:
        with open(path, "wb") as f:
            f.write(b"probe")
        return "wrote"
    except OSError as exc:
        return _err(exc)


def try_tcp(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=3):
            return "connected"
    except OSError as exc:
        return _err(exc) if exc.errno else type(exc).__name__


def try_unix(path: str) -> str:
    if path.startswith("$"):  # a variable of the tool's environment names it
        path = os.environ.get(path[1:], "")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect(path)
            return "connected"
        except OSError as exc:
            return _err(exc)


def try_http(url: str) -> str:
    """GET ``url`` the way tools do: through HTTP(S)_PROXY when the environment names one."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return f"{response.status} {response.read().decode(errors='replace')}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read().decode(errors='replace')}"
    except OSError as exc:
        return f"error {exc}"


def find_secret(secret: bytes, skip: list[str]) -> tuple[list[str], int]:
    """Every readable place holding ``secret``: files (but the read-only system image in
    ``skip``), every visible process's environment and command line, this environment."""
    hits = []
    if secret in "\0".join(f"{k}={v}" for k, v in os.environ.items()).encode():
        hits.append("env")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            for name in ("environ", "cmdline"):
                try:
                    if secret in (proc / name).read_bytes():
                        hits.append(str(proc / name))
                except OSError:
                    continue
    scanned = 0
    deadline = time.monotonic() + MAX_SCAN_S
    for top, dirs, files in os.walk("/"):
        if top in ("/proc", "/sys", "/dev") or any(
            top == s or top.startswith(s.rstrip("/") + "/") for s in skip
        ):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(top, name)
            scanned += 1
            if scanned > MAX_FILES or time.monotonic() > deadline:
                hits.append("(scan stopped: too many files)")
                return hits, scanned
            try:
                if os.path.isfile(path) and os.path.getsize(path) <= MAX_FILE_BYTES:
                    with open(path, "rb") as f:
                        if secret in f.read():
                            hits.append(path)
            except OSError:
                continue
    return hits, scanned


def main() -> None:
    spec = json.loads(Path("probe.json").read_text())
    # Given encoded, so that probe.json itself does not hold the secret.
    hits, scanned = find_secret(base64.b64decode(spec["secret_b64"]), spec["image"])
    processes = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                processes.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("CapEff", "CapPrm", "CapBnd"):
            status[name] = int(value.strip(), 16)
        elif name == "NoNewPrivs":
            status[name] = int(value.strip())
    report = {
        "uid": os.getuid(),
        "status": status,
        "read": {p: try_read(p) for p in spec["read"]},
        "write": {p: try_write(p) for p in spec["write"]},
        "tcp": {f"{h}:{p}": try_tcp(h, p) for h, p in spec["tcp"]},
        "unix": {p: try_unix(p) for p in spec["unix"]},
        "http": {u: try_http(u) for u in spec.get("http", [])},
        "secret_hits": hits,
        "files_scanned": scanned,
        "processes": processes,
    }
    print("PROBE " + json.dumps(report))


if __name__ == "__main__":
    main()
