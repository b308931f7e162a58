"""
### Store snapshot

Copies the shop's six canonical tables (customers, products, carts, cart items, orders, order
items) from the `store_db` connection into Parquet snapshots that every other DAG reads.

**How it works.** Each table is extracted by its own mapped task (the map index shows the
table). Only rows whose `updated_at` is past the table's watermark are read; they are merged
into the previous snapshot (newest version of a row wins) and the watermark moves only once the
new snapshot is completely written, in the same transaction that records the run. A failed or
killed run therefore leaves nothing half-done: its retry reads the same window again.

**Params**
- `full_refresh` (default off): ignore watermarks and re-read every table in full. Use it after
  changing the mapping SQL in `include/sql/store/`, or to drop rows deleted in the store (hard
  deletes are invisible to an incremental read).
- `tables`: which tables to refresh (default all six).
- `settle_seconds`: rows updated in the last N seconds wait for the next run, so transactions
  still in flight when the run starts are not skipped.

**Validation.** `store.validate` checks every snapshot with Great Expectations: bad rows are
quarantined with their reason (`quarantine` table, and Parquet next to the run's data), a
broken table fails the task with the table, the expectation and example row keys. The report
is `report.html` under `$REMARKETING_DATA_BASE/validated/store_snapshot/run=<run id>/`.

**Reading the outcome.** `summarize` logs one line per table: rows read this run, rows in the
snapshot, the new watermark and seconds taken. Snapshots live under
`$REMARKETING_DATA_BASE/store/<table>/run=<run id>/`; the `store_watermarks` and `extract_runs`
tables in the remarketing DB keep the history.

**What it triggers.** This DAG is the clock of the daily chain: it runs `@daily` (00:00 UTC),
and on success `summarize` updates the `store_snapshot` Asset, which starts
`lifecycle_segments`, whose `customer_profiles` Asset in turn starts `market_campaign`. A manual
run (a `full_refresh`, say) starts the chain too. Pausing this DAG pauses the chain: the two
downstream DAGs have no clock of their own (see the Asset graph).

**Failures.** An unreachable database is retried; a wrong connection type or a missing table or
column fails at once with a message naming the connection and the table.
"""

from airflow.sdk import Param, task

from remarketing.platform.assets import STORE_SNAPSHOT
from remarketing.platform.dag_defaults import STORE_TABLES
from remarketing.platform.dag_parts import full_refresh_param, remarketing_dag
from remarketing.store.tasks import store_extract_and_validate


@remarketing_dag(
    schedule="@daily",
    tags=["extract"],
    doc_md=__doc__,
    params={
        "full_refresh": full_refresh_param("Re-read every table in full, ignoring watermarks."),
        "tables": Param(
            list(STORE_TABLES),
            type="array",
            items={"type": "string", "enum": list(STORE_TABLES)},
            minItems=1,
            uniqueItems=True,
            description="Canonical tables to refresh.",
        ),
        "settle_seconds": Param(
            60, type="integer", minimum=0, maximum=3600, description="Leave rows newer than this for the next run."
        ),
    },
)
def store_snapshot():
    @task
    def tables_to_refresh(params: dict | None = None) -> list[str]:
        return list(params["tables"])

    @task(outlets=[STORE_SNAPSHOT])
    def summarize(validated: dict) -> dict:
        """Log one line per table and publish the snapshot Asset."""
        from remarketing.store.snapshots import summary_table

        print(summary_table(validated["snapshots"]))
        return {t: {"clean": v["clean"], "quarantined": v["quarantined"]} for t, v in validated["tables"].items()}

    summarize(store_extract_and_validate(tables=tables_to_refresh()))


store_snapshot()
