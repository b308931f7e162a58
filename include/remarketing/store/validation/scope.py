"""Scope: which market a customer, order or cart belongs to, and which rows no market serves.

A shop sells to more countries than it runs markets for. A row from a country no market serves
is not bad data: it stays in the clean snapshot (profiles, revenue and product statistics count
it) with no market, so no flow ever mails it, and the validation result counts it under
``out_of_scope`` with the reason. Only text that is neither a country nor a known non-country
label is a bad value (quarantined).

The market of a row: its ``market`` column where the mapping gives one; else the market whose
``countries`` include the row's country (customers; an order's own country, a guest's); else,
for orders and carts, the market of their customer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from remarketing.store.validation.column_checks import all_ok
from remarketing.store.validation.countries import resolve_countries
from remarketing.store.validation.references import ParentRows, lookup

SCOPE_TABLES = ("customers", "orders", "carts")
SCOPE_COLUMN = "__scope__"  # None: in scope; else why no market serves the row
COUNTRY_TABLES = ("customers", "orders")  # tables with a country column


def scope_checks(
    frame: pd.DataFrame, table: str, *, markets, parents: Mapping[str, ParentRows]
) -> tuple[dict[str, Any], dict[str, int]]:
    """Resolve countries to ISO codes and fill missing markets in ``frame``; returns (derived, normalised).

    Derived: ``__check__country`` (a bad country value is quarantined) and the ``__scope__``
    reason per row.
    """
    derived: dict[str, Any] = {}
    normalised: dict[str, int] = {}
    if table not in SCOPE_TABLES:
        return derived, normalised
    size = len(frame)
    codes = np.full(size, None, dtype=object)
    kinds = np.full(size, "ok", dtype=object)
    labels = np.full(size, None, dtype=object)
    if table in COUNTRY_TABLES:
        labels = frame["country"].to_numpy(dtype=object, na_value=None)
        given = frame["country"]
        codes, kinds = resolve_countries(given)
        status = all_ok(size)
        status[kinds == "unknown"] = "country is neither an ISO 3166 code nor a country name"
        derived["__check__country"] = status
        changed = int((pd.notna(codes) & (given.to_numpy(dtype=object, na_value=None) != codes)).sum())
        if changed:
            normalised["country"] = changed
        frame["country"] = pd.Series(codes, index=frame.index, dtype=object)
    market = frame["market"].to_numpy(dtype=object, na_value=None).copy()
    by_country = markets.market_of_country()
    from_country = np.array([by_country.get(c) if c is not None else None for c in codes], dtype=object)
    take = pd.isna(market) & pd.notna(from_country)
    market[take] = from_country[take]
    if table in ("orders", "carts") and "customers" in parents:
        customers = parents["customers"].frame
        of_customer = lookup(frame["customer_id"], customers["customer_id"], customers["market"])
        take = pd.isna(market) & pd.notna(of_customer) & (codes == None)  # noqa: E711 - elementwise
        market[take] = of_customer[take]
    derived_markets = int((pd.isna(frame["market"].to_numpy(dtype=object, na_value=None)) & pd.notna(market)).sum())
    if derived_markets:
        normalised["market"] = derived_markets
    frame["market"] = pd.Series(market, index=frame.index, dtype=object)
    derived[SCOPE_COLUMN] = _reasons(market, codes, kinds, labels)
    return derived, normalised


def _reasons(market: np.ndarray, codes: np.ndarray, kinds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Why each row without a market is out of scope (None for rows in a market)."""
    reasons = np.full(len(market), None, dtype=object)
    outside = pd.isna(market)
    served_by_none = outside & pd.notna(codes)
    reasons[served_by_none] = [f"country {c} is served by no market" for c in codes[served_by_none]]
    no_country = outside & (kinds == "not_a_country")
    reasons[no_country] = [f"country given as {str(v).strip()!r}: no country" for v in labels[no_country]]
    reasons[outside & (kinds == "unknown")] = None  # quarantined as a bad country value instead
    rest = outside & pd.isna(codes) & (kinds == "ok")
    reasons[rest] = "no country or market given"
    return reasons
