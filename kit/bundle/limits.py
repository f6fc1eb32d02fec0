"""Spend limits: what ``kit.toml`` ``[limits]`` says, and what model calls cost.

``[limits]`` (every key optional)::

    [limits]
    models = ["claude-sonnet-5*", "claude-haiku-4-5"]
                            # the models the agent may call: model ids, or globs with * ? [ ]
                            # (fnmatch, case-sensitive); default: any model
    turn_tokens = 500000    # model tokens one turn may use; default 4,000,000
    session_tokens = 5000000   # model tokens one session may use; default: no limit
    turn_usd = 2.50         # USD one turn may spend; default: no limit
    session_usd = 20        # USD one session may spend; default: no limit

    [limits.prices]         # USD per million tokens; tried before kit's own table
    "claude-haiku-5-5*" = { input = 0.10, output = 0.50 }
                            # optional: cache_write (5-minute writes, default 1.25 x input),
                            # cache_write_1h (default 2 x input), cache_read (0.1 x input)

The host's model proxy (:mod:`kit.host.spend`) enforces them. A token is any model token
the Messages API reports: input + output + cache writes + cache reads. A call is refused
once a limit is *reached*, so the call that crosses it completes: one call can overshoot
by its own input plus up to its ``max_tokens`` of output.

A USD limit prices each call with the first matching entry of ``[limits.prices]``, then
of :data:`PRICES`. A call to a model neither prices is refused while a USD limit is set,
never counted as free; an ``agent.model`` without a price is refused when kit.toml loads.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, fields
from typing import Any

from kit.bundle.errors import ConfigError

DEFAULT_TURN_TOKENS = 4_000_000
"""The per-turn token ceiling when kit.toml sets none: about 16 model calls (the default
``agent.max_turns``) over a 250,000-token context. It stops a runaway or compromised
agent; it is not a budget (at Claude Opus 5.5 prices it is up to $16 of uncached input
and $80 of output)."""
MAX_TOKENS_LIMIT = 10**12
MAX_USD_LIMIT = 1_000_000.0
MAX_PRICE = 10_000.0
"""USD per million tokens: a sanity bound on a ``[limits.prices]`` entry."""

PRICES_AS_OF = "2026-12-04"
PRICES_SOURCE = "https://platform.claude.com/docs/en/about-claude/pricing"

_MODEL_RE = re.compile(r"^[A-Za-z0-9._:@/*?\[\]!-]{1,200}$")
_PRICE_KEYS = ("input", "output", "cache_write", "cache_write_1h", "cache_read")
_KEYS = ("models", "turn_tokens", "session_tokens", "turn_usd", "session_usd", "prices")


@dataclass(frozen=True)
class Tokens:
    """Token counts of one call (or a sum of calls), as the Messages API's ``usage`` gives them."""

    input: int = 0
    output: int = 0
    cache_write: int = 0
    """``cache_creation_input_tokens``: every cache write, 5-minute and 1-hour."""
    cache_write_1h: int = 0
    """Of :attr:`cache_write`, those written for an hour (``cache_creation.ephemeral_1h_input_tokens``)."""
    cache_read: int = 0

    @property
    def total(self) -> int:
        """What a token limit counts: input + output + cache writes + cache reads."""
        return self.input + self.output + self.cache_write + self.cache_read

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Tokens) -> Tokens:
        return Tokens(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Price:
    """USD per million tokens of each kind."""

    input: float
    output: float
    cache_write: float
    """5-minute cache writes."""
    cache_write_1h: float
    cache_read: float

    @classmethod
    def of(
        cls,
        input: float,
        output: float,
        *,
        cache_write: float | None = None,
        cache_write_1h: float | None = None,
        cache_read: float | None = None,
    ) -> Price:
        """A price with Anthropic's usual cache multipliers where none is given: 5-minute
        writes 1.25 x input, 1-hour writes 2 x input, reads 0.1 x input."""
        return cls(
            input,
            output,
            input * 1.25 if cache_write is None else cache_write,
            input * 2 if cache_write_1h is None else cache_write_1h,
            input * 0.1 if cache_read is None else cache_read,
        )

    def usd(self, tokens: Tokens) -> float:
        """What ``tokens`` cost."""
        write_5m = max(0, tokens.cache_write - tokens.cache_write_1h)
        return (
            tokens.input * self.input
            + tokens.output * self.output
            + write_5m * self.cache_write
            + tokens.cache_write_1h * self.cache_write_1h
            + tokens.cache_read * self.cache_read
        ) / 1_000_000


PRICES: tuple[tuple[str, Price], ...] = (
    ("claude-opus-5-5*", Price.of(4, 20, cache_read=0.20)),
    ("claude-opus-5*", Price.of(5, 25)),
    ("claude-opus-4-[5-8]*", Price.of(5, 25)),
    ("claude-opus-4*", Price.of(15, 75)),
    ("claude-3-opus*", Price.of(15, 75)),
    ("claude-sonnet-5*", Price.of(2, 10, cache_read=0.20)),
    ("claude-sonnet-4*", Price.of(3, 15)),
    ("claude-3-7-sonnet*", Price.of(3, 15)),
    ("claude-haiku-4-5*", Price.of(1, 5)),
    ("claude-3-5-haiku*", Price.of(0.80, 4)),
    ("claude-3-haiku*", Price.of(0.25, 1.25, cache_write=0.30, cache_write_1h=0.50, cache_read=0.03)),
)  # fmt: skip
"""kit's own prices (USD per million tokens) as of :data:`PRICES_AS_OF`, from
:data:`PRICES_SOURCE` and the models' pages there; first match wins. Standard API rates:
no batch discount, no long-context or regional surcharge (Sonnet 4 and 4.5 prompts over
200k tokens cost more than this says). Where sources disagreed (Sonnet 5.5's cache reads)
the higher price is kept, so a limit trips early rather than late. Models priced in
bands (Claude Haiku 5.5) or not listed (Fable, Mythos) are left out: give them a price
in ``[limits.prices]``."""


@dataclass(frozen=True)
class Limits:
    """``[limits]`` as written (None: the key is not set)."""

    models: tuple[str, ...] = ()
    turn_tokens: int | None = None
    session_tokens: int | None = None
    turn_usd: float | None = None
    session_usd: float | None = None
    prices: tuple[tuple[str, Price], ...] = ()
    """``[limits.prices]``, in file order."""

    @property
    def turn_token_limit(self) -> int:
        """The per-turn token ceiling in force (:data:`DEFAULT_TURN_TOKENS` when unset)."""
        return DEFAULT_TURN_TOKENS if self.turn_tokens is None else self.turn_tokens

    @property
    def in_usd(self) -> bool:
        """Whether a USD limit is set (calls must then be priced)."""
        return self.turn_usd is not None or self.session_usd is not None

    def allows(self, model: str) -> bool:
        """Whether ``limits.models`` lets the agent call ``model``."""
        return not self.models or any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def price_of(self, model: str) -> Price | None:
        """The price of ``model``: ``[limits.prices]`` first, then :data:`PRICES`."""
        for pattern, price in (*self.prices, *PRICES):
            if fnmatch.fnmatchcase(model, pattern):
                return price
        return None

    def describe(self, key: str) -> str:
        """``limits.<key> = <value> in kit.toml``, or that kit's default applies."""
        if key == "turn_tokens" and self.turn_tokens is None:
            return (
                f"limits.turn_tokens = {DEFAULT_TURN_TOKENS} (kit's default; set another "
                "in kit.toml)"
            )
        value = getattr(self, key)
        if key == "models":
            shown = "[" + ", ".join(f'"{m}"' for m in value) + "]"
        else:
            whole = isinstance(value, float) and value.is_integer()
            shown = str(int(value)) if whole else str(value)
        return f"limits.{key} = {shown} in kit.toml"

    def to_manifest(self) -> dict[str, Any]:
        """The keys that are set, as the bundle manifest stores them (prices as a list of
        ``[pattern, {...}]`` pairs: their order matters)."""
        out: dict[str, Any] = {}
        for key in ("models", "turn_tokens", "session_tokens", "turn_usd", "session_usd"):
            value = getattr(self, key)
            if value:
                out[key] = list(value) if key == "models" else value
        if self.prices:
            out["prices"] = [
                [pattern, {k: getattr(price, k) for k in _PRICE_KEYS}]
                for pattern, price in self.prices
            ]
        return out

    @classmethod
    def from_manifest(cls, raw: dict[str, Any]) -> Limits:
        """The inverse of :meth:`to_manifest` (raises ``KeyError``/``TypeError``/``ValueError``
        on a damaged manifest)."""
        return cls(
            models=tuple(str(m) for m in raw.get("models", ())),
            turn_tokens=_opt_int(raw.get("turn_tokens")),
            session_tokens=_opt_int(raw.get("session_tokens")),
            turn_usd=_opt_float(raw.get("turn_usd")),
            session_usd=_opt_float(raw.get("session_usd")),
            prices=tuple(
                (str(pattern), Price(*(float(price[k]) for k in _PRICE_KEYS)))
                for pattern, price in raw.get("prices", ())
            ),
        )


DEFAULT_LIMITS = Limits()
"""No ``[limits]`` table: any model, a turn ceiling of :data:`DEFAULT_TURN_TOKENS` tokens."""


def parse_limits(where: str, raw: dict[str, Any], model: str | None) -> Limits:
    """``[limits]`` from kit.toml (``where`` names the file); ``model`` is ``agent.model``,
    checked against the allowlist and, with a USD limit, the prices."""
    for key in raw:
        if key not in _KEYS:
            raise ConfigError(
                f"{where}: unknown key limits.{key}; allowed: {', '.join(sorted(_KEYS))}."
            )
    models = raw.get("models", [])
    if not isinstance(models, list) or not all(
        isinstance(m, str) and _MODEL_RE.match(m) for m in models
    ):
        raise ConfigError(
            f'{where}: limits.models must be a list of model ids such as ["claude-sonnet-5", '
            '"claude-haiku-*"] (globs with * ? [ ]; no spaces).'
        )
    limits = Limits(
        models=tuple(models),
        turn_tokens=_tokens(where, raw, "turn_tokens"),
        session_tokens=_tokens(where, raw, "session_tokens"),
        turn_usd=_usd(where, raw, "turn_usd"),
        session_usd=_usd(where, raw, "session_usd"),
        prices=_prices(where, raw.get("prices", {})),
    )
    if model is not None and not limits.allows(model):
        raise ConfigError(
            f"{where}: agent.model {model!r} is not allowed by {limits.describe('models')}; "
            "add it to limits.models or choose an allowed model."
        )
    if model is not None and limits.in_usd and limits.price_of(model) is None:
        key = "turn_usd" if limits.turn_usd is not None else "session_usd"
        raise ConfigError(
            f"{where}: limits.{key} needs a price for agent.model {model!r}, and kit has none; "
            f'add one under [limits.prices], such as "{model}" = {{ input = 3.0, output = 15.0 }} '
            "(USD per million tokens)."
        )
    return limits


def _tokens(where: str, raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_TOKENS_LIMIT:
        raise ConfigError(
            f"{where}: limits.{key} must be a whole number of tokens from 1 to "
            f"{MAX_TOKENS_LIMIT:_} (such as 500_000), got {value!r}."
        )
    return value


def _usd(where: str, raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 < value <= MAX_USD_LIMIT
    ):
        raise ConfigError(
            f"{where}: limits.{key} must be an amount of US dollars above 0 and at most "
            f"{MAX_USD_LIMIT:_.0f} (such as 2.50), got {value!r}."
        )
    return float(value)


def _prices(where: str, raw: object) -> tuple[tuple[str, Price], ...]:
    if not isinstance(raw, dict):
        raise ConfigError(
            f'{where}: limits.prices must be a table such as [limits.prices] "claude-x*" = '
            "{ input = 3.0, output = 15.0 } (USD per million tokens)."
        )
    out = []
    for pattern, entry in raw.items():
        if not _MODEL_RE.match(pattern):
            raise ConfigError(
                f"{where}: limits.prices key {pattern!r} is not a model id or glob (letters, "
                "digits, . - _ : @ / and * ? [ ]; no spaces)."
            )
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise ConfigError(
                f'{where}: limits.prices."{pattern}" must be a table with input and output, '
                "such as { input = 3.0, output = 15.0 } (USD per million tokens)."
            )
        for key, value in entry.items():
            if key not in _PRICE_KEYS:
                raise ConfigError(
                    f'{where}: unknown key limits.prices."{pattern}".{key}; allowed: '
                    f"{', '.join(_PRICE_KEYS)}."
                )
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or not 0 <= value <= MAX_PRICE
            ):
                raise ConfigError(
                    f'{where}: limits.prices."{pattern}".{key} must be US dollars per million '
                    f"tokens, from 0 to {MAX_PRICE:_.0f}, got {value!r}."
                )
        out.append((pattern, Price.of(**{k: float(v) for k, v in entry.items()})))
    return tuple(out)


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)
