"""The lifecycle configuration (include/lifecycle.yaml): stage rules, thresholds, per-market overrides.

Validated on load; an error names the market and field. ``describe_config`` renders the rules
as the Markdown the lifecycle_segments DAG shows (a test keeps the two in step).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from remarketing.platform import settings

DEFAULT_LIFECYCLE_FILE = settings.DEFAULT_LIFECYCLE_FILE
STAGES = ("prospect", "new", "active", "vip", "at_risk", "dormant")
STAGE_PRECEDENCE = ("prospect", "new", "dormant", "at_risk", "vip", "active")  # first match wins
HORIZON_DAYS = 90  # expected_purchases_90d
ENGAGEMENT_LEVELS = ("high", "medium", "low", "none")


class LifecycleConfigError(ValueError):
    """include/lifecycle.yaml (or another lifecycle file) is missing or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AtRiskRule(_Strict):
    interval_quantile: float = Field(gt=0, lt=1)
    interval_factor: float = Field(gt=0)
    min_interval_days: float = Field(gt=0)
    max_interval_days: float = Field(gt=0)
    min_gaps: int = Field(ge=1)
    default_interval_days: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AtRiskRule:
        if not self.min_interval_days <= self.default_interval_days <= self.max_interval_days:
            raise ValueError("needs min_interval_days <= default_interval_days <= max_interval_days")
        return self


class DormantRule(_Strict):
    p_alive_below: float = Field(ge=0, le=1)
    recency_days: float = Field(gt=0)


class VipRule(_Strict):
    min_orders: int = Field(ge=1)
    monetary_quantile: float = Field(ge=0, le=1)


class StageThresholds(_Strict):
    new_days: float = Field(ge=0)
    at_risk: AtRiskRule
    dormant: DormantRule
    vip: VipRule


class ModelSettings(_Strict):
    min_repeat_buyers: int = Field(ge=1)
    fit_sample: int = Field(ge=100)


class EngagementRule(_Strict):
    high_click_days: float = Field(gt=0)
    medium_days: float = Field(gt=0)


class LifecycleConfig(_Strict):
    stages: StageThresholds
    markets: dict[str, StageThresholds] = Field(default_factory=dict)  # defaults merged with overrides
    overrides: dict[str, dict] = Field(default_factory=dict)  # as written, for the documentation
    model: ModelSettings
    engagement: EngagementRule
    rfm_segments: dict[int, tuple[str, str, str, str, str]]

    @field_validator("rfm_segments")
    @classmethod
    def _grid(cls, value: dict[int, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
        if sorted(value) != [1, 2, 3, 4, 5]:
            raise ValueError(f"needs exactly the R scores 1..5 as keys, got {sorted(value)}")
        return value

    def for_market(self, code: str) -> StageThresholds:
        return self.markets.get(code, self.stages)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _problems(exc: ValidationError, prefix: str) -> list[str]:
    return [f"{prefix}{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]


def parse_lifecycle_config(raw: object, source: str = "<lifecycle>") -> LifecycleConfig:
    """Validate an already-parsed YAML document; errors name the field (``markets.JP.vip...``)."""
    if not isinstance(raw, dict):
        raise LifecycleConfigError(f"{source}: expected a mapping with stages, model, engagement, rfm_segments")
    problems: list[str] = []
    overrides = raw.get("markets") or {}
    if not isinstance(overrides, dict):
        raise LifecycleConfigError(f"{source} is invalid:\n  markets: expected a mapping of market code to overrides")
    stages = raw.get("stages")
    merged: dict[str, StageThresholds] = {}
    for code, body in overrides.items():
        if not isinstance(code, str) or len(code) != 2 or not code.isupper():
            problems.append(f"markets.{code}: market codes are two upper-case letters")
            continue
        if not isinstance(body, dict):
            problems.append(f"markets.{code}: expected a mapping of stage thresholds")
            continue
        if isinstance(stages, dict):
            try:
                merged[code] = StageThresholds(**_merge(stages, body))
            except ValidationError as exc:
                problems += _problems(exc, f"markets.{code}.")
            except TypeError as exc:
                problems.append(f"markets.{code}: {exc}")
    try:
        config = LifecycleConfig(
            **{key: value for key, value in raw.items() if key != "markets"}, markets=merged, overrides=overrides
        )
    except ValidationError as exc:
        problems = _problems(exc, "") + problems
        config = None
    if problems:
        raise LifecycleConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems))
    return config


def lifecycle_file() -> Path:
    return settings.lifecycle_file()


def _days(value: float) -> str:
    return f"{value:g} day" + ("" if value == 1 else "s")


def _pct(q: float) -> str:
    return f"{q * 100:g}th percentile"


def describe_config(config: LifecycleConfig) -> str:
    """The stage, RFM and engagement rules with this config's thresholds, as a markdown section."""
    s = config.stages
    risk = s.at_risk
    lines = [
        "### Lifecycle stages",
        "",
        "Each customer has exactly one stage per run: the first rule below that matches. Only valid orders count "
        "(cancelled and refunded orders never do, nor orders after the run's as-of instant).",
        "",
        "| stage | rule |",
        "| --- | --- |",
        "| prospect | registered, no valid order |",
        f"| new | first valid order at most {_days(s.new_days)} ago |",
        f"| dormant | purchase model P(alive) below {s.dormant.p_alive_below:g}, or last order more than "
        f"{_days(s.dormant.recency_days)} ago |",
        "| at_risk | last order longer ago than the market's repurchase interval: the "
        f"{_pct(risk.interval_quantile)} of the market's gaps between a customer's purchase days × "
        f"{risk.interval_factor:g}, kept within {risk.min_interval_days:g}–{risk.max_interval_days:g} days "
        f"(fewer than {risk.min_gaps} gaps: all markets' gaps; fewer overall: {_days(risk.default_interval_days)}) |",
        f"| vip | at least {s.vip.min_orders} valid orders and monetary at or above the "
        f"{_pct(s.vip.monetary_quantile)} of the market's buyers |",
        "| active | every other buyer |",
        "",
    ]
    if config.overrides:
        lines.append("Per-market overrides:")
        lines.append("")

        def flatten(prefix: str, value) -> list[str]:
            if isinstance(value, dict):
                return [item for k, v in value.items() for item in flatten(f"{prefix}.{k}" if prefix else k, v)]
            return [f"`{prefix}` = {value}"]

        for code, body in sorted(config.overrides.items()):
            lines.append(f"- {code}: " + ", ".join(flatten("", body)))
        lines.append("")
    lines += [
        "### RFM",
        "",
        "Recency, frequency (valid orders) and monetary (their totals in the market currency) are scored 1–5 "
        "within each market's buyers, so markets in different currencies are comparable.",
        "",
        "**How RFM scores are given.** The market's buyers are sorted from the weakest to the best value (oldest "
        "to most recent last order, fewest to most orders, lowest to highest monetary) and cut into five at "
        "20/40/60/80 %; the score is 1 + the cuts below the buyer. Equal values always "
        "share a score, so each cut moves to the nearest border between two different values (a tie of "
        "distances: the lower border), which is `1 + floor(5 × (average rank − ½) / buyers)`: the exact "
        "quintiles when no values are equal. When ties would leave a score empty (two cuts on one border, or "
        "a cut below the lowest or above the highest value), the cuts are instead spread over distinct borders "
        "moving them as little as possible in total, so a market with k different values uses min(k, 5) "
        "scores, placed by where the values fall (three equally common values: 1, 3, 5; one shared by 80 % "
        "and two by 10 % each: 3, 4, 5) and a higher value never scores lower.",
        "",
        "The segment is looked up by R and FM = ⌈(F + M) / 2⌉:",
        "",
        "| R \\ FM | 1 | 2 | 3 | 4 | 5 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in (5, 4, 3, 2, 1):
        lines.append(f"| {r} | " + " | ".join(config.rfm_segments[r]) + " |")
    e = config.engagement
    lines += [
        "",
        "### Predictions and tags",
        "",
        f"P(alive) and expected purchase days in the next {HORIZON_DAYS} days come from a BG/NBD model fitted per "
        f"market by maximum likelihood (a market with fewer than {config.model.min_repeat_buyers} repeat buyers uses "
        "the fit of all markets pooled; the reason is recorded). Engagement level: high = a click within "
        f"{_days(e.high_click_days)}, medium = an open or click within {_days(e.medium_days)}, low = older "
        "activity only, none = no recorded open or click; empty until the email feedback loop provides engagement.",
    ]
    return "\n".join(lines)


def load_lifecycle_config(path: str | Path | None = None) -> LifecycleConfig:
    """Load and validate include/lifecycle.yaml (or ``path``, or $REMARKETING_LIFECYCLE_FILE); cached until the file changes."""
    return settings.load_config(
        path or lifecycle_file(),
        what="lifecycle configuration",
        parse=parse_lifecycle_config,
        error=LifecycleConfigError,
    )
