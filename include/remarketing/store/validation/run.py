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
remarketing.store.validation.rules (the steps beside it: conform, column_checks, references,
derived, gx_runtime), the verdicts in verdicts, the DB records in recording and the report in
remarketing.store.validation.report.

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

import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from remarketing.platform.storage import as_path, read_table, write_table
from remarketing.store.extract import ISSUES_COLUMN, arrow_schema
from remarketing.store.fx import FxRates, load_fx_rates
from remarketing.store.schema import CANONICAL_TABLES
from remarketing.store.validation import rules
from remarketing.store.validation.conform import Prepared, prepare
from remarketing.store.validation.derived import derive
from remarketing.store.validation.gx_runtime import Outcome, run_suite, runtime
from remarketing.store.validation.recording import record_validation
from remarketing.store.validation.references import ParentRows
from remarketing.store.validation.results import (
    MAX_EXAMPLE_KEYS,
    TABLE_ORDER,
    ConservationError,
    ExpectationResult,
    FeedBroken,
    StoreValidation,
    TableValidation,
    ValidationPolicy,
)
from remarketing.store.validation.scope import SCOPE_COLUMN
from remarketing.store.validation.verdicts import (
    Verdict,
    expectation_result,
    keys_at,
    keys_at_raw,
    quarantine_arrow,
    verdict_of,
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
    fx: FxRates | None = None,
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
    fx = fx if fx is not None else load_fx_rates()
    runtime()  # GX import and context (seconds, once per process) are not any table's time
    started = time.perf_counter()
    parents: dict[str, ParentRows] = {}
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
            fx=fx,
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
    parents: dict[str, ParentRows],
    failed_parents: set[str],
    record: bool,
    fx: FxRates,
) -> tuple[TableValidation, ParentRows | None, pd.DataFrame | None]:
    """Read, check the table, then its rows, and write its outputs; returns (result, parent rows, rows to record).

    The parent rows are what the table's children are checked against; the rows to record are its
    quarantined rows for the remarketing DB (only when ``record`` and the table passed).
    """
    started = time.perf_counter()
    spec = CANONICAL_TABLES[table]
    table_policy = policy.for_table(table)

    def done(result: TableValidation) -> TableValidation:
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    try:
        raw = read_table(source)
    except Exception as exc:  # noqa: BLE001 - any reader error means the snapshot cannot be used
        return done(_unreadable(table, exc)), None, None

    result = TableValidation(table, extracted=raw.num_rows)
    prepared = prepare(raw, table)
    result.extra_columns = prepared.extra
    failure = _check_table(result, raw, prepared, expect_rows=table in policy.expect_rows)
    if failure is not None:
        result.status, result.failure = "failed", failure
        return done(result), None, None

    frame, outcomes = _check_rows(
        result,
        prepared,
        markets=markets,
        now=now,
        table_policy=table_policy,
        parents=parents,
        failed_parents=failed_parents,
        fx=fx,
    )
    verdict = verdict_of(outcomes, len(frame))
    clean_mask = ~verdict.bad
    _write_outputs(result, raw, frame, verdict, out_dir)
    if table in ("orders", "carts"):
        result.converted_currency = _converted(frame.loc[clean_mask], markets)
    failure = _bad_share_failure(result, frame, outcomes, table_policy)
    if failure is not None:
        result.status, result.failure = "failed", failure
    parent = ParentRows(frame=frame[[c for c in _parent_columns(table) if c in frame]], clean=clean_mask)
    rows = verdict.rows_frame(raw, frame, spec.key) if record and result.status == "ok" else None
    return done(result), parent, rows


def _unreadable(table: str, exc: Exception) -> TableValidation:
    """A snapshot the reader cannot open is a broken feed, reported as a failed read_parquet step."""
    result = TableValidation(table, extracted=0, status="failed")
    detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    result.failure = FeedBroken(table, "read_parquet", [], f"the snapshot is not readable Parquet ({detail})")
    result.expectations.append(ExpectationResult("read_parquet", "read_parquet", None, "table", False, 0, [], {}))
    return result


def _check_table(result: TableValidation, raw: pa.Table, prepared: Prepared, *, expect_rows: bool) -> FeedBroken | None:
    """Table level: GX on the snapshot's shape (columns, rows), then the types found on reading.

    Every table-level expectation is recorded on ``result``; returns the failure that breaks the
    feed, if any, before any row is checked.
    """
    table = result.table
    spec = CANONICAL_TABLES[table]
    schema_checks = rules.schema_checks(table, expect_rows=expect_rows)
    shape = pd.DataFrame({name: np.zeros(raw.num_rows, dtype=np.int8) for name in raw.column_names})
    schema = run_suite(table, shape, f"store.{table}.schema", schema_checks, key=spec.key)
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
    return _schema_failure(table, spec.key, schema, prepared, raw)


def _check_rows(
    result: TableValidation,
    prepared: Prepared,
    *,
    markets,
    now: datetime,
    table_policy: ValidationPolicy,
    parents: dict[str, ParentRows],
    failed_parents: set[str],
    fx: FxRates,
) -> tuple[pd.DataFrame, list[Outcome]]:
    """Row level: derive the check columns, run the table's suite, record every expectation on ``result``.

    References to a broken parent table are not checked, and recorded as such.
    """
    table = result.table
    spec = CANONICAL_TABLES[table]
    frame, normalised = derive(
        prepared,
        table,
        markets=markets,
        now=now,
        future_skew=table_policy.future_skew,
        min_timestamp=table_policy.min_timestamp,
        text_max_length=table_policy.text_max_length,
        parents=parents,
        fx=fx,
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
    outcomes = run_suite(table, frame, f"store.{table}", checks, key=spec.key)
    for outcome in outcomes:
        result.expectations.append(expectation_result(outcome, frame, spec.key))
        if not outcome.success and outcome.unexpected:
            target = result.failed_expectations if outcome.check.action == rules.QUARANTINE else result.notes
            target[outcome.check.label] = outcome.unexpected
    return frame, outcomes


def _write_outputs(result: TableValidation, raw: pa.Table, frame: pd.DataFrame, verdict: Verdict, out_dir) -> None:
    """Write the clean and quarantine Parquet files, checking that every row extracted is in one of them."""
    table = result.table
    clean_mask = ~verdict.bad
    result.clean = int(clean_mask.sum())
    result.quarantined = int(verdict.bad.sum())
    if SCOPE_COLUMN in frame:
        outside = frame.loc[clean_mask, SCOPE_COLUMN].dropna()
        result.out_of_scope = {str(k): int(v) for k, v in outside.value_counts().items()}
    if result.extracted != result.clean + result.quarantined:
        raise ConservationError(
            f"table {table}: extracted {result.extracted} != clean {result.clean} + quarantined {result.quarantined}"
        )

    clean_table = _clean_arrow(frame.loc[clean_mask], table)
    quarantine_table = quarantine_arrow(raw, verdict)
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


def _bad_share_failure(
    result: TableValidation, frame: pd.DataFrame, outcomes: list[Outcome], table_policy: ValidationPolicy
) -> FeedBroken | None:
    """Too many rows quarantined means the feed, not the rows, is broken: names the check that caught most."""
    share = result.quarantined / result.extracted if result.extracted else 0.0
    if share <= table_policy.max_bad_share:
        return None
    worst = max(
        (o for o in outcomes if o.check.action == rules.QUARANTINE and o.unexpected),
        key=lambda o: o.unexpected,
    )
    keys = keys_at(frame, CANONICAL_TABLES[result.table].key, worst.rows[:MAX_EXAMPLE_KEYS])
    return FeedBroken(
        result.table,
        worst.check.label,
        keys,
        f"{result.quarantined} of {result.extracted} rows ({share:.1%}) would be quarantined, more than "
        f"max_bad_share {table_policy.max_bad_share:.1%}; most by {worst.check.name} ({worst.unexpected} rows)",
    )


def _converted(clean: pd.DataFrame, markets) -> dict[str, int]:
    """Clean rows per currency that differs from their market's (converted with the FX rates downstream)."""
    expected = clean["market"].map({m.code: m.currency for m in markets})
    other = clean.loc[expected.notna() & (clean["currency"] != expected), "currency"]
    return {str(code): int(n) for code, n in other.value_counts().items()}


def _parent_columns(table: str) -> list[str]:
    return [CANONICAL_TABLES[table].key, "currency", "market", "status"]


def _schema_failure(table: str, key: str, schema, prepared: Prepared, raw: pa.Table) -> FeedBroken | None:
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
        keys = keys_at_raw(raw, key, prepared.type_error_rows.get(column))
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


# --------------------------------------------------------------------------- outputs


def _clean_arrow(frame: pd.DataFrame, table: str) -> pa.Table:
    spec = CANONICAL_TABLES[table]
    schema = pa.schema([f for f in arrow_schema(spec) if f.name != ISSUES_COLUMN])
    clean = pa.Table.from_pandas(frame[spec.column_names], schema=schema, preserve_index=False)
    return clean.replace_schema_metadata(None)


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
