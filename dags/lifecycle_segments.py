"""
### Lifecycle segments

Customer profiles, recomputed after each fresh store snapshot: lifecycle stage, RFM, tags and a
purchase prediction, per market.

**What triggers it, what it triggers.** No clock of its own: every update of the
`store_snapshot` Asset (the daily `store_snapshot` run, or a manual one) starts a run. Its own
`store` group still refreshes and validates the four tables it reads (the store mirror is
incremental, so right after a snapshot little is left to read). On success
`build_profiles` updates the `customer_profiles` Asset, which starts `market_campaign`.
Plain Asset schedule, not `AssetOrTimeSchedule` with a daily cron as a fallback: that cron fires
every day *besides* the Asset, so a normal day would have two runs, the clock's one before the
day's snapshot. If `store_snapshot` is paused or failing this DAG waits (the failure alerts);
trigger it by hand to recompute anyway.

**Flow.** `store` refreshes the customers, products, orders and order lines mirror and validates
it (a broken feed stops the run here). `build_profiles` computes one profile per customer,
records stage transitions ("became at-risk on ...") and upserts both into the remarketing DB
(`customer_profiles`, `segment_history`), plus a Parquet snapshot of the run.

### Lifecycle stages

Each customer has exactly one stage per run: the first rule below that matches. Only valid
orders count (cancelled and refunded orders never do, nor orders after the run's as-of instant).
Thresholds live in `include/lifecycle.yaml` (per-market overrides allowed).

| stage | rule (defaults) |
| --- | --- |
| prospect | registered, no valid order |
| new | first valid order at most 30 days ago |
| dormant | purchase model P(alive) below 0.3, or last order more than 365 days ago |
| at_risk | last order longer ago than the market's repurchase interval (80th percentile of the market's gaps between purchase days, kept within 14-240 days) |
| vip | at least 4 valid orders and monetary at or above the 90th percentile of the market's buyers (JP: 92nd) |
| active | every other buyer |

**RFM.** Recency, frequency and monetary (in the market currency) are scored 1-5 within each
market by rank, so a JPY market and a EUR market are comparable; the RFM segment (Champions,
Loyal customers, At risk, Can't lose them, Hibernating, Lost...) is looked up from R and
the mean of F and M rounded up.

**Predictions and tags.** P(alive) and expected purchases in the next 90 days come from a
BG/NBD model fitted per market by maximum likelihood (small markets use the pooled fit, and the
log says so). Tags: favourite categories, price sensitivity (share of discounted orders),
average order value, preferred purchase hour (local), email engagement level (empty until the
email feedback loop provides engagement).

**Params**
- `as_of`: compute as of this instant (ISO 8601, UTC). Empty: the run's data interval end if it
  has one (a run with a logical date), else the instant the run was queued (`run_after`; an
  Asset-triggered run has no logical date): fixed per run, so a retry or a cleared run
  computes the same profiles.

**Reading the outcome.** `build_profiles` logs customers per market and stage, the model used
per market and the stage transitions of the run.
"""

from airflow.sdk import task

from remarketing.platform.assets import CUSTOMER_PROFILES, STORE_SNAPSHOT
from remarketing.platform.dag_parts import as_of_param, remarketing_dag
from remarketing.store.tasks import store_extract_and_validate


@remarketing_dag(
    schedule=STORE_SNAPSHOT,
    tags=["segments"],
    doc_md=__doc__,
    params={
        "as_of": as_of_param(
            "Compute profiles as of this instant (UTC); empty = the run's data interval end, "
            "or when the run was queued (an Asset-triggered run)."
        ),
    },
)
def lifecycle_segments():
    @task(outlets=[CUSTOMER_PROFILES])
    def build_profiles(
        validated: dict, params: dict | None = None, run_id: str | None = None, data_interval_end=None, dag_run=None
    ):
        """Stages, RFM, tags and predictions per customer; upserted, with transitions kept as history."""
        from remarketing.profiles.tasks import build_profiles, resolve_as_of

        as_of = resolve_as_of(
            params.get("as_of"), data_interval_end=data_interval_end, run_after=getattr(dag_run, "run_after", None)
        )
        return build_profiles(validated, run_id=run_id, as_of=as_of)

    build_profiles(store_extract_and_validate(tables=["customers", "products", "orders", "order_items"]))


lifecycle_segments()
