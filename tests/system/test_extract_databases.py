"""The same store on SQLite, PostgreSQL and MariaDB gives the same snapshot, through the real
path a DAG uses: an Airflow connection, the provider's hook, its driver (sqlite3, psycopg 3,
MySQLdb)."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from databases import fresh_mariadb_database, fresh_postgres_database

from demo_shop.generator import generate_store, write_store
from remarketing.platform import connections, state
from remarketing.store import snapshots
from remarketing.store.schema import CANONICAL_TABLES, metadata

AS_OF = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BACKENDS = ("sqlite", "postgresql", "mariadb")


@pytest.fixture(scope="module")
def frames():
    return generate_store(customers=400, seed=5, as_of=AS_OF)


@pytest.fixture(scope="module")
def stores(frames, tmp_path_factory):
    """The same demo store written into each of the three databases."""
    with ExitStack() as stack:
        urls = {
            "sqlite": f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'store.db'}",
            "postgresql": stack.enter_context(fresh_postgres_database("rmk_store")),
            "mariadb": stack.enter_context(fresh_mariadb_database("rmk_store")),
        }
        for url in urls.values():
            write_store(frames, url)
        yield urls


def refresh_all(url: str, work, run_id: str, monkeypatch) -> dict[str, snapshots.TableSnapshot]:
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", connections.airflow_conn_json(url))
    engine = state.create_state_engine(f"sqlite:///{work / 'remarketing.db'}")
    state.upgrade(engine)
    results = {}
    for table in CANONICAL_TABLES:
        with connections.store_connection(table) as conn:
            results[table] = snapshots.refresh_table(
                store_conn=conn,
                store_name="store_db",
                table=table,
                state_engine=engine,
                base_path=work,
                run_id=run_id,
                now=AS_OF + timedelta(days=30),
            )
    engine.dispose()
    return results


def test_same_store_gives_the_same_snapshot_on_all_three_databases(stores, frames, tmp_path, monkeypatch):
    tables = {}
    for backend, url in stores.items():
        work = tmp_path / backend
        work.mkdir()
        results = refresh_all(url, work, "run1", monkeypatch)
        tables[backend] = {
            name: pq.read_table(r.snapshot_path).sort_by(CANONICAL_TABLES[name].key) for name, r in results.items()
        }
    for name in CANONICAL_TABLES:
        assert tables["sqlite"][name].num_rows == len(frames[name]) > 0
        for backend in ("postgresql", "mariadb"):
            for column in tables["sqlite"][name].column_names:
                left = tables["sqlite"][name].column(column).to_pylist()
                right = tables[backend][name].column(column).to_pylist()
                assert left == right, f"{name}.{column} differs between sqlite and {backend}"
    # Non-ASCII text survives every driver (product names are JSON per locale).
    assert "ja" in tables["mariadb"]["products"].column("names").to_pylist()[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_update_after_the_watermark_is_read_once_on_each_database(backend, stores, frames, tmp_path, monkeypatch):
    url = stores[backend]
    first = refresh_all(url, tmp_path, "run1", monkeypatch)
    newest = max(datetime.fromisoformat(r.watermark) for r in first.values() if r.watermark)
    orders = metadata.tables["orders"]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        order_id = conn.execute(sa.select(orders.c.order_id).order_by(orders.c.order_id).limit(1)).scalar_one()
        conn.execute(
            orders.update()
            .where(orders.c.order_id == order_id)
            .values(status="refunded", updated_at=newest + timedelta(seconds=1))
        )
    engine.dispose()
    try:
        second = refresh_all(url, tmp_path, "run2", monkeypatch)
        assert {t: r.delta_rows for t, r in second.items() if r.delta_rows} == {"orders": 1}
        snapshot = pq.read_table(second["orders"].snapshot_path)
        statuses = dict(
            zip(snapshot.column("order_id").to_pylist(), snapshot.column("status").to_pylist(), strict=True)
        )
        assert statuses[order_id] == "refunded"
        assert snapshot.num_rows == first["orders"].snapshot_rows
        third = refresh_all(url, tmp_path, "run3", monkeypatch)
        assert sum(r.delta_rows for r in third.values()) == 0
    finally:  # the module-scoped store is shared: put the row back as it was
        write_store(frames, url)
