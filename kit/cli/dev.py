"""``kit dev``: run the local stack until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal

from kit.cli import console
from kit.cli.settings import DevSettings
from kit.cli.stack import Stack, run_stack
from kit.cli.watch import Watcher


def banner(stack: Stack) -> None:
    """The one banner ``kit dev`` prints."""
    s = stack.settings
    console.banner(
        [
            ("agent", f"{stack.project.agent.name}  ({stack.project.root})"),
            ("page", _page(stack)),
            ("sessions", f"{stack.url}/v1/sessions"),
            ("websocket", f"{stack.url.replace('http', 'ws', 1)}/v1/sessions/{{id}}/ws"),
            ("health", f"{stack.url}/healthz"),
            ("mail", _mail(stack)),
            ("model", stack.model_label),
            ("tier", f"{stack.bundle.tier} (kit.toml [sandbox] tier)"),
            ("isolation", _isolation(stack)),
            ("egress", ", ".join(stack.bundle.egress) or "none (kit.toml [sandbox] egress)"),
            ("sandboxes", _sandboxes(stack)),
            (
                "bundle",
                f"{stack.bundle.digest[:16]}  {len(stack.bundle.skills)} skill(s): {', '.join(stack.bundle.skills)}",
            ),
            ("store", s.store_url or f"sqlite  {stack.transcripts_dir}"),
            ("state", str(s.state_dir)),
            (
                "watch",
                "on: saving kit.toml, the prompt or a skill rebuilds the bundle; scenarios are re-read"
                if s.watch
                else "off (--no-watch): restart kit dev after edits",
            ),
            ("api token", f"{stack.api_token_file} (Bearer token for POST /v1/sessions)"),
        ],
        title="kit dev — ready. Talk to it with `kit chat`; stop with Ctrl-C.",
    )


def _page(stack: Stack) -> str:
    """Where the chat page is, and whether it can open sessions on its own."""
    try:
        loopback = ipaddress.ip_address(stack.settings.host).is_loopback
    except ValueError:  # a name: the host's socket was bound to what it resolved to
        loopback = stack.settings.host == "localhost"
    if loopback:
        return f"{stack.url}/  (the chat page: open it in a browser on this machine)"
    return f"{stack.url}/  (the chat page; it opens sessions only on a loopback --host)"


def _mail(stack: Stack) -> str:
    if stack.mail is None:
        return "off"
    return (
        f"{stack.mail.agent.address} via SMTP 127.0.0.1:{stack.smtp_port} (AUTH: any user, the "
        "API token as password); `kit mail send`, `kit mail outbox`"
    )


def _sandboxes(stack: Stack) -> str:
    s = stack.settings
    pool = (
        f"{s.pool_size} started ahead of new sessions"
        if s.pool_size
        else "none started ahead (KIT_SANDBOX_POOL=0)"
    )
    return (
        f"{stack.provider.kind} (--sandbox); {pool}; one per session from its first message, stopped {s.grace_s:g} s after its "
        f"last client leaves (KIT_SANDBOX_GRACE_S) or {stack.bundle.idle_timeout_s} s after "
        "its last turn (idle_timeout)"
    )


def _isolation(stack: Stack) -> str:
    how = {
        "native": "namespaces (fork server, as root)",
        "bwrap": "bubblewrap",
        "container": f"docker containers of {getattr(stack.provider, 'image', 'the runtime image')}",
    }
    mode = stack.provider.isolation
    if mode:
        return f"{how.get(mode, mode)}: workspace and bundle only, no network but the proxies"
    return "NONE: " + (stack.provider.unisolated or "off")


async def serve(settings: DevSettings) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_stack(settings) as stack:
        if stack.busy_port is not None:
            console.out(
                f"kit dev: port {stack.busy_port} is busy, so it listens on "
                f"{stack.url.rsplit(':', 1)[1]} instead (choose with --port)."
            )
        banner(stack)
        watcher = asyncio.create_task(Watcher(stack).run()) if settings.watch else None
        await stop.wait()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        console.out(
            console.dim("kit dev: shutting down (closing sockets with 1001, stopping sandboxes)…")
        )
    console.out(console.dim("kit dev: stopped."))


def run(settings: DevSettings) -> int:
    """Entry for the CLI."""
    asyncio.run(serve(settings))
    return 0
