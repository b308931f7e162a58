"""Airflow glue for the email_feedback DAG: fold webhook batches, report market health and gate verdicts.

Suppressions and SendGrid's per-market stats are synced by ``delivery_run.sync_suppressions_and_health``
(the same call the send DAGs make); this module folds the webhook's stored batches into the
remarketing DB and prints where each market stands, so a halted market is visible in the log
before the next send run stops it. XCom gets counts only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


def fold_events() -> dict[str, Any]:
    """Fold every stored webhook batch; logs the summary table, returns its counts."""
    from remarketing.flows.feedback.fold import fold_pending
    from remarketing.platform.clock import utcnow
    from remarketing.platform.connections import prepare_state, remarketing_engine

    prepare_state()
    engine = remarketing_engine()
    try:
        summary = fold_pending(engine, now=utcnow())
    finally:
        engine.dispose()
    print(summary.log_table())
    return summary.to_dict()


def market_health_report(markets: list[str]) -> list[dict[str, Any]]:
    """Each market's gate verdict over its window, from what is stored (no API call), as a table."""
    from remarketing.delivery.gate import check_market, health_totals
    from remarketing.markets import load_markets
    from remarketing.platform.clock import utcnow
    from remarketing.platform.connections import prepare_state, remarketing_engine

    prepare_state()
    config = load_markets()
    now = utcnow()
    engine = remarketing_engine()
    rows = []
    try:
        for code in markets:
            market = config[code]
            decision = check_market(engine, market, now=now)
            end = now.date()
            totals = health_totals(engine, code, end - timedelta(days=market.deliverability.window_days - 1), end)
            rows.append(
                {
                    "market": code,
                    "gate": decision.status,
                    "delivered": totals["delivered"],
                    "bounces": totals["bounces"],
                    "spam_reports": totals["spam_reports"],
                    "opens": totals["opens"],
                    "clicks": totals["clicks"],
                    "bounce_rate": decision.bounce_rate,
                    "complaint_rate": decision.complaint_rate,
                    "reasons": [r for r in decision.reasons if not r.startswith("warm-up")],
                }
            )
    finally:
        engine.dispose()
    print(health_table(rows))
    return rows


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def health_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "market health over each market's gate window",
        "  market  gate     delivered  bounces  spam  opens  clicks  bounce%  complaint%",
    ]
    for r in rows:
        lines.append(
            f"  {r['market']:<6}  {r['gate']:<7} {r['delivered']:>10} {r['bounces']:>8} {r['spam_reports']:>5} "
            f"{r['opens']:>6} {r['clicks']:>7} {_rate(r['bounce_rate']):>8} {_rate(r['complaint_rate']):>11}"
        )
        lines += [f"          {reason}" for reason in r["reasons"]]
    return "\n".join(lines)
