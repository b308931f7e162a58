"""Reading the input frames profiles are computed from: required columns, integer keys, UTC instants.

An input that cannot be read raises ModelInputError naming the table, the column and a few
example keys (never personal data). ``customer_orders`` reads customers and orders for the
purchase model's calibration (remarketing.profiles.calibration); the profiles' own stricter
reading is remarketing.profiles.inputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EXCLUDED_STATUSES = ("cancelled", "refunded")  # never revenue, never a purchase
CREDIT_NOTE = "credit_note"  # money back: nets against purchases, never a purchase itself
ORDER_STATUSES = ("placed", "shipped", "delivered", "cancelled", "refunded", CREDIT_NOTE)


class ModelInputError(ValueError):
    """Input frames the model cannot read; the message names the table, column and example keys."""


def examples(keys) -> str:
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:5])
    return shown + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else "")


def require_columns(frame: pd.DataFrame, table: str, columns) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ModelInputError(f"{table}: missing column(s) {', '.join(missing)}")


def int_keys(frame: pd.DataFrame, table: str, column: str, key: str | None = None) -> np.ndarray:
    """An integer key column as int64; nulls are an error naming the rows' own keys."""
    series = frame[column]
    missing = series.isna().to_numpy()
    if missing.any():
        where = frame[key][missing] if key and key != column else np.flatnonzero(missing)
        label = key if key and key != column else "row position"
        raise ModelInputError(f"{table}.{column} is null for {missing.sum()} row(s); {label}: {examples(where)}")
    try:
        return series.to_numpy(dtype=np.int64)
    except (TypeError, ValueError):
        raise ModelInputError(f"{table}.{column} must hold integers, got dtype {series.dtype}") from None


def utc_micros(frame: pd.DataFrame, table: str, column: str, key: str) -> np.ndarray:
    """Aware timestamps as int64 UTC microseconds (NaT -> INT64 min); naive ones are an error."""
    series = frame[column]
    if not isinstance(series.dtype, pd.DatetimeTZDtype):
        if len(series) == 0 or series.isna().all():
            return np.full(len(series), np.iinfo(np.int64).min, dtype=np.int64)
        raise ModelInputError(f"{table}.{column} must be timezone-aware timestamps (UTC), got dtype {series.dtype}")
    values = series.dt.tz_convert("UTC").dt.as_unit("us").array.asi8
    return np.asarray(values, dtype=np.int64)


def unique_or_fail(keys: np.ndarray, table: str, column: str) -> None:
    ordered = np.sort(keys, kind="stable")
    dup = ordered[1:][ordered[1:] == ordered[:-1]]
    if dup.size:
        raise ModelInputError(f"{table}.{column} must be unique; duplicated: {examples(np.unique(dup))}")


def locate(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each value in the unique ``keys`` array, -1 when absent (dense table when ids are compact)."""
    values = np.asarray(values, dtype=np.int64)
    if len(keys) and keys.min() >= 0 and keys.max() < max(8 * len(keys), 1 << 20):
        table = np.full(int(keys.max()) + 1, -1, dtype=np.int64)
        table[keys] = np.arange(len(keys), dtype=np.int64)
        if not len(values) or (values.min() >= 0 and values.max() < len(table)):
            return table[values]
        inside = (values >= 0) & (values < len(table))
        out = np.full(len(values), -1, dtype=np.int64)
        out[inside] = table[values[inside]]
        return out
    return pd.Index(keys).get_indexer(values).astype(np.int64)


def customer_orders(
    customers: pd.DataFrame, orders: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Customer ids, and per order: its customer's row, placed_at (UTC microseconds) and whether it counts.

    An order counts unless cancelled/refunded or without a placed_at. Laxer than the profiles'
    reading (markets and currencies unchecked): the calibration needs purchase times only.
    """
    require_columns(customers, "customers", ["customer_id", "market"])
    require_columns(orders, "orders", ["order_id", "customer_id", "status", "placed_at"])
    ids = int_keys(customers, "customers", "customer_id")
    unique_or_fail(ids, "customers", "customer_id")
    order_ids = int_keys(orders, "orders", "order_id")
    pos = locate(ids, int_keys(orders, "orders", "customer_id", "order_id"))
    if (pos < 0).any():
        raise ModelInputError(f"orders reference unknown customers; order_id: {examples(order_ids[pos < 0])}")
    placed = utc_micros(orders, "orders", "placed_at", "order_id")
    valid = ~orders["status"].isin((*EXCLUDED_STATUSES, CREDIT_NOTE)).to_numpy() & (placed != np.iinfo(np.int64).min)
    return ids, pos, placed, valid
