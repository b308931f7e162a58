"""Airflow connections turned into what the plain modules take: DB-API connections and engines.

The shop's database (``store_db``, read only) and our own state DB (``remarketing_db``). A
connection that is missing, of the wrong type or unreachable fails with one message naming the
connection, what it is for and (for the store) the table; ``permanent`` tells the task not to
retry what a retry cannot fix. Airflow is imported inside functions.
"""

from __future__ import annotations

import os
import threading
from contextlib import closing, contextmanager

STORE_CONN_ID = "store_db"
REMARKETING_CONN_ID = "remarketing_db"
_ENGINES: dict = {}  # migrated_remarketing_engine: URL -> engine
_ENGINES_LOCK = threading.Lock()
SQL_CONN_TYPES = ("sqlite", "postgres", "mysql")


class ConnectionSetupError(RuntimeError):
    """A connection is missing, of the wrong type, or unreachable; the message names it.

    ``permanent`` marks failures a retry cannot fix (the task fails at once instead of retrying).
    """

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


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
        raise ConnectionSetupError(
            f"connection {conn_id!r} ({purpose}) is not defined: {_first_line(exc)}", permanent=True
        ) from exc
    try:
        hook = connection.get_hook()
    except Exception as exc:  # noqa: BLE001 - unknown hook types raise AirflowException
        hook, cause = None, exc
    else:
        cause = None
    if not isinstance(hook, DbApiHook):
        raise ConnectionSetupError(
            f"connection {conn_id!r} ({purpose}) has type {connection.conn_type!r}; "
            f"expected a SQL database connection ({', '.join(SQL_CONN_TYPES)})",
            permanent=True,
        ) from cause
    if connection.conn_type == "sqlite" and create_sqlite and connection.host:
        os.makedirs(os.path.dirname(os.path.abspath(connection.host)), exist_ok=True)
    elif connection.conn_type == "sqlite" and not os.path.exists(connection.host or ""):
        # sqlite3 would silently create an empty file and then report missing tables.
        raise ConnectionSetupError(
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
        raise ConnectionSetupError(
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
    """For long-lived processes (the API server's plugins): one engine per database URL, its schema
    brought up to date once. The connection is read on every call, so an edited ``remarketing_db``
    is used at once, without a restart."""
    from remarketing.platform.state import create_state_engine, upgrade

    url = remarketing_url(conn_id)
    with _ENGINES_LOCK:
        if url not in _ENGINES:
            engine = create_state_engine(url)
            upgrade(engine)
            _ENGINES[url] = engine
        return _ENGINES[url]


def prepare_state(conn_id: str = REMARKETING_CONN_ID) -> str:
    """Create or upgrade the remarketing DB schema; returns the schema revision."""
    from remarketing.platform.state import upgrade

    engine = remarketing_engine(conn_id)
    try:
        return upgrade(engine)
    finally:
        engine.dispose()
