"""Verdicts: which rows are quarantined, by which expectation first and for which reasons.

Read from the GX outcomes of a table's suite (quarantining checks only; notes keep their rows).
Also what is reported of failing rows: example keys, never their values (they may be personal),
and the quarantined rows as read, for the quarantine Parquet and the remarketing DB.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from remarketing.store.validation.gx_runtime import Outcome, columns_of, reasons_of
from remarketing.store.validation.results import MAX_EXAMPLE_KEYS, ExpectationResult
from remarketing.store.validation.rules import QUARANTINE


@dataclass
class Verdict:
    """Which rows of a table are quarantined and why (see verdict_of)."""

    bad: np.ndarray  # bool per row
    rows: np.ndarray  # quarantined __row, ascending
    expectation: np.ndarray  # first failing expectation label per quarantined row
    column: np.ndarray
    reason: np.ndarray  # every reason, joined

    def rows_frame(self, raw: pa.Table, frame: pd.DataFrame, key: str) -> pd.DataFrame:
        """The quarantined rows for the remarketing DB: key, position, expectation, column, reason, row JSON."""
        keys = keys_at(frame, key, self.rows)
        originals = raw.take(pa.array(self.rows, pa.int64())).to_pylist() if len(self.rows) else []
        return pd.DataFrame(
            {
                "row_key": [None if k is None else str(k) for k in keys],
                "row_number": self.rows,
                "expectation": self.expectation,
                "column_name": self.column,
                "reason": self.reason,
                "row_json": [_row_json(row) for row in originals],
            }
        )


def verdict_of(outcomes: list[Outcome], size: int) -> Verdict:
    """Which rows are quarantined, by which expectation first (suite order) and for which reasons (all)."""
    parts = []
    for order, outcome in enumerate(outcomes):
        if outcome.check.action != QUARANTINE or not len(outcome.rows):
            continue
        parts.append(
            pd.DataFrame(
                {
                    "row": outcome.rows,
                    "order": order,
                    "expectation": outcome.check.label,
                    "column": columns_of(outcome),
                    "reason": reasons_of(outcome),
                }
            )
        )
    bad = np.zeros(size, dtype=bool)
    if not parts:
        empty = np.empty(0, dtype=object)
        return Verdict(bad, np.empty(0, dtype=np.int64), empty, empty, empty)
    failures = pd.concat(parts, ignore_index=True).sort_values(["row", "order"], kind="stable")
    failures = failures.drop_duplicates(["row", "reason"])
    grouped = failures.groupby("row", sort=True)
    first = grouped.first()
    reasons = grouped["reason"].agg("; ".join)
    rows = first.index.to_numpy(dtype=np.int64)
    bad[rows] = True
    return Verdict(
        bad,
        rows,
        first["expectation"].to_numpy(dtype=object),
        first["column"].to_numpy(dtype=object),
        reasons.loc[first.index].to_numpy(dtype=object),
    )


def expectation_result(outcome: Outcome, frame: pd.DataFrame, key: str) -> ExpectationResult:
    check = outcome.check
    reasons: dict[str, int] = {}
    if check.reason is None and len(outcome.rows):
        # Derived values are reasons we wrote ourselves (no personal data); value expectations are
        # reported by count and keys only, since their failing values may be personal.
        reasons = dict(Counter(str(v) for v in outcome.values).most_common(5))
    elif check.reason is not None and outcome.unexpected:
        reasons = {check.reason: outcome.unexpected}
    return ExpectationResult(
        check.name,
        check.label,
        check.column,
        check.action,
        outcome.success,
        outcome.unexpected,
        keys_at(frame, key, outcome.rows[:MAX_EXAMPLE_KEYS]),
        reasons,
    )


def keys_at(frame: pd.DataFrame, key: str, rows: np.ndarray) -> list:
    """Key values (python ints, None for a missing key) at the given __row positions."""
    if not len(rows):
        return []
    values = frame[key].to_numpy(dtype=object, na_value=None)[np.asarray(rows, dtype=np.int64)]
    return [None if v is None else int(v) for v in values]


def keys_at_raw(raw: pa.Table, key: str, rows: np.ndarray | None) -> list:
    """Example keys of the rows a type error is about (none when the whole column is the problem)."""
    if rows is None or not len(rows):
        return []
    return raw.column(key).take(pa.array(rows[:MAX_EXAMPLE_KEYS], pa.int64())).to_pylist()


def quarantine_arrow(raw: pa.Table, verdict: Verdict) -> pa.Table:
    rows = raw.take(pa.array(verdict.rows, pa.int64()))
    extra = {
        "row_number": pa.array(verdict.rows, pa.int64()),
        "reason": pa.array(verdict.reason.tolist(), pa.string()),
        "expectation": pa.array(verdict.expectation.tolist(), pa.string()),
        "column": pa.array(verdict.column.tolist(), pa.string()),
    }
    for name, array in extra.items():
        if name in rows.column_names:  # a store column of that name: keep it, ours gets a prefix
            name = f"_validation_{name}"
        rows = rows.append_column(name, array)
    return rows.replace_schema_metadata(None)


def _row_json(row: dict) -> str:
    """A row as read, as strict JSON: timestamps ISO 8601, NaN and infinities as text."""
    values = {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    return json.dumps(values, ensure_ascii=False, allow_nan=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)  # Decimal and anything else Arrow hands back
