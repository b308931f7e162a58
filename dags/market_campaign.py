"""
### Market campaigns

Localized marketing campaigns to customer segments, market by market: from the trigger form, or
from the campaign calendar (`include/campaigns.yaml`) each time the customer profiles are fresh.

**Two ways to run.**
- *Trigger form*: fill in `campaign_id` and the audience, texts and options below. The run
  sends that campaign to the chosen markets on `send_date`.
- *Scheduled / empty `campaign_id`*: the calendar's campaigns whose local date is today or
  tomorrow in a market run there. Local-holiday campaigns take their day from the market's
  holiday calendar (`holiday:` with `days_before` where the market blocks holiday sends);
  the send windows decide the hour.

**What triggers it.** No clock of its own: every update of the `customer_profiles` Asset (a
successful `lifecycle_segments` run, itself started by the daily `store_snapshot`) starts a
calendar run, so campaigns target profiles computed minutes before. Plain Asset schedule, not
`AssetOrTimeSchedule` with a daily cron as a fallback: that cron fires every day *besides* the
Asset, so a normal day would have two calendar runs, the clock's one planned on yesterday's
profiles. A missed day loses no calendar campaign: each run takes the campaigns dated today
*or tomorrow*, so either of two consecutive daily runs schedules a campaign day. If the chain
stays stopped (`store_snapshot` paused, a broken feed: the failure alerts), trigger this DAG
with an empty `campaign_id` to run the calendar by hand. "Today" comes from the clock (or
`as_of`), never from a logical date, which an Asset-triggered run does not have.

**Who gets it.** Stored customer profiles (from `lifecycle_segments`) matching every criterion
given: lifecycle `stages`, `rfm_segments`, and/or `became` a stage within `within_days` days
("became at-risk in the last 7 days"). Then, per campaign: a fixed `holdout_share` is held out
as a control group (the same customers every round, recorded, never mailed); content rotation
gives each customer the first `variants` entry they have not had (a customer who had every
variant is skipped: `already_sent`, "had every variant"); `subject_b` puts `ab_share` of the
others on subject B (SendGrid category `step:b`). The shared send step then applies the
deliverability gate, suppressions, consent, frequency caps, send windows and the warm-up cap
exactly as for every flow.

**Params** (texts are `{"de": "...", "fr": "...", "en": "..."}` or one string for all;
every targeted market's main language must be present)
- `campaign_id`: lower-case letters, digits and dashes; empty = run the calendar.
- `markets`, `stages`, `rfm_segments`, `became`, `within_days`: the audience.
- `template`, `subject`, `preheader`, `content` (headline, paragraphs, cta_url, cta_label,
  hero_image_url...), `variants` (ids, each may override content), `subject_b`, `ab_share`,
  `holdout_share`.
- `send_date`: the local day to send on (empty = today); at most 72 h ahead.
- `dry_run`: audience, outcomes per market and reason, and one rendered sample per language
  and variant in `$REMARKETING_DATA_BASE/outbox-dry-run/`; nothing claimed or sent.
- `as_of`: rehearsal on the outbox transport only: act as if it were that instant.
- `full_refresh`: re-read the customers table in full.

**Reading the outcome.** `plan_campaigns` logs targets, holdout and rotation per campaign and
market. Each `send_market` (map index: market and campaign) logs its outcome table; `summarize`
shows every campaign and market together. Every member's outcome per run is in the
`campaign_members` table, every mail in `send_ledger` (with its variant and A/B arm).
"""

from __future__ import annotations

from airflow.sdk import TriggerRule, task

from remarketing.delivery.tasks import sync_suppressions
from remarketing.flows.campaigns.params import campaign_params
from remarketing.platform.assets import CUSTOMER_PROFILES
from remarketing.platform.dag_parts import remarketing_dag
from remarketing.store.tasks import store_extract_and_validate


@remarketing_dag(
    schedule=CUSTOMER_PROFILES,
    tags=["send", "campaign"],
    doc_md=__doc__,
    params=campaign_params(),
)
def market_campaign():
    @task
    def plan_campaigns(validated: dict, params: dict | None = None, run_id: str | None = None) -> list[dict]:
        """Targets, holdout, rotation and A/B arms per campaign and market; XCom: paths and counts."""
        from airflow.sdk.exceptions import AirflowFailException

        from remarketing.delivery.tasks import DeliverySetupError
        from remarketing.flows.campaigns.model import CampaignError
        from remarketing.flows.campaigns.tasks import plan_campaigns

        try:
            return plan_campaigns(validated, params=params, run_id=run_id)
        except (CampaignError, DeliverySetupError) as exc:
            raise AirflowFailException(str(exc)) from exc

    @task(map_index_template="{{ task.op_kwargs['job']['label'] }}", pool="remarketing_sends")
    def send_market(job: dict, params: dict | None = None, run_id: str | None = None, ti=None) -> dict:
        """Gate, windows, render (shared content), ledger, send for one market's campaigns."""
        from airflow.sdk.exceptions import AirflowFailException

        from remarketing.delivery.tasks import DeliverySetupError
        from remarketing.flows.campaigns.model import CampaignError
        from remarketing.flows.campaigns.tasks import send_campaign_market

        try:
            return send_campaign_market(job, run_id=run_id, try_number=ti.try_number, dry_run=params["dry_run"])
        except (CampaignError, DeliverySetupError) as exc:
            raise AirflowFailException(str(exc)) from exc

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def summarize(results: list[dict] | None = None) -> dict:
        """One table for all campaigns and markets."""
        from remarketing.flows.campaigns.tasks import summarize

        return summarize(list(results[:]) if results else [])

    validated = store_extract_and_validate(tables=["customers"])
    jobs = plan_campaigns(validated)
    sent = send_market.expand(job=jobs)
    sync_suppressions() >> sent
    summarize(sent)


market_campaign()
