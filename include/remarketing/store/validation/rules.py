"""What a valid store row is: type conformance, normalisation, derived checks and the GX suites.

Why derived columns: Great Expectations has no built-in for "a valid email address", "an IANA
zone", "the currency of this row's market" or "the parent cart exists and is clean". Those are
computed here, vectorised in pandas, into ``__check__*`` / ``__ref__*`` columns holding ``ok`` or
a reason; a GX ``expect_column_values_to_be_in_set(value_set=["ok"])`` then asserts them, so the
GX results stay the single record of what failed and why. Reasons never contain personal data
(no emails or names; only column names, codes and keys).

A check either quarantines its failing rows or only notes them (the value is kept or nulled and
the note is reported): an invalid customer ``time_zone`` is nulled (send windows fall back to
region, country or market zone), HTML in product names is kept (templates autoescape) and NUL
bytes are stripped from text.

Plain Python; Great Expectations is imported inside functions only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from remarketing.store.extract import ARROW_TYPES, ISSUES_COLUMN
from remarketing.store.schema import CANONICAL_TABLES, metadata

ROW = "__row"  # position of the row in the snapshot: identifies rows even when keys are null or duplicated
OK = "ok"
QUARANTINE = "quarantine"
NOTE = "note"

# Parents before children, so a child of a quarantined parent is quarantined too.
TABLE_ORDER = ("customers", "products", "orders", "order_items", "carts", "cart_items")


@dataclass(frozen=True)
class Reference:
    column: str
    parent: str
    noun: str  # the parent row in words: "cart"


REFERENCES: dict[str, tuple[Reference, ...]] = {
    "orders": (Reference("customer_id", "customers", "customer"),),
    "order_items": (Reference("order_id", "orders", "order"), Reference("product_id", "products", "product")),
    "carts": (Reference("customer_id", "customers", "customer"),),  # guests (null) are not checked
    "cart_items": (Reference("cart_id", "carts", "cart"), Reference("product_id", "products", "product")),
}

# Columns a row is useless without (besides its key). Everything else may be null.
REQUIRED: dict[str, tuple[str, ...]] = {
    "customers": ("market", "updated_at"),
    "products": ("currency", "updated_at"),
    "carts": ("market", "currency", "status", "updated_at"),
    "cart_items": ("cart_id", "product_id", "quantity", "unit_price", "currency", "updated_at"),
    "orders": ("customer_id", "market", "currency", "status", "total_amount", "placed_at", "updated_at"),
    "order_items": ("order_id", "product_id", "quantity", "unit_price", "updated_at"),
}
STATUSES = {
    "carts": ("open", "ordered"),
    "orders": ("placed", "shipped", "delivered", "cancelled", "refunded"),
}
AMOUNTS = {
    "products": ("price",),
    "cart_items": ("unit_price",),
    "orders": ("total_amount", "discount_amount"),
    "order_items": ("unit_price", "discount_amount"),
}
QUANTITIES = {"cart_items": ("quantity",), "order_items": ("quantity",)}
EMAILS = {"customers": "email", "carts": "email"}  # carts: the guest checkout address
MARKET_TABLES = ("customers", "carts", "orders")
CURRENCY_TABLES = ("products", "carts", "cart_items", "orders")
NOT_COUNTRIES = frozenset({"EU", "EZ", "UN", "ZZ", "QO"})  # CLDR groupings, not ISO 3166 countries

_OFFSET_RE = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"  # a time with a UTC offset
_MARKUP_RE = re.compile(r"<\s*/?\s*[a-z!?]|javascript\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class Check:
    """One GX expectation and how its failing rows are treated."""

    name: str  # stable id, e.g. "email", "not_null:market"
    expectation: str  # GX expectation class, e.g. "ExpectColumnValuesToBeInSet"
    kwargs: Mapping[str, Any]
    column: str | None  # the canonical column it is about; None: named by the failing value (extract issues)
    action: str = QUARANTINE  # or NOTE: reported, row kept
    reason: str | None = None  # fixed reason; None: the failing (derived) value is the reason

    @property
    def gx_column(self) -> str | None:
        return self.kwargs.get("column")

    @property
    def label(self) -> str:
        """The expectation as GX names it, with its column: expect_column_values_to_be_in_set(__check__email)."""
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", self.expectation).lower()
        return f"{snake}({self.gx_column})" if self.gx_column else snake


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


@dataclass(frozen=True)
class ParentRows:
    """What children need of a validated parent table."""

    frame: pd.DataFrame  # the parent's prepared frame (all rows)
    clean: np.ndarray  # bool per row


# --------------------------------------------------------------------------- reference data


@lru_cache(maxsize=1)
def iana_zones() -> frozenset[str]:
    from zoneinfo import available_timezones

    return frozenset(available_timezones())


@lru_cache(maxsize=1)
def iso_currencies() -> frozenset[str]:
    from babel.numbers import list_currencies

    return frozenset(list_currencies())


@lru_cache(maxsize=1)
def iso_countries() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes as CLDR knows them (territories with a currency)."""
    from babel.core import get_global

    return frozenset(code for code in get_global("territory_currencies") if len(code) == 2) - NOT_COUNTRIES


def max_lengths(table: str, text_max_length: int) -> dict[str, int]:
    """Character limits of the text columns: the store schema's String(n), ``text_max_length`` for Text."""
    return {
        column.name: column.type.length or text_max_length
        for column in metadata.tables[table].columns
        if isinstance(column.type, sa.String)
    }


# --------------------------------------------------------------------------- conformance


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
    missing = [name for name in spec.columns if name not in present]
    extra = [name for name in raw.column_names if name not in spec.columns and name != ISSUES_COLUMN]
    prepared = Prepared(frame=None, missing=missing, type_errors={}, extra=extra)
    columns: dict[str, pa.ChunkedArray] = {}
    nul_rows: np.ndarray | None = None
    for name, kind in spec.columns.items():
        if name in missing:
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


# --------------------------------------------------------------------------- derived checks


def _status(size: int) -> np.ndarray:
    return np.full(size, OK, dtype=object)


def normalise_email(value: str) -> str | None:
    """The address as email-validator normalises it (surrounding whitespace removed), or None."""
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def _emails(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, pd.Series, int]:
    """(status per row, normalised column, values changed). Each distinct address is validated once."""
    values = frame[column]
    present = values.notna().to_numpy()
    normal = {value: normalise_email(value) for value in pd.unique(values[present])}
    mapped = values.map(normal).to_numpy(dtype=object, na_value=None)
    valid = present & pd.notna(mapped)
    status = _status(len(frame))
    status[present & ~valid] = f"{column} is not a valid address"
    original = values.to_numpy(dtype=object, na_value=None)
    out = original.copy()
    out[valid] = mapped[valid]
    changed = int((out[valid] != original[valid]).sum())
    return status, pd.Series(out, index=values.index).astype(values.dtype), changed


def _names(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Product names must be a JSON object locale -> text; returns (status, markup note) per row."""
    verdicts: dict[str, tuple[bool, bool]] = {}
    for text in pd.unique(values.dropna()):
        try:
            parsed = json.loads(text)
        except ValueError:
            verdicts[text] = (False, False)
            continue
        good = (
            isinstance(parsed, dict)
            and bool(parsed)
            and all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in parsed.items())
        )
        markup = good and any(_MARKUP_RE.search(v) for v in parsed.values())
        verdicts[text] = (good, markup)
    status, note = _status(len(values)), _status(len(values))
    for i, text in enumerate(values.to_numpy(dtype=object, na_value=None)):
        if text is None:
            continue
        good, markup = verdicts[text]
        if not good:
            status[i] = "names is not a JSON object of locale to text"
        elif markup:
            note[i] = "names contains HTML markup (kept; escaped at render)"
    return status, note


def _int_keys(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, present mask) of a nullable integer key column."""
    present = series.notna().to_numpy(dtype=bool)
    return series.to_numpy(dtype=np.int64, na_value=0), present


def _lookup(keys: pd.Series, parent_keys: pd.Series, parent_values: pd.Series) -> np.ndarray:
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


def derive(
    prepared: Prepared,
    table: str,
    *,
    markets,
    now: datetime,
    future_skew: timedelta,
    text_max_length: int,
    parents: Mapping[str, ParentRows],
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Add the derived check columns and normalise emails / time zones; returns (frame, normalised counts)."""
    frame = prepared.frame
    assert frame is not None
    size = len(frame)
    derived: dict[str, Any] = {}
    normalised: dict[str, int] = {}

    limit = pd.Timestamp(now) + future_skew
    for name, kind in CANONICAL_TABLES[table].columns.items():
        if kind != "timestamp":
            continue
        status = prepared.timestamp_status.get(name)
        status = _status(size) if status is None else np.where(pd.isna(status), OK, status).astype(object)
        future = (frame[name] > limit).fillna(False).to_numpy(dtype=bool) & (status == OK)
        status[future] = f"{name} is more than {_duration(future_skew)} in the future"
        derived[f"__check__timestamp_{name}"] = status

    derived["__check__length"] = _lengths(frame, max_lengths(table, text_max_length))
    if table == "customers":
        derived["__check__country"] = _coded(
            frame["country"], iso_countries(), "country is not an ISO 3166 country code"
        )
    if table in CURRENCY_TABLES:
        derived["__check__currency"] = _coded(frame["currency"], iso_currencies(), "currency is not an ISO 4217 code")

    if table in EMAILS:
        column = EMAILS[table]
        status, normal, changed = _emails(frame, column)
        derived[f"__check__{column}"] = status
        frame[column] = normal
        if changed:
            normalised[column] = changed

    if table == "customers":
        zone = frame["time_zone"]
        bad = (zone.notna() & ~zone.isin(iana_zones())).to_numpy(dtype=bool)
        status = _status(size)
        status[bad] = "time_zone is not an IANA zone name (nulled)"
        derived["__check__time_zone"] = status
        if bad.any():
            frame["time_zone"] = zone.mask(pd.Series(bad, index=zone.index))
            normalised["time_zone"] = int(bad.sum())

    if table in ("carts", "orders"):
        derived["__check__currency_market"] = _currency_of_market(frame, markets)

    if table == "cart_items":
        derived["__check__currency_cart"] = _currency_of_cart(frame, parents.get("carts"))

    if table == "carts" and "orders" in parents:
        orders = parents["orders"].frame
        order_currency = _lookup(frame["order_id"], orders["order_id"], orders["currency"])
        currency = frame["currency"].to_numpy(dtype=object, na_value=None)
        differs = _valid_currency(currency) & _valid_currency(order_currency) & (currency != order_currency)
        status = _status(size)
        status[differs] = [f"currency differs from its order's ({c})" for c in order_currency[differs]]
        derived["__check__currency_order"] = status

    if table == "products":
        status, markup = _names(frame["names"])
        derived["__check__names"] = status
        derived["__check__names_markup"] = markup

    for ref in REFERENCES.get(table, ()):
        if ref.parent in parents:
            derived[f"__ref__{ref.column}"] = _reference(frame[ref.column], parents[ref.parent], ref)

    nul = _status(size)
    if prepared.nul_columns is not None:
        rows = pd.notna(prepared.nul_columns)
        nul[rows] = [f"NUL bytes removed from {names}" for names in prepared.nul_columns[rows]]
    derived["__check__nul"] = nul

    frame = pd.concat([frame, pd.DataFrame(derived, index=frame.index)], axis=1)
    return frame, normalised


def _lengths(frame: pd.DataFrame, limits: Mapping[str, int]) -> np.ndarray:
    """Text longer than the store schema allows (String(n)); every offending column is named."""
    status = _status(len(frame))
    for name, limit in limits.items():
        long = (frame[name].str.len() > limit).fillna(False).to_numpy(dtype=bool)
        for i in np.flatnonzero(long):
            reason = f"{name} longer than {limit} characters"
            status[i] = reason if status[i] == OK else f"{status[i]}; {reason}"
    return status


def _coded(values: pd.Series, known: frozenset[str], reason: str) -> np.ndarray:
    """A code column (country, currency) must hold a known code when present."""
    status = _status(len(values))
    status[(values.notna() & ~values.isin(known)).to_numpy(dtype=bool)] = reason
    return status


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:g} h"


def _valid_currency(values: pd.Series | np.ndarray) -> np.ndarray:
    return pd.Series(values, dtype=object).isin(iso_currencies()).to_numpy(dtype=bool)


def _currency_of_market(frame: pd.DataFrame, markets) -> np.ndarray:
    expected = frame["market"].map({m.code: m.currency for m in markets}).to_numpy(dtype=object, na_value=None)
    currency = frame["currency"].to_numpy(dtype=object, na_value=None)
    market = frame["market"].to_numpy(dtype=object, na_value=None)
    differs = _valid_currency(frame["currency"]) & pd.notna(expected) & (currency != expected)
    status = _status(len(frame))
    status[differs] = [
        f"currency {c} is not the {m} market's currency ({w})"
        for c, m, w in zip(currency[differs], market[differs], expected[differs], strict=True)
    ]
    return status


def _currency_of_cart(frame: pd.DataFrame, carts: ParentRows | None) -> np.ndarray:
    """A cart holds one currency: lines in another one are quarantined.

    The reference is the cart's own currency; without the carts table, the currency most of the
    cart's lines use (ties: alphabetical), so a mixed cart still shows which lines differ.
    """
    currency = frame["currency"]
    if carts is not None:
        reference = _lookup(frame["cart_id"], carts.frame["cart_id"], carts.frame["currency"])
    else:
        pairs = frame.loc[currency.notna() & frame["cart_id"].notna(), ["cart_id", "currency"]]
        counts = pairs.value_counts().reset_index(name="n")
        counts = counts.sort_values(["cart_id", "n", "currency"], ascending=[True, False, True])
        majority = counts.drop_duplicates("cart_id")
        reference = _lookup(frame["cart_id"], majority["cart_id"], majority["currency"])
    values = currency.to_numpy(dtype=object, na_value=None)
    differs = _valid_currency(values) & _valid_currency(reference) & (values != reference)
    status = _status(len(frame))
    status[differs] = [f"currency differs from its cart's ({c})" for c in reference[differs]]
    return status


def _reference(keys: pd.Series, parent: ParentRows, ref: Reference) -> np.ndarray:
    """ok / no such parent / parent quarantined, for every row whose key is not null."""
    values, present = _int_keys(keys)
    parent_keys, parent_present = _int_keys(parent.frame[CANONICAL_TABLES[ref.parent].key])
    known = np.isin(values, parent_keys[parent_present])
    clean = np.isin(values, parent_keys[parent_present & parent.clean])
    status = _status(len(values))
    status[present & ~known] = f"{ref.column}: no such {ref.noun} in the extract"
    status[present & known & ~clean] = f"{ref.column}: parent {ref.noun} quarantined"
    return status


# --------------------------------------------------------------------------- the suites (as code)


def schema_checks(table: str, *, expect_rows: bool) -> list[Check]:
    """Table-level expectations GX runs on the snapshot as read: every column there, rows if expected."""
    spec = CANONICAL_TABLES[table]
    checks = [
        Check(
            "columns",
            "ExpectTableColumnsToMatchSet",
            {"column_set": spec.column_names, "exact_match": False},  # extra columns are ignored
            None,
            reason="columns missing",
        )
    ]
    if expect_rows:
        checks.append(Check("rows", "ExpectTableRowCountToBeBetween", {"min_value": 1}, None, reason="empty extract"))
    return checks


def row_checks(
    table: str,
    *,
    markets,
    parents: Iterable[str],
    max_amount: float,
    max_quantity: int,
) -> list[Check]:
    """The row-level suite of one table, in the order reasons are listed."""
    spec = CANONICAL_TABLES[table]
    key = spec.key
    parents = set(parents)
    checks = [
        Check("extract_issues", "ExpectColumnValuesToBeNull", {"column": ISSUES_COLUMN}, None),
        Check(f"not_null:{key}", "ExpectColumnValuesToNotBeNull", {"column": key}, key, reason=f"{key} is missing"),
        Check(f"unique:{key}", "ExpectColumnValuesToBeUnique", {"column": key}, key, reason=f"duplicate {key}"),
    ]
    for name in REQUIRED[table]:
        checks.append(
            Check(
                f"not_null:{name}", "ExpectColumnValuesToNotBeNull", {"column": name}, name, reason=f"{name} is missing"
            )
        )
    for name, kind in spec.columns.items():
        if kind == "timestamp":
            checks.append(_derived(f"timestamp:{name}", f"__check__timestamp_{name}", name))
    checks.append(_derived("length", "__check__length", None))
    if table in MARKET_TABLES:
        checks.append(_in_set("market", sorted(m.code for m in markets), "market is not a configured market"))
    if table == "customers":
        checks.append(_derived("country", "__check__country", "country"))
    if table in CURRENCY_TABLES:
        checks.append(_derived("currency", "__check__currency", "currency"))
    if table == "products":
        shop = sorted({m.currency for m in markets})
        checks.append(
            _in_set("currency", shop, "currency is not the currency of any configured market", name="currency:shop")
        )
    if table in STATUSES:
        allowed = STATUSES[table]
        checks.append(_in_set("status", list(allowed), f"status is not one of {', '.join(allowed)}"))
    if table in EMAILS:
        checks.append(_derived("email", f"__check__{EMAILS[table]}", EMAILS[table]))
    if table == "customers":
        checks.append(_derived("time_zone", "__check__time_zone", "time_zone", action=NOTE))
    if table in ("carts", "orders"):
        checks.append(_derived("currency:market", "__check__currency_market", "currency"))
    if table == "cart_items":
        checks.append(_derived("currency:cart", "__check__currency_cart", "currency"))
    if table == "carts" and "orders" in parents:
        checks.append(_derived("currency:order", "__check__currency_order", "currency"))
    for name in AMOUNTS.get(table, ()):
        checks.append(_between(name, 0, max_amount))
    for name in QUANTITIES.get(table, ()):
        checks.append(_between(name, 1, max_quantity))
    if table == "products":
        checks.append(_derived("names", "__check__names", "names"))
        checks.append(_derived("names:markup", "__check__names_markup", "names", action=NOTE))
    for ref in REFERENCES.get(table, ()):
        if ref.parent in parents:
            checks.append(_derived(f"reference:{ref.column}", f"__ref__{ref.column}", ref.column))
    checks.append(_derived("nul", "__check__nul", None, action=NOTE))
    return checks


def _derived(name: str, derived_column: str, column: str | None, action: str = QUARANTINE) -> Check:
    return Check(name, "ExpectColumnValuesToBeInSet", {"column": derived_column, "value_set": [OK]}, column, action)


def _in_set(column: str, values: list[str], reason: str, name: str | None = None) -> Check:
    return Check(
        name or f"in_set:{column}",
        "ExpectColumnValuesToBeInSet",
        {"column": column, "value_set": values},
        column,
        reason=reason,
    )


def _between(column: str, low: float, high: float) -> Check:
    return Check(
        f"between:{column}",
        "ExpectColumnValuesToBeBetween",
        {"column": column, "min_value": low, "max_value": high},
        column,
        reason=f"{column} not within [{low:g}, {high:g}]",
    )


# --------------------------------------------------------------------------- running GX


class _Runtime:
    """One ephemeral GX context per process: a pandas data source, one whole-frame batch per table."""

    def __init__(self):
        _quiet_gx()
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _quiet_gx()  # some GX modules set their own logger to INFO on import
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.source = self.context.data_sources.add_pandas("store")
        self.batches: dict[str, Any] = {}
        self.suites: dict[tuple, Any] = {}

    def batch_definition(self, name: str):
        if name not in self.batches:
            asset = self.source.add_dataframe_asset(name=name)
            self.batches[name] = asset.add_batch_definition_whole_dataframe("whole")
        return self.batches[name]


_RUNTIME: _Runtime | None = None


def _quiet_gx() -> None:
    """GX logs a lot at INFO on import and while validating; the task log should show our table."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        # child loggers that set a level of their own; one module names its logger by file path
        if ("great_expectations" in name) and isinstance(logger, logging.Logger) and logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def runtime() -> _Runtime:
    global _RUNTIME
    if _RUNTIME is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation warnings from GX's own imports
            _RUNTIME = _Runtime()
    return _RUNTIME


def build_suite(name: str, checks: list[Check]):
    """An ExpectationSuite from checks; each expectation carries its check name in ``meta``.

    Suites are cached by content: building GX expectations costs more than running them on a
    small table, and a process validates the same suites run after run.
    """
    rt = runtime()
    import great_expectations.expectations as gxe

    signature = (name, tuple((c.name, c.expectation, repr(sorted(c.kwargs.items()))) for c in checks))
    suite = rt.suites.get(signature)
    if suite is None:
        seen: dict[str, str] = {}
        for check in checks:  # GX merges identical expectations: two checks must never share one
            config = f"{check.expectation}{sorted(check.kwargs.items())}"
            if config in seen:
                raise ValueError(f"suite {name}: checks {seen[config]} and {check.name} are the same expectation")
            seen[config] = check.name
        suite = rt.gx.ExpectationSuite(name=name)
        for check in checks:
            suite.add_expectation(getattr(gxe, check.expectation)(**check.kwargs, meta={"check": check.name}))
        rt.suites[signature] = suite
    return suite


@dataclass
class Outcome:
    """What one expectation found, read from the GX validation result."""

    check: Check
    success: bool
    unexpected: int
    rows: np.ndarray  # __row of the failing rows (empty for table-level expectations)
    values: list[Any]  # the failing values, aligned with rows (derived reasons; never rendered otherwise)
    observed: Any = None


def run_suite(table: str, frame: pd.DataFrame, suite_name: str, checks: list[Check], *, key: str) -> list[Outcome]:
    """Validate ``frame`` with GX (result_format COMPLETE) and return one Outcome per check, in check order."""
    rt = runtime()
    suite = build_suite(suite_name, checks)
    batch = rt.batch_definition(table).get_batch(batch_parameters={"dataframe": frame})
    index_columns = [ROW, key] if key in frame.columns and ROW in frame.columns else []
    result_format: dict[str, Any] = {"result_format": "COMPLETE", "return_unexpected_index_query": False}
    if index_columns:
        result_format["unexpected_index_column_names"] = index_columns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validation = batch.validate(suite, result_format=result_format)
    by_name = {check.name: check for check in checks}
    outcomes: dict[str, Outcome] = {}
    for result in validation.results:
        check = by_name[result.expectation_config.meta["check"]]
        info = result.exception_info or {}
        if info.get("raised_exception"):
            message = str(info.get("exception_message") or "").splitlines()[0:1]
            raise RuntimeError(f"table {table}: GX could not evaluate {check.label}: {message[0] if message else ''}")
        body = result.result or {}
        listed = body.get("unexpected_index_list") or []
        rows = np.array([entry[ROW] for entry in listed], dtype=np.int64) if listed else np.empty(0, dtype=np.int64)
        values = [entry.get(check.gx_column) for entry in listed] if listed else []
        count = int(body.get("unexpected_count") or 0)
        if count != len(rows) and index_columns and check.gx_column:
            raise RuntimeError(f"table {table}: GX listed {len(rows)} of {count} failing rows for {check.label}")
        outcomes[check.name] = Outcome(
            check, bool(result.success), count, rows, values, observed=body.get("observed_value")
        )
    missing = [name for name in by_name if name not in outcomes]
    if missing:
        raise RuntimeError(f"table {table}: GX returned no result for {', '.join(missing)}")
    return [outcomes[check.name] for check in checks]


def reasons_of(outcome: Outcome) -> list[str]:
    """The reason for each failing row of a row-level outcome."""
    check = outcome.check
    if check.reason is not None:
        return [check.reason] * len(outcome.rows)
    return [str(value) for value in outcome.values]


def columns_of(outcome: Outcome) -> list[str]:
    """The canonical column each failing row is about (extract issues name theirs)."""
    if outcome.check.column is not None:
        return [outcome.check.column] * len(outcome.rows)
    if outcome.check.name == "extract_issues":  # "quantity: not a valid int; unit_price: ..."
        return [", ".join(part.split(":")[0].strip() for part in str(v).split(";")) for v in outcome.values]
    if outcome.check.name == "length":  # "last_name longer than 200 characters; ..."
        return [", ".join(part.strip().split(" ")[0] for part in str(v).split(";")) for v in outcome.values]
    return [""] * len(outcome.rows)
