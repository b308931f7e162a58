"""The Asset chain fires through Airflow's own machinery (metadata in PostgreSQL):

    store_snapshot --store_snapshot--> lifecycle_segments --customer_profiles--> market_campaign

As in production: every DAG file is serialized to the metadata DB (what the dag-processor does),
the consumers are unpaused, the producer runs; its outlet's AssetEvent queues the consumer
(AssetDagRunQueue), and the scheduler's own run creation (``SchedulerJobRunner``) turns the
queue into an Asset-triggered DagRun: no logical date, no data interval. That run is then
executed task by task in-process, as ``dag.test()`` runs its own, so what runs is the run the
scheduler created. Nothing here depends on the hour: the demo store is dated a day back, the
profiles' as-of is the run's own ``run_after``, and the campaign calendar is empty.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import sqlite_conn_env

from demo_shop.generator import generate_store, write_store
from remarketing.platform.assets import CUSTOMER_PROFILES, STORE_SNAPSHOT

pytestmark = pytest.mark.airflow_run
REPO = Path(__file__).resolve().parents[2]
CHAIN = ("store_snapshot", "lifecycle_segments", "market_campaign")


@pytest.fixture(scope="module")
def sdk_dags():
    """The parsed DAGs (task code for the in-process runs), as a worker would load them."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


@pytest.fixture
def serialized_chain(airflow_metadata, sdk_dags):
    """Every DAG file serialized to the metadata DB, the consumers unpaused (re-paused after)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    bundle = manager.get_bundle("dags-folder")
    bundle.initialize()
    bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, bundle.name, bundle.version)

    def set_paused(dag_ids, paused: bool) -> None:
        with create_session() as session:
            for model in session.scalars(sa.select(DagModel).where(DagModel.dag_id.in_(dag_ids))):
                model.is_paused = paused

    with create_session() as session:  # earlier tests' queue entries are not this test's
        session.execute(sa.delete(AssetDagRunQueue))
    set_paused(CHAIN[1:], False)
    yield
    set_paused(CHAIN[1:], True)
    with create_session() as session:
        session.execute(sa.delete(AssetDagRunQueue))


def asset_events(asset, source_run_id: str) -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return list(
            session.scalars(
                sa.select(AssetEvent)
                .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .where(AssetModel.name == asset.name, AssetEvent.source_run_id == source_run_id)
            )
        )


def queued_for() -> dict[str, set[str]]:
    """AssetDagRunQueue: consumer DAG -> names of the Assets it is queued on."""
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            sa.select(AssetDagRunQueue.target_dag_id, AssetModel.name).join(
                AssetModel, AssetDagRunQueue.asset_id == AssetModel.id
            )
        ).all()
    queued: dict[str, set[str]] = {}
    for dag_id, name in rows:
        queued.setdefault(dag_id, set()).add(name)
    return queued


def scheduler_creates_runs() -> None:
    """One pass of the scheduler's run creation, then its start of queued runs (the real code paths)."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit

    runner = SchedulerJobRunner(job=Job(), num_runs=1)
    with create_session() as session:
        with prohibit_commit(session) as guard:
            runner._create_dagruns_for_dags(guard, session)
        runner._start_queued_dagruns(session)


def asset_triggered_runs(dag_id: str) -> list:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunType

    with create_session() as session:
        runs = list(
            session.scalars(
                sa.select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_type == DagRunType.ASSET_TRIGGERED)
            )
        )
        for run in runs:
            run.consumed = [(e.source_dag_id, e.source_run_id) for e in run.consumed_asset_events]
        session.expunge_all()
    return runs


def execute_run(sdk_dag, run_id: str) -> str:
    """Run an existing DagRun's tasks in-process, as dag.test() runs its own; return its final state.

    Same loop as ``airflow.sdk.definitions.dag.DAG.test``: the scheduler's dependency checks
    (``DagRun.update_state``) decide what is runnable, each task goes through the Task SDK's
    in-process runner and the execution API (which records outlets as AssetEvents).
    """
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    with create_session() as session:
        run = session.scalar(sa.select(DagRun).where(DagRun.dag_id == sdk_dag.dag_id, DagRun.run_id == run_id))
        run.dag = DBDagBag().get_dag_for_run(run, session=session)
        for _ in range(200):
            if run.state != DagRunState.RUNNING:
                break
            session.expire_all()
            schedulable, _ = run.update_state(session=session)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            for ti in [t for t in run.get_task_instances(session=session) if t.state == TaskInstanceState.SCHEDULED]:
                _run_task(ti=ti, task=sdk_dag.task_dict[ti.task_id])
        return run.state


def test_a_fresh_snapshot_runs_profiles_and_fresh_profiles_run_campaigns(
    serialized_chain, sdk_dags, run_data, tmp_path, monkeypatch
):
    store_as_of = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    frames = generate_store(customers=300, seed=21, as_of=store_as_of)
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))
    monkeypatch.setenv("REMARKETING_TRANSPORT", "outbox")
    monkeypatch.setenv("REMARKETING_LINK_SECRET", "test-link-secret-0123456789")
    calendar = tmp_path / "campaigns.yaml"
    calendar.write_text(json.dumps({"campaigns": []}))
    monkeypatch.setenv("REMARKETING_CAMPAIGNS_FILE", str(calendar))

    # 1. The daily producer: its outlet queues lifecycle_segments, and nothing else yet.
    snapshot = sdk_dags["store_snapshot"].test(run_conf={"tables": ["customers"], "settle_seconds": 0})
    assert snapshot.state == "success"
    assert len(asset_events(STORE_SNAPSHOT, snapshot.run_id)) == 1
    assert queued_for() == {"lifecycle_segments": {STORE_SNAPSHOT.name}}

    # 2. The scheduler turns the queue into an Asset-triggered run consuming that event.
    scheduler_creates_runs()
    (profiles_run,) = asset_triggered_runs("lifecycle_segments")
    assert profiles_run.logical_date is None and profiles_run.data_interval_end is None
    assert profiles_run.consumed == [("store_snapshot", snapshot.run_id)]
    assert profiles_run.state == "running"
    assert queued_for() == {}, "the queue entry is consumed"
    assert asset_triggered_runs("market_campaign") == [], "no profiles yet, no campaign run"

    # 3. That very run computes profiles as of its run_after (it has no data interval) ...
    assert execute_run(sdk_dags["lifecycle_segments"], profiles_run.run_id) == "success"
    engine = sa.create_engine(f"sqlite:///{run_data.parent / 'remarketing.db'}")
    with engine.connect() as conn:
        stored = pd.read_sql(sa.text("SELECT customer_id, computed_at FROM customer_profiles"), conn)
    engine.dispose()
    assert sorted(stored["customer_id"]) == sorted(frames["customers"]["customer_id"])
    computed = pd.to_datetime(stored["computed_at"], utc=True).unique()
    assert list(computed) == [pd.Timestamp(profiles_run.run_after)]

    # ... and its outlet queues market_campaign, which the scheduler starts on those profiles.
    assert len(asset_events(CUSTOMER_PROFILES, profiles_run.run_id)) == 1
    assert queued_for() == {"market_campaign": {CUSTOMER_PROFILES.name}}
    scheduler_creates_runs()
    (campaign_run,) = asset_triggered_runs("market_campaign")
    assert campaign_run.logical_date is None and campaign_run.data_interval_end is None
    assert campaign_run.consumed == [("lifecycle_segments", profiles_run.run_id)]
    assert len(asset_triggered_runs("lifecycle_segments")) == 1, "one snapshot, one profile run"

    # 4. The campaign run works without a logical date: calendar from the clock (empty here).
    assert execute_run(sdk_dags["market_campaign"], campaign_run.run_id) == "success"
