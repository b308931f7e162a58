"""Airflow glue: turn Airflow connections and settings into what the plain modules take.

Kept apart so that extract, snapshots and state stay testable without Airflow, and so DAG
files stay a flow chart. Airflow is imported inside functions: this module is imported at
task run time, never at DAG parse time.
"""

from __future__ import annotations

import os
from contextlib import closing, contextmanager
from datetime import timedelta
from typing import Any

from remarketing.store.extract import StoreExtractError

STORE_CONN_ID = "store_db"
REMARKETING_CONN_ID = "remarketing_db"
SQL_CONN_TYPES = ("sqlite", "postgres", "mysql")


def airflow_conn_json(url: str) -> str:
    """An ``AIRFLOW_CONN_*`` value (JSON) for a SQLAlchemy URL of SQLite, PostgreSQL or MariaDB.

    For tools, tests and the demo; deployments define connections in Airflow.
    """
    import json

    import sqlalchemy as sa

    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return json.dumps({"conn_type": "sqlite", "host": parsed.database})
    conn_type = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}[backend]
    return json.dumps(
        {
            "conn_type": conn_type,
            "host": parsed.host,
            "port": parsed.port,
            "login": parsed.username,
            "password": parsed.password or "",
            "schema": parsed.database,
        }
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sql_hook(conn_id: str, purpose: str, *, create_sqlite: bool = False):
    """The common-sql hook behind an Airflow connection, or a clear error naming it."""
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import BaseHook

    try:
        connection = BaseHook.get_connection(conn_id)
    except Exception as exc:  # noqa: BLE001 - AirflowNotFoundException and secrets backend errors
        raise StoreExtractError(
            f"connection {conn_id!r} ({purpose}) is not defined: {_first_line(exc)}", permanent=True
        ) from exc
    try:
        hook = connection.get_hook()
    except Exception as exc:  # noqa: BLE001 - unknown hook types raise AirflowException
        hook, cause = None, exc
    else:
        cause = None
    if not isinstance(hook, DbApiHook):
        raise StoreExtractError(
            f"connection {conn_id!r} ({purpose}) has type {connection.conn_type!r}; "
            f"expected a SQL database connection ({', '.join(SQL_CONN_TYPES)})",
            permanent=True,
        ) from cause
    if connection.conn_type == "sqlite" and create_sqlite and connection.host:
        os.makedirs(os.path.dirname(os.path.abspath(connection.host)), exist_ok=True)
    elif connection.conn_type == "sqlite" and not os.path.exists(connection.host or ""):
        # sqlite3 would silently create an empty file and then report missing tables.
        raise StoreExtractError(
            f"connection {conn_id!r} ({purpose}): SQLite file {connection.host!r} does not exist", permanent=True
        )
    return hook, connection


@contextmanager
def store_connection(table: str, conn_id: str = STORE_CONN_ID):
    """A DB-API connection to the shop's database, read-only by intent."""
    hook, connection = _sql_hook(conn_id, "store database")
    try:
        conn = hook.get_conn()
    except Exception as exc:  # noqa: BLE001 - every driver has its own error classes
        raise StoreExtractError(
            f"connection {conn_id!r} ({connection.conn_type}), table {table}: cannot connect: {_first_line(exc)}"
        ) from exc
    with closing(conn):
        yield conn


def remarketing_url(conn_id: str = REMARKETING_CONN_ID) -> str:
    """The SQLAlchemy URL of our own state DB, from its Airflow connection."""
    hook, _connection = _sql_hook(conn_id, "remarketing state database", create_sqlite=True)
    return hook.get_uri()


def remarketing_engine(conn_id: str = REMARKETING_CONN_ID):
    """SQLAlchemy engine for our own state DB (created and migrated by the project)."""
    from remarketing.platform.state import create_state_engine

    return create_state_engine(remarketing_url(conn_id))


def migrated_remarketing_engine(conn_id: str = REMARKETING_CONN_ID):
    """``remarketing_engine`` with its schema brought up to date: for the API server's plugins."""
    from remarketing.platform.state import upgrade

    engine = remarketing_engine(conn_id)
    upgrade(engine)
    return engine


def data_base_path():
    """Where run data (Parquet) lives: ``REMARKETING_DATA_BASE`` or $AIRFLOW_HOME/data."""
    from airflow.sdk import ObjectStoragePath

    base = os.environ.get("REMARKETING_DATA_BASE")
    if not base:
        home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
        base = "file://" + os.path.join(os.path.abspath(home), "data")
    return ObjectStoragePath(base)


def prepare_state(conn_id: str = REMARKETING_CONN_ID) -> str:
    """Create or upgrade the remarketing DB schema; returns the schema revision."""
    from remarketing.platform.state import upgrade

    engine = remarketing_engine(conn_id)
    try:
        return upgrade(engine)
    finally:
        engine.dispose()


def refresh_store_table(
    table: str, *, run_id: str, full_refresh: bool, settle_seconds: int, store_conn_id: str = STORE_CONN_ID
) -> dict[str, Any]:
    """One table of the store mirror, for the extract task; returns paths and counts only."""
    from airflow.sdk import ObjectStoragePath

    from remarketing.store.snapshots import refresh_table

    engine = remarketing_engine()
    try:
        with store_connection(table, store_conn_id) as conn:
            snapshot = refresh_table(
                store_conn=conn,
                store_name=store_conn_id,
                table=table,
                state_engine=engine,
                base_path=data_base_path(),
                run_id=run_id,
                full_refresh=full_refresh,
                settle=timedelta(seconds=settle_seconds),
                path_factory=ObjectStoragePath,
            )
    finally:
        engine.dispose()
    return snapshot.to_xcom()


def run_folder(*parts: str, run_id: str):
    """``$REMARKETING_DATA_BASE/<parts...>/run=<run id>/``, created."""
    from remarketing.store.snapshots import run_folder_name

    folder = data_base_path().joinpath(*parts, run_folder_name(run_id))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def validate_snapshots(snapshots: list[dict], *, run_id: str, flow: str) -> dict[str, Any]:
    """Validate the run's store snapshots; logs the summary table, returns paths and counts."""
    from airflow.sdk import ObjectStoragePath

    from remarketing.markets import load_markets
    from remarketing.store.extract import utcnow
    from remarketing.store.validation.run import validate_store

    engine = remarketing_engine()
    try:
        result = validate_store(
            {s["table"]: ObjectStoragePath(s["snapshot_path"]) for s in snapshots},
            markets=load_markets(),
            out_dir=run_folder("validated", flow, run_id=run_id),
            run_id=run_id,
            now=utcnow(),
            state_engine=engine,
        )
    finally:
        engine.dispose()
    print(result.summary_table())
    return {**result.to_xcom(), "snapshots": snapshots}


def read_clean(validated: dict, table: str, columns: list[str] | None = None):
    """A validated (clean) table of this run as a DataFrame, from the validate task's XCom."""
    import pyarrow.parquet as pq
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(validated["tables"][table]["clean_path"])
    with path.open("rb") as handle:
        return pq.read_table(handle, columns=columns).to_pandas()
