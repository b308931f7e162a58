"""Referential checks: what a row refers to must exist, be clean and agree with it.

A child row whose parent is missing from the extract or was quarantined is quarantined too
("parent cart quarantined"): tables are validated parents first and each hands its children
its ParentRows. A row's currency must be its market's (from configuration), and a cart line's
its cart's and a cart's its order's: order lines carry no currency, so an order mixes
currencies when the cart it was placed from is in another one; that cart is quarantined and
its lines follow it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from remarketing.store.schema import CANONICAL_TABLES
from remarketing.store.validation.column_checks import all_ok, valid_currency
from remarketing.store.validation.rules import CREDIT_NOTE, REFERENCES, Reference


@dataclass(frozen=True)
class ParentRows:
    """What children need of a validated parent table."""

    frame: pd.DataFrame  # the parent's prepared frame (all rows)
    clean: np.ndarray  # bool per row


def currency_checks(
    frame: pd.DataFrame, table: str, *, markets, parents: Mapping[str, ParentRows], fx
) -> dict[str, Any]:
    """A row's currency convertible into its market's, a cart line's its cart's, a cart's its order's."""
    size = len(frame)
    derived: dict[str, Any] = {}
    if table in ("carts", "orders"):
        derived["__check__currency_market"] = _currency_of_market(frame, markets, fx, table)

    if table == "cart_items":
        derived["__check__currency_cart"] = _currency_of_cart(frame, parents.get("carts"))

    if table == "carts" and "orders" in parents:
        orders = parents["orders"].frame
        order_currency = lookup(frame["order_id"], orders["order_id"], orders["currency"])
        currency = frame["currency"].to_numpy(dtype=object, na_value=None)
        differs = valid_currency(currency) & valid_currency(order_currency) & (currency != order_currency)
        status = all_ok(size)
        status[differs] = [f"currency differs from its order's ({c})" for c in order_currency[differs]]
        derived["__check__currency_order"] = status
    return derived


def reference_checks(frame: pd.DataFrame, table: str, parents: Mapping[str, ParentRows]) -> dict[str, Any]:
    """One ``__ref__`` column per reference whose parent table was validated."""
    derived: dict[str, Any] = {}
    for ref in REFERENCES.get(table, ()):
        if ref.parent in parents:
            derived[f"__ref__{ref.column}"] = _reference(frame[ref.column], parents[ref.parent], ref)
    return derived


def _int_keys(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, present mask) of a nullable integer key column."""
    present = series.notna().to_numpy(dtype=bool)
    return series.to_numpy(dtype=np.int64, na_value=0), present


def lookup(keys: pd.Series, parent_keys: pd.Series, parent_values: pd.Series) -> np.ndarray:
    """parent_values at the first parent row whose key equals each key (None where none)."""
    values, present = _int_keys(keys)
    pkeys, ppresent = _int_keys(parent_keys)
    first = ppresent & ~pd.Series(pkeys).duplicated().to_numpy()
    positions = pd.Index(pkeys[first]).get_indexer(values)
    positions[~present] = -1
    candidates = parent_values.to_numpy(dtype=object, na_value=None)[first]
    out = np.full(len(values), None, dtype=object)
    found = positions >= 0
    out[found] = candidates[positions[found]]
    return out


def _currency_of_market(frame: pd.DataFrame, markets, fx, table: str) -> np.ndarray:
    """Another currency than the market's is fine when it converts into it on the row's date (FX rates)."""
    expected = frame["market"].map({m.code: m.currency for m in markets}).to_numpy(dtype=object, na_value=None)
    currency = frame["currency"].to_numpy(dtype=object, na_value=None)
    market = frame["market"].to_numpy(dtype=object, na_value=None)
    differs = valid_currency(frame["currency"]) & pd.notna(expected) & (currency != expected)
    status = all_ok(len(frame))
    if not differs.any():
        return status
    when = frame[FX_DATE[table]].to_numpy()[differs]
    reasons = fx.missing_reasons(currency[differs], when, expected[differs])
    rows = np.flatnonzero(differs)
    unconvertible = pd.notna(reasons)
    status[rows[unconvertible]] = [
        f"currency {c} is not the {m} market's currency ({w}) and {r}"
        for c, m, w, r in zip(
            currency[rows[unconvertible]],
            market[rows[unconvertible]],
            expected[rows[unconvertible]],
            reasons[unconvertible],
            strict=True,
        )
    ]
    return status


FX_DATE = {"orders": "placed_at", "carts": "updated_at"}  # the day whose rate converts the row


def _currency_of_cart(frame: pd.DataFrame, carts: ParentRows | None) -> np.ndarray:
    """A cart holds one currency: lines in another one are quarantined.

    The reference is the cart's own currency; without the carts table, the currency most of the
    cart's lines use (ties: alphabetical), so a mixed cart still shows which lines differ.
    """
    currency = frame["currency"]
    if carts is not None:
        reference = lookup(frame["cart_id"], carts.frame["cart_id"], carts.frame["currency"])
    else:
        pairs = frame.loc[currency.notna() & frame["cart_id"].notna(), ["cart_id", "currency"]]
        counts = pairs.value_counts().reset_index(name="n")
        counts = counts.sort_values(["cart_id", "n", "currency"], ascending=[True, False, True])
        majority = counts.drop_duplicates("cart_id")
        reference = lookup(frame["cart_id"], majority["cart_id"], majority["currency"])
    values = currency.to_numpy(dtype=object, na_value=None)
    differs = valid_currency(values) & valid_currency(reference) & (values != reference)
    status = all_ok(len(frame))
    status[differs] = [f"currency differs from its cart's ({c})" for c in reference[differs]]
    return status


def _reference(keys: pd.Series, parent: ParentRows, ref: Reference) -> np.ndarray:
    """ok / no such parent / parent quarantined, for every row whose key is not null."""
    values, present = _int_keys(keys)
    parent_keys, parent_present = _int_keys(parent.frame[CANONICAL_TABLES[ref.parent].key])
    known = np.isin(values, parent_keys[parent_present])
    clean = np.isin(values, parent_keys[parent_present & parent.clean])
    status = all_ok(len(values))
    status[present & ~known] = f"{ref.column}: no such {ref.noun} in the extract"
    status[present & known & ~clean] = f"{ref.column}: parent {ref.noun} quarantined"
    return status


def credit_note_checks(frame: pd.DataFrame, table: str, parents: Mapping[str, ParentRows]) -> dict[str, Any]:
    """Money back is a credit note: a negative total or line quantity belongs on one, and only there.

    An order with a negative total must have status ``credit_note`` and a credit note no positive
    total; a line with a negative quantity must belong to a credit note, and no line has quantity 0.
    """
    derived: dict[str, Any] = {}
    if table == "orders":
        total = pd.to_numeric(frame["total_amount"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        credit = (frame["status"] == CREDIT_NOTE).fillna(False).to_numpy(dtype=bool)
        status = all_ok(len(frame))
        status[(total < 0) & ~credit] = f"total_amount is negative but status is not {CREDIT_NOTE}"
        status[(total > 0) & credit] = f"a {CREDIT_NOTE} has a positive total_amount"
        derived["__check__credit_note"] = status
    if table == "order_items":
        quantity = pd.to_numeric(frame["quantity"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        status = all_ok(len(frame))
        status[quantity == 0] = "quantity is 0"
        if "orders" in parents:
            orders = parents["orders"].frame
            order_status = lookup(frame["order_id"], orders["order_id"], orders["status"])
            status[(quantity < 0) & (order_status != CREDIT_NOTE)] = f"quantity is negative outside a {CREDIT_NOTE}"
        derived["__check__quantity_sign"] = status
    return derived
