"""Params and tasks every DAG shares. Imported at DAG parse time: airflow.sdk only."""

from __future__ import annotations

from airflow.sdk import Param, task

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
    from remarketing.platform.connections import prepare_state

    return prepare_state()
