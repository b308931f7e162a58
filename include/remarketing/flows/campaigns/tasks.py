"""Airflow glue for the market_campaign DAG: plan (targets, holdout, rotation), per-market send, summary.

Tasks pass Parquet paths and counts through XCom, never rows. Each market's send goes through
the shared send step (flow ``market_campaign``, kind marketing) with shared content: one render
per (locale, variant, subject arm), each recipient's greeting and unsubscribe link as SendGrid
substitutions, so the SendGrid transport packs up to 1,000 recipients into one request.

One mapped send task per market runs that market's campaigns one after the other (a calendar
day may hold several), so the frequency caps see the first campaign's claims before the second
is judged. Each campaign sends under its own ledger run id (``<run id>~<campaign id>``): its
claims, batch id and retry take-over never mix with another campaign's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from remarketing.flows.campaigns.model import FLOW, HOLDOUT, PRESEND_OUTCOMES, Campaign, CampaignError
from remarketing.platform.storage import read_frame, write_frame


def send_run_id(run_id: str, campaign_id: str) -> str:
    """The ledger's run id for one campaign of an Airflow run."""
    return f"{run_id}~{campaign_id}"


# --- shared-content rendering (campaigns and the welcome series) -----------------------------------


# --- plan ----------------------------------------------------------------------------------------


def _send_date(value: str | None, market, now: datetime) -> date:
    from remarketing.flows.campaigns.model import local_today

    return date.fromisoformat(value) if value else local_today(market, now)


def plan_campaigns(validated: dict, *, params: Mapping[str, Any], run_id: str) -> list[dict]:
    """Which campaigns run in which markets today; writes each (campaign, market) audience. XCom: paths and counts."""
    from remarketing.delivery.tasks import resolve_now
    from remarketing.markets import load_markets
    from remarketing.platform.connections import remarketing_engine
    from remarketing.platform.storage import read_clean

    markets = load_markets()
    now = resolve_now(params.get("as_of"))
    planned, calendar = _planned(params, markets, now)
    customers = read_clean(validated, "customers")
    engine = remarketing_engine()
    jobs: dict[str, dict] = {}
    try:
        profiles = _profiles_by_market(engine, sorted({code for _, code, _ in planned}))
        for campaign, code, send_date in planned:
            entry = _plan_one(
                engine, campaign, markets[code], send_date, profiles=profiles, customers=customers, now=now,
                calendar=calendar, dry_run=bool(params.get("dry_run")), run_id=run_id,
            )  # fmt: skip
            job = jobs.setdefault(
                code,
                {"market": code, "now": now.isoformat(), "rehearsal": bool(params.get("as_of")), "campaigns": []},
            )
            job["campaigns"].append(entry)
    finally:
        engine.dispose()
    for job in jobs.values():
        job["label"] = f"{job['market']} · " + ", ".join(c["campaign"]["campaign_id"] for c in job["campaigns"])
    return [jobs[code] for code in sorted(jobs)]


def _planned(params: Mapping[str, Any], markets, now) -> tuple[list[tuple], bool]:
    """(campaign, market code, send date) pairs from the trigger form or the calendar, checked before any send."""
    from remarketing.flows.campaigns.audience import send_horizon
    from remarketing.flows.campaigns.calendar import due_campaigns, load_calendar
    from remarketing.flows.campaigns.mail import check_localized
    from remarketing.flows.campaigns.model import campaign_from_params

    selected = list(params.get("markets") or markets.codes)
    if params.get("campaign_id"):
        campaign = campaign_from_params({**params, "markets": selected})
        planned = [(campaign, code, _send_date(params.get("send_date"), markets[code], now)) for code in selected]
        source = "trigger form"
    else:
        due = due_campaigns(load_calendar(markets=markets), markets, now, only=selected)
        planned = [(d.campaign, d.market, d.send_date) for d in due]
        source = "calendar"
    print(f"{source}: {len(planned)} campaign-market pair(s) as of {now.isoformat()}")
    for campaign in {c.campaign_id: c for c, _, _ in planned}.values():
        for note in check_localized(campaign, markets):
            print(f"  {campaign.campaign_id}: {note}")
    for _campaign, code, send_date in planned:
        send_horizon(send_date, markets[code], now)  # a past or too-distant date fails here, before any send
    return planned, source == "calendar"


def _profiles_by_market(engine, codes: list[str]) -> dict:
    """Stored profiles of the planned markets; none at all means lifecycle_segments never ran."""
    from remarketing.profiles.store import load_profiles

    if not codes:
        return {}
    profiles = {code: frame for code, frame in load_profiles(engine, markets=codes).groupby("market")}
    if not profiles:
        raise CampaignError(f"no customer profiles for {', '.join(codes)}: run the lifecycle_segments DAG first")
    return profiles


def _plan_one(engine, campaign, market, send_date, *, profiles, customers, now, calendar, dry_run, run_id) -> dict:
    """One (campaign, market): targets, history, audience and skipped members to Parquet; the job entry."""
    import pandas as pd

    from remarketing.flows.campaigns.audience import campaign_audience, select_targets
    from remarketing.flows.campaigns.store import had_calendar_date, pin_variants, variant_history
    from remarketing.platform.storage import run_folder
    from remarketing.profiles.store import transitions_since

    code = market.code
    columns = ["customer_id", "market", "stage", "rfm_segment", "preferred_purchase_hour", "monetary"]
    mine = profiles.get(code, pd.DataFrame(columns=columns))
    transitions = None
    if campaign.became:
        since = now - timedelta(days=campaign.within_days)
        transitions = transitions_since(
            engine, to_stage=campaign.became, since=since, markets=[code], current_only=True
        )
    targets = select_targets(mine, campaign, transitions)
    had = variant_history(engine, campaign.campaign_id, targets["customer_id"])
    # One calendar date is one round: whoever an earlier run scheduled it for is done.
    had_this_date = had_calendar_date(engine, campaign.campaign_id, market, send_date) if calendar else set()
    if not dry_run:
        pin_variants(engine, campaign, run_id=run_id, now=now)
    members = campaign_audience(
        campaign=campaign, market=market, targets=targets, customers=customers, had=had,
        send_date=send_date, now=now, had_this_date=had_this_date,
    )  # fmt: skip
    folder = run_folder("audiences", FLOW, campaign.campaign_id, run_id=run_id)
    audience_path = folder / f"market={code}.parquet"
    skipped_path = folder / f"market={code}-skipped.parquet"
    write_frame(members.audience, audience_path)
    write_frame(members.skipped, skipped_path)
    counts = members.counts()
    variants = members.audience["variant"].value_counts().to_dict()
    print(
        f"  {code} {campaign.campaign_id} on {send_date.isoformat()}: targets {len(targets)}, "
        f"to the send step {len(members.audience)}, held out {counts[HOLDOUT]}, "
        f"already had it {counts['already_sent']}, no store row {counts['invalid_address']}; "
        f"variants {variants}"
    )
    return {
        "campaign": campaign.model_dump(mode="json"),
        "send_date": send_date.isoformat(),
        "audience_path": str(audience_path),
        "skipped_path": str(skipped_path),
        "targets": int(len(targets)),
        "audience": int(len(members.audience)),
    }


# --- send ----------------------------------------------------------------------------------------


def _members(skipped, outcomes_path: str | None):
    """Every member's outcome: the pre-send ones and the send step's (its latest try's file)."""
    import pandas as pd

    frames = [
        skipped.rename(columns={"variant": "variant_id"})[["customer_id", "outcome", "reason", "variant_id", "arm"]]
    ]
    if outcomes_path:
        sent = read_frame(outcomes_path)
        if len(sent):
            frames.append(
                pd.DataFrame(
                    {
                        "customer_id": pd.to_numeric(sent["customer_id"]).astype("int64"),
                        "outcome": sent["outcome"],
                        "reason": sent["reason"],
                        "variant_id": sent["variant"],
                        "arm": sent["arm"],
                    }
                )
            )
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["customer_id", "outcome", "reason", "variant_id", "arm"])
    return pd.concat(frames, ignore_index=True)


def send_campaign_market(job: dict, *, run_id: str, try_number: int, dry_run: bool) -> dict:
    """One market's campaigns, one after the other, through the shared send step; logs the outcome tables."""
    from remarketing.content.renderer import MailRenderer
    from remarketing.delivery.send_step import OUTCOMES
    from remarketing.delivery.tasks import market_sender
    from remarketing.flows.campaigns.audience import send_horizon
    from remarketing.flows.campaigns.mail import campaign_renderer
    from remarketing.flows.campaigns.store import record_members

    renderer = MailRenderer()
    results = []
    with market_sender(FLOW, job, run_id=run_id, try_number=try_number, dry_run=dry_run) as sender:
        market, now = sender.market, sender.now
        for planned in job["campaigns"]:
            campaign = Campaign(**planned["campaign"])
            audience = read_frame(planned["audience_path"])
            skipped = read_frame(planned["skipped_path"])
            horizon = send_horizon(date.fromisoformat(planned["send_date"]), market, now, audience["time_zone"])
            render = campaign_renderer(campaign, market, sender.secret, renderer)
            summary = sender.send(
                audience,
                render,
                run_id=send_run_id(run_id, campaign.campaign_id),
                horizon=horizon,
                header=f"campaign {campaign.campaign_id}, send date {planned['send_date']}",
            )
            counts = {HOLDOUT: 0, **summary.counts}
            for outcome in PRESEND_OUTCOMES:
                counts[outcome] = counts.get(outcome, 0) + int((skipped["outcome"] == outcome).sum())
            members = _members(skipped, summary.outcomes_path)
            if len(members) != len(audience) + len(skipped):
                raise AssertionError(
                    f"campaign {campaign.campaign_id} market {market.code}: {len(members)} outcomes for "
                    f"{len(audience) + len(skipped)} members"
                )
            if not dry_run:
                record_members(sender.engine, campaign.campaign_id, market.code, run_id, members, now=now)
            samples = sender.samples(render, f"{campaign.campaign_id}/{market.code}")
            print(f"  {'holdout'.ljust(max(map(len, OUTCOMES)))}  {counts[HOLDOUT]}")
            skipped_reasons = skipped.groupby(["outcome", "reason"]).size()
            for (outcome, reason), n in skipped_reasons.items():
                print(f"  before the send step: {outcome} ({reason}): {n}")
            results.append(
                {
                    "campaign_id": campaign.campaign_id,
                    "market": market.code,
                    "send_date": planned["send_date"],
                    "dry_run": dry_run,
                    "members": int(len(members)),
                    "counts": counts,
                    "gate": summary.gate,
                    "outcomes_path": summary.outcomes_path,
                    "samples_path": samples,
                    "messages": len(render._mails),
                }
            )
    return {"market": market.code, "campaigns": results}


def summarize(results: list[dict]) -> dict:
    """All campaigns and markets in one table of outcomes."""
    from remarketing.delivery.send_step import OUTCOMES

    shown = ["members", HOLDOUT, *OUTCOMES]
    rows = sorted((c for r in results for c in r["campaigns"]), key=lambda c: (c["campaign_id"], c["market"]))
    lines = [
        "market campaigns, outcomes per campaign and market" + (" (dry run)" if any(r["dry_run"] for r in rows) else "")
    ]
    lines.append("  " + "campaign".ljust(24) + "market".ljust(8) + "".join(o.rjust(len(o) + 1) for o in shown))
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        values = {"members": row["members"], **row["counts"]}
        mine = totals.setdefault(row["campaign_id"], {})
        for key, value in values.items():
            mine[key] = mine.get(key, 0) + int(value)
        gate = "" if row["gate"]["status"] == "open" else f"  gate {row['gate']['status']}"
        lines.append(
            "  " + row["campaign_id"][:23].ljust(24) + row["market"].ljust(8)
            + "".join(str(values.get(o, 0)).rjust(len(o) + 1) for o in shown) + gate
        )  # fmt: skip
    for campaign_id, values in sorted(totals.items()):
        lines.append(
            "  "
            + campaign_id[:23].ljust(24)
            + "all".ljust(8)
            + "".join(str(values.get(o, 0)).rjust(len(o) + 1) for o in shown)
        )
    if not rows:
        lines.append("  no campaign due")
    print("\n".join(lines))
    return {"campaigns": totals, "rows": len(rows)}
