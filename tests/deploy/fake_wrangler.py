"""A stand-in for ``wrangler`` (installed as an executable by :func:`install`): a small,
stateful Cloudflare account in a JSON file, and a log of every call (its argv, its stdin,
the names in its environment). It answers the commands kit runs the way wrangler 4.164
prints them: ``secret list|put``, ``deploy``, ``delete``, ``containers list|delete``.

The account file (``FAKE_WRANGLER_ACCOUNT``): ``{"workers": {name: {"secrets": [...]}},
"apps": [{"id", "name"}], "subdomain": "..."}``; the log (``FAKE_WRANGLER_LOG``): one JSON
object per line.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any


def _config(argv: list[str]) -> dict[str, Any]:
    path = Path(argv[argv.index("-c") + 1]) if "-c" in argv else Path("wrangler.jsonc")
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("//")]
    parsed: dict[str, Any] = json.loads("\n".join(lines))
    return parsed


def main() -> int:
    argv = sys.argv[1:]
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    account_file = Path(os.environ["FAKE_WRANGLER_ACCOUNT"])
    account: dict[str, Any] = json.loads(account_file.read_text())
    with open(os.environ["FAKE_WRANGLER_LOG"], "a") as log:
        log.write(json.dumps({"argv": argv, "stdin": stdin, "env": sorted(os.environ)}) + "\n")
    if not os.environ.get("CLOUDFLARE_API_TOKEN"):
        print("✘ [ERROR] In a non-interactive environment, set CLOUDFLARE_API_TOKEN.")
        return 1
    words = [a for a in argv if not a.startswith("-")]
    workers: dict[str, Any] = account.setdefault("workers", {})
    apps: list[dict[str, str]] = account.setdefault("apps", [])
    config = _config(argv)
    name = str(config["name"])
    if words[:2] == ["secret", "list"]:
        if name not in workers:
            print(f'✘ [ERROR] Worker "{name}" not found.', file=sys.stderr)
            return 1
        print(json.dumps([{"name": s, "type": "secret_text"} for s in workers[name]["secrets"]]))
    elif words[:2] == ["secret", "put"]:
        if not stdin:
            print("✘ [ERROR] no secret value on stdin", file=sys.stderr)
            return 1
        worker = workers.setdefault(name, {"secrets": []})
        worker["secrets"] = sorted({*worker["secrets"], words[2]})
        print(f"✨ Success! Uploaded secret {words[2]}")
    elif words[:1] == ["deploy"]:
        workers.setdefault(name, {"secrets": []})["config"] = config
        for container in config.get("containers", []):
            if not any(app["name"] == container["name"] for app in apps):
                apps.append({"id": str(uuid.uuid4()), "name": container["name"]})
        print(f"Uploaded {name} (1.00 sec)")
        print(f"Deployed {name} triggers (0.50 sec)")
        print(f"  https://{name}.{account.get('subdomain', 'kit-test')}.workers.dev")
        print("Current Version ID: 00000000-0000-0000-0000-000000000000")
    elif words[:1] == ["delete"]:
        workers.pop(words[1], None)
        print("Successfully deleted", words[1])
    elif words[:2] == ["containers", "list"]:
        print(json.dumps([{**app, "state": "ready"} for app in apps]))
    elif words[:2] == ["containers", "delete"]:
        account["apps"] = [app for app in apps if app["id"] != words[2]]
        print("Your container has been deleted")
    else:
        print(f"fake wrangler: no such command {words}", file=sys.stderr)
        return 2
    account_file.write_text(json.dumps(account))
    return 0


def install(folder: Path) -> Path:
    """Write this script into ``folder`` as an executable ``wrangler`` run by this Python."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "wrangler"
    exe.write_text(f"#!{sys.executable}\n" + Path(__file__).read_text())
    exe.chmod(0o755)
    return exe


if __name__ == "__main__":
    sys.exit(main())
