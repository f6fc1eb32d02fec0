"""The ``kit`` command: parse, call one library function, render, map errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kit import __version__
from kit.cli import console
from kit.errors import KitError


def _cmd_new(args: argparse.Namespace) -> int:
    from kit.cli.new import scaffold

    dest = scaffold(args.name, Path.cwd())
    console.out(f"Created {dest}")
    console.out(f"Next:  cd {args.name} && kit dev      (then, in another terminal: kit chat)")
    console.out("       kit test                     (runs the scenario checks in scenarios/)")
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from kit.cli import dev
    from kit.cli.settings import dev_settings

    _log_to_stderr(args.verbose)
    return dev.run(dev_settings(project=args.project, host=args.host, port=args.port))


def _cmd_chat(args: argparse.Namespace) -> int:
    from kit.cli.chat import chat, find_target
    from kit.cli.settings import dev_settings

    settings = dev_settings(project=args.project, host=None, port=None)
    target = find_target(settings.state_dir, args.url)
    return asyncio.run(chat(target, args.session, args.message, args.json, args.retry_for))


def _cmd_test(args: argparse.Namespace) -> int:
    from kit.cli.settings import dev_settings
    from kit.cli.testing import run_checks

    settings = dev_settings(project=args.project, host=None, port=None)
    report = run_checks(settings.project_dir, sandbox_user=settings.sandbox_user)
    console.out(report.summary())
    return 0 if report.ok else 1


def _control_target(args: argparse.Namespace) -> object:
    from kit.cli.chat import find_target
    from kit.cli.settings import dev_settings

    settings = dev_settings(project=args.project, host=None, port=None)
    return find_target(settings.state_dir, args.url)


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from kit.cli.rehearse import call, sandbox_table

    target: Any = _control_target(args)
    if args.action == "list":
        console.out(sandbox_table(call(target, "GET", "/sandboxes")["sandboxes"]))
        return 0
    if not args.session:
        raise KitError(f"kit sandbox {args.action} needs a SESSION id (see `kit sandbox list`).")
    if args.action == "kill":
        done = call(target, "POST", f"/sandboxes/{args.session}/kill", {"signal": args.signal})
        console.out(f"Sent signal {done['signal']} to {done['sandbox_id']}.")
    else:
        done = call(target, "POST", f"/sandboxes/{args.session}/oom")
        console.out(f"Pushed {done['sandbox_id']} past its memory limit.")
    return 0


def _cmd_do(args: argparse.Namespace) -> int:
    from kit.cli.rehearse import call

    target: Any = _control_target(args)
    call(target, "POST", f"/do/{args.session}/evict")
    console.out(f"Evicted session {args.session}; its next event rebuilds it from storage.")
    return 0


def _log_to_stderr(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "uvicorn", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="kit", description="Run and ship Claude Agent SDK agents."
    )
    parser.add_argument("--version", action="version", version=f"kit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("new", help="create an agent project")
    p.add_argument("name", help="the agent's name (a-z, 0-9, '-')")
    p.set_defaults(func=_cmd_new)

    p = sub.add_parser("dev", help="run the agent locally against the cloud emulator")
    p.add_argument(
        "--project", type=Path, help="the agent project folder (default: nearest kit.toml)"
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8787; 0 = any free port)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=_cmd_dev)

    p = sub.add_parser("chat", help="chat with the agent that `kit dev` is running")
    p.add_argument("session", nargs="?", help="resume this session id (default: a new session)")
    p.add_argument(
        "--project", type=Path, help="the agent project folder (default: nearest kit.toml)"
    )
    p.add_argument("--url", help="the kit host URL (default: the running `kit dev`)")
    p.add_argument("-m", "--message", help="send one message, print the reply, exit")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON lines, each with session_id (resume with `kit chat SESSION_ID`): "
        '{"type":"event","session_id","seq","kind","turn_id","data"} per event and '
        '{"type":"interrupt_ack","session_id","turn_id","interrupted"} per /interrupt; '
        "notes for people go to stderr",
    )
    p.add_argument(
        "--retry-for",
        type=float,
        metavar="SECONDS",
        help="when the host goes away, keep reconnecting this long, then exit 1 (default: "
        "forever at a terminal, 60 with -m or piped input; inf: forever)",
    )
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("sandbox", help="list, kill or OOM the sandboxes `kit dev` runs")
    p.add_argument("action", choices=["list", "kill", "oom"])
    p.add_argument("session", nargs="?", help="the session whose sandbox to kill or OOM")
    p.add_argument("--signal", default="KILL", help="for kill: KILL (default), TERM, SEGV, …")
    p.add_argument(
        "--project", type=Path, help="the agent project folder (default: nearest kit.toml)"
    )
    p.add_argument("--url", help="the kit host URL (default: the running `kit dev`)")
    p.set_defaults(func=_cmd_sandbox)

    p = sub.add_parser("do", help="rehearse Durable Object events on `kit dev`'s sessions")
    p.add_argument("action", choices=["evict"])
    p.add_argument("session", help="the session whose object to evict")
    p.add_argument(
        "--project", type=Path, help="the agent project folder (default: nearest kit.toml)"
    )
    p.add_argument("--url", help="the kit host URL (default: the running `kit dev`)")
    p.set_defaults(func=_cmd_do)

    p = sub.add_parser("test", help="run the project's scenario checks on the offline model")
    p.add_argument(
        "--project", type=Path, help="the agent project folder (default: nearest kit.toml)"
    )
    p.set_defaults(func=_cmd_test)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``kit``; exit 1 with one line on a :class:`KitError` (traceback with KIT_DEBUG=1)."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KitError as exc:
        if os.environ.get("KIT_DEBUG") == "1":
            traceback.print_exc()
        console.error(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)
