"""Customer profiles and stage history in the remarketing DB (SQLite or PostgreSQL).

Why a module of its own: campaigns read profiles and "who became at-risk this week" without
recomputing anything, and a daily run must be safe to repeat. ``write_profiles`` therefore
loads the result into a temporary staging table (COPY on PostgreSQL) and, in one transaction,
upserts ``customer_profiles`` by customer_id, deletes profiles of the result's markets whose
customer is gone from the store, and appends transitions to ``segment_history``, where the
unique key (customer_id, changed_on, to_stage) makes a re-run of the same day add nothing.
The DDL is in migrations/versions/0004_profiles.py; these Table objects mirror it.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from remarketing.platform.state import dialect_insert
from remarketing.profiles.config import STAGES
from remarketing.profiles.lifecycle import PROFILE_COLUMNS, TRANSITION_COLUMNS, ProfileResult

profiles_metadata = sa.MetaData()
customer_profiles = sa.Table(
    "customer_profiles",
    profiles_metadata,
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("market", sa.String(2), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("recency_days", sa.Float),
    sa.Column("frequency", sa.Integer, nullable=False),
    sa.Column("monetary", sa.Float, nullable=False),
    sa.Column("r_score", sa.SmallInteger),
    sa.Column("f_score", sa.SmallInteger),
    sa.Column("m_score", sa.SmallInteger),
    sa.Column("rfm_segment", sa.String(64)),
    sa.Column("favourite_categories", sa.Text, nullable=False),  # JSON array of category names
    sa.Column("price_sensitivity", sa.Float),
    sa.Column("avg_order_value", sa.Float),
    sa.Column("preferred_purchase_hour", sa.SmallInteger),
    sa.Column("engagement_level", sa.String(16)),
    sa.Column("last_open_at", sa.DateTime(timezone=True)),
    sa.Column("last_click_at", sa.DateTime(timezone=True)),
    sa.Column("p_alive", sa.Float),
    sa.Column("expected_purchases_90d", sa.Float),
    sa.Column("first_order_at", sa.DateTime(timezone=True)),
    sa.Column("last_order_at", sa.DateTime(timezone=True)),
    sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
)
segment_history = sa.Table(
    "segment_history",
    profiles_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("market", sa.String(2), nullable=False),
    sa.Column("from_stage", sa.String(16)),
    sa.Column("to_stage", sa.String(16), nullable=False),
    sa.Column("changed_on", sa.Date, nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("customer_id", "changed_on", "to_stage", name="uq_segment_history_customer_day_stage"),
)
HISTORY_COLUMNS = ("customer_id", "market", "from_stage", "to_stage", "changed_on", "run_id", "recorded_at")
_TIMESTAMPS = ("last_open_at", "last_click_at", "first_order_at", "last_order_at", "computed_at")
_SMALL_INTS = ("r_score", "f_score", "m_score", "preferred_purchase_hour")
_TEXT = ("market", "currency", "stage", "rfm_segment", "engagement_level")
CHUNK_ROWS = 50_000


def _favourites_json(series: pd.Series) -> pa.Array:
    """list<string> -> JSON array text, built in Arrow (no per-row Python)."""
    array = pa.array(series.array) if not isinstance(series.dtype, pd.ArrowDtype) else series.array._pa_array
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    values = pc.list_flatten(array)
    names = pc.unique(values).to_pylist()
    quoted = pa.array([json.dumps(name, ensure_ascii=False) for name in names], pa.string())
    items = quoted.take(pc.index_in(values, value_set=pa.array(names, pa.string())))
    offsets = pc.subtract(array.offsets, array.offsets[0])
    lists = pa.ListArray.from_arrays(offsets, items)
    joined = pc.fill_null(pc.binary_join(lists, ","), "")
    return pc.binary_join_element_wise("[", joined, "]", "")


def _db_frame(profiles: pd.DataFrame, run_id: str) -> pd.DataFrame:
    missing = [c for c in PROFILE_COLUMNS if c not in profiles.columns]
    if missing:
        raise ValueError(f"profiles: missing column(s) {', '.join(missing)}")
    frame = profiles[list(PROFILE_COLUMNS)].copy()
    frame["favourite_categories"] = pd.array(_favourites_json(frame["favourite_categories"]), dtype="str")
    frame["run_id"] = run_id
    return frame


def _records(frame: pd.DataFrame) -> list[dict]:
    """DB-API-ready dicts: None for nulls, Python datetimes (UTC) and ints."""
    columns = {}
    for name in frame.columns:
        series = frame[name]
        if isinstance(series.dtype, pd.DatetimeTZDtype):
            values = series.dt.tz_convert(UTC).astype(object).to_numpy()
            columns[name] = [None if v is pd.NaT or v is None else v.to_pydatetime() for v in values]
        elif name in _SMALL_INTS or name in ("customer_id", "frequency"):
            columns[name] = series.astype(object).where(series.notna(), None).map(lambda v: v if v is None else int(v))
            columns[name] = columns[name].tolist()
        else:
            columns[name] = series.astype(object).where(series.notna(), None).tolist()
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _copy_postgres(connection: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> None:
    """COPY FROM STDIN (CSV written by Arrow) with psycopg2 or psycopg 3; executemany otherwise."""
    import pyarrow.csv as pa_csv

    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    buffer = io.BytesIO()
    pa_csv.write_csv(arrow, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    sql = f"COPY {table.name} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)"
    cursor = connection.connection.cursor()
    try:
        if hasattr(cursor, "copy_expert"):  # psycopg2
            buffer.seek(0)
            cursor.copy_expert(sql, buffer)
            return
        if hasattr(cursor, "copy"):  # psycopg 3
            with cursor.copy(sql) as copy:
                copy.write(buffer.getvalue())
            return
    finally:
        cursor.close()
    for start in range(0, len(frame), CHUNK_ROWS):
        connection.execute(table.insert(), _records(frame.iloc[start : start + CHUNK_ROWS]))


def _load(connection: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> None:
    if not len(frame):
        return
    if connection.dialect.name == "postgresql":
        _copy_postgres(connection, table, frame)
        return
    # SQLite: plain executemany of tuples, datetimes in SQLAlchemy's SQLite text format (UTC).
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    columns = []
    for column in arrow.columns:
        if pa.types.is_timestamp(column.type):
            column = pc.strftime(column.cast(pa.timestamp("us", "UTC")), format="%Y-%m-%d %H:%M:%S")
        elif pa.types.is_date(column.type):
            column = column.cast(pa.string())
        columns.append(column)
    sql = f"INSERT INTO {table.name} ({', '.join(arrow.column_names)}) VALUES ({', '.join('?' * arrow.num_columns)})"
    for start in range(0, len(frame), CHUNK_ROWS):
        rows = list(zip(*(c.slice(start, CHUNK_ROWS).to_pylist() for c in columns), strict=True))
        connection.exec_driver_sql(sql, rows)


def _stage_table(source: sa.Table, name: str) -> sa.Table:
    """A temporary copy of ``source``'s columns; keyed like the source so correlated lookups use an index."""
    columns = [sa.Column(c.name, c.type, primary_key=c.primary_key) for c in source.columns if c.name != "id"]
    return sa.Table(name, sa.MetaData(), *columns, prefixes=["TEMPORARY"])


def _transitions_frame(transitions: pd.DataFrame | None, run_id: str, as_of: datetime) -> pd.DataFrame:
    if transitions is None or not len(transitions):
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    missing = [c for c in TRANSITION_COLUMNS if c not in transitions.columns]
    if missing:
        raise ValueError(f"transitions: missing column(s) {', '.join(missing)}")
    bad = ~transitions["to_stage"].isin(STAGES) | ~(
        transitions["from_stage"].isna() | transitions["from_stage"].isin(STAGES)
    )
    if bad.any():
        raise ValueError(f"transitions with an unknown stage; customer_id: {transitions['customer_id'][bad].head(5).tolist()}")  # fmt: skip
    frame = transitions[list(TRANSITION_COLUMNS)].copy()
    frame["changed_on"] = pd.to_datetime(frame["changed_on"]).dt.date
    frame["run_id"] = run_id
    frame["recorded_at"] = pd.Timestamp(as_of).tz_convert(UTC)
    # One row per key: a batch repeating (customer, day, to_stage) keeps its first row.
    return frame.drop_duplicates(["customer_id", "changed_on", "to_stage"]).reset_index(drop=True)


def write_profiles(
    engine: sa.Engine, result: ProfileResult, transitions: pd.DataFrame | None, *, run_id: str, as_of: datetime
) -> dict:
    """Upsert the result's profiles and append its transitions, in one transaction.

    Idempotent: writing the same result again leaves both tables as they were. Profiles of the
    result's markets whose customer is not in the result are deleted (the store no longer has
    them). Returns counts: profiles_written, profiles_deleted, transitions_appended,
    transitions_already_recorded.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")
    if result.as_of != as_of.astimezone(UTC):
        raise ValueError(f"the result was computed as of {result.as_of.isoformat()}, not {as_of.isoformat()}")
    frame = _db_frame(result.profiles, run_id)
    history = _transitions_frame(transitions, run_id, as_of)
    columns = [c.name for c in customer_profiles.columns]
    history_columns = list(HISTORY_COLUMNS)
    with engine.begin() as connection:
        insert = dialect_insert(connection.dialect.name)
        stage = _stage_table(customer_profiles, "_profiles_stage")
        stage.create(connection)
        _load(connection, stage, frame)
        upsert = insert(customer_profiles).from_select(columns, sa.select(*stage.c).where(sa.true()))
        upsert = upsert.on_conflict_do_update(
            index_elements=["customer_id"],
            set_={c: upsert.excluded[c] for c in columns if c != "customer_id"},
        )
        written = connection.execute(upsert).rowcount
        deleted = 0
        if result.markets:
            stale = sa.delete(customer_profiles).where(
                customer_profiles.c.market.in_(result.markets),
                ~sa.exists().where(stage.c.customer_id == customer_profiles.c.customer_id),
            )
            deleted = connection.execute(stale).rowcount
        stage.drop(connection)

        appended = 0
        if len(history):
            history_stage = _stage_table(segment_history, "_history_stage")
            history_stage.create(connection)
            _load(connection, history_stage, history)
            append = insert(segment_history).from_select(
                history_columns, sa.select(*(history_stage.c[c] for c in history_columns)).where(sa.true())
            )
            append = append.on_conflict_do_nothing(index_elements=["customer_id", "changed_on", "to_stage"])
            appended = connection.execute(append).rowcount
            history_stage.drop(connection)
    return {
        "profiles_written": int(len(frame) if written is None or written < 0 else written),
        "profiles_deleted": int(deleted or 0),
        "transitions_appended": int(appended),
        "transitions_already_recorded": int(len(history) - appended),
    }


def _utc_column(series: pd.Series) -> pd.Series:
    if pd.api.types.is_string_dtype(series):  # SQLite text as SQLAlchemy stores it (UTC): one vectorized parse
        return pd.to_datetime(series, format="%Y-%m-%d %H:%M:%S.%f", utc=True).dt.as_unit("us")
    return pd.to_datetime(series, utc=True).dt.as_unit("us")


def _parse_favourites(values: pd.Series) -> pd.arrays.ArrowExtensionArray:
    """JSON arrays -> list<string>; each distinct text is parsed once (customers share few combinations)."""
    codes, uniques = pd.factorize(values)
    parsed = pa.array([json.loads(text) for text in uniques] + [[]], pa.list_(pa.string()))
    return pd.arrays.ArrowExtensionArray(parsed.take(pa.array(np.where(codes < 0, len(uniques), codes))))


def _market_filter(column, markets):
    if markets is None:
        return sa.true()
    codes = [markets] if isinstance(markets, str) else list(markets)
    return column.in_(codes)


def load_profiles(engine: sa.Engine, markets=None, columns=None) -> pd.DataFrame:
    """Stored profiles (optionally of some markets), sorted by customer_id, in compute_profiles' dtypes plus run_id.

    ``columns`` limits what is read (customer_id always comes first): the previous stages for
    ``stage_transitions`` need only ``["market", "stage"]``, which is much faster at a million rows.
    """
    names = (
        [*PROFILE_COLUMNS, "run_id"]
        if columns is None
        else ["customer_id", *(c for c in columns if c != "customer_id")]
    )
    unknown = [c for c in names if c not in customer_profiles.c]
    if unknown:
        raise ValueError(f"customer_profiles has no column(s) {', '.join(unknown)}")
    selected = []
    for name in names:
        column = customer_profiles.c[name]
        if name in _TIMESTAMPS and engine.dialect.name == "sqlite":
            column = sa.type_coerce(column, sa.String).label(name)  # raw text, parsed vectorized below
        selected.append(column)
    query = sa.select(*selected).where(_market_filter(customer_profiles.c.market, markets))
    with engine.connect() as connection:
        frame = pd.read_sql(query.order_by(customer_profiles.c.customer_id), connection)
    out = pd.DataFrame(index=frame.index)
    for name in names:
        values = frame[name]
        if name in ("customer_id", "frequency"):
            out[name] = values.astype(np.int64)
        elif name in _TIMESTAMPS:
            out[name] = _utc_column(values)
        elif name in _SMALL_INTS:
            out[name] = pd.array(values, dtype="Int64")
        elif name in _TEXT or name == "run_id":
            out[name] = values.astype("str")
        elif name == "favourite_categories":
            out[name] = _parse_favourites(values)
        else:
            out[name] = values.astype(np.float64)
    return out


def _as_date(value: date | datetime) -> date:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("since must be a date or a timezone-aware datetime")
        return value.astimezone(UTC).date()
    if isinstance(value, date):
        return value
    raise ValueError(f"since must be a date or a timezone-aware datetime, got {type(value).__name__}")


def transitions_since(
    engine: sa.Engine, *, to_stage: str, since: date | datetime, markets=None, current_only: bool = False
) -> pd.DataFrame:
    """Customers who entered ``to_stage`` on or after ``since`` (UTC date): "became at-risk this week".

    One row per (customer, day) entry: customer_id, market, from_stage, to_stage, changed_on.
    ``current_only`` keeps only customers whose stored profile is still in ``to_stage``.
    """
    if to_stage not in STAGES:
        raise ValueError(f"unknown stage {to_stage!r}; stages: {', '.join(STAGES)}")
    h = segment_history
    query = (
        sa.select(*(h.c[c] for c in TRANSITION_COLUMNS))
        .where(h.c.to_stage == to_stage, h.c.changed_on >= _as_date(since), _market_filter(h.c.market, markets))
        .order_by(h.c.changed_on, h.c.customer_id)
    )
    if current_only:
        p = customer_profiles
        query = query.where(sa.exists().where(p.c.customer_id == h.c.customer_id, p.c.stage == to_stage))
    with engine.connect() as connection:
        frame = pd.read_sql(query, connection)
    frame["customer_id"] = frame["customer_id"].astype(np.int64)
    frame["changed_on"] = pd.to_datetime(frame["changed_on"]).dt.date if len(frame) else frame["changed_on"]
    return frame
