"""The remarketing DB: our own state (watermarks, extract runs; later ledger, profiles...).

SQLite for the embedded default, PostgreSQL in production. The project creates and upgrades
the schema itself with Alembic (migrations in remarketing/migrations), keeping its version in
its own table so the DB may share a server, or even a database, with Airflow's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

VERSION_TABLE = "remarketing_schema_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# The tables as the code reads and writes them; the migrations are the source of truth for DDL.
state_metadata = sa.MetaData()
store_watermarks = sa.Table(
    "store_watermarks",
    state_metadata,
    sa.Column("table_name", sa.String(64), primary_key=True),
    sa.Column("watermark", sa.DateTime(timezone=True)),
    sa.Column("snapshot_path", sa.Text),
    sa.Column("snapshot_rows", sa.BigInteger, nullable=False),
    sa.Column("run_id", sa.String(250)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
extract_runs = sa.Table(
    "extract_runs",
    state_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("table_name", sa.String(64), nullable=False),
    sa.Column("full_refresh", sa.Boolean, nullable=False),
    sa.Column("lower_bound", sa.DateTime(timezone=True)),
    sa.Column("upper_bound", sa.DateTime(timezone=True)),
    sa.Column("delta_rows", sa.BigInteger, nullable=False),
    sa.Column("snapshot_rows", sa.BigInteger, nullable=False),
    sa.Column("delta_path", sa.Text, nullable=False),
    sa.Column("snapshot_path", sa.Text, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
)


class WatermarkConflict(RuntimeError):
    """Another run moved the watermark while this one was extracting; retrying is safe."""


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns; they are UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def dialect_insert(dialect_name: str):
    """The dialect's ``insert`` (with ON CONFLICT): the remarketing DB is SQLite or PostgreSQL."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"the remarketing DB must be SQLite or PostgreSQL, not {dialect_name}")
    return insert


def upsert_statement(engine: sa.Engine | sa.Connection, table: sa.Table, keys: list[str] | tuple[str, ...]):
    """INSERT ... ON CONFLICT (keys) DO UPDATE every other column."""
    stmt = dialect_insert(engine.dialect.name)(table)
    updated = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=updated)


def chunks(items: list, size: int):
    """``items`` in slices of at most ``size`` (IN lists and multi-row inserts stay bounded)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def create_state_engine(url: str | sa.URL) -> sa.Engine:
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001 - SQLAlchemy event signature
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


def _alembic_config(connection: sa.Connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: sa.Engine, revision: str = "head") -> str:
    """Create or upgrade the schema to ``revision``; safe to call on every run."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), revision)
    return current_revision(engine)


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    config = _alembic_config(None)  # type: ignore[arg-type]
    return ScriptDirectory.from_config(config).get_current_head()


@dataclass(frozen=True)
class Watermark:
    table_name: str
    watermark: datetime | None
    snapshot_path: str | None
    snapshot_rows: int


def get_watermark(engine: sa.Engine, table: str) -> Watermark:
    with engine.connect() as connection:
        row = connection.execute(sa.select(store_watermarks).where(store_watermarks.c.table_name == table)).first()
    if row is None:
        return Watermark(table, None, None, 0)
    return Watermark(table, utc(row.watermark), row.snapshot_path, row.snapshot_rows)


def advance_watermark(
    engine: sa.Engine,
    *,
    expected: Watermark,
    watermark: datetime | None,
    snapshot_path: str,
    snapshot_rows: int,
    run: dict,
) -> None:
    """Publish a finished snapshot: move the watermark and record the run, in one transaction.

    Compare-and-set on the watermark this run started from: if an overlapping run moved it in
    the meantime, nothing is written and WatermarkConflict is raised (a retry starts afresh).
    """
    now = datetime.now(UTC)
    values = {
        "watermark": watermark,
        "snapshot_path": snapshot_path,
        "snapshot_rows": snapshot_rows,
        "run_id": run["run_id"],
        "updated_at": now,
    }
    with engine.begin() as connection:
        if expected.snapshot_path is None and expected.watermark is None:
            exists = connection.execute(
                sa.select(store_watermarks.c.table_name).where(store_watermarks.c.table_name == expected.table_name)
            ).first()
            if exists is not None:
                raise WatermarkConflict(f"table {expected.table_name}: another run published a snapshot first")
            connection.execute(sa.insert(store_watermarks).values(table_name=expected.table_name, **values))
        else:
            condition = store_watermarks.c.snapshot_path == expected.snapshot_path
            condition &= (
                store_watermarks.c.watermark.is_(None)
                if expected.watermark is None
                else store_watermarks.c.watermark == expected.watermark
            )
            result = connection.execute(
                sa.update(store_watermarks)
                .where(store_watermarks.c.table_name == expected.table_name, condition)
                .values(**values)
            )
            if result.rowcount != 1:
                raise WatermarkConflict(f"table {expected.table_name}: the watermark moved during this run")
        connection.execute(sa.insert(extract_runs).values(finished_at=now, **run))
