"""
### Email feedback

Closes the loop: what happens to our mail after SendGrid took it refines customer profiles and
protects deliverability.

**Where events come from.** SendGrid's signed Event Webhook posts batches to the Airflow API
server (`POST /sendgrid/events`, the plugin in `plugins/sendgrid_webhook.py`). Each verified
batch is stored raw in the remarketing DB at once, and its hard bounces, spam reports and
unsubscribes are suppressed at once, before the next send. Unsigned, badly signed or stale
requests get 403 and store nothing.

**Flow (hourly).**
1. `sync_suppressions`: SendGrid's bounces, blocks, spam reports, invalid emails, unsubscribes
   and group unsubscribes, page by page from each list's high-water mark, and SendGrid's stats
   per market (category `market:<code>`) into `market_health`.
2. `fold_events`: every stored batch becomes rows of `email_events` (deduplicated by
   `sg_event_id`), joined to the send ledger through `custom_args.ledger_key`: each sent key
   gets its delivery outcome (`send_outcomes`); keys a cut-off send left `unknown` are
   reconciled; per customer engagement (opens, clicks, last open and click, bounce and complaint
   history) goes to `customer_engagement`, which `lifecycle_segments` turns into the profile's
   engagement level and the send steps into each customer's personal best hour; per market and
   day counts raise `market_health`.
3. `market_health`: each market's gate verdict from what is stored. A market whose complaint
   or bounce rate passes its halt threshold (`include/markets.yaml`, `deliverability`) stops at
   its next send run and says why.

**Params**
- `markets`: which markets' suppressions, stats and verdicts to handle (default all).

**Reading the outcome.** `fold_events` logs batches and events folded, new events by type,
duplicates, ledger outcomes reconciled and suppressions applied; `market_health` prints one line
per market: gate status, delivered, bounces, spam reports, opens, clicks and the rates.
"""

from airflow.sdk import Asset, task

from remarketing.delivery.tasks import sync_suppressions
from remarketing.platform.dag_parts import markets_param, remarketing_dag

EMAIL_FEEDBACK = Asset("email_feedback")


@remarketing_dag(
    schedule="@hourly",
    tags=["feedback", "deliverability"],
    doc_md=__doc__,
    params={
        "markets": markets_param("Markets whose suppressions, stats and gate verdicts to handle."),
    },
)
def email_feedback():
    @task
    def fold_events() -> dict:
        """Stored webhook batches into events, ledger outcomes, engagement and market health."""
        from remarketing.flows.feedback.tasks import fold_events

        return fold_events()

    @task(outlets=[EMAIL_FEEDBACK])
    def market_health(params: dict | None = None) -> list[dict]:
        """Each market's gate verdict from the stored health, as a table in the log."""
        from remarketing.flows.feedback.tasks import market_health_report

        return market_health_report(params["markets"])

    sync_suppressions() >> fold_events() >> market_health()


email_feedback()
