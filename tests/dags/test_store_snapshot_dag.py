"""store_snapshot end to end through real Airflow (dag.test, metadata in PostgreSQL)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import sqlite_conn_env

from demo_shop.generator import generate_store, write_store
from remarketing.store.schema import CANONICAL_TABLES, metadata

pytestmark = pytest.mark.airflow_run
REPO = Path(__file__).resolve().parents[2]
AS_OF = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def frames():
    return generate_store(customers=300, seed=3, as_of=AS_OF)


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "store_snapshot.py"))
    assert not bag.import_errors
    return bag.get_dag("store_snapshot")


def run_dag(dag, **conf):
    return dag.test(run_conf={"settle_seconds": 0, **conf})


def task_states(run_id: str) -> dict[tuple[str, str | None], tuple[str, int]]:
    """(task_id, rendered map index) -> (state, try_number) from Airflow's metadata DB."""
    engine = sa.create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT task_id, rendered_map_index, state, try_number FROM task_instance "
                "WHERE dag_id = 'store_snapshot' AND run_id = :run_id"
            ),
            {"run_id": run_id},
        ).all()
        xcoms = conn.execute(
            sa.text("SELECT CAST(value AS TEXT) FROM xcom WHERE dag_id = 'store_snapshot' AND run_id = :run_id"),
            {"run_id": run_id},
        ).scalars()
        xcom_text = " ".join(str(x) for x in xcoms)
    engine.dispose()
    return {(r.task_id, r.rendered_map_index): (r.state, r.try_number) for r in rows}, xcom_text


def watermarks(run_data: Path) -> dict[str, tuple]:
    engine = sa.create_engine(f"sqlite:///{run_data.parent / 'remarketing.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT table_name, watermark, snapshot_rows FROM store_watermarks")).all()
    engine.dispose()
    return {r.table_name: (r.watermark, r.snapshot_rows) for r in rows}


def test_daily_run_then_incremental_run(airflow_metadata, run_data, tmp_path, monkeypatch, frames, dag):
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))

    first = run_dag(dag)
    assert first.state == "success"
    states, xcom_text = task_states(first.run_id)
    assert {key[1] for key in states if key[0] == "store.extract_table"} == set(CANONICAL_TABLES), (
        "map index names the table"
    )
    assert {state for state, _ in states.values()} == {"success"}
    assert {t: rows for t, (_, rows) in watermarks(run_data).items()} == {t: len(f) for t, f in frames.items()}
    assert "@" not in xcom_text and frames["customers"]["last_name"].iloc[0] not in xcom_text, (
        "no personal data in XCom"
    )
    assert "snapshot_path" in xcom_text

    carts = metadata.tables["carts"]
    engine = sa.create_engine(f"sqlite:///{store}")
    with engine.begin() as conn:
        conn.execute(
            carts.update().where(carts.c.cart_id.in_([1, 2, 3])).values(updated_at=AS_OF + timedelta(minutes=5))
        )
    engine.dispose()

    second = run_dag(dag)
    assert second.state == "success"
    engine = sa.create_engine(f"sqlite:///{run_data.parent / 'remarketing.db'}")
    with engine.connect() as conn:
        deltas = dict(
            conn.execute(
                sa.text("SELECT table_name, delta_rows FROM extract_runs WHERE run_id = :r"), {"r": second.run_id}
            ).all()
        )
    engine.dispose()
    assert deltas == {"customers": 0, "products": 0, "carts": 3, "cart_items": 0, "orders": 0, "order_items": 0}


def test_full_refresh_param_rereads_every_table(airflow_metadata, run_data, tmp_path, monkeypatch, frames, dag):
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))
    assert run_dag(dag).state == "success"
    full = run_dag(dag, full_refresh=True, tables=["orders"])
    assert full.state == "success"
    states, _ = task_states(full.run_id)
    assert [key[1] for key in states if key[0] == "store.extract_table"] == ["orders"]
    engine = sa.create_engine(f"sqlite:///{run_data.parent / 'remarketing.db'}")
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT full_refresh, delta_rows FROM extract_runs WHERE run_id = :r"), {"r": full.run_id}
        ).one()
    engine.dispose()
    assert bool(row.full_refresh) and row.delta_rows == len(frames["orders"])


def test_a_broken_store_fails_the_run_without_retries_or_a_moved_watermark(
    airflow_metadata, run_data, tmp_path, monkeypatch, frames, dag
):
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    engine = sa.create_engine(f"sqlite:///{store}")
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE orders"))
    engine.dispose()
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))

    run = run_dag(dag)
    assert run.state == "failed"
    states, _ = task_states(run.run_id)
    assert states[("store.extract_table", "orders")] == ("failed", 1), "a missing table is not retried"
    assert states[("summarize", None)][0] != "success", "the snapshot Asset is not published"
    assert "orders" not in watermarks(run_data)
