"""Validate every store snapshot with Great Expectations; quarantine bad rows, never drop them.

Two levels. A bad row (invalid email, unknown currency, orphan cart line...) is quarantined with
the failing expectation, the column and a reason, and the run goes on with the clean rows. A
broken table (unreadable Parquet, missing column, wrong type, an empty extract where rows are
expected, more than ``max_bad_share`` of its rows bad) raises FeedBroken, so the DAG stops before
any email is sent. Every row extracted is either clean or quarantined (conservation, checked
here and recorded per run).

Per run, under ``out_dir``: ``clean/<table>.parquet`` (canonical columns, normalised: emails as
email-validator normalises them, timestamps aware UTC, text without NUL bytes, invalid customer
time zones nulled), ``quarantine/<table>.parquet`` (the rows as read, plus ``row_number``,
``reason``, ``expectation``, ``column``) and ``report.html``. The rules and suites live in
remarketing.store.validation.rules, the report in remarketing.store.validation.report.

Decisions the corpus (tests/support/bad_input) pins down:
- naive timestamps are quarantined, never assumed UTC; aware ones in any zone are converted;
- an invalid customer ``time_zone`` is nulled with a note (send windows fall back to region,
  country or market zone); the row is kept;
- HTML or script in product names is kept (templates autoescape) and noted in the report;
- a child row whose parent was quarantined is quarantined too ("parent cart quarantined");
- order lines carry no currency: an order mixes currencies when the cart it was placed from is
  in another currency; that cart is quarantined and its lines follow it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from remarketing.platform.storage import as_path, read_table, write_table
from remarketing.store.extract import ISSUES_COLUMN, arrow_schema
from remarketing.store.schema import CANONICAL_TABLES
from remarketing.store.validation import rules
from remarketing.store.validation.results import (
    MAX_EXAMPLE_KEYS,
    TABLE_ORDER,
    ConservationError,
    ExpectationResult,
    FeedBroken,
    StoreValidation,
    TableValidation,
    ValidationPolicy,
    quarantine,
    validation_runs,
)

log = logging.getLogger(__name__)


def validate_store(
    snapshots: Mapping[str, Any],
    *,
    markets,
    out_dir,
    run_id: str,
    now: datetime,
    policy: ValidationPolicy = ValidationPolicy(),  # noqa: B008 - frozen, never mutated
    state_engine: sa.Engine | None = None,
) -> StoreValidation:
    """Validate the snapshots (table -> Parquet path), write clean/quarantine/report under ``out_dir``.

    Tables are validated parents first; referential checks run against the tables given. Returns
    the StoreValidation; raises FeedBroken (after writing the report and recording the run) when
    any table is broken, naming the first one in dependency order.
    """
    unknown = sorted(set(snapshots) - set(CANONICAL_TABLES))
    if unknown:
        raise ValueError(f"unknown store tables {unknown}; known: {', '.join(TABLE_ORDER)}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    out_dir = as_path(out_dir)
    rules.runtime()  # GX import and context (seconds, once per process) are not any table's time
    started = time.perf_counter()
    parents: dict[str, rules.ParentRows] = {}
    failed_parents: set[str] = set()
    results: dict[str, TableValidation] = {}
    quarantined_rows: dict[str, pd.DataFrame] = {}
    for table in TABLE_ORDER:
        if table not in snapshots:
            continue
        outcome, parent, rows = _validate_table(
            table,
            snapshots[table],
            markets=markets,
            out_dir=out_dir,
            now=now,
            policy=policy,
            parents=parents,
            failed_parents=failed_parents,
            record=state_engine is not None,
        )
        results[table] = outcome
        if parent is not None and outcome.status == "ok":
            parents[table] = parent
        if outcome.status != "ok":
            failed_parents.add(table)
        if rows is not None and outcome.status == "ok":
            quarantined_rows[table] = rows

    validation = StoreValidation(run_id=run_id, tables=results, report_path=None, seconds=0.0)
    report = _path(out_dir, "report.html")
    from remarketing.store.validation.report import render_report

    _write_text(report, render_report(validation, now=now, policy=policy))
    validation.report_path = str(report)
    validation.seconds = round(time.perf_counter() - started, 3)
    if state_engine is not None:
        record_validation(state_engine, validation, quarantined_rows)

    failures = [t.failure for t in results.values() if t.failure is not None]
    if failures:
        first = failures[0]
        first.validation = validation
        log.error("store validation failed\n%s", validation.summary_table())
        if len(failures) > 1:
            others = ", ".join(f.table for f in failures[1:])
            first.args = (f"{first.args[0]} (also broken: {others})",)
        raise first
    return validation


def _validate_table(
    table: str,
    source: Any,
    *,
    markets,
    out_dir,
    now: datetime,
    policy: ValidationPolicy,
    parents: dict[str, rules.ParentRows],
    failed_parents: set[str],
    record: bool,
) -> tuple[TableValidation, rules.ParentRows | None, pd.DataFrame | None]:
    started = time.perf_counter()
    spec = CANONICAL_TABLES[table]
    table_policy = policy.for_table(table)

    def done(result: TableValidation) -> TableValidation:
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    try:
        raw = read_table(source)
    except Exception as exc:  # noqa: BLE001 - any reader error means the snapshot cannot be used
        result = TableValidation(table, extracted=0, status="failed")
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        result.failure = FeedBroken(table, "read_parquet", [], f"the snapshot is not readable Parquet ({detail})")
        result.expectations.append(ExpectationResult("read_parquet", "read_parquet", None, "table", False, 0, [], {}))
        return done(result), None, None

    result = TableValidation(table, extracted=raw.num_rows)
    prepared = rules.prepare(raw, table)
    result.extra_columns = prepared.extra

    # Table level: GX on the snapshot's shape (columns, rows), then the types found on reading.
    schema_checks = rules.schema_checks(table, expect_rows=table in policy.expect_rows)
    shape = pd.DataFrame({name: np.zeros(raw.num_rows, dtype=np.int8) for name in raw.column_names})
    schema = rules.run_suite(table, shape, f"store.{table}.schema", schema_checks, key=spec.key)
    for outcome in schema:
        missing = (
            {"columns missing": len(prepared.missing)} if outcome.check.name == "columns" and prepared.missing else {}
        )
        column = ", ".join(prepared.missing) or None
        result.expectations.append(
            ExpectationResult(outcome.check.name, outcome.check.label, column, "table", outcome.success, 0, [], missing)
        )
    for column, found in prepared.type_errors.items():
        label = f"expect_column_values_to_be_of_type({column})"
        result.expectations.append(
            ExpectationResult(f"type:{column}", label, column, "table", False, 0, [], {found: 0})
        )
    failure = _schema_failure(table, spec.key, schema, prepared, raw)
    if failure is not None:
        result.status, result.failure = "failed", failure
        return done(result), None, None

    frame, normalised = rules.derive(
        prepared,
        table,
        markets=markets,
        now=now,
        future_skew=table_policy.future_skew,
        text_max_length=table_policy.text_max_length,
        parents=parents,
    )
    result.normalised = {**prepared.normalised, **normalised}
    checks = rules.row_checks(
        table,
        markets=markets,
        parents=parents.keys(),
        max_amount=table_policy.max_amount,
        max_quantity=table_policy.max_quantity,
    )
    skipped = [r for r in rules.REFERENCES.get(table, ()) if r.parent in failed_parents]
    for ref in skipped:
        result.expectations.append(
            ExpectationResult(
                f"reference:{ref.column}",
                f"not checked: table {ref.parent} is broken",
                ref.column,
                "table",
                False,
                0,
                [],
                {},
            )
        )
    outcomes = rules.run_suite(table, frame, f"store.{table}", checks, key=spec.key)
    verdict = _verdict(outcomes, len(frame))
    clean_mask = ~verdict.bad
    for outcome in outcomes:
        result.expectations.append(_expectation_result(outcome, frame, spec.key))
        if not outcome.success and outcome.unexpected:
            target = result.failed_expectations if outcome.check.action == rules.QUARANTINE else result.notes
            target[outcome.check.label] = outcome.unexpected

    result.clean = int(clean_mask.sum())
    result.quarantined = int(verdict.bad.sum())
    if result.extracted != result.clean + result.quarantined:
        raise ConservationError(
            f"table {table}: extracted {result.extracted} != clean {result.clean} + quarantined {result.quarantined}"
        )

    clean_table = _clean_arrow(frame.loc[clean_mask], table)
    quarantine_table = _quarantine_arrow(raw, verdict)
    if clean_table.num_rows + quarantine_table.num_rows != result.extracted:
        raise ConservationError(
            f"table {table}: wrote {clean_table.num_rows} clean + {quarantine_table.num_rows} quarantined rows "
            f"for {result.extracted} extracted"
        )
    clean_path = _path(out_dir, "clean", f"{table}.parquet")
    quarantine_path = _path(out_dir, "quarantine", f"{table}.parquet")
    write_table(clean_table, clean_path)
    write_table(quarantine_table, quarantine_path)
    result.clean_path, result.quarantine_path = str(clean_path), str(quarantine_path)

    share = result.quarantined / result.extracted if result.extracted else 0.0
    if share > table_policy.max_bad_share:
        worst = max(
            (o for o in outcomes if o.check.action == rules.QUARANTINE and o.unexpected),
            key=lambda o: o.unexpected,
        )
        keys = _keys_at(frame, spec.key, worst.rows[:MAX_EXAMPLE_KEYS])
        result.status = "failed"
        result.failure = FeedBroken(
            table,
            worst.check.label,
            keys,
            f"{result.quarantined} of {result.extracted} rows ({share:.1%}) would be quarantined, more than "
            f"max_bad_share {table_policy.max_bad_share:.1%}; most by {worst.check.name} ({worst.unexpected} rows)",
        )
    parent = rules.ParentRows(frame=frame[[c for c in _parent_columns(table) if c in frame]], clean=clean_mask)
    rows = verdict.rows_frame(raw, frame, spec.key) if record and result.status == "ok" else None
    return done(result), parent, rows


def _parent_columns(table: str) -> list[str]:
    return [CANONICAL_TABLES[table].key, "currency", "market"]


def _schema_failure(table: str, key: str, schema, prepared: rules.Prepared, raw: pa.Table) -> FeedBroken | None:
    columns = next(o for o in schema if o.check.name == "columns")
    if columns.success == bool(prepared.missing):
        raise RuntimeError(f"table {table}: GX and the reader disagree on missing columns {prepared.missing}")
    if prepared.missing:
        names = prepared.missing
        what = "the key column" if key in names else ("columns" if len(names) > 1 else "column")
        return FeedBroken(table, columns.check.label, [], f"{what} {', '.join(names)} missing from the snapshot")
    if key in prepared.type_errors:
        return FeedBroken(
            table,
            f"expect_column_values_to_be_of_type({key})",
            [],
            f"the key column {key} has the wrong type ({prepared.type_errors[key]})",
        )
    if prepared.type_errors:
        column, found = next(iter(prepared.type_errors.items()))
        keys = _keys_at_raw(raw, key, prepared.type_error_rows.get(column))
        others = [c for c in prepared.type_errors if c != column]
        also = f" (also {', '.join(others)})" if others else ""
        return FeedBroken(
            table,
            f"expect_column_values_to_be_of_type({column})",
            keys,
            f"column {column} has the wrong type ({found}){also}",
        )
    empty = [o for o in schema if not o.success and o.check.name == "rows"]
    if empty:
        return FeedBroken(table, empty[0].check.label, [], "empty extract; this table always has rows")
    return None


# --------------------------------------------------------------------------- verdicts


@dataclass
class _Verdict:
    bad: np.ndarray  # bool per row
    rows: np.ndarray  # quarantined __row, ascending
    expectation: np.ndarray  # first failing expectation label per quarantined row
    column: np.ndarray
    reason: np.ndarray  # every reason, joined

    def rows_frame(self, raw: pa.Table, frame: pd.DataFrame, key: str) -> pd.DataFrame:
        """The quarantined rows for the remarketing DB: key, position, expectation, column, reason, row JSON."""
        keys = _keys_at(frame, key, self.rows)
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


def _verdict(outcomes: list[rules.Outcome], size: int) -> _Verdict:
    """Which rows are quarantined, by which expectation first (suite order) and for which reasons (all)."""
    parts = []
    for order, outcome in enumerate(outcomes):
        if outcome.check.action != rules.QUARANTINE or not len(outcome.rows):
            continue
        parts.append(
            pd.DataFrame(
                {
                    "row": outcome.rows,
                    "order": order,
                    "expectation": outcome.check.label,
                    "column": rules.columns_of(outcome),
                    "reason": rules.reasons_of(outcome),
                }
            )
        )
    bad = np.zeros(size, dtype=bool)
    if not parts:
        empty = np.empty(0, dtype=object)
        return _Verdict(bad, np.empty(0, dtype=np.int64), empty, empty, empty)
    failures = pd.concat(parts, ignore_index=True).sort_values(["row", "order"], kind="stable")
    failures = failures.drop_duplicates(["row", "reason"])
    grouped = failures.groupby("row", sort=True)
    first = grouped.first()
    reasons = grouped["reason"].agg("; ".join)
    rows = first.index.to_numpy(dtype=np.int64)
    bad[rows] = True
    return _Verdict(
        bad,
        rows,
        first["expectation"].to_numpy(dtype=object),
        first["column"].to_numpy(dtype=object),
        reasons.loc[first.index].to_numpy(dtype=object),
    )


def _expectation_result(outcome: rules.Outcome, frame: pd.DataFrame, key: str) -> ExpectationResult:
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
        _keys_at(frame, key, outcome.rows[:MAX_EXAMPLE_KEYS]),
        reasons,
    )


def _keys_at(frame: pd.DataFrame, key: str, rows: np.ndarray) -> list:
    """Key values (python ints, None for a missing key) at the given __row positions."""
    if not len(rows):
        return []
    values = frame[key].to_numpy(dtype=object, na_value=None)[np.asarray(rows, dtype=np.int64)]
    return [None if v is None else int(v) for v in values]


def _keys_at_raw(raw: pa.Table, key: str, rows: np.ndarray | None) -> list:
    """Example keys of the rows a type error is about (none when the whole column is the problem)."""
    if rows is None or not len(rows):
        return []
    return raw.column(key).take(pa.array(rows[:MAX_EXAMPLE_KEYS], pa.int64())).to_pylist()


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


# --------------------------------------------------------------------------- outputs


def _clean_arrow(frame: pd.DataFrame, table: str) -> pa.Table:
    spec = CANONICAL_TABLES[table]
    schema = pa.schema([f for f in arrow_schema(spec) if f.name != ISSUES_COLUMN])
    clean = pa.Table.from_pandas(frame[spec.column_names], schema=schema, preserve_index=False)
    return clean.replace_schema_metadata(None)


def _quarantine_arrow(raw: pa.Table, verdict: _Verdict) -> pa.Table:
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


def _path(base: Any, *parts: str):
    path = base
    for part in parts:
        path = path / part
    return path


def _ensure_parent(path: Any) -> None:
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)


def _write_text(path: Any, text: str) -> None:
    _ensure_parent(path)
    with path.open("wb") as handle:
        handle.write(text.encode("utf-8"))


# --------------------------------------------------------------------------- recording


def record_validation(
    engine: sa.Engine, validation: StoreValidation, quarantined_rows: Mapping[str, pd.DataFrame]
) -> None:
    """One validation_runs row per table and the quarantined rows of the tables that passed.

    Idempotent per (run_id, table): a re-validation replaces that run's rows. A broken table's
    rows are not copied into the DB (its quarantine Parquet, when written, has them).
    """
    finished = datetime.now(UTC)
    tables = list(validation.tables)
    with engine.begin() as connection:
        for target in (quarantine, validation_runs):
            connection.execute(
                sa.delete(target).where(target.c.run_id == validation.run_id, target.c.table_name.in_(tables))
            )
        for name, result in validation.tables.items():
            connection.execute(
                sa.insert(validation_runs).values(
                    run_id=validation.run_id,
                    table_name=name,
                    extracted=result.extracted,
                    clean=result.clean,
                    quarantined=result.quarantined,
                    status=result.status,
                    failed_expectation=result.failure.expectation if result.failure else None,
                    message=str(result.failure) if result.failure else None,
                    seconds=result.seconds,
                    finished_at=finished,
                )
            )
        for name, rows in quarantined_rows.items():
            if rows.empty:
                continue
            records = [
                {
                    "run_id": validation.run_id,
                    "table_name": name,
                    "row_key": key,
                    "row_number": int(number),
                    "expectation": expectation,
                    "column_name": column,
                    "reason": reason,
                    "row_json": row_json,
                    "quarantined_at": finished,
                }
                for key, number, expectation, column, reason, row_json in zip(
                    rows["row_key"],
                    rows["row_number"],
                    rows["expectation"],
                    rows["column_name"],
                    rows["reason"],
                    rows["row_json"],
                    strict=True,
                )
            ]
            connection.execute(sa.insert(quarantine), records)
