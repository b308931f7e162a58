"""Real database services for tests: PostgreSQL and MariaDB on this machine.

Each helper creates a fresh, uniquely named database and drops it afterwards. A service that is
down is a skip on a developer machine and a failure under CI=true: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("REMARKETING_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
MARIADB_ADMIN_URL = os.environ.get("REMARKETING_TEST_MARIADB_URL", "mysql+mysqldb://root@127.0.0.1:3306/mysql")


def _unavailable(service: str, exc: Exception):
    message = f"{service} is not reachable: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(message)


def _admin_engine(url: str, service: str) -> sa.Engine:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means the service is unusable
        engine.dispose()
        _unavailable(service, exc)
    return engine


@contextmanager
def fresh_postgres_database(prefix: str = "rmk"):
    """Yield the SQLAlchemy URL of a new, empty PostgreSQL database."""
    admin = _admin_engine(PG_ADMIN_URL, "PostgreSQL")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_ADMIN_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def fresh_mariadb_database(prefix: str = "rmk"):
    """Yield the SQLAlchemy URL of a new, empty MariaDB database (utf8mb4)."""
    admin = _admin_engine(MARIADB_ADMIN_URL, "MariaDB")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    url = sa.make_url(MARIADB_ADMIN_URL).set(database=name, query={"charset": "utf8mb4"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


# --- the remarketing DB (our state), migrated by the project ----------------------------------------


def migrated_sqlite_engine(path) -> sa.Engine:
    """A remarketing DB in a SQLite file, schema at head."""
    from remarketing.platform import state

    engine = state.create_state_engine(f"sqlite:///{path}")
    state.upgrade(engine)
    return engine


@contextmanager
def migrated_postgres_database(prefix: str = "rmk"):
    """The URL of a fresh PostgreSQL database with the remarketing schema at head; dropped on exit."""
    from remarketing.platform import state

    with fresh_postgres_database(prefix) as url:
        engine = state.create_state_engine(url)
        state.upgrade(engine)
        engine.dispose()
        yield url


def state_engine(kind: str, tmp_path, request, tables: tuple[str, ...]) -> sa.Engine:
    """For tests run on both databases: a fresh SQLite file, or the module's PostgreSQL database
    (fixture ``postgres_url``, one per module because creating one costs seconds) with ``tables`` emptied."""
    if kind == "sqlite":
        return migrated_sqlite_engine(tmp_path / "remarketing.db")
    from remarketing.platform import state

    engine = state.create_state_engine(request.getfixturevalue("postgres_url"))
    with engine.begin() as conn:
        for table in tables:
            conn.execute(sa.text(f"DELETE FROM {table}"))
    return engine
