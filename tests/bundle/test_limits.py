"""kit.toml [limits]: reading, one-line refusals, defaults, prices, and the bundle manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kit.bundle import BundleError, ConfigError, build_bundle, load_project, open_bundle
from kit.bundle.limits import (
    DEFAULT_LIMITS,
    DEFAULT_TURN_TOKENS,
    PRICES,
    Limits,
    Price,
    Tokens,
)
from kit.cli.stack import run_stack
from tests.bundle.test_build import _rewrite_manifest
from tests.conftest import stack_settings


def _project(root: Path, limits: str, agent: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "kit.toml").write_text(f"[agent]\nname = 'ok'\n{agent}\n[limits]\n{limits}\n")
    return root


def test_limits_are_read_as_written(tmp_path: Path) -> None:
    """Every key loads as written, prices in file order with the cache multipliers filled in."""
    project = load_project(
        _project(
            tmp_path,
            'models = ["claude-sonnet-5*", "claude-haiku-4-5"]\nturn_tokens = 500_000\n'
            "session_tokens = 5000000\nturn_usd = 2.5\nsession_usd = 20\n"
            '[limits.prices]\n"claude-b*" = { input = 1, output = 5 }\n'
            '"claude-a" = { input = 2.0, output = 10.0, cache_read = 0.05 }\n',
            agent='model = "claude-sonnet-5"',
        )
    )
    limits = project.limits
    assert limits.models == ("claude-sonnet-5*", "claude-haiku-4-5")
    assert (limits.turn_tokens, limits.session_tokens) == (500_000, 5_000_000)
    assert (limits.turn_usd, limits.session_usd) == (2.5, 20.0)
    assert limits.prices == (
        ("claude-b*", Price(1.0, 5.0, 1.25, 2.0, 0.1)),
        ("claude-a", Price(2.0, 10.0, 2.5, 4.0, 0.05)),
    )


def test_no_limits_table_means_the_defaults(tmp_path: Path) -> None:
    """Without [limits]: any model, no session or USD limit, a turn ceiling of 4,000,000."""
    (tmp_path / "kit.toml").write_text("[agent]\nname = 'ok'\n")
    limits = load_project(tmp_path).limits
    assert limits == DEFAULT_LIMITS
    assert limits.turn_token_limit == DEFAULT_TURN_TOKENS == 4_000_000
    assert limits.allows("anything-at-all")
    assert not limits.in_usd
    assert limits.describe("turn_tokens") == (
        "limits.turn_tokens = 4000000 (kit's default; set another in kit.toml)"
    )


@pytest.mark.parametrize(
    ("limits", "agent", "needle"),
    [
        ("turn_token = 5", "", "unknown key limits.turn_token; allowed: models, prices, session_tokens, session_usd, turn_tokens, turn_usd."),
        ("turn_tokens = 0", "", "limits.turn_tokens must be a whole number of tokens from 1 to 1_000_000_000_000 (such as 500_000), got 0."),
        ("turn_tokens = 2.5", "", "limits.turn_tokens must be a whole number of tokens"),
        ("session_tokens = true", "", "limits.session_tokens must be a whole number of tokens"),
        ("session_tokens = '100'", "", "limits.session_tokens must be a whole number of tokens"),
        ("turn_usd = 0", "", "limits.turn_usd must be an amount of US dollars above 0 and at most 1_000_000 (such as 2.50), got 0."),
        ("session_usd = -1.5", "", "limits.session_usd must be an amount of US dollars above 0"),
        ("session_usd = nan", "", "limits.session_usd must be an amount of US dollars above 0"),
        ("session_usd = inf", "", "limits.session_usd must be an amount of US dollars above 0"),
        ("models = 'claude-x'", "", "limits.models must be a list of model ids"),
        ("models = ['claude x']", "", "limits.models must be a list of model ids"),
        ("models = ['']", "", "limits.models must be a list of model ids"),
        ("models = ['claude-haiku-*']", 'model = "claude-sonnet-5"', "agent.model 'claude-sonnet-5' is not allowed by limits.models = [\"claude-haiku-*\"] in kit.toml; add it to limits.models or choose an allowed model."),
        ("turn_usd = 1", 'model = "claude-fable-9"', "limits.turn_usd needs a price for agent.model 'claude-fable-9', and kit has none; add one under [limits.prices], such as \"claude-fable-9\" = { input = 3.0, output = 15.0 } (USD per million tokens)."),
        ("prices = 3", "", "limits.prices must be a table"),
        ("[limits.prices]\n'claude-x' = { input = 1 }", "", 'limits.prices."claude-x" must be a table with input and output'),
        ("[limits.prices]\n'claude-x' = { input = 1, output = 2, cache = 3 }", "", 'unknown key limits.prices."claude-x".cache; allowed: input, output, cache_write, cache_write_1h, cache_read.'),
        ("[limits.prices]\n'claude-x' = { input = -1, output = 2 }", "", 'limits.prices."claude-x".input must be US dollars per million tokens, from 0 to 10_000, got -1.'),
        ("[limits.prices]\n'claude x' = { input = 1, output = 2 }", "", "limits.prices key 'claude x' is not a model id or glob"),
    ],
)  # fmt: skip
def test_a_bad_limit_is_one_clear_line(
    tmp_path: Path, limits: str, agent: str, needle: str
) -> None:
    """Each mistake in [limits] is refused in one line naming kit.toml, the key and the fix."""
    with pytest.raises(ConfigError) as info:
        load_project(_project(tmp_path, limits, agent))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'kit.toml'}: ")
    assert needle in message


def test_limits_must_be_a_table(tmp_path: Path) -> None:
    """`limits = 5` is refused like any other table written as a value."""
    (tmp_path / "kit.toml").write_text("limits = 5\n[agent]\nname = 'ok'\n")
    with pytest.raises(ConfigError, match=r"limits must be a table \(\[limits\]\)"):
        load_project(tmp_path)


async def test_a_bad_limit_changes_no_stored_state(kit_tmp: Path) -> None:
    """`kit dev` on a project with a bad limit fails before it writes anything: a state dir
    holding an earlier build is left exactly as it was."""
    project = _project(kit_tmp / "proj", "turn_tokens = 1000")
    state = kit_tmp / "state"
    build_bundle(load_project(project), state / "bundles")
    before = sorted((p.relative_to(state), p.stat().st_mtime_ns) for p in state.rglob("*"))
    _project(kit_tmp / "proj", "turn_tokens = -1")
    with pytest.raises(ConfigError, match=r"limits\.turn_tokens must be a whole number"):
        async with run_stack(stack_settings(state, project)):
            pass
    assert sorted((p.relative_to(state), p.stat().st_mtime_ns) for p in state.rglob("*")) == before


def test_models_are_globs(tmp_path: Path) -> None:
    """limits.models entries are exact ids or case-sensitive fnmatch globs."""
    limits = Limits(models=("claude-haiku-4-5", "claude-sonnet-5*"))
    assert limits.allows("claude-haiku-4-5")
    assert not limits.allows("claude-haiku-4-5-20251001")
    assert limits.allows("claude-sonnet-5-5")
    assert not limits.allows("Claude-Sonnet-5")
    assert not limits.allows("claude-opus-5-5")


def test_prices_from_kit_toml_come_first_then_kits_table() -> None:
    """A [limits.prices] entry wins over kit's table; the first matching entry applies."""
    mine = Price.of(1, 2)
    limits = Limits(prices=(("claude-opus-5-5", mine),))
    assert limits.price_of("claude-opus-5-5") == mine
    assert limits.price_of("claude-opus-5-5-20260901") == Price.of(4, 20, cache_read=0.20)
    assert limits.price_of("claude-opus-5") == Price.of(5, 25)
    assert limits.price_of("claude-opus-4-1-20250805") == Price.of(15, 75)
    assert limits.price_of("claude-opus-4-6") == Price.of(5, 25)
    assert limits.price_of("claude-haiku-5-5") is None
    assert limits.price_of("gpt-4") is None
    assert all(p.output >= p.input > 0 for _, p in PRICES)


def test_a_price_counts_each_kind_of_token() -> None:
    """USD = tokens of each kind times its price per million; 1-hour writes at their own rate."""
    price = Price.of(4, 20)  # writes 5.0 (5 min) and 8.0 (1 h), reads 0.4
    tokens = Tokens(
        input=1_000_000,
        output=100_000,
        cache_write=300_000,
        cache_write_1h=100_000,
        cache_read=2_000_000,
    )
    assert tokens.total == 3_400_000
    assert price.usd(tokens) == pytest.approx(4 + 2 + 0.2 * 5 + 0.1 * 8 + 2 * 0.4)


def test_limits_travel_in_the_bundle(tmp_path: Path) -> None:
    """The keys set in [limits] are in the manifest and come back from open_bundle; a
    project without [limits] has none in its manifest and opens with the defaults."""
    src = _project(
        tmp_path / "a",
        'models = ["claude-x*"]\nturn_usd = 0.5\n[limits.prices]\n"claude-x*" = { input = 1, output = 2 }\n',
    )
    bundle = build_bundle(load_project(src), tmp_path / "out")
    manifest = json.loads((bundle.path / "kit-bundle.json").read_bytes())
    assert manifest["limits"] == {
        "models": ["claude-x*"],
        "turn_usd": 0.5,
        "prices": [
            [
                "claude-x*",
                {"input": 1.0, "output": 2.0, "cache_write": 1.25, "cache_write_1h": 2.0, "cache_read": 0.1},
            ]
        ],
    }  # fmt: skip
    assert open_bundle(bundle.path).limits == load_project(src).limits
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "kit.toml").write_text("[agent]\nname = 'ok'\n")
    plain = build_bundle(load_project(tmp_path / "b"), tmp_path / "out")
    assert "limits" not in json.loads((plain.path / "kit-bundle.json").read_bytes())
    assert plain.limits == DEFAULT_LIMITS


def test_a_damaged_limits_manifest_does_not_open(tmp_path: Path) -> None:
    """A manifest whose limits are not the right types is refused, naming the fix."""
    bundle = build_bundle(load_project(_project(tmp_path / "a", "turn_tokens = 10")), tmp_path)
    path = _rewrite_manifest(bundle.path, lambda m: m["limits"].update(turn_tokens="lots"))
    with pytest.raises(BundleError, match=r"limits are not valid .*; rebuild the bundle"):
        open_bundle(path)
