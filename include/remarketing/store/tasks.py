"""Airflow glue of the store: the ``store`` task group every DAG that reads the shop starts with.

`store_extract_and_validate` refreshes the store mirror (one mapped task per table, the map index
shows the table), then validates the snapshots with Great Expectations. A broken feed fails
`validate` and so stops the DAG before any email is sent; bad rows are quarantined and the rest
goes on. What downstream tasks receive is the validated XCom: clean Parquet paths and counts per
table, never rows. Imported at DAG parse time: airflow.sdk only at the top.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import task, task_group

from remarketing.platform.connections import STORE_CONN_ID
from remarketing.platform.dag_parts import prepare_state


@task(map_index_template="{{ task.op_kwargs['table'] }}")
def extract_table(table: str, params: dict | None = None, run_id: str | None = None) -> dict:
    """Refresh one table of the store mirror; XCom carries paths and counts only."""
    from airflow.sdk.exceptions import AirflowFailException

    from remarketing.platform.connections import ConnectionSetupError

    params = params or {}
    try:
        return refresh_store_table(
            table,
            run_id=run_id,
            full_refresh=bool(params.get("full_refresh", False)),
            settle_seconds=int(params.get("settle_seconds", 60)),
        )
    except ConnectionSetupError as exc:
        if exc.permanent:
            raise AirflowFailException(str(exc)) from exc
        raise


@task
def validate(snapshots: list[dict], run_id: str | None = None, dag=None) -> dict:
    """Validate every snapshot with Great Expectations; quarantine bad rows, stop on a broken feed."""
    from airflow.sdk.exceptions import AirflowFailException

    from remarketing.store.validation.results import FeedBroken

    snapshots = list(snapshots[:])  # one fetch; plain iteration probes past the end and logs an error
    try:
        return validate_snapshots(snapshots, run_id=run_id, flow=dag.dag_id)
    except FeedBroken as exc:
        raise AirflowFailException(f"broken feed, nothing will be sent: {exc}") from exc


@task_group(group_id="store")
def store_extract_and_validate(tables):
    """Extract (incremental, per table) then validate; returns the validation XCom."""
    extracted = extract_table.expand(table=tables)
    prepare_state() >> extracted
    return validate(extracted)


def refresh_store_table(
    table: str, *, run_id: str, full_refresh: bool, settle_seconds: int, store_conn_id: str = STORE_CONN_ID
) -> dict[str, Any]:
    """One table of the store mirror, for the extract task; returns paths and counts only."""
    from airflow.sdk import ObjectStoragePath

    from remarketing.platform.connections import remarketing_engine, store_connection
    from remarketing.platform.storage import data_base_path
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


def validate_snapshots(snapshots: list[dict], *, run_id: str, flow: str) -> dict[str, Any]:
    """Validate the run's store snapshots; logs the summary table, returns paths and counts."""
    from airflow.sdk import ObjectStoragePath

    from remarketing.markets import load_markets
    from remarketing.platform.clock import utcnow
    from remarketing.platform.connections import remarketing_engine
    from remarketing.platform.storage import run_folder
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
