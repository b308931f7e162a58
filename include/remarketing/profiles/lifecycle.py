"""Customer profiles: RFM, lifecycle stage, tags and purchase predictions, one row per customer.

Why: every campaign targets customers by where they are in their lifecycle ("became at-risk this
week", "VIPs in Japan"), and the stage must mean the same in a JPY market and a EUR market.
Everything is computed per market from clean store frames (store_schema columns, aware UTC
timestamps), vectorized with numpy/pandas: one sort of the orders, bincounts and group ranks,
no per-customer Python. Thresholds live in include/lifecycle.yaml; ``describe_config`` renders
them as the markdown the DAG shows.

Definitions (the contract the tests check):

* Valid orders: status not cancelled/refunded and placed at or before ``as_of``. Excluded orders
  are counted in ``ProfileResult.excluded_orders``; nothing else is dropped. Bad input (unknown
  customer, market, order or product, naive timestamps, duplicate keys, an order in a currency
  other than its customer's market currency...) raises ``ProfileInputError`` naming keys.
* recency_days: days from the last valid order to ``as_of``; frequency: valid orders;
  monetary: their ``total_amount`` (after discounts) summed, in the market currency;
  avg_order_value = monetary / frequency; price_sensitivity: share of valid orders with a
  discount (``discount_amount > 0`` or a coupon code).
* r/f/m_score: 1..5 within the customer's market, over the market's buyers:
  ``1 + floor(5 x (rank - 1/2) / n)`` with the average rank (recency ranked most recent
  highest), so ties share a score and scores do not depend on the currency. Prospects have none.
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

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from remarketing.markets import MarketConfig
from remarketing.profiles.clv import (
    DAY_US,
    EXCLUDED_STATUSES,
    ORDER_STATUSES,
    ModelFit,
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
from remarketing.profiles.frames import (
    ModelInputError,
    examples,
    int_keys,
    locate,
    require_columns,
    unique_or_fail,
    utc_micros,
)

PROFILE_COLUMNS = (
    "customer_id", "market", "currency", "stage", "recency_days", "frequency", "monetary", "r_score", "f_score",
    "m_score", "rfm_segment", "favourite_categories", "price_sensitivity", "avg_order_value",
    "preferred_purchase_hour", "engagement_level", "last_open_at", "last_click_at", "p_alive",
    "expected_purchases_90d", "first_order_at", "last_order_at", "computed_at",
)  # fmt: skip
TRANSITION_COLUMNS = ("customer_id", "market", "from_stage", "to_stage", "changed_on")
_NAT = np.iinfo(np.int64).min
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STR = pd.StringDtype("pyarrow", na_value=np.nan)


class ProfileInputError(ModelInputError):
    """Input frames that cannot be profiled; the message names the table, column and example keys."""


def _profile_errors(function):
    """Input errors raised by the shared frame helpers surface as ProfileInputError."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ProfileInputError:
            raise
        except ModelInputError as exc:
            raise ProfileInputError(str(exc)) from None

    return wrapper


# ---------------------------------------------------------------------------------------------
# configuration


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


# ---------------------------------------------------------------------------------------------
# inputs


def _as_of_us(as_of: datetime) -> int:
    if not isinstance(as_of, datetime) or as_of.tzinfo is None:
        raise ValueError("as_of must be a timezone-aware datetime (UTC)")
    return (as_of - _EPOCH) // timedelta(microseconds=1)


def _labels(labels, codes: np.ndarray, missing: np.ndarray | None = None) -> pd.api.extensions.ExtensionArray:
    """Integer codes -> pandas' string dtype through Arrow (fast at millions of rows)."""
    codes = np.asarray(codes, dtype=np.int64)
    if missing is None:
        missing = codes < 0
    array = pa.array(list(labels), pa.string()).take(pa.array(np.where(missing, 0, codes), mask=missing))
    return pd.array(array, dtype=_STR)


def _codes(series: pd.Series, categories) -> np.ndarray:
    """Position of each value in ``categories`` (-1 for null or unknown), factorizing first (fast on Arrow strings)."""
    codes, uniques = pd.factorize(series)
    lookup = {value: i for i, value in enumerate(categories)}
    mapped = np.array([lookup.get(value, -1) for value in uniques], dtype=np.int64)
    return np.where(codes >= 0, mapped[np.maximum(codes, 0)] if len(mapped) else -1, -1).astype(np.int64)


def _timestamps(micros: np.ndarray) -> pd.arrays.DatetimeArray:
    """int64 UTC microseconds (INT64 min = NaT) -> aware UTC timestamps."""
    return pd.array(np.asarray(micros, dtype=np.int64).view("datetime64[us]"), dtype=pd.DatetimeTZDtype("us", UTC))


@dataclass
class _Customers:
    ids: np.ndarray  # sorted
    rows: np.ndarray  # input row of each sorted customer
    market: np.ndarray  # code into codes
    codes: list[str]  # configured market codes
    currency: list[str]  # per code


def _read_customers(customers: pd.DataFrame, markets: MarketConfig) -> _Customers:
    require_columns(customers, "customers", ["customer_id", "market"])
    ids = int_keys(customers, "customers", "customer_id")
    unique_or_fail(ids, "customers", "customer_id")
    rows = np.argsort(ids, kind="stable")
    ids = ids[rows]
    codes = list(markets.codes)
    market = _codes(customers["market"], codes)[rows]
    if (market < 0).any():
        bad = ids[market < 0]
        raise ProfileInputError(
            f"customers.market is missing or not a configured market ({', '.join(codes)}) for {len(bad)} "
            f"customer(s); customer_id: {examples(bad)}"
        )
    return _Customers(ids, rows, market, codes, [markets[c].currency for c in codes])


@dataclass
class _Orders:
    ids: np.ndarray
    customer: np.ndarray  # customer position
    placed: np.ndarray  # UTC microseconds
    total: np.ndarray
    discounted: np.ndarray
    valid: np.ndarray
    excluded: dict[str, int]


def _read_orders(orders: pd.DataFrame, cust: _Customers, as_of_us: int) -> _Orders:
    columns = ["order_id", "customer_id", "status", "currency", "total_amount", "discount_amount", "placed_at"]
    require_columns(orders, "orders", columns)
    ids = int_keys(orders, "orders", "order_id")
    unique_or_fail(ids, "orders", "order_id")
    customer = locate(cust.ids, int_keys(orders, "orders", "customer_id", "order_id"))
    if (customer < 0).any():
        raise ProfileInputError(f"orders reference unknown customers; order_id: {examples(ids[customer < 0])}")
    status_codes = _codes(orders["status"], ORDER_STATUSES)
    if (status_codes < 0).any():
        raise ProfileInputError(
            f"orders.status is missing or not one of {', '.join(ORDER_STATUSES)}; order_id: "
            f"{examples(ids[status_codes < 0])}"
        )
    placed = utc_micros(orders, "orders", "placed_at", "order_id")
    if (placed == _NAT).any():
        raise ProfileInputError(f"orders.placed_at is null; order_id: {examples(ids[placed == _NAT])}")
    excluded_status = np.isin(status_codes, [ORDER_STATUSES.index(s) for s in EXCLUDED_STATUSES])
    future = ~excluded_status & (placed > as_of_us)
    valid = ~excluded_status & ~future
    excluded = {s: int(np.count_nonzero(status_codes == ORDER_STATUSES.index(s))) for s in EXCLUDED_STATUSES}
    excluded["placed_after_as_of"] = int(np.count_nonzero(future))

    total = orders["total_amount"].to_numpy(dtype=np.float64, na_value=np.nan)
    bad_total = valid & ~(np.isfinite(total) & (total >= 0))
    if bad_total.any():
        raise ProfileInputError(f"orders.total_amount is null, negative or not finite; order_id: {examples(ids[bad_total])}")  # fmt: skip
    currencies = sorted(set(cust.currency))
    market_currency = np.array([currencies.index(c) for c in cust.currency])
    wrong = valid & (_codes(orders["currency"], currencies) != market_currency[cust.market[customer]])
    if wrong.any():
        raise ProfileInputError(
            f"orders.currency differs from the currency of the customer's market; order_id: {examples(ids[wrong])}"
        )
    discounted = _numbers(orders, "discount_amount", missing=0.0) > 0
    if "coupon_code" in orders.columns:
        coupon = orders["coupon_code"]
        discounted |= (coupon.astype("str").str.strip().str.len() > 0).fillna(False).to_numpy(dtype=bool)
    return _Orders(ids, customer, placed, total, discounted, valid, excluded)


def _numbers(frame: pd.DataFrame, column: str, missing: float = np.nan) -> np.ndarray:
    """A numeric column as a numpy array, without a copy when it already is one; nulls -> ``missing``."""
    series = frame[column]
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iuf":
        values = series.to_numpy()
        if series.dtype.kind == "f" and not np.isnan(missing) and np.isnan(values).any():
            values = np.where(np.isnan(values), missing, values)
        return values
    return series.to_numpy(dtype=np.float64, na_value=missing)


def _category_spend(
    order_items: pd.DataFrame, products: pd.DataFrame, orders: _Orders
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per order line: customer position, category code (len(names) when uncategorised) and spend
    (quantity x unit price - line discount; 0 for lines of excluded orders); and the sorted category names."""
    require_columns(order_items, "order_items", ["order_item_id", "order_id", "product_id", "quantity", "unit_price"])
    require_columns(products, "products", ["product_id", "category"])
    item_ids = order_items["order_item_id"].to_numpy()
    order_pos = locate(orders.ids, int_keys(order_items, "order_items", "order_id", "order_item_id"))
    if (order_pos < 0).any():
        raise ProfileInputError(f"order_items reference unknown orders; order_item_id: {examples(item_ids[order_pos < 0])}")  # fmt: skip
    product_ids = int_keys(products, "products", "product_id")
    unique_or_fail(product_ids, "products", "product_id")
    product_pos = locate(product_ids, int_keys(order_items, "order_items", "product_id", "order_item_id"))
    if (product_pos < 0).any():
        raise ProfileInputError(
            f"order_items reference unknown products; order_item_id: {examples(item_ids[product_pos < 0])}"
        )
    counted = orders.valid[order_pos]
    spend = _numbers(order_items, "quantity") * _numbers(order_items, "unit_price")
    if "discount_amount" in order_items.columns:
        spend = spend - _numbers(order_items, "discount_amount", missing=0.0)
    bad = counted & ~np.isfinite(spend)
    if bad.any():
        raise ProfileInputError(
            f"order_items.quantity or unit_price is null or not finite; order_item_id: {examples(item_ids[bad])}"
        )
    spend = np.where(counted, spend, 0.0)
    category_codes, names = pd.factorize(products["category"], sort=True)
    category_codes = np.where(category_codes < 0, len(names), category_codes)
    return orders.customer[order_pos], category_codes[product_pos], spend, [str(n) for n in names]


def _favourites(customer: np.ndarray, category: np.ndarray, spend: np.ndarray, names: list[str], n: int):
    """Top three categories by positive spend per customer (ties by name) as an Arrow list column."""
    n_cat = len(names)
    width = n_cat + 1  # the last column collects uncategorised lines and is never chosen
    if n * width <= 1 << 26:
        # Dense (customers x categories) totals, then three argmax passes: argmax takes the first
        # maximum, and categories are numbered in name order, so ties go to the earlier name.
        totals = np.bincount(customer * width + category, weights=spend, minlength=n * width).reshape(n, width)
        totals[:, n_cat] = 0.0  # uncategorised: never a favourite (zeroed, not sliced: argmax is slow on views)
        rows = np.arange(n)
        top = np.full((n, 3), -1, dtype=np.int64)
        for rank in range(min(3, n_cat)):
            best = totals.argmax(axis=1)
            found = totals[rows, best] > 0
            top[found, rank] = best[found]
            totals[rows, best] = 0.0
        counts = (top >= 0).sum(axis=1)
        chosen = top[top >= 0]  # row-major: each customer's picks in rank order
    else:  # many categories: sort the (customer, category) pairs instead
        has = (category < n_cat) & (spend > 0)
        pairs, inverse = np.unique(customer[has] * width + category[has], return_inverse=True)
        pair_spend = np.bincount(inverse.ravel(), weights=spend[has])
        positive = pair_spend > 0
        pair_customer, pair_category, pair_spend = (
            pairs[positive] // width,
            pairs[positive] % width,
            pair_spend[positive],
        )
        order = np.lexsort((pair_category, -pair_spend, pair_customer))
        pair_customer, pair_category = pair_customer[order], pair_category[order]
        starts = np.ones(len(pair_customer), dtype=bool)
        starts[1:] = pair_customer[1:] != pair_customer[:-1]
        group_start = np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))
        keep = (np.arange(len(starts)) - group_start) < 3
        counts = np.bincount(pair_customer[keep], minlength=n)
        chosen = pair_category[keep]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = pa.array(names, pa.string()).take(pa.array(chosen, pa.int64()))
    return pd.arrays.ArrowExtensionArray(pa.ListArray.from_arrays(pa.array(offsets), values))


def _zones(customers: pd.DataFrame, cust: _Customers, markets: MarketConfig) -> tuple[np.ndarray, list[str]]:
    """Resolved IANA zone (code, names) per sorted customer; resolution runs once per distinct input combination."""
    from remarketing.timing.send_windows import resolve_time_zones

    columns = {"market": np.asarray(cust.codes, dtype=object)[cust.market]}
    key = cust.market.copy()
    for name in ("time_zone", "country", "region"):
        if name in customers.columns:
            codes, uniques = pd.factorize(customers[name])
            codes = codes[cust.rows]
            key = key * (len(uniques) + 1) + (codes + 1)
            labels = np.asarray([*uniques, None], dtype=object)
            columns[name] = labels[np.where(codes >= 0, codes, len(uniques))]
        else:
            columns[name] = np.full(len(cust.ids), None, dtype=object)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    distinct = pd.DataFrame({name: values[first] for name, values in columns.items()})
    resolved = resolve_time_zones(distinct, markets)["time_zone"].to_numpy(dtype=object)
    zone_codes, zone_names = pd.factorize(resolved)
    return zone_codes[inverse.ravel()], [str(z) for z in zone_names]


def _preferred_hour(history, zone: np.ndarray, zone_names: list[str], n: int) -> np.ndarray:
    """Mode of the local order hour per customer (-1 without orders; ties to the earlier hour)."""
    customer, t = history.order_customer, history.order_time
    hours = np.empty(len(t), dtype=np.int64)
    order_zone = zone[customer]
    for code, name in enumerate(zone_names):
        sel = order_zone == code
        if sel.any():
            local = pd.DatetimeIndex(t[sel].astype("datetime64[us]")).tz_localize(UTC).tz_convert(name)
            hours[sel] = local.hour
    if not len(t):
        return np.full(n, -1, dtype=np.int64)
    counts = np.bincount(customer * 24 + hours, minlength=n * 24).reshape(n, 24)
    best = counts.argmax(axis=1)
    return np.where(history.purchase_days > 0, best, -1)


def _scores(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """1..5 within each group: 1 + floor(5 (rank - 1/2) / n) with the average rank; ties share a score."""
    if not len(values):
        return np.empty(0, dtype=np.int64)
    rank = pd.Series(values).groupby(group).rank(method="average").to_numpy()
    twice = np.rint(rank * 2).astype(np.int64)  # average ranks are multiples of 1/2: exact integers
    n = np.bincount(group)[group]
    return 1 + (5 * (twice - 1)) // (2 * n)


# ---------------------------------------------------------------------------------------------
# the computation


@_profile_errors
def compute_rfm(customers: pd.DataFrame, orders: pd.DataFrame, *, markets: MarketConfig, as_of: datetime):
    """RFM alone (recency, frequency, monetary, scores) for every customer; the same figures as the profiles."""
    as_of_us = _as_of_us(as_of)
    cust = _read_customers(customers, markets)
    ords = _read_orders(orders, cust, as_of_us)
    history = purchase_history(ords.customer[ords.valid], ords.placed[ords.valid], len(cust.ids))
    rfm = _rfm(cust, ords, history, as_of_us)
    return pd.DataFrame(
        {
            "customer_id": cust.ids,
            "market": _labels(cust.codes, cust.market),
            **{k: rfm[k] for k in ("recency_days", "frequency", "monetary")},
            **{k: pd.arrays.IntegerArray(rfm[k], ~rfm["buyer"]) for k in ("r_score", "f_score", "m_score")},
        }
    )


def _rfm(cust: _Customers, ords: _Orders, history, as_of_us: int) -> dict[str, np.ndarray]:
    n = len(cust.ids)
    valid_customer = ords.customer[ords.valid]
    frequency = np.bincount(valid_customer, minlength=n).astype(np.int64)
    monetary = np.bincount(valid_customer, weights=ords.total[ords.valid], minlength=n)
    buyer = frequency > 0
    recency = np.where(buyer, (as_of_us - history.last_at) / DAY_US, np.nan)
    rows = np.flatnonzero(buyer)
    group = cust.market[rows]
    r_score = np.zeros(n, dtype=np.int64)
    f_score = np.zeros(n, dtype=np.int64)
    m_score = np.zeros(n, dtype=np.int64)
    r_score[rows] = _scores(history.last_at[rows].astype(np.float64), group)
    f_score[rows] = _scores(frequency[rows].astype(np.float64), group)
    m_score[rows] = _scores(monetary[rows], group)
    return {
        "buyer": buyer, "recency_days": recency, "frequency": frequency, "monetary": monetary,
        "r_score": r_score, "f_score": f_score, "m_score": m_score,
    }  # fmt: skip


def _repurchase_intervals(history, cust: _Customers, config: LifecycleConfig) -> tuple[np.ndarray, list[str]]:
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


def _engagement(engagement: pd.DataFrame | None, cust: _Customers, as_of_us: int, config: LifecycleConfig):
    n = len(cust.ids)
    last_open = np.full(n, _NAT, dtype=np.int64)
    last_click = np.full(n, _NAT, dtype=np.int64)
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
    has_open, has_click = last_open != _NAT, last_click != _NAT
    click_age = np.where(has_click, (as_of_us - last_click) / DAY_US, np.inf)
    open_age = np.where(has_open, (as_of_us - last_open) / DAY_US, np.inf)
    level = np.select(
        [click_age <= rule.high_click_days, np.minimum(click_age, open_age) <= rule.medium_days, has_open | has_click],
        [0, 1, 2],
        3,
    )
    return level, last_open, last_click, int(np.count_nonzero(~known))


@_profile_errors
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

    as_of_us = _as_of_us(as_of)
    unknown = sorted(set(config.markets) - set(markets.codes))
    if unknown:
        raise LifecycleConfigError(f"lifecycle overrides for markets that are not configured: {', '.join(unknown)}")
    cust = _read_customers(customers, markets)
    ords = _read_orders(orders, cust, as_of_us)
    n = len(cust.ids)
    lap("read")

    history = purchase_history(ords.customer[ords.valid], ords.placed[ords.valid], n)
    rfm = _rfm(cust, ords, history, as_of_us)
    buyer = rfm["buyer"]
    lap("rfm")

    item_customer, item_category, item_spend, categories = _category_spend(order_items, products, ords)
    favourites = _favourites(item_customer, item_category, item_spend, categories, n)
    discounted = np.bincount(ords.customer[ords.valid], weights=ords.discounted[ords.valid], minlength=n)
    zone, zone_names = _zones(customers, cust, markets)
    hour = _preferred_hour(history, zone, zone_names, n)
    lap("tags")

    x, t_x, T = history.model_inputs(as_of_us)
    rows = np.flatnonzero(buyer)
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
    lap("model")

    # ---- stages: thresholds per market, then the first matching rule per customer
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
    recency = rfm["recency_days"]
    since_first = np.where(buyer, (as_of_us - history.first_at) / DAY_US, np.nan)
    with np.errstate(invalid="ignore"):
        conditions = {
            "prospect": ~buyer,
            "new": since_first <= new_days,
            "dormant": (alive < dormant_p) | (recency > dormant_days),
            "at_risk": recency > interval[cust.market],
            "vip": (rfm["frequency"] >= vip_orders) & (rfm["monetary"] >= vip_monetary[cust.market]),
            "active": np.ones(n, dtype=bool),
        }
    stage = np.select([conditions[s] for s in STAGE_PRECEDENCE], [STAGES.index(s) for s in STAGE_PRECEDENCE])

    fm = (rfm["f_score"] + rfm["m_score"] + 1) // 2
    segment_names = sorted({name for row in config.rfm_segments.values() for name in row})
    grid = np.zeros((6, 6), dtype=np.int64)
    for r, row in config.rfm_segments.items():
        grid[r, 1:] = [segment_names.index(name) for name in row]
    segment = np.where(buyer, grid[rfm["r_score"], fm], -1)
    level, last_open, last_click, unmatched = _engagement(engagement, cust, as_of_us, config)
    lap("stages")

    with np.errstate(invalid="ignore", divide="ignore"):
        profiles = pd.DataFrame(
            copy=False,
            data={
                "customer_id": cust.ids,
                "market": _labels(cust.codes, cust.market),
                "currency": _labels(cust.currency, cust.market),
                "stage": _labels(STAGES, stage),
                "recency_days": recency,
                "frequency": rfm["frequency"],
                "monetary": rfm["monetary"],
                **{k: pd.arrays.IntegerArray(rfm[k], ~buyer) for k in ("r_score", "f_score", "m_score")},
                "rfm_segment": _labels(segment_names, segment),
                "favourite_categories": favourites,
                "price_sensitivity": np.where(buyer, discounted / np.maximum(rfm["frequency"], 1), np.nan),
                "avg_order_value": np.where(buyer, rfm["monetary"] / np.maximum(rfm["frequency"], 1), np.nan),
                "preferred_purchase_hour": pd.arrays.IntegerArray(np.maximum(hour, 0), hour < 0),
                "engagement_level": _labels(ENGAGEMENT_LEVELS, np.full(n, -1) if level is None else level),
                "last_open_at": _timestamps(last_open),
                "last_click_at": _timestamps(last_click),
                "p_alive": alive,
                "expected_purchases_90d": expected,
                "first_order_at": _timestamps(np.where(buyer, history.first_at, _NAT)),
                "last_order_at": _timestamps(np.where(buyer, history.last_at, _NAT)),
                "computed_at": _timestamps(np.full(n, as_of_us, dtype=np.int64)),
            },
        )

    present = np.bincount(cust.market, minlength=len(cust.codes)) > 0
    buyers_per_market = np.bincount(cust.market[rows], minlength=len(cust.codes))
    stats = pd.DataFrame(
        {
            "market": cust.codes,
            "currency": cust.currency,
            "customers": np.bincount(cust.market, minlength=len(cust.codes)),
            "buyers": buyers_per_market,
            "repurchase_interval_days": interval,
            "interval_source": interval_source,
            "vip_monetary_threshold": vip_monetary,
            "model": [fits[c].source if c in fits else "none" for c in cust.codes],
        }
    )[present].reset_index(drop=True)
    excluded = dict(ords.excluded)
    excluded["engagement_rows_without_customer"] = unmatched
    lap("assemble")
    return ProfileResult(profiles, fits, stats, excluded, as_of.astimezone(UTC), seconds)


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


@_profile_errors
def stage_transitions(previous: pd.DataFrame | None, current: pd.DataFrame, *, as_of: datetime) -> pd.DataFrame:
    """Customers whose stage changed since ``previous``: customer_id, market, from_stage, to_stage, changed_on.

    A customer absent from ``previous`` enters with from_stage null. With no previous profiles at
    all (None or empty: the first run, or a market's first run) there is no transition: history
    starts at the first run, so a first run never claims that everyone "became" their stage.
    Customers in ``previous`` but not in ``current`` are not transitions (they left the store).
    """
    changed_on = pd.Timestamp(_as_of_us(as_of), unit="us", tz=UTC).date()
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
