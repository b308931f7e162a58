"""Reading customers and orders for the profiles: sorted numpy arrays, validated once.

Why here: RFM (remarketing.profiles.rfm), the tags (remarketing.profiles.tags) and the stages
(remarketing.profiles.lifecycle) all start from the same reading, so one order is valid for all
of them alike. Definitions of valid orders and the input errors: remarketing.profiles.lifecycle.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from remarketing.markets import MarketConfig
from remarketing.profiles.frames import (
    EXCLUDED_STATUSES,
    ORDER_STATUSES,
    ModelInputError,
    examples,
    int_keys,
    locate,
    require_columns,
    unique_or_fail,
    utc_micros,
)

NAT = np.iinfo(np.int64).min  # a missing instant in int64 UTC microseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STR = pd.StringDtype("pyarrow", na_value=np.nan)


class ProfileInputError(ModelInputError):
    """Input frames that cannot be profiled; the message names the table, column and example keys."""


def profile_errors(function):
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


def as_of_micros(as_of: datetime) -> int:
    """``as_of`` as int64 UTC microseconds, the unit of every instant here; naive datetimes are refused."""
    if not isinstance(as_of, datetime) or as_of.tzinfo is None:
        raise ValueError("as_of must be a timezone-aware datetime (UTC)")
    return (as_of - _EPOCH) // timedelta(microseconds=1)


def code_labels(labels, codes: np.ndarray, missing: np.ndarray | None = None) -> pd.api.extensions.ExtensionArray:
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


@dataclass
class Customers:
    """The customers sorted by customer_id: every per-customer array here is in this order."""

    ids: np.ndarray  # sorted
    rows: np.ndarray  # input row of each sorted customer
    market: np.ndarray  # code into codes
    codes: list[str]  # configured market codes
    currency: list[str]  # per code


def read_customers(customers: pd.DataFrame, markets: MarketConfig) -> Customers:
    """Unique ids sorted, each with a configured market; anything else raises ProfileInputError."""
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
    return Customers(ids, rows, market, codes, [markets[c].currency for c in codes])


@dataclass
class Orders:
    """The orders in input order, each pointing at its customer's position in ``Customers``."""

    ids: np.ndarray
    customer: np.ndarray  # customer position
    placed: np.ndarray  # UTC microseconds
    total: np.ndarray
    discounted: np.ndarray
    valid: np.ndarray
    excluded: dict[str, int]


def read_orders(orders: pd.DataFrame, cust: Customers, as_of_us: int) -> Orders:
    """Checked orders with their validity (status, as_of) and the counts of those excluded."""
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
    if (placed == NAT).any():
        raise ProfileInputError(f"orders.placed_at is null; order_id: {examples(ids[placed == NAT])}")
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
    discounted = numbers(orders, "discount_amount", missing=0.0) > 0
    if "coupon_code" in orders.columns:
        coupon = orders["coupon_code"]
        discounted |= (coupon.astype("str").str.strip().str.len() > 0).fillna(False).to_numpy(dtype=bool)
    return Orders(ids, customer, placed, total, discounted, valid, excluded)


def numbers(frame: pd.DataFrame, column: str, missing: float = np.nan) -> np.ndarray:
    """A numeric column as a numpy array, without a copy when it already is one; nulls -> ``missing``."""
    series = frame[column]
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iuf":
        values = series.to_numpy()
        if series.dtype.kind == "f" and not np.isnan(missing) and np.isnan(values).any():
            values = np.where(np.isnan(values), missing, values)
        return values
    return series.to_numpy(dtype=np.float64, na_value=missing)
