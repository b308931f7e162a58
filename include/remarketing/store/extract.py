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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
    zone: str = "UTC"  # the store's zone for timestamps without an offset (REMARKETING_STORE_TIME_ZONE)

    def timestamp_param(self, value: datetime) -> Any:
        if self.zone != "UTC":
            # Local wall time, as text: compares with text columns, and with timestamp columns in the
            # session's zone (set to the store's zone in ``prepare``).
            local = value.astimezone(ZoneInfo(self.zone)).replace(tzinfo=None)
            return local if self.name == "mysql" else local.strftime("%Y-%m-%d %H:%M:%S.%f")
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
            if self.name == "postgresql":
                cursor.execute(f"SET TIME ZONE '{ZoneInfo(self.zone).key}'")
            else:
                cursor.execute("SET time_zone = '+00:00'")
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
    zone = store_zone()
    if module == "sqlite3":
        return Dialect("sqlite", "?", zone)
    if module in ("psycopg", "psycopg2"):
        return Dialect("postgresql", "%s", zone)
    if module in ("MySQLdb", "pymysql", "mysql"):
        return Dialect("mysql", "%s", zone)
    paramstyle = getattr(sys.modules.get(module), "paramstyle", None)
    raise StoreExtractError(f"unsupported DB-API driver {module!r} (paramstyle {paramstyle!r})")


def store_zone() -> str:
    """The configured store time zone, checked: an unknown zone is a setup error, not a shift of hours."""
    name = settings.store_time_zone()
    try:
        return ZoneInfo(name).key
    except (ValueError, ZoneInfoNotFoundError):
        raise StoreExtractError(
            f"{settings.STORE_TIME_ZONE_ENV}={name!r} is not an IANA time zone (e.g. Europe/London)"
        ) from None


def localize(series, zone: str):
    """Timestamps (datetimes or ISO text) as aware UTC; those without an offset are wall time in ``zone``.

    DST-correct: an ambiguous wall time (the hour repeated in autumn) is taken as its first
    occurrence, a nonexistent one (skipped in spring) moves forward to the first valid instant.
    """
    import pandas as pd

    series = pd.Series(series, dtype=object)
    out = pd.Series(pd.NaT, index=series.index, dtype="datetime64[us, UTC]")
    present = series.notna()
    if not present.any():
        return out
    text = series[present].map(lambda v: v.isoformat() if isinstance(v, datetime) else str(v))
    has_offset = text.str.contains(r"(?:[Zz]|[+-]\d{2}:?\d{2})$", regex=True)
    aware = pd.to_datetime(text[has_offset], utc=True, errors="coerce", format="ISO8601")
    naive = pd.to_datetime(text[~has_offset], errors="coerce", format="ISO8601")
    if len(aware):
        out[aware.index] = aware.dt.as_unit("us")
    if len(naive):
        naive = naive.dt.tz_localize(zone, ambiguous=np.ones(len(naive), dtype=bool), nonexistent="shift_forward")
        out[naive.index] = naive.dt.tz_convert("UTC").dt.as_unit("us")
    return out


# --------------------------------------------------------------------------- conversion


def _careful_array(kind: str, raw: list, zone: str = "UTC") -> tuple[pa.Array, np.ndarray]:
    """Convert one column; return the typed array and which rows could not be converted."""
    import pandas as pd

    series = pd.Series(raw, dtype=object)
    present = series.notna().to_numpy()
    if kind == "timestamp":
        converted = localize(series, zone)
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


def _fast_array(kind: str, raw: list, zone: str = "UTC") -> pa.Array | None:
    """Typed conversion for well-behaved columns; None when the column needs the careful path."""
    try:
        if kind == "timestamp":
            if any(isinstance(v, str) for v in raw):
                return None
            if zone != "UTC" and any(isinstance(v, datetime) and v.tzinfo is None for v in raw):
                return None  # wall time in the store's zone: the careful path localizes it
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


def rows_to_batch(rows: list[tuple], spec: TableSpec, zone: str = "UTC") -> pa.RecordBatch:
    """Typed Arrow batch from DB-API rows; values that do not fit their column become null
    and the row's ``_extract_issues`` says which column (never the value: it may be personal)."""
    schema = arrow_schema(spec)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in spec.columns]
    arrays = []
    issues: dict[int, list[str]] = {}  # sparse: almost every row is clean
    for (name, kind), raw in zip(spec.columns.items(), columns, strict=True):
        raw = list(raw)
        array = _fast_array(kind, raw, zone)
        if array is None:
            array, failed = _careful_array(kind, raw, zone)
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


def _as_utc(value: Any, zone: str = "UTC") -> datetime | None:
    if value is None:
        return None
    if isinstance(value, (str, datetime)):
        stamp = localize([value], zone).iloc[0]
        if stamp is None or stamp != stamp:  # NaT
            raise StoreExtractError(f"updated_at {str(value)[:40]!r} is not a timestamp")
        return stamp.to_pydatetime()
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
    newest = _as_utc(cursor.fetchone()[0], dialect.zone)
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
    given = mapping_columns(conn, sql) if spec.optional else set(spec.columns)
    column_list = ", ".join(
        f"src.{name}" if name in given or name not in spec.optional else f"NULL AS {name}" for name in spec.columns
    )
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
            batch = rows_to_batch(rows, spec, dialect.zone)
            writer.write_batch(batch)
            rows_written += batch.num_rows
            batch_max = pc.max(batch.column("updated_at")).as_py()
            if batch_max is not None and (newest is None or batch_max > newest):
                newest = batch_max
        if rows_written == 0:
            writer.write_table(schema.empty_table())
    cursor.close()
    return DeltaResult(rows=rows_written, max_updated_at=newest)


def mapping_columns(conn: Any, sql: str) -> set[str]:
    """The column names the mapping SQL returns (lower-cased), read without fetching a row."""
    cursor = conn.cursor()
    try:
        cursor.execute(f"SELECT * FROM ({sql}) src WHERE 1 = 0")
        return {str(column[0]).lower() for column in cursor.description or ()}
    finally:
        cursor.close()


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
