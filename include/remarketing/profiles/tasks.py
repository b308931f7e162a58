"""Airflow glue for the lifecycle_segments DAG: clean store frames in, profiles out.

The run's ``as_of`` is fixed per run (``resolve_as_of``): the ``as_of`` Param, else the data
interval end of a run that has one, else the run's ``run_after``. The DAG is scheduled on the
``store_snapshot`` Asset, and an Asset-triggered run has neither logical date nor data interval
in Airflow 3; its ``run_after`` is when the snapshot event queued it. So a retry or a cleared
run computes the same profiles from the same data and the upsert leaves the table as it was.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

PROFILE_TABLES = ("customers", "products", "orders", "order_items")


def resolve_as_of(param: str | None, *, data_interval_end: datetime | None, run_after: datetime | None) -> datetime:
    """The instant a run computes profiles as of, in UTC.

    The ``as_of`` Param (ISO 8601; no offset means UTC) wins; then the data interval end (a run
    with a logical date); then ``run_after`` (every Airflow 3 run has one; for an Asset-triggered
    run it is when the triggering event queued it). The clock only when there is none of these
    (outside Airflow): never for a real run, so retries agree with the first try.
    """
    from datetime import UTC

    if param:
        chosen = datetime.fromisoformat(param)
    else:
        chosen = next((v for v in (data_interval_end, run_after) if v is not None), None)
    if chosen is None:
        return datetime.now(UTC)
    chosen = chosen.replace(tzinfo=chosen.tzinfo or UTC)
    # A plain datetime: Airflow hands pendulum DateTimes, which numpy/pandas arithmetic rejects.
    return datetime.fromtimestamp(chosen.timestamp(), tz=UTC)


def build_profiles(validated: dict, *, run_id: str, as_of: datetime) -> dict[str, Any]:
    """Compute profiles, stages and transitions; upsert them and write a Parquet snapshot."""
    from datetime import UTC

    from remarketing.delivery.engagement import load_engagement
    from remarketing.markets import load_markets
    from remarketing.platform.connections import remarketing_engine
    from remarketing.platform.storage import read_clean, run_folder
    from remarketing.profiles.config import load_lifecycle_config
    from remarketing.profiles.lifecycle import compute_profiles, stage_transitions
    from remarketing.profiles.store import load_profiles, write_profiles

    # A plain UTC datetime: Airflow hands pendulum DateTimes, which numpy/pandas arithmetic rejects.
    as_of = datetime.fromtimestamp(as_of.timestamp(), tz=UTC)
    frames = {table: read_clean(validated, table) for table in PROFILE_TABLES}
    engine = remarketing_engine()
    try:
        previous = load_profiles(engine, columns=["market", "stage"])
        engagement = load_engagement(engine)  # the email feedback loop's opens and clicks per customer
        result = compute_profiles(
            frames["customers"],
            frames["orders"],
            frames["order_items"],
            frames["products"],
            markets=load_markets(),
            as_of=as_of,
            config=load_lifecycle_config(),
            engagement=engagement[["customer_id", "last_open_at", "last_click_at"]],
        )
        transitions = stage_transitions(previous, result.profiles, as_of=as_of)
        written = write_profiles(engine, result, transitions, run_id=run_id, as_of=as_of)
    finally:
        engine.dispose()
    path = run_folder("profiles", run_id=run_id) / "profiles.parquet"
    result.write_parquet(path)
    print(
        f"profiles as of {as_of.isoformat()}: {len(result.profiles)} customers ({len(engagement)} with email engagement)"
    )
    print(result.summary_table())
    moves = transitions.groupby(["from_stage", "to_stage"], dropna=False).size()
    print("stage transitions this run: " + (", ".join(f"{a}->{b} {n}" for (a, b), n in moves.items()) or "none"))
    summary = result.to_xcom()
    summary.update({"profiles_path": str(path), "written": written, "transitions": int(len(transitions))})
    return summary
