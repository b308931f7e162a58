"""lifecycle_segments end to end through real Airflow: extract, validate, profiles, Asset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import sqlite_conn_env

from demo_shop.generator import generate_store, write_store
from remarketing.profiles.config import STAGES, describe_config, load_lifecycle_config

pytestmark = pytest.mark.airflow_run
REPO = Path(__file__).resolve().parents[2]
AS_OF = datetime(2026, 11, 22, tzinfo=UTC)


@pytest.fixture
def dag():
    """Parsed per test: dag.test() keeps the last run's Param values (as_of) as the DAG's defaults."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "lifecycle_segments.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("lifecycle_segments")


def profiles(run_data: Path) -> pd.DataFrame:
    engine = sa.create_engine(f"sqlite:///{run_data.parent / 'remarketing.db'}")
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text("SELECT * FROM customer_profiles ORDER BY customer_id"), conn)
    engine.dispose()
    return frame


def test_profiles_for_every_customer_every_stage_and_an_idempotent_rerun(
    airflow_metadata, run_data, tmp_path, monkeypatch, dag
):
    frames = generate_store(customers=3000, seed=7, as_of=AS_OF)
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))

    first = dag.test(run_conf={"as_of": AS_OF.isoformat()})
    assert first.state == "success"
    stored = profiles(run_data)
    assert sorted(stored["customer_id"]) == sorted(frames["customers"]["customer_id"]), "every customer, once"
    assert set(stored["stage"]) == set(STAGES), "each stage has members on the demo data"

    again = dag.test(run_conf={"as_of": AS_OF.isoformat()})
    assert again.state == "success"
    pd.testing.assert_frame_equal(
        profiles(run_data).drop(columns="run_id"), stored.drop(columns="run_id"), check_like=True
    )


def test_a_broken_feed_stops_before_profiles_are_written(airflow_metadata, run_data, tmp_path, monkeypatch, dag):
    frames = generate_store(customers=300, seed=7, as_of=AS_OF)
    frames["orders"].loc[frames["orders"].index[:60], "currency"] = "XXX"  # 60 of ~1000 orders: > 5% bad
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))
    run = dag.test(run_conf={"as_of": AS_OF.isoformat()})
    assert run.state == "failed"
    engine = sa.create_engine(f"sqlite:///{run_data.parent / 'remarketing.db'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM customer_profiles")).scalar() == 0
        status = conn.execute(sa.text("SELECT status FROM validation_runs WHERE table_name = 'orders'")).scalar()
    engine.dispose()
    assert status == "failed"


def test_the_dag_documents_the_configured_stage_thresholds(dag):
    described = describe_config(load_lifecycle_config())
    for fragment in ("at most 30 days ago", "below 0.3", "more than 365 days ago", "at least 4 valid orders"):
        assert fragment in described, "the thresholds changed: update the DAG's doc_md too"
        assert fragment in dag.doc_md


def test_a_run_with_a_logical_date_computes_as_of_its_data_interval_end(
    airflow_metadata, run_data, tmp_path, monkeypatch, dag
):
    frames = generate_store(customers=300, seed=9, as_of=AS_OF)
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))
    run = dag.test(logical_date=AS_OF)  # no as_of Param: Airflow's (pendulum) data interval end is used
    assert run.state == "success"
    stored = profiles(run_data)
    assert len(stored) == len(frames["customers"])
    computed = pd.to_datetime(stored["computed_at"], utc=True).unique()
    assert len(computed) == 1 and computed[0] == pd.Timestamp(run.data_interval_end)


def test_a_run_without_a_logical_date_computes_as_of_its_run_after(
    airflow_metadata, run_data, tmp_path, monkeypatch, dag
):
    """An Asset-triggered run (the schedule: each fresh store snapshot) has no logical date and no
    data interval in Airflow 3; its run_after, fixed for the run, is the as-of instant.
    tests/dags/test_asset_chain.py runs the real one the scheduler creates."""
    frames = generate_store(customers=300, seed=9, as_of=AS_OF)
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))
    run_after = AS_OF + timedelta(hours=7, minutes=12)
    run = dag.test(logical_date=None, run_after=run_after)
    assert run.state == "success"
    assert run.logical_date is None and run.data_interval_end is None
    computed = pd.to_datetime(profiles(run_data)["computed_at"], utc=True).unique()
    assert list(computed) == [pd.Timestamp(run_after)]
