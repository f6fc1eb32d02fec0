"""The ``kit`` command: parse, call one library function, render, map errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kit import __version__
from kit.cli import console
from kit.cli.errors import CliError
from kit.errors import KitError


def _cmd_new(args: argparse.Namespace) -> int:
    from kit.cli.new import scaffold

    dest = scaffold(args.name, Path.cwd())
    console.out(f"Created {dest}")
    console.out(f"Next:  cd {args.name} && kit dev      (then, in another terminal: kit chat)")
    console.out("       kit test                     (runs the scenario checks in scenarios/)")
    return 0


def _cmd_gateway(args: argparse.Namespace) -> int:
    from kit.cli import gateway

    return gateway.run()


def _cmd_dev(args: argparse.Namespace) -> int:
    from kit.cli import dev
    from kit.cli.settings import dev_settings

    _log_to_stderr(args.verbose)
    settings = dev_settings(project=args.project, host=args.host, port=args.port)
    if args.target == "fly":
        from kit.cli import flydev

        return flydev.run(settings.project_dir, settings.state_dir, settings.api_key)
    if args.target == "cloudflare":
        from kit.cli import cfdev

        return cfdev.run(settings.project_dir, settings.state_dir, settings.api_key)
    if args.sandbox:
        settings = dataclasses.replace(settings, sandbox=args.sandbox)
    return dev.run(dataclasses.replace(settings, watch=not args.no_watch))


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


def _control_target(args: argparse.Namespace) -> Any:
    from kit.cli.chat import find_target
    from kit.cli.settings import dev_settings

    settings = dev_settings(project=args.project, host=None, port=None)
    return find_target(settings.state_dir, args.url)


def _cmd_sessions(args: argparse.Namespace) -> int:
    from kit.cli.sessions import list_sessions, sessions_table

    rows = list_sessions(_control_target(args))
    console.out(json.dumps(rows) if args.json else sessions_table(rows))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from kit.cli.logs import show_logs

    return show_logs(_control_target(args), args.session, follow=args.follow, as_json=args.json)


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from kit.cli.rehearse import call, check_session_id, sandbox_table

    if args.action == "list":
        console.out(sandbox_table(call(_control_target(args), "GET", "/sandboxes")["sandboxes"]))
        return 0
    if not args.session:
        raise CliError(f"kit sandbox {args.action} needs a SESSION id (see `kit sandbox list`).")
    check_session_id(args.session)
    target = _control_target(args)
    if args.action == "kill":
        done = call(target, "POST", f"/sandboxes/{args.session}/kill", {"signal": args.signal})
        console.out(f"Sent signal {done['signal']} to {done['sandbox_id']}.")
    else:
        done = call(target, "POST", f"/sandboxes/{args.session}/oom")
        console.out(f"Pushed {done['sandbox_id']} past its memory limit.")
    return 0


def _cmd_mail(args: argparse.Namespace) -> int:
    from kit.cli import mail
    from kit.cli.settings import dev_settings

    settings = dev_settings(project=args.project, host=None, port=None)
    target = mail.mail_target(settings.state_dir, args.url)
    if args.action == "outbox":
        if not 1 <= args.limit <= 500:
            raise CliError("--limit takes a number from 1 to 500.")
        return mail.outbox(target, refused=args.refused, limit=args.limit, as_json=args.json)
    wait = None if args.no_wait else args.wait
    return mail.send(
        target,
        args.sender,
        args.text,
        to=args.to,
        subject=args.subject,
        reply=args.reply,
        wait_s=wait,
    )


def _cmd_do(args: argparse.Namespace) -> int:
    from kit.cli.rehearse import call, check_session_id

    check_session_id(args.session)
    done = call(_control_target(args), "POST", f"/do/{args.session}/evict")
    if done.get("evicted"):
        console.out(f"Evicted session {args.session}; its next event rebuilds it from storage.")
    else:
        console.out(
            f"Session {args.session} was not in memory; nothing to evict (its next event "
            "loads it from storage)."
        )
    return 0


def _cmd_image(args: argparse.Namespace) -> int:
    from kit.cli.image import build, prune

    run = build if args.action == "build" else prune
    return run(args.source, args.cache_dir, args.dry_run, args.docker)


FLY_ONLY = ("org", "region", "bucket", "gateways")
CLOUDFLARE_ONLY = ("max_instances",)


def _deploy_settings(args: argparse.Namespace) -> Any:
    """The settings of ``kit deploy`` / ``kit destroy`` for ``--target``, read once."""
    from kit.bundle import load_project
    from kit.cli.settings import dev_settings

    other = FLY_ONLY if args.target == "cloudflare" else CLOUDFLARE_ONLY
    for name in other:
        if getattr(args, name, None) is not None:
            flag = "--" + name.replace("_", "-")
            where = "Fly" if name in FLY_ONLY else "Cloudflare"
            raise CliError(
                f"{flag} is a {where} setting; leave it out with --target {args.target}."
            )
    if args.project is None and not any(
        (folder / "kit.toml").is_file() for folder in (Path.cwd(), *Path.cwd().parents)
    ):
        raise CliError(
            "No kit.toml here or above: run kit deploy/destroy in your agent's folder, or pass "
            "--project."
        )
    settings = dev_settings(project=args.project, host=None, port=None)
    project = load_project(settings.project_dir)
    if args.target == "cloudflare":
        from kit.cli.cfdeploy import cloudflare_settings
        from kit.cli.image import default_checkout

        return cloudflare_settings(
            project=settings.project_dir,
            state_dir=settings.state_dir,
            agent_name=project.agent.name,
            tier=project.sandbox.tier,
            app=args.app,
            max_instances=args.max_instances,
            checkout=default_checkout(),
            environ=os.environ,
        )
    from kit.cli.deploy import fly_settings

    return fly_settings(
        project=settings.project_dir,
        state_dir=settings.state_dir,
        agent_name=project.agent.name,
        app=args.app,
        org=args.org,
        region=args.region,
        gateways=2 if args.gateways is None else args.gateways,
        bucket=args.bucket,
        environ=os.environ,
    )


def _cmd_deploy(args: argparse.Namespace) -> int:
    from kit.cli.image import ensure

    settings = _deploy_settings(args)
    code: int
    if args.target == "cloudflare":
        from kit.cli import cfdeploy

        code = asyncio.run(cfdeploy.run_deploy(settings, ensure, dry_run_only=args.dry_run))
    else:
        from kit.cli.deploy import run_deploy

        code = asyncio.run(run_deploy(settings, ensure, dry_run=args.dry_run))
    return code


def _cmd_destroy(args: argparse.Namespace) -> int:
    settings = _deploy_settings(args)
    code: int
    if args.target == "cloudflare":
        from kit.cli import cfdeploy

        code = asyncio.run(cfdeploy.run_destroy(settings, yes=args.yes))
    else:
        from kit.cli.deploy import run_destroy

        code = asyncio.run(run_destroy(settings, yes=args.yes))
    return code


def _log_to_stderr(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "uvicorn", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _command(
    sub: Any, name: str, summary: str, description: str, examples: Sequence[str]
) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (``kit -h``), a description and examples."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _target_options(p: argparse.ArgumentParser) -> None:
    """How a client command finds the running ``kit dev``."""
    p.add_argument(
        "--project", type=Path, help="the agent project folder (default: nearest kit.toml)"
    )
    p.add_argument(
        "--url", help="the kit host URL (default: the running `kit dev`, from .kit/dev.json)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="kit",
        description="Run and ship Claude Agent SDK agents.",
        epilog="Run `kit COMMAND -h` for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"kit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub,
        "new",
        "create an agent project",
        "Write a new agent project in ./NAME: kit.toml, prompt.md, a skill with a script, an\n"
        "offline scenario with a check, and a pytest file that runs it.",
        ["kit new my-agent && cd my-agent && kit dev"],
    )
    p.add_argument("name", help="the agent's name (a-z, 0-9, '-')")
    p.set_defaults(func=_cmd_new)

    p = _command(
        sub,
        "dev",
        "run the agent locally against the cloud emulator",
        "Run the agent on this machine until Ctrl-C: a session host with durable event logs,\n"
        "one sandbox per active session, and the offline model (or the real API when\n"
        "ANTHROPIC_API_KEY is set). Clients find it through .kit/dev.json.\n"
        "Without --port it listens on 8787 (or KIT_PORT), or the next free port above it.\n"
        "A saved change to kit.toml, the prompt, a skill or scenarios.toml rebuilds the\n"
        "bundle: new sandboxes run it, a broken edit is reported and the last good one stays.",
        [
            "kit dev",
            "KIT_SANDBOX_POOL=0 KIT_SANDBOX_GRACE_S=5 kit dev   # no spare sandboxes, short grace",
            "kit dev --project skills/support-bot --port 9000",
            "kit dev --port 0          # any free port",
            "kit dev --sandbox docker  # each sandbox a container of kit's runtime image",
            "kit dev --target fly      # rehearse the Fly deployment on this machine",
            "kit dev --target cloudflare  # the Worker + DO shim in wrangler dev, on this machine",
        ],
    )
    p.add_argument(
        "--project", type=Path, help="the agent project folder (default: nearest kit.toml)"
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        help="port to listen on, exactly (default 8787 or the next free one; 0 = any free port)",
    )
    p.add_argument(
        "--sandbox",
        choices=("local", "docker"),
        help="where sandboxes run: local process groups (default, or KIT_SANDBOX) or docker "
        "containers of kit's runtime image (built the first time)",
    )
    p.add_argument(
        "--target",
        choices=("local", "fly", "cloudflare"),
        default="local",
        help="local (default); fly: rehearse `kit deploy --target fly` on this machine "
        "(the Fly emulator with machines as containers, moto as the bucket; docs/deploy-fly.md); "
        "cloudflare: the real shim in wrangler dev, its containers from kit's container "
        "emulator (docs/deploy-cloudflare.md)",
    )
    p.add_argument(
        "--no-watch", action="store_true", help="do not rebuild the bundle when files change"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=_cmd_dev)

    p = _command(
        sub,
        "gateway",
        "run a session host from environment settings (a container entrypoint)",
        "Serve the HTTP and WebSocket API for one agent bundle with durable event logs, one\n"
        "sandbox per active session, and model and egress proxies that sandboxes reach with\n"
        "per-session tokens (unix sockets, or TCP with KIT_PROXY_LISTEN=HOST). Every setting\n"
        "comes from the environment (docs/gateway.md); SIGTERM stops it cleanly.",
        [
            "KIT_API_TOKEN=... ANTHROPIC_API_KEY=... KIT_PROJECT=skills/support-bot kit gateway",
            "KIT_LISTEN=0.0.0.0:8080 KIT_BUNDLE=.kit/bundles/<digest> KIT_LOG_URL=s3://b/logs "
            "kit gateway",
        ],
    )
    p.set_defaults(func=_cmd_gateway)

    p = _command(
        sub,
        "chat",
        "chat with the agent that `kit dev` is running",
        "A terminal client: creates a session (or resumes SESSION), streams the agent's\n"
        "replies and tool calls, and reconnects on its own. /interrupt, /quit.",
        [
            "kit chat",
            'kit chat -m "Where is my order 1042?"',
            "kit chat 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed",
        ],
    )
    p.add_argument("session", nargs="?", help="resume this session id (default: a new session)")
    _target_options(p)
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

    p = _command(
        sub,
        "sessions",
        "list the sessions of the running `kit dev`",
        "Every session in kit dev's log store, loaded or not, most recently active first:\n"
        "when it was created, its last event, its turns (and how many are still open) and\n"
        "its sandbox (running, starting or none). Reading takes no session's lease. Against\n"
        "`kit dev --target fly` (or a Fly deploy, with --url) any gateway answers for all.",
        ["kit sessions", "kit sessions --json | jq -r '.[].session_id'"],
    )
    p.add_argument("--json", action="store_true", help="print the sessions as one JSON array")
    _target_options(p)
    p.set_defaults(func=_cmd_sessions)

    p = _command(
        sub,
        "logs",
        "print a session's events (--follow: and new ones, live)",
        "Print a session's stored events as `kit chat` shows them (or as JSON lines). With\n"
        "--follow, keep printing new events as they are committed, each exactly once, until\n"
        "Ctrl-C or until kit dev stops. Following loads the session like a client does.",
        [
            "kit logs 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed",
            "kit logs 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed --follow",
            "kit logs 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed --json | jq .kind",
        ],
    )
    p.add_argument("session", help="the session id (see `kit sessions`)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="print events as JSON lines")
    _target_options(p)
    p.set_defaults(func=_cmd_logs)

    p = _command(
        sub,
        "sandbox",
        "list, kill or OOM the sandboxes `kit dev` runs",
        "Rehearse sandbox failures on the running kit dev: list the running sandboxes, send\n"
        "one a signal, or push it past its tier's memory limit. The session's clients see\n"
        "the sandbox die and the turn carry on in a new one. Against `kit dev --target fly`\n"
        "the sandboxes are the sandbox app's machines (stopped ones are spares).",
        [
            "kit sandbox list",
            "kit sandbox kill 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed --signal TERM",
            "kit sandbox oom 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed",
        ],
    )
    p.add_argument("action", choices=["list", "kill", "oom"], help="what to do")
    p.add_argument("session", nargs="?", help="the session whose sandbox to kill or OOM")
    p.add_argument("--signal", default="KILL", help="for kill: KILL (default), TERM, SEGV, …")
    _target_options(p)
    p.set_defaults(func=_cmd_sandbox)

    p = _command(
        sub,
        "mail",
        "mail the agent on `kit dev` (or --target fly), and read its replies",
        "An email thread is a session (docs/email.md). `send` mails the agent through kit\n"
        "dev's SMTP server as a mail client would (on `kit dev --target fly`: to the\n"
        "gateways' signed webhook) and waits for the answer; --reply answers\n"
        "the agent's newest reply to that sender, in the same thread. `outbox` lists the\n"
        "replies kit sent (--refused: the mail it did not answer, and why).",
        [
            'kit mail send --from alice@example.org "Where is my order 1234?"',
            'kit mail send --from alice@example.org --reply "And the second item?"',
            "kit mail outbox",
            "kit mail outbox --refused --json",
        ],
    )
    mail_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ps = mail_sub.add_parser("send", help="mail the agent and wait for its answer")
    ps.add_argument("text", help="the message's text")
    ps.add_argument("--from", dest="sender", required=True, help="the sender's address")
    ps.add_argument("--to", help="the recipient (default: the agent's address)")
    ps.add_argument("--subject", help="the subject")
    ps.add_argument(
        "--reply",
        action="store_true",
        help="answer the agent's newest reply to --from, in the same thread",
    )
    ps.add_argument(
        "--wait",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="how long to wait for the answer (default 180)",
    )
    ps.add_argument("--no-wait", action="store_true", help="do not wait for the answer")
    _target_options(ps)
    ps.set_defaults(func=_cmd_mail)
    po = mail_sub.add_parser("outbox", help="the replies kit sent (or --refused)")
    po.add_argument("--refused", action="store_true", help="the mail not answered, and why")
    po.add_argument("--limit", type=int, default=20, help="how many, newest first (default 20)")
    po.add_argument("--json", action="store_true", help="one JSON array")
    _target_options(po)
    po.set_defaults(func=_cmd_mail)

    p = _command(
        sub,
        "do",
        "rehearse Durable Object events on `kit dev`'s sessions",
        "Evict a session's Durable Object on the running kit dev: what it held in memory\n"
        "goes, its storage stays; clients reconnect and resume, and the next event rebuilds\n"
        "the session from storage.",
        ["kit do evict 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"],
    )
    p.add_argument("action", choices=["evict"], help="what to do")
    p.add_argument("session", help="the session whose object to evict")
    _target_options(p)
    p.set_defaults(func=_cmd_do)

    p = _command(
        sub,
        "test",
        "run the project's scenario checks on the offline model",
        "Run every [[check]] of the project's scenarios through the whole local stack on\n"
        "the offline model; exit 1 if any fails.",
        ["kit test", "kit test --project skills/support-bot"],
    )
    p.add_argument(
        "--project", type=Path, help="the agent project folder (default: nearest kit.toml)"
    )
    p.set_defaults(func=_cmd_test)

    p = _command(
        sub,
        "image",
        "build the runtime image (Debian + Python + kit[runtime]) with Docker",
        "Build kit's runtime image: a Debian base made with debootstrap, kit[runtime] and\n"
        "its wheels, tagged kit-runtime:<version>-<digest of its inputs>. Steps whose result\n"
        "exists are skipped; --dry-run prints the plan. Docker must be running\n"
        "(scripts/docker-up); making the base needs root. `prune` removes the runtime\n"
        "images other than this checkout's (each change of kit's source makes one).",
        ["kit image build", "kit image build --dry-run", "kit image prune --dry-run"],
    )
    p.add_argument(
        "action", choices=["build", "prune"], help="build the image, or prune the old ones"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be done, change nothing"
    )
    p.add_argument("--source", type=Path, help="kit's source checkout (default: the running kit's)")
    p.add_argument(
        "--cache-dir", type=Path, help="where the wheels are cached (default: ~/.cache/kit/image)"
    )
    p.add_argument("--docker", default="docker", help="the Docker CLI to call (default: docker)")
    p.set_defaults(func=_cmd_image)

    for name, summary, description, examples, func in (
        (
            "deploy",
            "deploy the agent to Fly Machines or Cloudflare (planned first; --dry-run prints "
            "the plan)",
            "Deploy the project.\n"
            "--target fly: the gateway app (kit gateway behind Fly's proxy), the sandbox app\n"
            "(one machine per active session), a bucket for logs, leases and bundles. Planned\n"
            "as data, printed, then applied; a second deploy with nothing changed does\n"
            "nothing. Needs FLY_API_TOKEN, ANTHROPIC_API_KEY and the bucket's AWS_* keys\n"
            "(docs/deploy-fly.md).\n"
            "--target cloudflare: the Worker (worker_shim/, one Durable Object per session)\n"
            "with a container per active session at kit.toml's [sandbox] tier, from kit's\n"
            "runtime image with the bundle in it; wrangler does the work. --dry-run runs\n"
            "wrangler's offline dry run. Needs CLOUDFLARE_API_TOKEN and ANTHROPIC_API_KEY\n"
            "(docs/deploy-cloudflare.md).",
            [
                "kit deploy --target fly --dry-run",
                "kit deploy --target fly --app acme-support",
                "kit deploy --target cloudflare --dry-run",
                "kit deploy --target cloudflare --app acme-support --max-instances 50",
            ],
            _cmd_deploy,
        ),
        (
            "destroy",
            "remove everything kit deploy made on Fly or Cloudflare",
            "--target fly: delete what the deployment's record (in its bucket) lists: the\n"
            "gateway and sandbox apps with their machines, addresses and secrets, the image,\n"
            "kit's objects, and the bucket if kit made it.\n"
            "--target cloudflare: delete the Worker (its Durable Objects and secrets) and its\n"
            "container application.\n"
            "Without --yes it only lists them.",
            [
                "kit destroy --target fly --app acme-support --yes",
                "kit destroy --target cloudflare --app acme-support --yes",
            ],
            _cmd_destroy,
        ),
    ):
        p = _command(sub, name, summary, description, examples)
        p.add_argument(
            "--target",
            choices=["fly", "cloudflare"],
            required=True,
            help="where: fly or cloudflare",
        )
        p.add_argument("--project", type=Path, help="the agent project (default: nearest kit.toml)")
        p.add_argument(
            "--app", help="the Fly app or Cloudflare Worker name (default: the agent's name)"
        )
        p.add_argument("--org", help="Fly: the organisation (default: FLY_ORG or personal)")
        p.add_argument("--region", help="Fly: the region (default: FLY_REGION or iad)")
        p.add_argument("--bucket", help="Fly: the bucket (default: <app>-kit)")
        p.add_argument("--gateways", type=int, help="Fly: gateway machines (default: 2)")
        p.add_argument(
            "--max-instances",
            type=int,
            help="Cloudflare: containers running at once, at most (default: 20)",
        )
        if name == "deploy":
            p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
        else:
            p.add_argument("--yes", action="store_true", help="really delete (else: list only)")
        p.set_defaults(func=func)
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
