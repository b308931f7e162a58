"""Task groups every DAG that reads the store shares. Imported at DAG parse time: airflow.sdk only.

`store_extract_and_validate` is the front of every such DAG: refresh the store mirror (one
mapped task per table, the map index shows the table), then validate the snapshots with Great
Expectations. A broken feed fails `validate` and so stops the DAG before any email is sent;
bad rows are quarantined and the rest goes on. What downstream tasks receive is the validated
XCom: clean Parquet paths and counts per table, never rows.
"""

from __future__ import annotations

from contextlib import contextmanager

from airflow.sdk import Param, task, task_group

from remarketing.platform.dag_defaults import market_codes


def markets_param(description: str = "Markets to run; the others are left alone.") -> Param:
    """The `markets` Param every per-market DAG shows: the configured codes, all by default."""
    codes = market_codes()  # one read of markets.yaml per parse
    return Param(
        codes,
        type="array",
        items={"type": "string", "enum": codes},
        minItems=1,
        uniqueItems=True,
        description=description,
    )


@task
def prepare_state() -> str:
    """Create or upgrade the remarketing DB schema before anything writes to it."""
    from remarketing.platform.runtime import prepare_state

    return prepare_state()


@task(map_index_template="{{ task.op_kwargs['table'] }}")
def extract_table(table: str, params: dict | None = None, run_id: str | None = None) -> dict:
    """Refresh one table of the store mirror; XCom carries paths and counts only."""
    from airflow.sdk.exceptions import AirflowFailException

    from remarketing.platform.runtime import refresh_store_table
    from remarketing.store.extract import StoreExtractError

    params = params or {}
    try:
        return refresh_store_table(
            table,
            run_id=run_id,
            full_refresh=bool(params.get("full_refresh", False)),
            settle_seconds=int(params.get("settle_seconds", 60)),
        )
    except StoreExtractError as exc:
        if exc.permanent:
            raise AirflowFailException(str(exc)) from exc
        raise


@task
def validate(snapshots: list[dict], run_id: str | None = None, dag=None) -> dict:
    """Validate every snapshot with Great Expectations; quarantine bad rows, stop on a broken feed."""
    from airflow.sdk.exceptions import AirflowFailException

    from remarketing.platform.runtime import validate_snapshots
    from remarketing.store.validation.run import FeedBroken

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


@task
def sync_suppressions(params: dict | None = None) -> dict:
    """Pull SendGrid's suppressions (paged, from the high-water mark) and per-market stats before anyone is mailed."""
    from remarketing.delivery.tasks import sync_suppressions_and_health

    return sync_suppressions_and_health(markets=params["markets"])


@contextmanager
def setup_errors_fail_the_task():
    """Delivery that is not configured (no link secret, a rehearsal on SendGrid) fails at once: retrying won't help."""
    from airflow.sdk.exceptions import AirflowFailException

    from remarketing.delivery.tasks import DeliverySetupError

    try:
        yield
    except DeliverySetupError as exc:
        raise AirflowFailException(str(exc)) from exc
