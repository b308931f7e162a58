"""What every DAG shares: the @dag settings, the common Params, the state-DB task. Parse time: airflow.sdk only."""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from remarketing.platform.dag_defaults import START_DATE, default_args, market_codes
from remarketing.platform.notify import dag_failure_callback


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
    from remarketing.platform.connections import prepare_state

    return prepare_state()


def remarketing_dag(*, schedule, tags: list[str], doc_md: str | None, params: dict, retries: int = 3):
    """``@dag`` with what every remarketing DAG shares: no catchup, one run at a time, retries with
    exponential backoff, an alert on failure, the ``remarketing`` tag. The DAG's id is its function's name."""
    return dag(
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(retries=retries),
        on_failure_callback=dag_failure_callback,
        tags=["remarketing", *tags],
        doc_md=doc_md,
        params=params,
    )


def dry_run_param(description: str = "Compute and render, but claim and send nothing.") -> Param:
    return Param(False, type="boolean", description=description)


def full_refresh_param(description: str = "Re-read the store tables in full.") -> Param:
    return Param(False, type="boolean", description=description)


REHEARSAL = "Rehearsal only (outbox transport): act as if it were this instant (UTC). Empty = now."


def as_of_param(description: str = REHEARSAL) -> Param:
    return Param(None, type=["null", "string"], format="date-time", description=description)
