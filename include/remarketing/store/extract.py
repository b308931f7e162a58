"""Extract canonical store tables into Parquet, incrementally by an ``updated_at`` watermark.

Why a mirror and not just deltas: segments need every order ever placed, not only today's, so
each run merges its delta into the previous snapshot (a row's newest version wins, by key) and
publishes a complete snapshot. The watermark belongs to the mirror, not to a DAG, so any DAG
can refresh a table and every consumer sees the same state.

The window is ``lower < updated_at <= upper``, where ``upper`` is fixed before reading: the
store's newest ``updated_at``, but no later than ``now - settle``. Rows that commit late with an
older timestamp are caught as long as they commit within the settle time. A row updated after
the watermark is therefore taken exactly once, and rows at the boundary are never skipped.
Hard deletes are not visible incrementally: a full refresh (a DAG Param) rebuilds the mirror.

This module is plain Python over DB-API connections; remarketing.platform.runtime adapts Airflow
connections to it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from remarketing.platform import settings
from remarketing.platform.connections import ConnectionSetupError
from remarketing.store.schema import CANONICAL_TABLES, TableSpec

SQL_DIR = settings.DEFAULT_STORE_SQL_DIR
ISSUES_COLUMN = "_extract_issues"
CHUNK_ROWS = 50_000

ARROW_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


class StoreExtractError(ConnectionSetupError):
    """Extraction of one table failed; the message names the connection and the table.

    ``permanent`` marks failures a retry cannot fix (wrong connection type, a missing table
    or column): the task fails at once instead of retrying.
    """


_PERMANENT_ERROR_NAMES = ("ProgrammingError", "UndefinedTable", "UndefinedColumn", "NoSuchTable")
_PERMANENT_MESSAGES = ("no such table", "no such column", "doesn't exist", "does not exist", "unknown column")


def is_permanent_db_error(exc: BaseException) -> bool:
    """A missing table or column: the query is wrong for this store, retrying will not help."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    message = str(exc).lower()
    return bool(names & set(_PERMANENT_ERROR_NAMES)) or any(text in message for text in _PERMANENT_MESSAGES)


def arrow_schema(spec: TableSpec) -> pa.Schema:
    """The snapshot schema: canonical columns plus a column of per-row conversion issues."""
    fields = [pa.field(name, ARROW_TYPES[kind]) for name, kind in spec.columns.items()]
    return pa.schema([*fields, pa.field(ISSUES_COLUMN, pa.string())])


def mapping_sql(table: str, sql_dir: Path | None = None) -> str:
    """The shop's SELECT for a canonical table (the mapping layer, one file per table)."""
    sql_dir = Path(sql_dir or settings.store_sql_dir())
    path = sql_dir / f"{table}.sql"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreExtractError(f"table {table}: mapping SQL {path} does not exist") from None
    # Strip comment lines and a trailing semicolon so the query can be wrapped as a subquery.
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return "\n".join(lines).strip().rstrip(";").strip()


# --------------------------------------------------------------------------- drivers


@dataclass(frozen=True)
class Dialect:
    """How to talk to one DB-API driver: placeholder, timestamp parameters, streaming cursor."""

    name: str  # sqlite | postgresql | mysql
    placeholder: str

    def timestamp_param(self, value: datetime) -> Any:
        value = value.astimezone(UTC)
        if self.name == "sqlite":
            # SQLAlchemy's SQLite DateTime text format; compares lexicographically as time.
            return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        if self.name == "mysql":
            return value.replace(tzinfo=None)  # DATETIME columns hold naive UTC; session is UTC
        return value

    def prepare(self, conn: Any) -> None:
        """Make the session speak UTC so timestamps mean the same instant on every database."""
        if self.name in ("postgresql", "mysql"):
            cursor = conn.cursor()
            cursor.execute("SET TIME ZONE 'UTC'" if self.name == "postgresql" else "SET time_zone = '+00:00'")
            cursor.close()

    def streaming_cursor(self, conn: Any) -> Any:
        """A cursor that does not pull the whole result into memory first."""
        module = type(conn).__module__.split(".")[0]
        if module in ("psycopg", "psycopg2"):
            return conn.cursor(name="remarketing_extract")
        if module == "MySQLdb":
            import MySQLdb.cursors

            return conn.cursor(MySQLdb.cursors.SSCursor)
        return conn.cursor()


def dialect_for(conn: Any) -> Dialect:
    """Recognise the driver behind a DB-API connection."""
    module = type(conn).__module__.split(".")[0]
    if module == "sqlite3":
        return Dialect("sqlite", "?")
    if module in ("psycopg", "psycopg2"):
        return Dialect("postgresql", "%s")
    if module in ("MySQLdb", "pymysql", "mysql"):
        return Dialect("mysql", "%s")
    paramstyle = getattr(sys.modules.get(module), "paramstyle", None)
    raise StoreExtractError(f"unsupported DB-API driver {module!r} (paramstyle {paramstyle!r})")


# --------------------------------------------------------------------------- conversion


def _careful_array(kind: str, raw: list) -> tuple[pa.Array, np.ndarray]:
    """Convert one column; return the typed array and which rows could not be converted."""
    import pandas as pd

    series = pd.Series(raw, dtype=object)
    present = series.notna().to_numpy()
    if kind == "timestamp":
        converted = pd.to_datetime(series, utc=True, errors="coerce", format="ISO8601")
        array = pa.array(converted, type=ARROW_TYPES[kind], from_pandas=True)
    elif kind in ("int", "float"):
        numeric = pd.to_numeric(series.map(_number_or_nan), errors="coerce")
        if kind == "int":
            integral = numeric.isna() | (numeric == numeric.round())
            numeric = numeric.where(integral)
            array = pa.array(numeric.astype("Int64"), type=pa.int64(), from_pandas=True)
        else:
            array = pa.array(numeric.astype("float64"), type=pa.float64(), from_pandas=True)
    elif kind == "bool":
        array = pa.array(series.map(_bool_or_none), type=pa.bool_(), from_pandas=True)
    else:
        array = pa.array(series.map(lambda v: v if v is None or isinstance(v, str) else str(v)), type=pa.string())
    failed = present & array.is_null().to_numpy(zero_copy_only=False)
    return array, failed


def _number_or_nan(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return float("nan")
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)  # Decimal, numeric text
    except (TypeError, ValueError):
        return float("nan")


_TRUE = {True, "1", "t", "true", "y", "yes"}
_FALSE = {False, "0", "f", "false", "n", "no"}


def _bool_or_none(value: Any) -> bool | None:
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, (int, bool, str)):
        if key in _TRUE:
            return True
        if key in _FALSE:
            return False
    return None


def _fast_array(kind: str, raw: list) -> pa.Array | None:
    """Typed conversion for well-behaved columns; None when the column needs the careful path."""
    try:
        if kind == "timestamp":
            if any(isinstance(v, str) for v in raw):
                return None
            return pa.array(raw, type=ARROW_TYPES[kind])
        if kind == "float":
            array = pa.array(raw)
            if pa.types.is_decimal(array.type):
                # Arrow's decimal->float cast is not correctly rounded (19.99 -> 19.990000000000002);
                # parsing the decimal's text is, so every database yields the same float.
                array = pc.cast(array, pa.string())
            return pc.cast(array, pa.float64())
        if kind == "bool":
            array = pa.array(raw)
            if pa.types.is_boolean(array.type):
                return array
            if pa.types.is_integer(array.type) and pc.all(pc.is_in(array.drop_null(), pa.array([0, 1]))).as_py() in (
                True,
                None,
            ):
                return pc.cast(array, pa.bool_())
            return None
        return pa.array(raw, type=ARROW_TYPES[kind])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError):
        return None


def rows_to_batch(rows: list[tuple], spec: TableSpec) -> pa.RecordBatch:
    """Typed Arrow batch from DB-API rows; values that do not fit their column become null
    and the row's ``_extract_issues`` says which column (never the value: it may be personal)."""
    schema = arrow_schema(spec)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in spec.columns]
    arrays = []
    issues: dict[int, list[str]] = {}  # sparse: almost every row is clean
    for (name, kind), raw in zip(spec.columns.items(), columns, strict=True):
        raw = list(raw)
        array = _fast_array(kind, raw)
        if array is None:
            array, failed = _careful_array(kind, raw)
            for index in failed.nonzero()[0].tolist():
                issues.setdefault(index, []).append(f"{name}: not a valid {kind}")
        arrays.append(array)
    if issues:
        arrays.append(pa.array(["; ".join(issues[i]) if i in issues else None for i in range(len(rows))], pa.string()))
    else:
        arrays.append(pa.nulls(len(rows), pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------- extraction


@dataclass
class ExtractWindow:
    lower: datetime | None  # exclusive; None = from the beginning (full refresh)
    upper: datetime | None  # inclusive; None = the table is empty


@dataclass
class DeltaResult:
    rows: int
    max_updated_at: datetime | None


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        import pandas as pd

        stamp = pd.Timestamp(value)
        return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    raise TypeError(f"unexpected updated_at value of type {type(value).__name__}")


def plan_window(
    conn: Any, table: str, lower: datetime | None, *, now: datetime, settle: timedelta, sql: str | None = None
) -> ExtractWindow:
    """Fix the upper bound before reading: the newest ``updated_at``, capped at ``now - settle``."""
    dialect = dialect_for(conn)
    dialect.prepare(conn)
    sql = sql if sql is not None else mapping_sql(table)
    cursor = conn.cursor()
    cursor.execute(f"SELECT MAX(src.updated_at) FROM ({sql}) src")
    newest = _as_utc(cursor.fetchone()[0])
    cursor.close()
    if newest is None:
        return ExtractWindow(lower=lower, upper=None)
    cap = now.astimezone(UTC) - settle
    return ExtractWindow(lower=lower, upper=min(newest, cap))


def extract_delta(
    conn: Any,
    spec: TableSpec,
    window: ExtractWindow,
    open_output: Callable[[], Any],
    *,
    sql: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> DeltaResult:
    """Stream ``lower < updated_at <= upper`` into one Parquet file opened by ``open_output``."""
    dialect = dialect_for(conn)
    dialect.prepare(conn)
    sql = sql if sql is not None else mapping_sql(spec.name)
    schema = arrow_schema(spec)
    column_list = ", ".join(f"src.{name}" for name in spec.columns)
    query = f"SELECT {column_list} FROM ({sql}) src"
    params: list[Any] = []
    if window.upper is not None:
        conditions = [f"src.updated_at <= {dialect.placeholder}"]
        params.append(dialect.timestamp_param(window.upper))
        if window.lower is not None:
            conditions.insert(0, f"src.updated_at > {dialect.placeholder}")
            params.insert(0, dialect.timestamp_param(window.lower))
        query += " WHERE " + " AND ".join(conditions)
    else:
        query += " WHERE 1 = 0"

    rows_written = 0
    newest: datetime | None = None
    cursor = dialect.streaming_cursor(conn)
    with open_output() as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        cursor.execute(query, params)
        while True:
            rows = cursor.fetchmany(chunk_rows)
            if not rows:
                break
            batch = rows_to_batch(rows, spec)
            writer.write_batch(batch)
            rows_written += batch.num_rows
            batch_max = pc.max(batch.column("updated_at")).as_py()
            if batch_max is not None and (newest is None or batch_max > newest):
                newest = batch_max
        if rows_written == 0:
            writer.write_table(schema.empty_table())
    cursor.close()
    return DeltaResult(rows=rows_written, max_updated_at=newest)


def merge_snapshot(previous: pa.Table | None, delta: pa.Table, key: str) -> pa.Table:
    """The mirror after this run: previous rows whose key the delta does not carry, plus the delta.

    The delta is the newer state of its rows, so it wins. Duplicate keys inside the delta are
    kept (not silently dropped): validation quarantines them with a reason.
    """
    if previous is None or previous.num_rows == 0:
        return delta
    previous = previous.cast(delta.schema) if previous.schema != delta.schema else previous
    if delta.num_rows == 0:
        return previous
    superseded = pc.is_in(previous.column(key), value_set=pc.unique(delta.column(key).combine_chunks()))
    kept = previous.filter(pc.invert(pc.fill_null(superseded, False)))
    return pa.concat_tables([kept, delta])


def table_spec(table: str) -> TableSpec:
    try:
        return CANONICAL_TABLES[table]
    except KeyError:
        raise StoreExtractError(f"unknown canonical table {table!r}; known: {', '.join(CANONICAL_TABLES)}") from None
