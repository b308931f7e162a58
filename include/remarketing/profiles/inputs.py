"""Reading customers and orders for the profiles: sorted numpy arrays, validated once.

Why here: RFM (remarketing.profiles.rfm), the tags (remarketing.profiles.tags) and the stages
(remarketing.profiles.lifecycle) all start from the same reading, so one order is valid for all
of them alike. Definitions of valid orders and the input errors: remarketing.profiles.lifecycle.

Real shops' orders, as the store validation lets them through:

- a customer without a market (a country no market serves) is out of scope: not profiled here,
  counted; so are the orders that belong to nobody profiled;
- a guest order (no customer_id) with an email joins the customer with that address;
- amounts in another currency than the customer's market are converted into it (FX rates as of
  the order date);
- a credit note (money back) nets against the order it names (``original_order_id``), else
  against the customer's latest earlier order of exactly its amount, else against the customer's
  total. An order refunded in full is no purchase; a customer whose purchases came back in full
  is no buyer.
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
    CREDIT_NOTE,
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
    emails: pd.Series | None = None  # normalised address -> sorted position (guest orders join by it)
    out_of_scope: int = 0  # customers without a market: not profiled


def read_customers(customers: pd.DataFrame, markets: MarketConfig) -> Customers:
    """Unique ids sorted, each with a configured market; those without a market are out of scope.

    A market that is not configured raises ProfileInputError (the store validation never lets one through).
    """
    require_columns(customers, "customers", ["customer_id", "market"])
    ids = int_keys(customers, "customers", "customer_id")
    unique_or_fail(ids, "customers", "customer_id")
    codes = list(markets.codes)
    market = _codes(customers["market"], codes)
    outside = customers["market"].isna().to_numpy(dtype=bool)
    bad = (market < 0) & ~outside
    if bad.any():
        raise ProfileInputError(
            f"customers.market is not a configured market ({', '.join(codes)}) for {int(bad.sum())} "
            f"customer(s); customer_id: {examples(ids[bad])}"
        )
    kept = np.flatnonzero(~outside)
    rows = kept[np.argsort(ids[kept], kind="stable")]
    emails = None
    if "email" in customers.columns:
        normal = _normal_emails(customers["email"].iloc[rows])
        present = normal.notna().to_numpy(dtype=bool)
        emails = pd.Series(np.flatnonzero(present), index=normal[present].to_numpy(dtype=object))
        emails = emails[~emails.index.duplicated()]
    return Customers(
        ids[rows], rows, market[rows], codes, [markets[c].currency for c in codes], emails, int(outside.sum())
    )


def _normal_emails(values: pd.Series) -> pd.Series:
    """Addresses as the ledger compares them (trimmed, lower case); blanks become null."""
    text = (
        values.astype(object)
        .where(values.notna(), None)
        .map(lambda v: v.strip().lower() if isinstance(v, str) else None)
    )
    return text.where(text != "", None)


@dataclass
class Orders:
    """The orders in input order, each pointing at its customer's position in ``Customers``.

    ``valid`` marks purchases (what frequency, recency and the models count); ``total`` is each
    order's amount in its customer's market currency, net of the credit notes matched to it;
    ``money_back`` per customer holds credit notes matched to no order.
    """

    ids: np.ndarray
    customer: np.ndarray  # customer position (-1: nobody profiled)
    placed: np.ndarray  # UTC microseconds
    total: np.ndarray
    discounted: np.ndarray
    valid: np.ndarray
    excluded: dict[str, int]
    money_back: np.ndarray | None = None


def read_orders(orders: pd.DataFrame, cust: Customers, as_of_us: int, fx=None) -> Orders:
    """Checked orders with their validity (status, as_of, refunds) and the counts of those excluded."""
    columns = ["order_id", "customer_id", "status", "currency", "total_amount", "discount_amount", "placed_at"]
    require_columns(orders, "orders", columns)
    ids = int_keys(orders, "orders", "order_id")
    unique_or_fail(ids, "orders", "order_id")
    customer, excluded = _order_customers(orders, cust)
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
    counted = ~excluded_status & ~future & (customer >= 0)
    credit = status_codes == ORDER_STATUSES.index(CREDIT_NOTE)
    excluded.update({s: int(np.count_nonzero(status_codes == ORDER_STATUSES.index(s))) for s in EXCLUDED_STATUSES})
    excluded["placed_after_as_of"] = int(np.count_nonzero(future))

    total = orders["total_amount"].to_numpy(dtype=np.float64, na_value=np.nan)
    bad_total = counted & ~(np.isfinite(total) & np.where(credit, total <= 0, total >= 0))
    if bad_total.any():
        raise ProfileInputError(
            f"orders.total_amount is null, not finite, or of the wrong sign (negative only on a credit note); "
            f"order_id: {examples(ids[bad_total])}"
        )
    # Refunds net in the currency they were paid in, then the nets convert at the order's date.
    total, credited, unmatched, matched = _match_credit_notes(
        orders, ids, customer, placed, total, counted & credit, counted & ~credit
    )
    total, no_rate = _in_market_currency(orders, total, customer, counted, cust, fx)
    excluded["no_fx_rate"] = int(np.count_nonzero(no_rate))
    counted &= ~no_rate
    valid, money_back, refunds = _buyers(customer, total, counted, credit, credited, unmatched & counted, len(cust.ids))
    excluded.update(
        {"credit_notes": int(np.count_nonzero(counted & credit)), "credit_notes_matched": matched, **refunds}
    )
    discounted = numbers(orders, "discount_amount", missing=0.0) > 0
    if "coupon_code" in orders.columns:
        coupon = orders["coupon_code"]
        discounted |= (coupon.astype("str").str.strip().str.len() > 0).fillna(False).to_numpy(dtype=bool)
    return Orders(ids, customer, placed, total, discounted, valid, excluded, money_back)


def _order_customers(orders: pd.DataFrame, cust: Customers) -> tuple[np.ndarray, dict[str, int]]:
    """Each order's customer position: by customer_id, a guest's by email; -1 for nobody profiled."""
    given = orders["customer_id"]
    has_id = given.notna().to_numpy(dtype=bool)
    customer = np.full(len(orders), -1, dtype=np.int64)
    if has_id.any():
        customer[has_id] = locate(cust.ids, given[has_id].to_numpy(dtype=np.int64))
    guest = ~has_id
    if guest.any() and cust.emails is not None and "email" in orders.columns:
        normal = _normal_emails(orders["email"][guest])
        customer[guest] = normal.map(cust.emails).fillna(-1).to_numpy(dtype=np.int64)
    return customer, {
        "customer_out_of_scope": int(np.count_nonzero(has_id & (customer < 0))),
        "guest_orders_joined": int(np.count_nonzero(guest & (customer >= 0))),
        "guest_orders_without_customer": int(np.count_nonzero(guest & (customer < 0))),
    }


def _in_market_currency(orders, total, customer, counted, cust: Customers, fx) -> tuple[np.ndarray, np.ndarray]:
    """Totals in the customer's market currency; (amounts, no rate) where another currency has no rate."""
    market_currency = np.array(cust.currency, dtype=object)[cust.market[np.maximum(customer, 0)]]
    currency = orders["currency"].to_numpy(dtype=object, na_value=None)
    other = counted & (currency != market_currency)
    no_rate = np.zeros(len(total), dtype=bool)
    if not other.any():
        return total, no_rate
    if fx is None:
        from remarketing.store.fx import load_fx_rates

        fx = load_fx_rates()
    converted, missing = fx.convert(
        total[other], currency[other], orders["placed_at"].to_numpy()[other], market_currency[other]
    )
    total = total.copy()
    total[other] = converted
    no_rate[other] = missing
    return total, no_rate


def _match_credit_notes(orders, ids, customer, placed, total, notes_mask, purchase):
    """Each credit note nets against the purchase it names, else the customer's latest earlier one of its
    exact amount in the same currency; returns (net totals, purchases credited, notes unmatched, matched)."""
    total = total.copy()
    notes = np.flatnonzero(notes_mask)
    credited = np.zeros(len(ids), dtype=bool)
    unmatched = np.zeros(len(ids), dtype=bool)
    if not len(notes):
        return total, credited, unmatched, 0
    position = pd.Series(np.arange(len(ids)), index=ids)
    named = (
        orders["original_order_id"].to_numpy(dtype=object, na_value=None)
        if "original_order_id" in orders.columns
        else np.full(len(ids), None, dtype=object)
    )
    currency = orders["currency"].to_numpy(dtype=object, na_value=None)
    cents = np.round(np.nan_to_num(total) * 100).astype(np.int64)
    candidates: dict[tuple, list[int]] = {}  # (customer, currency, cents) -> purchases, newest first
    for i in np.flatnonzero(purchase)[np.argsort(-placed[purchase], kind="stable")]:
        candidates.setdefault((int(customer[i]), currency[i], int(cents[i])), []).append(int(i))
    matched = 0
    for i in notes[np.argsort(placed[notes], kind="stable")]:
        target = position.get(named[i]) if named[i] is not None else None
        if target is None or not purchase[target] or customer[target] != customer[i]:
            pool = candidates.get((int(customer[i]), currency[i], -int(cents[i])), [])
            target = next((j for j in pool if placed[j] <= placed[i] and total[j] > 0.005), None)
            if target is not None:
                pool.remove(target)
        if target is None:
            unmatched[i] = True
            continue
        total[target] += total[i]
        total[i] = 0.0
        credited[target] = True
        matched += 1
    return total, credited, unmatched, matched


def _buyers(customer, total, counted, credit, credited, unmatched, n_customers):
    """Purchases that count, money back per customer, and the refund counts.

    An order refunded in full is no purchase; a customer whose purchases all came back is no
    buyer (one who only had free orders still is).
    """
    purchase = counted & ~credit
    refunded = purchase & credited & (total <= 0.005)
    valid = purchase & ~refunded
    rows = np.flatnonzero(unmatched)
    money_back = np.bincount(customer[rows], weights=total[rows], minlength=n_customers)
    kept = np.bincount(customer[valid], weights=total[valid], minlength=n_customers) + money_back
    had_credit = np.bincount(customer[counted & credit], minlength=n_customers) > 0
    gone = valid & (kept[np.maximum(customer, 0)] <= 0.005) & had_credit[np.maximum(customer, 0)]
    valid &= ~gone
    buys = np.bincount(customer[valid], minlength=n_customers) > 0
    bought = np.bincount(customer[purchase], minlength=n_customers) > 0
    return (
        valid,
        np.where(buys, money_back, 0.0),
        {
            "orders_refunded_in_full": int(np.count_nonzero(refunded)),
            "customers_refunded_in_full": int(np.count_nonzero(bought & had_credit & ~buys)),
        },
    )


def numbers(frame: pd.DataFrame, column: str, missing: float = np.nan) -> np.ndarray:
    """A numeric column as a numpy array, without a copy when it already is one; nulls -> ``missing``."""
    series = frame[column]
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iuf":
        values = series.to_numpy()
        if series.dtype.kind == "f" and not np.isnan(missing) and np.isnan(values).any():
            values = np.where(np.isnan(values), missing, values)
        return values
    return series.to_numpy(dtype=np.float64, na_value=missing)
