"""Airflow glue for the welcome_series DAG: find the members due a mail, send per market, summarize."""

from __future__ import annotations

from typing import Any

from remarketing.flows.welcome.audience import (
    DEFAULT_LOOKBACK_DAYS,
    DEFAULT_REMINDER_AFTER_DAYS,
    FLOW,
    STEPS,
    welcome_audience,
    welcome_history,
)


def find_welcome_audience(validated: dict, *, params: dict, run_id: str) -> list[dict]:
    """Who is due a welcome or reminder mail, per selected market; XCom: paths and counts."""
    from remarketing.delivery.tasks import resolve_now
    from remarketing.markets import load_markets
    from remarketing.platform.connections import remarketing_engine
    from remarketing.platform.storage import read_clean, run_folder, write_frame

    markets = load_markets()
    now = resolve_now(params.get("as_of"))
    selected = list(params.get("markets") or markets.codes)
    engine = remarketing_engine()
    try:
        history = welcome_history(engine)
    finally:
        engine.dispose()
    audience, counts = welcome_audience(
        read_clean(validated, "customers"),
        read_clean(validated, "orders"),
        history,
        now=now,
        markets=markets,
        selected=selected,
        lookback_days=int(params.get("lookback_days", DEFAULT_LOOKBACK_DAYS)),
        reminder=bool(params.get("reminder", True)),
        reminder_after_days=int(params.get("reminder_after_days", DEFAULT_REMINDER_AFTER_DAYS)),
    )
    print(
        f"as of {now.isoformat()}: registered within the window {counts['registered']}, already welcomed "
        f"{counts['already_welcomed']}, welcome due {counts['member_due']}; reminders due {counts['reminder_due']}, "
        f"skipped because they ordered {counts['reminder_ordered']}, already reminded {counts['reminder_done']}"
    )
    folder = run_folder("audiences", FLOW, run_id=run_id)
    jobs = []
    for code in selected:
        members = audience[audience["market"] == code]
        path = folder / f"market={code}.parquet"
        write_frame(members, path)
        steps = members["step"].value_counts().to_dict()
        jobs.append(
            {
                "market": code,
                "audience_path": str(path),
                "members": int(len(members)),
                "steps": {s: int(steps.get(s, 0)) for s in STEPS},
                "now": now.isoformat(),
                "rehearsal": bool(params.get("as_of")),
            }
        )
        print(f"  {code}: welcome {steps.get('member', 0)}, reminder {steps.get('reminder', 0)}")
    return jobs


def send_welcome_market(job: dict, *, run_id: str, try_number: int, dry_run: bool) -> dict[str, Any]:
    """One market's welcome and reminder mails through the shared send step; logs the outcome table."""
    from remarketing.delivery.tasks import market_sender
    from remarketing.flows.welcome.mail import welcome_renderer
    from remarketing.platform.storage import read_frame

    audience = read_frame(job["audience_path"])
    with market_sender(FLOW, job, run_id=run_id, try_number=try_number, dry_run=dry_run) as sender:
        render = welcome_renderer(sender.market, sender.secret)
        summary = sender.send(audience, render)
        result = summary.to_xcom()
        result["steps"] = job["steps"]
        if dry_run:
            result["samples_path"] = sender.samples(render, f"welcome/{sender.market.code}")
    return result


def summarize(results: list[dict]) -> dict:
    """All markets in one table: welcome and reminder mails due, and the outcomes."""
    from remarketing.delivery.tasks import outcome_table

    rows = [{**r, "values": {**r["steps"], **r["counts"]}} for r in results]
    lines, totals = outcome_table("welcome series, outcomes per market", ["member", "reminder"], rows)
    print("\n".join(lines))
    return {"outcomes": totals}
