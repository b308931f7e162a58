"""
### Welcome series

Welcomes new members, market by market, in their language: one mail explaining what the
account brings (faster checkout, order tracking, early access, member offers), and optionally
a second one a few days later for members who have not ordered yet.

**Who gets what.**
1. `welcome/member`: customers registered within the last `lookback_days` days who have not
   had it. Once per customer, ever: the send ledger holds one key per customer for it, so a
   re-run, a retry or two overlapping runs send nothing new.
2. `welcome/reminder` (when `reminder` is on): `reminder_after_days` days after the welcome mail
   went out, only to members with no valid order since they registered; once per customer.

Both are marketing mail: the shared send step applies consent (where the market requires it),
suppressions, frequency caps, the deliverability gate and the send windows (a registration at
night is welcomed in the morning, local time).

**Flow.** `store` refreshes and validates customers and orders. `find_new_members` writes each
market's audience. `sync_suppressions` pulls SendGrid's suppressions and stats. `send_market`
runs once per market (the map index shows the market). `summarize` shows all markets.

**Params**
- `markets`: which markets to run (default all).
- `lookback_days`: how far back a registration still gets the welcome mail.
- `reminder`, `reminder_after_days`: the optional second mail.
- `dry_run`: audience, outcomes and one rendered sample per language into
  `$REMARKETING_DATA_BASE/outbox-dry-run/`; nothing claimed or sent.
- `as_of`: rehearsal on the outbox transport only: act as if it were that instant.
- `full_refresh`: re-read the store tables in full.

**Reading the outcome.** `find_new_members` logs how many registered, were already welcomed,
are due, and how many reminders were skipped because the member ordered. Each `send_market`
log ends with the outcome table; `summarize` shows all markets together.
"""

from airflow.sdk import Param, task

from remarketing.delivery.tasks import sync_suppressions
from remarketing.platform.dag_parts import (
    as_of_param,
    dry_run_param,
    full_refresh_param,
    markets_param,
    remarketing_dag,
)
from remarketing.store.tasks import store_extract_and_validate


@remarketing_dag(
    schedule="@hourly",
    tags=["send", "welcome"],
    doc_md=__doc__,
    params={
        "markets": markets_param(),
        "lookback_days": Param(
            14, type="integer", minimum=1, maximum=90, description="Registrations this recent get the welcome mail."
        ),
        "reminder": Param(True, type="boolean", description="Send the second mail to members who have not ordered."),
        "reminder_after_days": Param(
            3, type="integer", minimum=1, maximum=30, description="Days after the welcome mail for the reminder."
        ),
        "dry_run": dry_run_param("Compute and render samples, but claim and send nothing."),
        "as_of": as_of_param(),
        "full_refresh": full_refresh_param(),
    },
)
def welcome_series():
    @task
    def find_new_members(validated: dict, params: dict | None = None, run_id: str | None = None) -> list[dict]:
        """New registrations due the welcome mail, and members due the reminder, per market."""
        from remarketing.delivery.tasks import setup_errors_fail_the_task
        from remarketing.flows.welcome.tasks import find_welcome_audience

        with setup_errors_fail_the_task():
            return find_welcome_audience(validated, params=params, run_id=run_id)

    @task(map_index_template="{{ task.op_kwargs['job']['market'] }}", pool="remarketing_sends")
    def send_market(job: dict, params: dict | None = None, run_id: str | None = None, ti=None) -> dict:
        """Gate, windows, render (shared content), ledger, send for one market."""
        from remarketing.delivery.tasks import setup_errors_fail_the_task
        from remarketing.flows.welcome.tasks import send_welcome_market

        with setup_errors_fail_the_task():
            return send_welcome_market(job, run_id=run_id, try_number=ti.try_number, dry_run=params["dry_run"])

    @task
    def summarize(results: list[dict]) -> dict:
        """One table for all markets."""
        from remarketing.flows.welcome.tasks import summarize

        return summarize(list(results[:]))

    validated = store_extract_and_validate(tables=["customers", "orders"])
    jobs = find_new_members(validated)
    sent = send_market.expand(job=jobs)
    sync_suppressions() >> sent
    summarize(sent)


welcome_series()
