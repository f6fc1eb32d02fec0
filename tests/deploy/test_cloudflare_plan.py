"""A Cloudflare deploy as data: the target's checks, the wrangler config made from the shim's,
the image's Dockerfile and the plan, with no disk or network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kit.bundle import build_bundle, load_project
from kit.bundle.limits import DEFAULT_LIMITS, Limits, Price
from kit.cli.cfdeploy import render
from kit.cli.settings import EXAMPLE_PROJECT
from kit.deploy.cloudflare.apply import workers_dev_url, write_build
from kit.deploy.cloudflare.deploy import desired, load_shim
from kit.deploy.cloudflare.plan import StepKind, plan
from kit.deploy.cloudflare.target import (
    EGRESS_VAR,
    INSTANCE_TYPES,
    LIMITS_VAR,
    MAIL_ADDRESS_VAR,
    MAIL_BINDING,
    MAX_VAR_BYTES,
    PAGE,
    WEB_SESSION_URL_VAR,
    CloudflareTarget,
    dockerfile,
    egress_var,
    limits_var,
    read_jsonc,
)
from kit.deploy.errors import DeployError
from kit.web import WEB_DIR

REPO = Path(__file__).resolve().parents[2]
SHIM = REPO / "worker_shim"
SECRETS = {"KIT_API_TOKEN": "kit-token-not-real-0123456789", "ANTHROPIC_API_KEY": "sk-ant-no"}


def test_the_instance_types_are_cloudflares_six() -> None:
    """A tier for this target is one of the platform's named instance types."""
    assert INSTANCE_TYPES == (
        "lite",
        "basic",
        "standard-1",
        "standard-2",
        "standard-3",
        "standard-4",
    )


@pytest.mark.parametrize(
    ("worker", "tier", "max_instances", "named"),
    [
        ("agent", "shared-cpu-1x", 20, "is a Fly machine size"),
        ("agent", "performance-2x", 20, "set [sandbox] tier to one of them"),
        ("Bad_Name", "basic", 20, "pass another with --app"),
        ("-agent", "basic", 20, "pass another with --app"),
        ("a" * 55, "basic", 20, "1-54 lowercase"),
        ("agent", "basic", 0, "--max-instances must be 1 to 1000"),
    ],
)
def test_a_bad_target_is_refused_naming_the_fix(
    worker: str, tier: str, max_instances: int, named: str
) -> None:
    """A Fly tier, a name no Worker can have, or no containers: one sentence with the fix."""
    with pytest.raises(DeployError) as caught:
        CloudflareTarget(worker, tier, max_instances)
    assert named in str(caught.value)


def test_jsonc_comments_and_trailing_commas_are_read_strings_kept() -> None:
    """wrangler's JSONC: comments and trailing commas go, "//" inside a string stays."""
    text = '// head\n{"a": "http://x//y", /* c */ "b": [1, 2,],\n "c": {"d": 1,}, // tail\n}'
    assert read_jsonc(text) == {"a": "http://x//y", "b": [1, 2], "c": {"d": 1}}
    with pytest.raises(ValueError, match="unclosed"):
        read_jsonc('{"a": 1 /* open')


def test_the_config_carries_the_shims_bindings_and_adds_the_container(tmp_path: Path) -> None:
    """The generated config has the shim's Durable Object binding, migrations and date, its
    entry by absolute path, the tier in vars and in the container entry, and no dev
    settings; the shim's folder is not written."""
    shim = load_shim(SHIM)
    before = {p: p.stat().st_mtime_ns for p in SHIM.glob("*") if p.is_file()}
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), tmp_path / "bundles")
    target = CloudflareTarget("acme-support", "standard-2", max_instances=7)
    want = desired(target, shim, bundle, "kit-runtime:0.1.0-abc", SECRETS, build_dir=tmp_path / "b")
    config = want.config
    assert config["name"] == "acme-support"
    assert config["main"] == str(SHIM / "src" / "index.ts")
    assert Path(config["main"]).is_absolute()
    assert config["durable_objects"] == shim.config["durable_objects"]
    assert config["migrations"] == shim.config["migrations"]
    assert config["compatibility_date"] == shim.config["compatibility_date"]
    assert "dev" not in config
    assert config["vars"]["KIT_SANDBOX_TIER"] == "standard-2"
    assert config["vars"]["KIT_BUNDLE_DIGEST"] == bundle.digest
    assert config["vars"][LIMITS_VAR] == "{}"  # the example sets no [limits]: kit's defaults
    assert config["vars"][EGRESS_VAR] == "[]"  # nor an egress allowlist: kit's routes only
    assert config["containers"] == [
        {
            "name": "acme-support-sandboxes",
            "class_name": "SessionDO",
            "image": str(tmp_path / "b" / "Dockerfile"),
            "image_build_context": str(bundle.path),
            "instance_type": "standard-2",
            "max_instances": 7,
        }
    ]
    assert before == {p: p.stat().st_mtime_ns for p in SHIM.glob("*") if p.is_file()}


def test_the_config_carries_the_bundles_limits_as_the_manifest_has_them(tmp_path: Path) -> None:
    """KIT_LIMITS is the bundle's [limits] as its manifest stores them (what the shim's
    Limits.fromVar reads, and the golden spend cases use), compact."""
    project = tmp_path / "agent"
    shutil.copytree(EXAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(".kit"))
    toml = project / "kit.toml"
    toml.write_text(
        toml.read_text()
        + '\n[limits]\nmodels = ["claude-*"]\nturn_tokens = 9000\nsession_usd = 2.5\n'
        '[limits.prices]\n"claude-x*" = { input = 1, output = 2 }\n'
    )
    bundle = build_bundle(load_project(project), tmp_path / "bundles")
    target = CloudflareTarget("acme", "basic")
    want = desired(target, load_shim(SHIM), bundle, "kit-runtime:x", SECRETS, build_dir=tmp_path)
    text = want.config["vars"][LIMITS_VAR]
    assert json.loads(text) == {
        "models": ["claude-*"],
        "turn_tokens": 9000,
        "session_usd": 2.5,
        "prices": [
            [
                "claude-x*",
                {"input": 1.0, "output": 2.0, "cache_write": 1.25, "cache_write_1h": 2.0, "cache_read": 0.1},
            ]
        ],
    }  # fmt: skip
    assert " " not in text
    assert Limits.from_manifest(json.loads(text)) == bundle.limits


def test_limits_too_big_for_a_worker_variable_are_refused_naming_the_fix() -> None:
    """Cloudflare holds 5 KB in a variable: more is one DeployError that says what to trim."""
    assert limits_var(DEFAULT_LIMITS) == "{}"
    many = Limits(prices=tuple((f"claude-model-{i:03}*", Price.of(1, 2)) for i in range(60)))
    assert len(json.dumps(many.to_manifest()["prices"][:1])) * 60 > MAX_VAR_BYTES
    with pytest.raises(
        DeployError, match=r"over the 5120 a Cloudflare variable may hold: list fewer"
    ):
        limits_var(many)


def test_the_config_carries_the_egress_allowlist_as_parsed_rules(tmp_path: Path) -> None:
    """KIT_EGRESS is [sandbox] egress as the rules kit's egress proxy matches (what the
    shim's outbound interception reads, worker_shim/src/egress.ts), compact; too many
    entries for a Worker variable are one DeployError that says what to trim."""
    project = tmp_path / "agent"
    shutil.copytree(EXAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(".kit"))
    toml = project / "kit.toml"
    text = toml.read_text()
    assert "egress" not in text
    toml.write_text(
        text.replace(
            "[sandbox]", '[sandbox]\negress = ["API.github.com.", "*.pypi.org", "127.0.0.1:8080"]'
        )
    )
    bundle = build_bundle(load_project(project), tmp_path / "bundles")
    want = desired(
        CloudflareTarget("acme", "basic"), load_shim(SHIM), bundle, "kit-runtime:x", SECRETS,
        build_dir=tmp_path,
    )  # fmt: skip
    assert json.loads(want.config["vars"][EGRESS_VAR]) == [
        {"host": "api.github.com", "wildcard": False, "port": None},
        {"host": "pypi.org", "wildcard": True, "port": None},
        {"host": "127.0.0.1", "wildcard": False, "port": 8080},
    ]
    assert " " not in want.config["vars"][EGRESS_VAR]
    assert egress_var(()) == "[]"
    with pytest.raises(DeployError, match=r"over the 5120 a Cloudflare variable may hold: list"):
        egress_var(tuple(f"host-{i:03}.example.com" for i in range(150)))


def test_the_dockerfile_adds_the_bundle_to_the_runtime_image() -> None:
    """FROM the runtime image, the bundle's folder copied to /bundles/<digest[:32]>."""
    text = dockerfile("kit-runtime:0.1.0-abc", "f" * 64)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "FROM kit-runtime:0.1.0-abc",
        f"COPY . /bundles/{'f' * 32}/",
        f"LABEL kit.bundle={'f' * 64}",
    ]


def test_the_plan_writes_puts_each_secret_then_deploys_and_shows_no_value(
    tmp_path: Path,
) -> None:
    """Config, Dockerfile and page first, a secret step per secret, the deploy last; the table
    names the secrets but never holds a value."""
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), tmp_path / "bundles")
    target = CloudflareTarget("acme-support", "basic")
    want = desired(target, load_shim(SHIM), bundle, "kit-runtime:x", SECRETS, build_dir=tmp_path)
    steps = plan(want)
    assert [s.kind for s in steps.steps] == [
        StepKind.WRITE_CONFIG,
        StepKind.WRITE_DOCKERFILE,
        StepKind.WRITE_PAGE,
        StepKind.PUT_SECRET,
        StepKind.PUT_SECRET,
        StepKind.DEPLOY,
    ]
    assert [s.secret for s in steps.steps if s.secret] == ["ANTHROPIC_API_KEY", "KIT_API_TOKEN"]
    table = render(steps)
    assert table.splitlines()[0].split() == ["step", "what", "why"]
    assert "acme-support: KIT_API_TOKEN" in table
    assert "up to 20 basic containers (acme-support-sandboxes)" in table
    for value in SECRETS.values():
        assert value not in table
        assert value not in repr(want)


def test_the_deploy_ships_the_page_and_where_it_gets_sessions(tmp_path: Path) -> None:
    """The Worker's static assets are the chat page's files (copied from kit/web into the
    build folder, nothing else of it: no README, no Python), bound as the shim binds them
    and run through the Worker first; kit.toml's [web] session_url is the Worker var the
    page's config reads, absent when not set; a rehearsal's local sessions are not asked
    for; the plan says where sessions come from."""
    shim = load_shim(SHIM)
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), tmp_path / "bundles")
    target = CloudflareTarget("acme-support", "basic")
    url = "https://app.example.com/kit-session"
    build = tmp_path / "b"
    want = desired(target, shim, bundle, "kit-runtime:x", SECRETS, build_dir=build, session_url=url)
    assert want.config["assets"] == {
        **shim.config["assets"],
        "directory": str(build / "web"),
    }
    assert want.config["assets"]["binding"] == "ASSETS"
    assert want.config["assets"]["run_worker_first"] is True
    assert want.config["vars"][WEB_SESSION_URL_VAR] == url
    assert "KIT_WEB_LOCAL_SESSIONS" not in want.config["vars"]
    page_step = [s for s in plan(want).steps if s.kind is StepKind.WRITE_PAGE]
    assert [s.subject for s in page_step] == [str(build / "web")]
    assert f"sessions from {url}" in page_step[0].why

    (build / "web").mkdir(parents=True)
    (build / "web" / "__init__.py").write_text("# left by hand")
    write_build(want)
    assert sorted(p.name for p in (build / "web").iterdir()) == sorted(PAGE)
    assert sorted(PAGE) == ["app.js", "index.html", "render.js", "style.css"]
    for name in PAGE:
        assert (build / "web" / name).read_bytes() == (WEB_DIR / name).read_bytes()

    plain = desired(target, shim, bundle, "kit-runtime:x", SECRETS, build_dir=build)
    assert WEB_SESSION_URL_VAR not in plain.config["vars"]
    assert "sessions from nowhere (no [web] session_url in kit.toml)" in render(plan(plain))


def test_a_shim_without_the_page_is_refused(tmp_path: Path) -> None:
    """A shim config with no page assets cannot be deployed: the message names the file."""
    shim = load_shim(SHIM)
    broken = type(shim)(shim.root, {k: v for k, v in shim.config.items() if k != "assets"})
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), tmp_path / "bundles")
    target = CloudflareTarget("acme-support", "basic")
    with pytest.raises(DeployError, match=r"worker_shim/wrangler\.jsonc binds no static assets"):
        desired(target, broken, bundle, "kit-runtime:x", SECRETS, build_dir=tmp_path / "b")


def test_the_workers_dev_url_is_read_from_wranglers_output() -> None:
    """The URL of this Worker, not of another one wrangler mentions; None without one."""
    out = (
        "Uploaded acme (3.1 sec)\nDeployed acme triggers (0.4 sec)\n"
        "  https://acme.kit-team.workers.dev\nCurrent Version ID: 1"
    )
    assert workers_dev_url(out, "acme") == "https://acme.kit-team.workers.dev"
    assert workers_dev_url("see https://welcome.developers.workers.dev", "acme") is None
    assert workers_dev_url("No deploy targets for acme", "acme") is None


def test_a_shim_folder_without_its_source_is_refused(tmp_path: Path) -> None:
    """KIT_WORKER_SHIM pointing at the wrong folder names the setting."""
    with pytest.raises(DeployError, match="KIT_WORKER_SHIM"):
        load_shim(tmp_path)


def test_the_deploy_takes_mail_at_the_agents_address(tmp_path: Path) -> None:
    """The Worker gets the shim's email pieces: its send_email binding for the replies, the
    MailIndex object and its migration, and the agent's address as the var its email()
    handler reads (absent when no address is given: the Worker then refuses all mail)."""
    shim = load_shim(SHIM)
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), tmp_path / "bundles")
    target = CloudflareTarget("acme-support", "basic")
    want = desired(
        target,
        shim,
        bundle,
        "kit-runtime:x",
        SECRETS,
        build_dir=tmp_path / "b",
        mail_address="agent@example.com",
    )
    assert want.config["send_email"] == [{"name": MAIL_BINDING}]
    assert {"name": "MAIL_INDEX", "class_name": "MailIndex"} in want.config["durable_objects"][
        "bindings"
    ]
    assert {"tag": "v3", "new_sqlite_classes": ["MailIndex"]} in want.config["migrations"]
    assert want.config["vars"][MAIL_ADDRESS_VAR] == "agent@example.com"
    bare = desired(target, shim, bundle, "kit-runtime:x", SECRETS, build_dir=tmp_path / "c")
    assert MAIL_ADDRESS_VAR not in bare.config["vars"]
