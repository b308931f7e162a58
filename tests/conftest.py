"""Test session setup: Airflow is configured here, before any test module imports it.

End-to-end runs keep Airflow's metadata in a fresh PostgreSQL database (as in production).
Off CI, a machine without PostgreSQL falls back to SQLite metadata; under CI=true it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "support"))  # tests/support: databases.py, fake_sendgrid.py and friends

_HOME = Path(tempfile.mkdtemp(prefix="rmk-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP"] = r"(airflow|remarketing)\..*"
os.environ["REMARKETING_RETRY_DELAY_SECONDS"] = "0"
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

_IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_report_header(config):
    from clock import INSTANT

    return f"clock tests run at {INSTANT.isoformat()} (tests/support/clock.py)"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "instant" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.clock)


@pytest.fixture(scope="session")
def instant():
    """When a clock test happens (tests/support/clock.py): its shop's clock and its runs' ``as_of``."""
    from clock import INSTANT

    return INSTANT


def _create_metadata_database() -> tuple[str, str | None]:
    """A new PostgreSQL database for Airflow's metadata; (url, name) or SQLite fallback."""
    import sqlalchemy as sa
    from databases import PG_ADMIN_URL

    name = f"rmk_airflow_{uuid.uuid4().hex[:8]}"
    try:
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means no PostgreSQL here
        if _IN_CI:
            raise pytest.UsageError(f"PostgreSQL for Airflow metadata is unreachable under CI=true: {exc}") from exc
        return f"sqlite:///{_HOME / 'airflow.db'}", None
    url = sa.make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg2", database=name)
    return url.render_as_string(hide_password=False), name


_METADATA_URL, _METADATA_DB = _create_metadata_database()
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = _METADATA_URL


def pytest_unconfigure(config):
    if _METADATA_DB is None:
        return
    import sqlalchemy as sa
    from databases import PG_ADMIN_URL

    try:
        from airflow import settings

        settings.dispose_orm()  # close Airflow's pooled sessions before the database goes away
    except Exception:  # noqa: BLE001 - cleanup must not mask the test result
        pass
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{_METADATA_DB}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def airflow_metadata() -> str:
    """Airflow's metadata DB, migrated once per session (the real `airflow db migrate`)."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert result.returncode == 0, f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return _METADATA_URL


def sqlite_conn_env(path: Path) -> str:
    """An AIRFLOW_CONN_* value for a SQLite file."""
    from remarketing.platform.connections import airflow_conn_json

    return airflow_conn_json(f"sqlite:///{path}")


@pytest.fixture
def engine(tmp_path):
    """A remarketing DB (SQLite, schema at head) for one test; modules testing PostgreSQL too override it."""
    from databases import migrated_sqlite_engine

    engine = migrated_sqlite_engine(tmp_path / "remarketing.db")
    yield engine
    engine.dispose()


@pytest.fixture
def sendgrid():
    """The local SendGrid server; a test fails if the server itself raised an error."""
    from fake_sendgrid import FakeSendGrid

    with FakeSendGrid() as fake:
        yield fake
        assert fake.server_errors == []


@pytest.fixture
def run_data(tmp_path, monkeypatch) -> Path:
    """A private run-data base and remarketing DB for one test."""
    base = tmp_path / "data"
    monkeypatch.setenv("REMARKETING_DATA_BASE", f"file://{base}")
    monkeypatch.setenv("AIRFLOW_CONN_REMARKETING_DB", sqlite_conn_env(tmp_path / "remarketing.db"))
    return base


def run_record(table: str, run_id: str) -> dict:
    """An extract_runs record for tests that publish a watermark directly."""
    return {
        "run_id": run_id,
        "table_name": table,
        "full_refresh": False,
        "lower_bound": None,
        "upper_bound": None,
        "delta_rows": 1,
        "snapshot_rows": 1,
        "delta_path": "d",
        "snapshot_path": "s",
        "seconds": 0.1,
    }
