"""
### Lifecycle segments

Daily customer profiles: lifecycle stage, RFM, tags and a purchase prediction, per market.
Downstream DAGs (campaigns) are scheduled on the `customer_profiles` Asset this DAG updates.

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
- `as_of`: compute as of this instant (ISO 8601, UTC) instead of the run's data interval end.

**Reading the outcome.** `build_profiles` logs customers per market and stage, the model used
per market and the stage transitions of the run.
"""

from airflow.sdk import Asset, Param, dag, task

from remarketing.dag_defaults import START_DATE, default_args
from remarketing.dag_parts import store_extract_and_validate
from remarketing.notify import dag_failure_callback

CUSTOMER_PROFILES = Asset("customer_profiles")


@dag(
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=3),
    on_failure_callback=dag_failure_callback,
    tags=["remarketing", "segments"],
    doc_md=__doc__,
    params={
        "as_of": Param(
            None,
            type=["null", "string"],
            format="date-time",
            description="Compute profiles as of this instant (UTC); empty = the run's data interval end.",
        ),
    },
)
def lifecycle_segments():
    @task(outlets=[CUSTOMER_PROFILES])
    def build_profiles(validated: dict, params: dict | None = None, run_id: str | None = None, data_interval_end=None):
        """Stages, RFM, tags and predictions per customer; upserted, with transitions kept as history."""
        from datetime import UTC, datetime

        from remarketing.segments_run import build_profiles

        as_of = datetime.fromisoformat(params["as_of"]) if params.get("as_of") else data_interval_end
        as_of = datetime.now(UTC) if as_of is None else as_of.replace(tzinfo=as_of.tzinfo or UTC)
        return build_profiles(validated, run_id=run_id, as_of=as_of.astimezone(UTC))

    build_profiles(store_extract_and_validate(tables=["customers", "products", "orders", "order_items"]))


lifecycle_segments()
