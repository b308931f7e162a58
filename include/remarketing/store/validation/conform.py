"""Conformance: a snapshot as read, brought to the canonical types before any row is checked.

Types are conformed losslessly or not at all: a column whose type cannot carry its canonical
kind (text in a number column, say) is a table-level failure, decided by the caller. Timestamps
become aware UTC (a naive one is never guessed to be UTC) and NUL bytes are stripped from text,
the columns they were in noted per row. Float NaN reads as null in pandas, so the rows holding
NaN (not null) are recorded per column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from remarketing.store.extract import ARROW_TYPES, ISSUES_COLUMN
from remarketing.store.schema import CANONICAL_TABLES
from remarketing.store.validation.rules import QUANTITIES, ROW

_OFFSET_RE = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"  # a time with a UTC offset


@dataclass
class Prepared:
    """A snapshot conformed to the canonical types, ready for the derived checks."""

    frame: pd.DataFrame | None  # canonical columns + _extract_issues + __row (None when columns are missing)
    missing: list[str]
    type_errors: dict[str, str]  # column -> what was found
    extra: list[str]
    type_error_rows: dict[str, np.ndarray] = field(default_factory=dict)  # column -> rows that cannot convert
    normalised: dict[str, int] = field(default_factory=dict)  # column -> values changed by normalisation
    timestamp_status: dict[str, np.ndarray] = field(default_factory=dict)  # column -> reason per row or None
    nul_columns: np.ndarray | None = None  # per row: columns that had NUL bytes, or None
    nan_rows: dict[str, np.ndarray] = field(default_factory=dict)  # float column -> rows holding NaN (not null)


def _chunked(array: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array])


def _conform(column: pa.ChunkedArray, kind: str) -> pa.ChunkedArray | None:
    """The column in its canonical Arrow type, or None when its type cannot carry ``kind`` losslessly."""
    target = ARROW_TYPES[kind]
    t = column.type
    if pa.types.is_null(t):
        return pa.chunked_array([pa.nulls(len(column), target)])
    if pa.types.is_dictionary(t):
        column, t = column.cast(t.value_type), t.value_type
    try:
        if kind == "int":
            if pa.types.is_integer(t):
                return column.cast(target)  # safe cast: uint64 beyond int64 raises
            if pa.types.is_floating(t):
                values = column.drop_null()
                integral = pc.all(pc.and_(pc.is_finite(values), pc.equal(pc.floor(values), values))).as_py()
                if integral in (True, None) and (len(values) == 0 or pc.max(pc.abs(values)).as_py() < 2**53):
                    return column.cast(target, safe=False)
            return None
        if kind == "float":
            if pa.types.is_decimal(t):
                return column.cast(pa.string()).cast(target)  # correctly rounded, as extraction does
            if pa.types.is_integer(t) or pa.types.is_floating(t):
                return column.cast(target)
            return None
        if kind == "str":
            return column.cast(target) if (pa.types.is_string(t) or pa.types.is_large_string(t)) else None
        if kind == "bool":
            return column if pa.types.is_boolean(t) else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    raise ValueError(f"unknown logical type {kind!r}")


def _conform_timestamp(column: pa.ChunkedArray, name: str) -> tuple[pa.ChunkedArray | None, np.ndarray | None, int]:
    """Timestamps as aware UTC; returns (array, reason per row or None, values converted).

    Aware timestamps in any zone are converted to UTC. Text is parsed as ISO 8601 and must carry
    a UTC offset. A naive value (no offset, or a Parquet timestamp without time zone) is never
    guessed to be UTC: the row is quarantined, since a wrong guess shifts sends by hours.
    """
    target = ARROW_TYPES["timestamp"]
    t = column.type
    if pa.types.is_null(t):
        return pa.chunked_array([pa.nulls(len(column), target)]), None, 0
    if pa.types.is_dictionary(t):
        column, t = column.cast(t.value_type), t.value_type
    present = column.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(t):
        if t.tz is None:
            status = np.where(present, f"{name} has no time zone (naive timestamp)", None).astype(object)
            return column.cast(pa.timestamp("us")).cast(target), (status if present.any() else None), 0
        converted = int(present.sum()) if t.tz not in ("UTC", "utc", "Etc/UTC", "+00:00", "Z") else 0
        return column.cast(target, safe=False), None, converted
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return None, None, 0
    text = pd.Series(pc.utf8_trim_whitespace(pc.replace_substring(column, "\x00", "")).to_pandas(), dtype=object)
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    with_offset = text.str.contains(_OFFSET_RE, regex=True, na=False).to_numpy(dtype=bool)
    unparseable = present & parsed.isna().to_numpy()
    naive = present & ~unparseable & ~with_offset
    status = np.full(len(text), None, dtype=object)
    status[unparseable] = f"{name} is not a parseable timestamp"
    status[naive] = f"{name} has no UTC offset (naive timestamp)"
    values = pa.array(parsed.dt.as_unit("us"), type=target, from_pandas=True)
    ok = present & ~unparseable & ~naive
    return pa.chunked_array([values]), (status if (unparseable | naive).any() else None), int(ok.sum())


def prepare(raw: pa.Table, table: str) -> Prepared:
    """Conform a snapshot to the canonical schema: types, UTC timestamps, NUL-free text.

    Missing columns or a type that cannot carry the column (text in a number column, say) leave
    ``frame`` None or record ``type_errors``: those are table-level failures (the feed's schema
    is broken), decided by the caller.
    """
    spec = CANONICAL_TABLES[table]
    present = set(raw.column_names)
    missing = [name for name in spec.required_names if name not in present]
    extra = [name for name in raw.column_names if name not in spec.columns and name != ISSUES_COLUMN]
    prepared = Prepared(frame=None, missing=missing, type_errors={}, extra=extra)
    columns: dict[str, pa.ChunkedArray] = {}
    nul_rows: np.ndarray | None = None
    for name, kind in spec.columns.items():
        if name in missing:
            continue
        if name not in present:  # an optional column the mapping leaves out: null
            columns[name] = pa.chunked_array([pa.nulls(raw.num_rows, ARROW_TYPES[kind])])
            continue
        source = _chunked(raw.column(name))
        if kind == "timestamp":
            conformed, status, converted = _conform_timestamp(source, name)
            if status is not None:
                prepared.timestamp_status[name] = status
            if converted:
                prepared.normalised[name] = converted
        else:
            conformed = _conform(source, kind)
        if conformed is None:
            prepared.type_errors[name] = f"found {source.type}, expected {kind}"
            if kind == "int" and pa.types.is_floating(source.type):  # say which rows hold fractions
                values = pc.fill_null(source, 0.0)
                integral = pc.and_(pc.is_finite(values), pc.equal(pc.floor(values), values))
                prepared.type_error_rows[name] = np.flatnonzero(~integral.to_numpy(zero_copy_only=False))
            continue
        if kind == "float":  # NaN and null both become NaN in pandas: say which were NaN
            nan = pc.fill_null(pc.is_nan(conformed), False).to_numpy(zero_copy_only=False)
            if nan.any():
                prepared.nan_rows[name] = np.flatnonzero(nan)
        if kind == "str":
            conformed, had_nul = _strip_nul(conformed)
            if had_nul.any():
                prepared.normalised[name] = prepared.normalised.get(name, 0) + int(had_nul.sum())
                nul_rows = _append_names(nul_rows, had_nul, name, len(raw))
        columns[name] = conformed
    if ISSUES_COLUMN in present:
        issues = _conform(_chunked(raw.column(ISSUES_COLUMN)), "str")
        if issues is None:
            prepared.type_errors[ISSUES_COLUMN] = f"found {raw.schema.field(ISSUES_COLUMN).type}, expected str"
    else:
        issues = pa.chunked_array([pa.nulls(raw.num_rows, pa.string())])  # a snapshot not written by extract
    if issues is not None:
        columns[ISSUES_COLUMN] = _strip_nul(issues)[0]
    prepared.nul_columns = nul_rows
    if missing or prepared.type_errors:
        return prepared
    arrow = pa.table(columns)
    frame = arrow.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
    for name in QUANTITIES.get(table, ()):
        # GX compares nullable Int64 row by row in Python; float64 (NaN for null) is vectorised and
        # exact for any sane quantity. Keys stay Int64: they must be exact.
        frame[name] = frame[name].astype("float64")
    frame[ROW] = np.arange(len(frame), dtype=np.int64)
    prepared.frame = frame
    return prepared


def _strip_nul(column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray]:
    had = pc.fill_null(pc.match_substring(column, "\x00"), False).to_numpy(zero_copy_only=False)
    if not had.any():
        return column, had
    return pc.replace_substring(column, "\x00", ""), had


def _append_names(acc: np.ndarray | None, rows: np.ndarray, name: str, size: int) -> np.ndarray:
    acc = np.full(size, None, dtype=object) if acc is None else acc
    for i in np.flatnonzero(rows):
        acc[i] = name if acc[i] is None else f"{acc[i]}, {name}"
    return acc
