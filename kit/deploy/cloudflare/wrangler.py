"""wrangler, the one way kit talks to Cloudflare: found (:func:`find_wrangler`), given its
environment (:func:`wrangler_env`) and run as a subprocess (:class:`Wrangler`). Its failures
become :class:`~kit.deploy.errors.WranglerError` here; nothing above sees a process.

Secrets go to wrangler on stdin only (``wrangler secret put NAME`` reads the value there
when stdin is not a terminal): never in its arguments, its environment or kit's output.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from kit.deploy.errors import DeployError, WranglerError

SHIM_WRANGLER = Path("node_modules") / ".bin" / "wrangler"
"""wrangler as ``scripts/setup-workers`` installs it for the shim (Node 22 beside it)."""
KIT_SECRETS = ("KIT_API_TOKEN", "ANTHROPIC_API_KEY")
"""Never in wrangler's environment: they reach Cloudflare as secrets, on stdin."""
CLOUDFLARE_CREDENTIALS = ("CLOUDFLARE_API_TOKEN", "CLOUDFLARE_API_KEY", "CLOUDFLARE_EMAIL")
TAIL_LINES = 6
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

Line = Callable[[str], None]


def find_wrangler(environ: Mapping[str, str], shim: Path) -> Path:
    """The wrangler to run: ``KIT_WRANGLER``, else ``wrangler`` on ``PATH``, else the one
    ``scripts/setup-workers`` installed in ``shim/node_modules``; DeployError naming the fix
    when there is none."""
    given = environ.get("KIT_WRANGLER", "").strip()
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise DeployError(f"KIT_WRANGLER={given}: no executable there; fix or unset it.")
        return path
    found = shutil.which("wrangler", path=environ.get("PATH", os.defpath))
    if found:
        return Path(found)
    local = shim / SHIM_WRANGLER
    if local.exists():
        return local
    raise DeployError(
        "wrangler is not installed: run scripts/setup-workers (it installs wrangler and Node "
        f"22 into {shim}/node_modules), or `npm install -g wrangler`, or set KIT_WRANGLER."
    )


def wrangler_env(environ: Mapping[str, str], wrangler: Path) -> dict[str, str]:
    """wrangler's environment: ``environ`` without kit's secrets, with telemetry and the
    banner (and its npm update check) off, and wrangler's own folder first on ``PATH`` (the
    shim's holds Node 22)."""
    env = {k: v for k, v in environ.items() if k not in KIT_SECRETS}
    env["PATH"] = os.pathsep.join([str(wrangler.parent), environ.get("PATH", os.defpath)])
    env["WRANGLER_SEND_METRICS"] = "false"
    env["WRANGLER_SEND_ERROR_REPORTS"] = "false"
    env["WRANGLER_HIDE_BANNER"] = "true"
    return env


def offline_env(env: Mapping[str, str], home: Path) -> dict[str, str]:
    """``env`` for a run that must not reach the network (a dry run): no Cloudflare
    credentials, no ``cf.json`` fetch, ``home`` as ``HOME`` and its ``tmp`` as ``TMPDIR``,
    where wrangler's npm update check finds a fresh answer cached, so it asks npm nothing
    (it would, after printing a warning or an error)."""
    offline = {k: v for k, v in env.items() if k not in CLOUDFLARE_CREDENTIALS}
    cache = home / "tmp" / "update-check"
    cache.mkdir(parents=True, exist_ok=True)
    checked = json.dumps({"latest": None, "lastUpdate": int(time.time() * 1000)})
    for tag in ("latest", "beta"):
        (cache / f"wrangler-{tag}.json").write_text(checked)
    offline.update(
        CLOUDFLARE_CF_FETCH_ENABLED="false",
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        TMPDIR=str(home / "tmp"),
    )
    return offline


class Wrangler:
    """One wrangler executable, run in ``cwd`` with ``env``."""

    def __init__(self, executable: Path, env: Mapping[str, str], cwd: Path) -> None:
        self.executable, self.env, self.cwd = executable, dict(env), cwd

    async def run(self, *args: str, stdin: str | None = None, on_line: Line | None = None) -> str:
        """Run ``wrangler ARGS`` (``stdin`` written to it, then closed); its stdout, with
        colours taken out, each line also given to ``on_line`` as it comes. WranglerError
        with the output's last lines when it exits non-zero (never ``stdin``)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                str(self.executable),
                *args,
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise WranglerError(
                f"Cannot run {self.executable}: {exc.strerror or exc}; run scripts/setup-workers "
                "or set KIT_WRANGLER.",
                output="",
            ) from None
        assert proc.stdout is not None
        assert proc.stderr is not None
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin.encode())
            await proc.stdin.drain()
            proc.stdin.close()
        out, err, _ = await asyncio.gather(
            _lines(proc.stdout, on_line), _lines(proc.stderr, None), proc.wait()
        )
        if proc.returncode:
            tail = [line for line in (err + out) if line.strip()][-TAIL_LINES:]
            verb = " ".join(a for a in args[:2] if not a.startswith("-"))
            raise WranglerError(
                f"wrangler {verb} failed (exit {proc.returncode}): " + " | ".join(tail),
                output="\n".join(out + err),
            )
        return "\n".join(out)


async def _lines(stream: asyncio.StreamReader, on_line: Line | None) -> list[str]:
    lines = []
    async for raw in stream:
        line = _ANSI.sub("", raw.decode(errors="replace")).rstrip()
        lines.append(line)
        if on_line is not None:
            on_line(line)
    return lines
