"""Customer profiles: RFM, lifecycle stage, tags and purchase predictions, one row per customer.

Why: every campaign targets customers by where they are in their lifecycle ("became at-risk this
week", "VIPs in Japan"), and the stage must mean the same in a JPY market and a EUR market.
Everything is computed per market from clean store frames (store_schema columns, aware UTC
timestamps), vectorized with numpy/pandas: one sort of the orders, bincounts and group ranks,
no per-customer Python. Thresholds live in include/lifecycle.yaml; ``describe_config`` renders
them as the markdown the DAG shows.

This module assigns the stages, assembles the profiles and finds stage transitions; the parts
it assembles come from remarketing.profiles.inputs (reading customers and orders,
``ProfileInputError``), .rfm (RFM scores and segment), .tags (favourite categories, price
sensitivity, preferred hour) and .clv (the purchase model).

Definitions (the contract the tests check):

* Valid orders: status not cancelled/refunded, placed at or before ``as_of``, not refunded in
  full by credit notes (remarketing.profiles.inputs: guests, out-of-scope customers, currencies,
  credit notes). Excluded orders are counted in ``ProfileResult.excluded_orders``; nothing else
  is dropped. Bad input (a market that is not configured, unknown product, naive timestamps,
  duplicate keys...) raises ``ProfileInputError`` naming keys.
* recency_days: days from the last valid order to ``as_of``; frequency: valid orders;
  monetary: their ``total_amount`` (after discounts) net of credit notes, in the market currency;
  avg_order_value = monetary / frequency; price_sensitivity: share of valid orders with a
  discount (``discount_amount > 0`` or a coupon code).
* r/f/m_score: 1..5 within the customer's market, over the market's buyers (recency ranked most
  recent highest): quintiles where values are distinct, ties share a score, and every level the
  data can support is used (``rfm.scores_within``). Prospects have none.
* favourite_categories: up to three categories with the highest spend (line quantity x unit
  price - line discount) over valid orders, ties by name; lines of uncategorised products count
  for no category.
* preferred_purchase_hour: the most frequent local hour of valid orders in the customer's time
  zone (resolved like send windows: profile, region, country, market default), ties earliest.
* p_alive, expected_purchases_90d: BG/NBD per market (remarketing.profiles.clv) on purchase days;
  null for prospects and for markets without a usable model (recorded in ``model_fits``).
* engagement_level / last_open_at / last_click_at: from the ``engagement`` frame
  (customer_id, last_open_at, last_click_at) of the email feedback loop; all null without it.
* Stages: see ``describe_config`` (and include/lifecycle.yaml); first matching rule wins.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from remarketing.markets import MarketConfig
from remarketing.profiles.clv import (
    DAY_US,
    ModelFit,
    PurchaseHistory,
    expected_purchases,
    fit_market_models,
    p_alive,
    purchase_history,
)
from remarketing.profiles.config import (
    ENGAGEMENT_LEVELS,
    HORIZON_DAYS,
    STAGE_PRECEDENCE,
    STAGES,
    LifecycleConfig,
    LifecycleConfigError,
)
from remarketing.profiles.frames import examples, int_keys, locate, require_columns, unique_or_fail, utc_micros
from remarketing.profiles.inputs import (
    NAT,
    Customers,
    ProfileInputError,
    as_of_micros,
    code_labels,
    profile_errors,
    read_customers,
    read_orders,
)
from remarketing.profiles.rfm import rfm_figures, rfm_segments
from remarketing.profiles.tags import customer_tags

PROFILE_COLUMNS = (
    "customer_id", "market", "currency", "stage", "recency_days", "frequency", "monetary", "r_score", "f_score",
    "m_score", "rfm_segment", "favourite_categories", "price_sensitivity", "avg_order_value",
    "preferred_purchase_hour", "engagement_level", "last_open_at", "last_click_at", "p_alive",
    "expected_purchases_90d", "first_order_at", "last_order_at", "computed_at",
)  # fmt: skip
TRANSITION_COLUMNS = ("customer_id", "market", "from_stage", "to_stage", "changed_on")


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class ProfileResult:
    """Profiles plus what a run needs to explain itself: fits, per-market figures, excluded orders."""

    profiles: pd.DataFrame
    model_fits: dict[str, ModelFit]
    market_stats: pd.DataFrame
    excluded_orders: dict[str, int]
    as_of: datetime
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def markets(self) -> tuple[str, ...]:
        """The markets this result covers (those of its customers)."""
        return tuple(self.market_stats["market"])

    def stage_counts(self) -> pd.DataFrame:
        """Customers per market and stage (every stage a column, zeros included)."""
        table = pd.crosstab(self.profiles["market"].astype(object), self.profiles["stage"].astype(object))
        return table.reindex(columns=list(STAGES), fill_value=0).rename_axis(index="market", columns=None)

    def to_xcom(self) -> dict:
        """Counts, thresholds and fits only: JSON-serialisable, no personal data."""
        stats = self.market_stats.astype(object).where(self.market_stats.notna(), None)
        return {
            "as_of": self.as_of.isoformat(),
            "customers": len(self.profiles),
            "stages": {m: {k: int(v) for k, v in row.items()} for m, row in self.stage_counts().iterrows()},
            "market_stats": stats.to_dict("records"),
            "model_fits": {code: fit.to_dict() for code, fit in self.model_fits.items()},
            "excluded_orders": dict(self.excluded_orders),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def summary_table(self) -> str:
        """A short text table for the task log: customers per market and stage, and the model used."""
        counts = self.stage_counts()
        header = ["market", *STAGES, "interval_d", "model"]
        rows = []
        stats = self.market_stats.set_index("market")
        for market, row in counts.iterrows():
            fit = self.model_fits.get(market)
            rows.append(
                [market, *(str(int(row[s])) for s in STAGES), f"{stats.loc[market, 'repurchase_interval_days']:.0f}",
                 fit.source if fit else "none"]
            )  # fmt: skip
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(out)

    def write_parquet(self, path) -> None:
        """The profiles as one Parquet file (a local path or an ObjectStoragePath)."""
        # Without pandas metadata: pandas cannot rebuild an Arrow list dtype from it; readers get plain columns.
        table = pa.Table.from_pandas(self.profiles, preserve_index=False).replace_schema_metadata(None)
        import pyarrow.parquet as pq

        if isinstance(path, str):
            pq.write_table(table, path)
            return
        with path.open("wb") as handle:  # pathlib.Path or Airflow's ObjectStoragePath (file://, s3://...)
            pq.write_table(table, handle)


def _timestamps(micros: np.ndarray) -> pd.arrays.DatetimeArray:
    """int64 UTC microseconds (INT64 min = NaT) -> aware UTC timestamps."""
    return pd.array(np.asarray(micros, dtype=np.int64).view("datetime64[us]"), dtype=pd.DatetimeTZDtype("us", UTC))


# ---------------------------------------------------------------------------------------------
# the computation


@profile_errors
def compute_profiles(
    customers: pd.DataFrame,
    orders: pd.DataFrame,
    order_items: pd.DataFrame,
    products: pd.DataFrame,
    *,
    markets: MarketConfig,
    as_of: datetime,
    config: LifecycleConfig,
    engagement: pd.DataFrame | None = None,
    model_fits: Mapping[str, ModelFit | Mapping] | None = None,
    fx=None,
) -> ProfileResult:
    """One profile per customer (sorted by customer_id); see the module docstring for definitions.

    ``model_fits`` (e.g. a previous result's, or ``ModelFit.to_dict()`` values) are reused for
    their markets instead of fitting; other markets are fitted. Raises ProfileInputError for bad
    input and LifecycleConfigError for overrides of markets that are not configured.
    """
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now

    as_of_us = as_of_micros(as_of)
    unknown = sorted(set(config.markets) - set(markets.codes))
    if unknown:
        raise LifecycleConfigError(f"lifecycle overrides for markets that are not configured: {', '.join(unknown)}")
    cust = read_customers(customers, markets)
    ords = read_orders(orders, cust, as_of_us, fx)
    lap("read")

    history = purchase_history(ords.customer[ords.valid], ords.placed[ords.valid], len(cust.ids))
    rfm = rfm_figures(cust, ords, history, as_of_us)
    lap("rfm")

    tags = customer_tags(customers, order_items, products, cust, ords, history, markets)
    lap("tags")

    rows = np.flatnonzero(rfm["buyer"])
    fits, alive, expected = _purchase_model(cust, history, rows, as_of_us, config, model_fits)
    lap("model")

    stages = _stages(cust, rfm, history, alive, rows, as_of_us, config)
    segments = rfm_segments(rfm, config)
    engaged = _engagement(engagement, cust, as_of_us, config)
    lap("stages")

    profiles = _profile_frame(cust, history, rfm, stages.stage, segments, tags, alive, expected, engaged, as_of_us)
    stats = _market_stats(cust, rows, stages, fits)
    excluded = dict(ords.excluded)
    excluded["engagement_rows_without_customer"] = engaged[3]
    excluded["customers_out_of_scope"] = cust.out_of_scope
    lap("assemble")
    return ProfileResult(profiles, fits, stats, excluded, as_of.astimezone(UTC), seconds)


def _purchase_model(
    cust: Customers,
    history: PurchaseHistory,
    rows: np.ndarray,
    as_of_us: int,
    config: LifecycleConfig,
    model_fits: Mapping[str, ModelFit | Mapping] | None,
) -> tuple[dict[str, ModelFit], np.ndarray, np.ndarray]:
    """Per-market BG/NBD fits over the buyers ``rows``, and p_alive / expected purchases (NaN without a model)."""
    n = len(cust.ids)
    x, t_x, T = history.model_inputs(as_of_us)
    market_labels = np.asarray(cust.codes, dtype=object)
    fits = fit_market_models(
        market_labels[cust.market[rows]], cust.ids[rows], x[rows], t_x[rows], T[rows],
        min_repeat_buyers=config.model.min_repeat_buyers, fit_sample=config.model.fit_sample, given=model_fits,
    )  # fmt: skip
    alive = np.full(n, np.nan)
    expected = np.full(n, np.nan)
    for code, fit in fits.items():
        if fit.params is None:
            continue
        sel = rows[cust.market[rows] == cust.codes.index(code)]
        alive[sel] = p_alive(fit.params, x[sel], t_x[sel], T[sel])
        expected[sel] = expected_purchases(fit.params, HORIZON_DAYS, x[sel], t_x[sel], T[sel])
    return fits, alive, expected


@dataclass
class _Stages:
    """Stage codes per customer and the per-market thresholds behind them (reported in the market stats)."""

    stage: np.ndarray
    interval: np.ndarray  # at-risk threshold in days, per market code
    interval_source: list[str]
    vip_monetary: np.ndarray  # VIP spend threshold, per market code (NaN without buyers)


def _stages(
    cust: Customers,
    rfm: dict[str, np.ndarray],
    history: PurchaseHistory,
    alive: np.ndarray,
    rows: np.ndarray,
    as_of_us: int,
    config: LifecycleConfig,
) -> _Stages:
    """Thresholds per market, then the first matching rule per customer in STAGE_PRECEDENCE."""
    interval, interval_source = _repurchase_intervals(history, cust, config)
    thresholds = [config.for_market(code) for code in cust.codes]
    new_days = np.array([t.new_days for t in thresholds])[cust.market]
    dormant_p = np.array([t.dormant.p_alive_below for t in thresholds])[cust.market]
    dormant_days = np.array([t.dormant.recency_days for t in thresholds])[cust.market]
    vip_orders = np.array([t.vip.min_orders for t in thresholds])[cust.market]
    vip_monetary = np.full(len(cust.codes), np.nan)
    for k, t in enumerate(thresholds):
        spend = rfm["monetary"][rows[cust.market[rows] == k]]
        if len(spend):
            vip_monetary[k] = np.quantile(spend, t.vip.monetary_quantile)
    buyer = rfm["buyer"]
    recency = rfm["recency_days"]
    since_first = np.where(buyer, (as_of_us - history.first_at) / DAY_US, np.nan)
    with np.errstate(invalid="ignore"):
        conditions = {
            "prospect": ~buyer,
            "new": since_first <= new_days,
            "dormant": (alive < dormant_p) | (recency > dormant_days),
            "at_risk": recency > interval[cust.market],
            "vip": (rfm["frequency"] >= vip_orders) & (rfm["monetary"] >= vip_monetary[cust.market]),
            "active": np.ones(len(cust.ids), dtype=bool),
        }
    stage = np.select([conditions[s] for s in STAGE_PRECEDENCE], [STAGES.index(s) for s in STAGE_PRECEDENCE])
    return _Stages(stage, interval, interval_source, vip_monetary)


def _profile_frame(
    cust: Customers,
    history: PurchaseHistory,
    rfm: dict[str, np.ndarray],
    stage: np.ndarray,
    segments: tuple[np.ndarray, list[str]],
    tags: tuple,
    alive: np.ndarray,
    expected: np.ndarray,
    engaged: tuple,
    as_of_us: int,
) -> pd.DataFrame:
    """The profiles frame in PROFILE_COLUMNS order, built from the arrays without copies."""
    n = len(cust.ids)
    buyer = rfm["buyer"]
    segment, segment_names = segments
    favourites, discounted, hour = tags
    level, last_open, last_click, _ = engaged
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(
            copy=False,
            data={
                "customer_id": cust.ids,
                "market": code_labels(cust.codes, cust.market),
                "currency": code_labels(cust.currency, cust.market),
                "stage": code_labels(STAGES, stage),
                "recency_days": rfm["recency_days"],
                "frequency": rfm["frequency"],
                "monetary": rfm["monetary"],
                **{k: pd.arrays.IntegerArray(rfm[k], ~buyer) for k in ("r_score", "f_score", "m_score")},
                "rfm_segment": code_labels(segment_names, segment),
                "favourite_categories": favourites,
                "price_sensitivity": np.where(buyer, discounted / np.maximum(rfm["frequency"], 1), np.nan),
                "avg_order_value": np.where(buyer, rfm["monetary"] / np.maximum(rfm["frequency"], 1), np.nan),
                "preferred_purchase_hour": pd.arrays.IntegerArray(np.maximum(hour, 0), hour < 0),
                "engagement_level": code_labels(ENGAGEMENT_LEVELS, np.full(n, -1) if level is None else level),
                "last_open_at": _timestamps(last_open),
                "last_click_at": _timestamps(last_click),
                "p_alive": alive,
                "expected_purchases_90d": expected,
                "first_order_at": _timestamps(np.where(buyer, history.first_at, NAT)),
                "last_order_at": _timestamps(np.where(buyer, history.last_at, NAT)),
                "computed_at": _timestamps(np.full(n, as_of_us, dtype=np.int64)),
            },
        )


def _market_stats(cust: Customers, rows: np.ndarray, stages: _Stages, fits: dict[str, ModelFit]) -> pd.DataFrame:
    """Per market with customers: counts, the thresholds used and the model's source, for the run's summary."""
    present = np.bincount(cust.market, minlength=len(cust.codes)) > 0
    buyers_per_market = np.bincount(cust.market[rows], minlength=len(cust.codes))
    return pd.DataFrame(
        {
            "market": cust.codes,
            "currency": cust.currency,
            "customers": np.bincount(cust.market, minlength=len(cust.codes)),
            "buyers": buyers_per_market,
            "repurchase_interval_days": stages.interval,
            "interval_source": stages.interval_source,
            "vip_monetary_threshold": stages.vip_monetary,
            "model": [fits[c].source if c in fits else "none" for c in cust.codes],
        }
    )[present].reset_index(drop=True)


def _repurchase_intervals(history, cust: Customers, config: LifecycleConfig) -> tuple[np.ndarray, list[str]]:
    """Per market code: the at-risk threshold in days and where it came from."""
    gap_market = cust.market[history.gap_customer]
    days = np.empty(len(cust.codes))
    sources: list[str] = []
    for code_index, code in enumerate(cust.codes):
        rule = config.for_market(code).at_risk
        gaps = history.gaps_days[gap_market == code_index]
        if len(gaps) >= rule.min_gaps:
            raw, source = float(np.quantile(gaps, rule.interval_quantile)), "market"
        elif len(history.gaps_days) >= rule.min_gaps:
            raw, source = float(np.quantile(history.gaps_days, rule.interval_quantile)), "pooled"
        else:
            raw, source = rule.default_interval_days / rule.interval_factor, "default"
        days[code_index] = min(max(raw * rule.interval_factor, rule.min_interval_days), rule.max_interval_days)
        sources.append(source)
    return days, sources


def _engagement(engagement: pd.DataFrame | None, cust: Customers, as_of_us: int, config: LifecycleConfig):
    n = len(cust.ids)
    last_open = np.full(n, NAT, dtype=np.int64)
    last_click = np.full(n, NAT, dtype=np.int64)
    if engagement is None:
        return None, last_open, last_click, 0
    require_columns(engagement, "engagement", ["customer_id", "last_open_at", "last_click_at"])
    ids = int_keys(engagement, "engagement", "customer_id")
    unique_or_fail(ids, "engagement", "customer_id")
    pos = locate(cust.ids, ids)
    known = pos >= 0
    last_open[pos[known]] = utc_micros(engagement, "engagement", "last_open_at", "customer_id")[known]
    last_click[pos[known]] = utc_micros(engagement, "engagement", "last_click_at", "customer_id")[known]
    rule = config.engagement
    has_open, has_click = last_open != NAT, last_click != NAT
    click_age = np.where(has_click, (as_of_us - last_click) / DAY_US, np.inf)
    open_age = np.where(has_open, (as_of_us - last_open) / DAY_US, np.inf)
    level = np.select(
        [click_age <= rule.high_click_days, np.minimum(click_age, open_age) <= rule.medium_days, has_open | has_click],
        [0, 1, 2],
        3,
    )
    return level, last_open, last_click, int(np.count_nonzero(~known))


# ---------------------------------------------------------------------------------------------
# transitions


def _stage_frame(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    require_columns(frame, name, ["customer_id", "market", "stage"])
    ids = int_keys(frame, name, "customer_id")
    unique_or_fail(ids, name, "customer_id")
    stage = frame["stage"].to_numpy(dtype=object)
    bad = ~pd.Series(stage).isin(STAGES).to_numpy()
    if bad.any():
        raise ProfileInputError(f"{name}.stage is not one of {', '.join(STAGES)}; customer_id: {examples(ids[bad])}")
    return ids, stage


@profile_errors
def stage_transitions(previous: pd.DataFrame | None, current: pd.DataFrame, *, as_of: datetime) -> pd.DataFrame:
    """Customers whose stage changed since ``previous``: customer_id, market, from_stage, to_stage, changed_on.

    A customer absent from ``previous`` enters with from_stage null. With no previous profiles at
    all (None or empty: the first run, or a market's first run) there is no transition: history
    starts at the first run, so a first run never claims that everyone "became" their stage.
    Customers in ``previous`` but not in ``current`` are not transitions (they left the store).
    """
    changed_on = pd.Timestamp(as_of_micros(as_of), unit="us", tz=UTC).date()
    ids, stage = _stage_frame(current, "current")
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in TRANSITION_COLUMNS}).astype({"customer_id": np.int64})
    if previous is None or len(previous) == 0:
        return empty
    prev_ids, prev_stage = _stage_frame(previous, "previous")
    pos = locate(prev_ids, ids)
    before = np.where(pos >= 0, prev_stage[np.maximum(pos, 0)], None)
    changed = (pos < 0) | (before != stage)
    if not changed.any():
        return empty
    return pd.DataFrame(
        {
            "customer_id": ids[changed],
            "market": current["market"].to_numpy(dtype=object)[changed],
            "from_stage": before[changed],
            "to_stage": stage[changed],
            "changed_on": np.full(int(changed.sum()), changed_on, dtype=object),
        }
    ).reset_index(drop=True)
