"""A day of remarketing for the Remarketing page's tests, written through the project's own writers.

Send runs go in with ``ledger.record_send_run`` (a retried run, a dry run, a run of the day
before), their mails through the ledger protocol (claim, mark_sending, record_results), market
statistics with ``gate.refresh_market_health`` from a SendGrid-shaped stats source, recovered
orders with ``recovery_store.record_attributions``; delivery outcomes are rows of
``send_outcomes`` as the feedback fold leaves them. ``SCENARIO`` is the input; ``expected``
derives what the page must show from it, so the tests compare the page with the data written.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pandas as pd
import sqlalchemy as sa

from remarketing.delivery import ledger
from remarketing.delivery.engagement import send_outcomes
from remarketing.delivery.gate import refresh_market_health
from remarketing.delivery.ledger import ClaimContext
from remarketing.delivery.messages import SendResult
from remarketing.flows.cart_recovery.store import record_attributions

# Per market: the day's send runs (flow, run id, try -> outcome counts), the fate of the mails
# accepted in the last try, SendGrid's stats over the gate window, and recovered orders.
SCENARIO = {
    "DE": {
        "runs": [
            ("cart_recovery", "scheduled__r1", 1, {"sent": 30, "failed": 15, "suppressed": 3, "capped": 5}),
            # The retry reports the whole audience again (earlier tries included): only it counts.
            (
                "cart_recovery",
                "scheduled__r1",
                2,
                {"sent": 40, "scheduled": 5, "suppressed": 3, "invalid_address": 1, "capped": 5, "outside_window": 2},
            ),
            ("welcome_series", "scheduled__w1", 1, {"sent": 12, "no_consent": 4, "already_sent": 2}),
        ],
        "fates": {"delivered": 50, "opened": 21, "clicked": 8, "bounced": 2, "complained": 1},
        "stats": {"delivered": 1000, "bounces": 10, "spam_reports": 0},
        "orders": [Decimal("59.90"), Decimal("24.50"), Decimal("39.05")],
        "gate": "open",
    },
    "FR": {
        "runs": [("cart_recovery", "scheduled__r1", 1, {"gated": 30})],
        "fates": {},
        "stats": {"delivered": 1000, "bounces": 100, "spam_reports": 0},
        "orders": [],
        "gate": "halted",
    },
    "GB": {
        "runs": [("cart_recovery", "scheduled__r1", 1, {"sent": 7, "capped": 1})],
        "fates": {"delivered": 7, "opened": 3, "clicked": 1},
        "stats": {"delivered": 2000, "bounces": 10, "spam_reports": 3},
        "orders": [Decimal("15.00")],
        "gate": "warn",
    },
    "US": {"runs": [], "fates": {}, "stats": {"delivered": 40, "bounces": 5}, "orders": [], "gate": "open"},
}
CURRENCY = {"DE": "EUR", "FR": "EUR", "GB": "GBP", "US": "USD"}


STAT_DAYS = {"US": 1}  # days of SendGrid stats up to the seeded day; others: the whole gate window (7)


class _Stats:
    """What SendGridApi.category_stats returns: one row per category and day.

    Delivered volume varies by day (so the trend charts have a shape) within bounds that keep
    each market's gate status the one ``SCENARIO`` names.
    """

    def __init__(self, day: date):
        self.day = day

    def category_stats(self, categories, start, end):
        for category in categories:
            code = category.split(":", 1)[1]
            stats = SCENARIO.get(code, {}).get("stats")
            for back in range(STAT_DAYS.get(code, 7)) if stats else ():
                current = self.day - timedelta(days=back)
                if start <= current <= end:
                    delivered = round(stats["delivered"] * (1 + 0.2 * (back % 3 - 1)))
                    yield {"category": category, "date": current, **stats, "delivered": delivered}


def _mails(engine, ctx: ClaimContext, count: int, scheduled: int, now: datetime) -> list[str]:
    keys = [f"{ctx.flow}/{ctx.market}/c{i}/s{i}/1" for i in range(count)]
    frame = pd.DataFrame(
        {
            "ledger_key": keys,
            "kind": "recovery" if ctx.flow == "cart_recovery" else "welcome",
            "step": "1",
            "customer_ref": [f"c{i}" for i in range(count)],
            "customer_id": None,
            "subject_kind": "cart",
            "subject_id": [f"{i}" for i in range(count)],
            "variant": "v1",
            "send_at": [now + timedelta(hours=3) if i < scheduled else pd.NaT for i in range(count)],
        }
    )
    held = sorted(ledger.claim(engine, ctx, frame, now=now))
    ledger.mark_sending(engine, ctx, held, now=now)
    ledger.record_results(engine, ctx, [SendResult(tuple(held), "accepted", 202, None, 1)], now=now)
    return held


def seed_day(engine: sa.Engine, markets, day: date) -> None:
    """Write ``SCENARIO`` for ``day`` (UTC), plus the noise the page must leave out."""
    noon = datetime.combine(day, time(12), tzinfo=UTC)
    for code, spec in SCENARIO.items():
        accepted: list[tuple[str, ClaimContext]] = []
        for index, (flow, run_id, try_number, counts) in enumerate(spec["runs"]):
            at = noon - timedelta(hours=4) + timedelta(minutes=30 * index)
            ctx = ClaimContext(f"{run_id}_{day}", code, try_number, flow)
            last_try = all(not (f == flow and r == run_id and t > try_number) for f, r, t, _ in spec["runs"])
            if last_try and counts.get("sent", 0) + counts.get("scheduled", 0):
                keys = _mails(
                    engine, ctx, counts.get("sent", 0) + counts.get("scheduled", 0), counts.get("scheduled", 0), at
                )
                accepted += [(key, ctx) for key in keys]
            gate = "halted" if "gated" in counts else "open"
            ledger.record_send_run(engine, ctx, counts, batch_id=None, gate_status=gate, dry_run=False, now=at)
        fates = spec["fates"]
        rows = []
        for i, (key, ctx) in enumerate(accepted):
            row = {
                "ledger_key": key,
                "customer_ref": key.split("/")[2],
                "market": code,
                "delivery": "delivered",
                "run_id": ctx.run_id,  # as the fold copies them from the ledger
                "flow": ctx.flow,
            }
            for fate, column in (
                ("delivered", "delivered_at"),
                ("opened", "opened_at"),
                ("clicked", "clicked_at"),
                ("complained", "complained_at"),
            ):
                row[column] = noon if i < fates.get(fate, 0) else None
            bounced = len(accepted) - fates.get("bounced", 0) <= i
            row["bounced_at"] = noon if bounced else None
            if bounced:
                row["delivery"] = "bounced"
            rows.append({**row, "processed_at": noon, "unsubscribed_at": None, "updated_at": noon})
        if rows:
            with engine.begin() as conn:
                conn.execute(sa.insert(send_outcomes), rows)
        orders = [
            {
                "order_id": 1000 * (list(SCENARIO).index(code) + 1) + i,
                "customer_id": i + 1,
                "market": code,
                "step": 1,
                "cart_id": 500 + i,
                "sent_at": pd.Timestamp(noon - timedelta(hours=20)),
                "placed_at": pd.Timestamp(noon + timedelta(hours=i)),
                "currency": CURRENCY[code],
                "revenue": float(amount),
            }
            for i, amount in enumerate(spec["orders"])
        ]
        if orders:
            record_attributions(engine, pd.DataFrame(orders), run_id=f"scheduled__attr_{day}")

    # Noise: a dry run and a run of the day before, an order placed the day before.
    dry = ClaimContext(f"manual__dry_{day}", "DE", 1, "market_campaign")
    ledger.record_send_run(engine, dry, {"sent": 500}, batch_id=None, gate_status="open", dry_run=True, now=noon)
    before = ClaimContext(f"scheduled__r0_{day}", "DE", 1, "cart_recovery")
    yesterday = noon - timedelta(days=1)
    ledger.record_send_run(
        engine, before, {"sent": 77}, batch_id=None, gate_status="open", dry_run=False, now=yesterday
    )
    old_order = {
        "order_id": 999999,
        "customer_id": 1,
        "market": "DE",
        "step": 1,
        "cart_id": 1,
        "sent_at": pd.Timestamp(yesterday - timedelta(hours=5)),
        "placed_at": pd.Timestamp(yesterday),
        "currency": "EUR",
        "revenue": 999.0,
    }
    record_attributions(engine, pd.DataFrame([old_order]), run_id="scheduled__attr_before")
    seeded = [m for m in markets if m.code in SCENARIO]
    refresh_market_health(engine, _Stats(day), seeded, day - timedelta(days=6), day, now=noon)


def expected(code: str) -> dict:
    """What the page must show for ``code``: the funnel from the last tries, fates, revenue, gate."""
    spec = SCENARIO.get(code, {"runs": [], "fates": {}, "orders": [], "gate": "open"})
    last: dict[tuple[str, str], tuple[int, dict]] = {}
    for flow, run_id, try_number, counts in spec["runs"]:
        if (flow, run_id) not in last or last[(flow, run_id)][0] < try_number:
            last[(flow, run_id)] = (try_number, counts)
    outcomes: dict[str, int] = {}
    for _try, counts in last.values():
        for name, count in counts.items():
            outcomes[name] = outcomes.get(name, 0) + count

    def total(*names):
        return sum(outcomes.get(n, 0) for n in names)

    fates = spec["fates"]
    return {
        "funnel": {
            "eligible": sum(outcomes.values()),
            "suppressed": total("suppressed", "invalid_address", "no_consent"),
            "capped": total("capped", "already_sent"),
            "gated": total("gated"),
            "not_sendable": total("outside_window", "converted", "failed", "unknown"),
            "scheduled": total("scheduled"),
            "sent": total("sent"),
            "delivered": fates.get("delivered", 0),
            "opened": fates.get("opened", 0),
            "clicked": fates.get("clicked", 0),
        },
        "bounced": fates.get("bounced", 0),
        "complained": fates.get("complained", 0),
        "revenue": sum(spec["orders"], Decimal("0")),
        "orders": len(spec["orders"]),
        "gate": spec["gate"],
    }
