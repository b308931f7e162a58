"""
### Cart recovery

Wins back abandoned carts with up to three mails, market by market.

**What counts as abandoned.** An open cart with items, whose owner we can reach (the
customer's address, or the address a guest left at checkout), idle past the step's delay, and
with no order placed since its last change, matched by customer *and products*: buying the same
things through another cart counts as converted. Only a person's most recent cart is mailed.

**The sequence** (delays, templates and thresholds in `include/flows.yaml`):
1. a few hours after the last change, a soft-sell mail that offers help and asks what could be
   better, with the support contacts;
2. about a day later, a reminder;
3. optionally, for carts above a value threshold, an incentive code.

A cart that converts leaves the sequence; conversion is checked again against the live store
right before the send. An unsubscribed or bounced address is suppressed.

**Flow.** `store` refreshes and validates the store mirror (a broken feed stops the run here,
before any email). `find_abandoned_carts` writes each market's audience. `sync_suppressions`
pulls SendGrid's suppressions and stats. `send_market` runs once per market (the map index
shows the market): deliverability gate, send windows (local time, quiet hours, holidays, best
hour), re-check, render, send ledger, send. A halted market sends nothing and says why; the
others go on. `attribute_revenue` credits orders placed within the attribution window to the
latest recovery mail before them.

**Params**
- `markets`: which markets to run (default all configured).
- `dry_run`: compute audiences and outcomes and render, but claim and send nothing.
- `full_refresh`: re-read the store tables in full instead of incrementally.
- `as_of`: a rehearsal on the outbox transport, acting as if it were that instant (to see
  steps 2 and 3 without waiting days). Refused with the SendGrid transport.

**Reading the outcome.** Each `send_market` log ends with a table: audience, sent, scheduled,
suppressed, capped, gated, no consent, outside window, converted, failed. `summarize` shows
all markets together with recovered revenue per market and step. Every mail is in the
`send_ledger` table of the remarketing DB; the outbox transport (the embedded default) writes
each mail to `$REMARKETING_DATA_BASE/outbox/` with an `index.html` to browse them.
"""

from airflow.sdk import Asset, task

from remarketing.delivery.tasks import sync_suppressions
from remarketing.platform.dag_defaults import STORE_TABLES, recovery_schedule
from remarketing.platform.dag_parts import (
    as_of_param,
    dry_run_param,
    full_refresh_param,
    markets_param,
    remarketing_dag,
)
from remarketing.store.tasks import store_extract_and_validate

CART_RECOVERY = Asset("cart_recovery")


@remarketing_dag(
    schedule=recovery_schedule(),
    tags=["send", "cart-recovery"],
    doc_md=__doc__,
    params={
        "markets": markets_param(),
        "dry_run": dry_run_param(),
        "full_refresh": full_refresh_param(),
        "as_of": as_of_param(),
    },
)
def cart_recovery():
    @task
    def find_abandoned_carts(validated: dict, params: dict | None = None, run_id: str | None = None) -> list[dict]:
        """Scan the validated carts; write each market's audience. XCom: paths and counts."""
        from remarketing.delivery.tasks import setup_errors_fail_the_task
        from remarketing.flows.cart_recovery.tasks import find_abandoned_carts

        with setup_errors_fail_the_task():
            return find_abandoned_carts(validated, markets=params["markets"], run_id=run_id, as_of=params["as_of"])

    @task(map_index_template="{{ task.op_kwargs['job']['market'] }}", pool="remarketing_sends")
    def send_market(job: dict, params: dict | None = None, run_id: str | None = None, ti=None) -> dict:
        """Gate, windows, re-check, render, ledger, send for one market; logs its outcome table."""
        from remarketing.delivery.tasks import setup_errors_fail_the_task
        from remarketing.flows.cart_recovery.tasks import send_recovery_market

        with setup_errors_fail_the_task():
            return send_recovery_market(job, run_id=run_id, try_number=ti.try_number, dry_run=params["dry_run"])

    @task
    def attribute_revenue(validated: dict, run_id: str | None = None) -> list[dict]:
        """Credit orders placed after a recovery mail to it (last touch, within the window)."""
        from remarketing.flows.cart_recovery.tasks import attribute_revenue

        return attribute_revenue(validated, run_id=run_id)

    @task(outlets=[CART_RECOVERY])
    def summarize(results: list[dict], revenue: list[dict]) -> dict:
        """One table for all markets: outcomes and recovered revenue."""
        from remarketing.flows.cart_recovery.tasks import summarize

        return summarize(list(results[:]), revenue)

    validated = store_extract_and_validate(tables=list(STORE_TABLES))
    jobs = find_abandoned_carts(validated)
    sent = send_market.expand(job=jobs)
    sync_suppressions() >> sent
    summarize(sent, attribute_revenue(validated))


cart_recovery()
