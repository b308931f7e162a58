"""The Remarketing page's numbers: per market, one UTC day's funnel, the gate and its rates.

Everything comes from the remarketing DB that the DAGs write; nothing here writes. Per market:

* the **funnel** of the day's send runs (``send_runs``, dry runs left out): for each run, flow
  and market only the last try counts, because a retry reports what its earlier tries did, so
  its counts cover the whole audience. Audience (eligible) → suppressed (suppression lists,
  invalid address, no consent) / capped (frequency and warm-up caps, already sent) / gated
  (deliverability gate halted) / not sendable (outside every send window, converted, failed,
  outcome unknown) → scheduled → sent;
* what became of those runs' mails (``send_outcomes``, which the ``email_feedback`` DAG folds
  from SendGrid's events, by run): delivered, opened, clicked, bounced, spam complaints;
* **recovered revenue**: orders placed that day that ``cart_recovery`` credited to a recovery
  mail (``recovery_attributions``), per currency;
* the **gate** as the send step would judge it now (``gate.check_market`` on the stored stats:
  sender authentication, bounce and complaint rates over the trailing window against the
  market's warn and halt thresholds, warm-up cap left today), and the status each flow's last
  run of the day saw;
* daily bounce and complaint rates over the trailing weeks (``market_health``), for the trend.

Counts only: no address, name or customer id leaves this module.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import sqlalchemy as sa

from remarketing.delivery.engagement import send_outcomes
from remarketing.delivery.gate import GateDecision, check_market, market_health
from remarketing.delivery.ledger import send_runs
from remarketing.flows.cart_recovery.store import recovery_attributions
from remarketing.markets import Market, MarketConfig

# Funnel groups of the send step's outcomes (remarketing.delivery.send_step.OUTCOMES).
SUPPRESSED = ("suppressed", "invalid_address", "no_consent")
CAPPED = ("capped", "already_sent")
NOT_SENDABLE = ("outside_window", "converted", "failed", "unknown")
ENGAGEMENT = ("delivered", "opened", "clicked", "bounced", "complained")
TREND_DAYS = 14


@dataclass
class FlowDay:
    """One flow's send runs in a market on the day."""

    flow: str
    runs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    gate_status: str | None = None  # what the flow's last run of the day saw

    @property
    def audience(self) -> int:
        return sum(self.outcomes.values())


@dataclass
class Rate:
    """A deliverability rate over the gate's window against the market's thresholds."""

    name: str
    value: float | None  # None: nothing delivered in the window
    warn: float
    halt: float
    judged: bool = True  # False: too few mails delivered in the window for the gate to judge it

    @property
    def level(self) -> str:
        if self.value is None or not self.judged:
            return "none"
        if self.value >= self.halt:
            return "halt"
        return "warn" if self.value >= self.warn else "ok"


@dataclass
class TrendDay:
    day: date
    delivered: int
    bounce_rate: float | None
    complaint_rate: float | None


@dataclass
class MarketDay:
    """Everything the page shows for one market on one day."""

    code: str
    name: str
    currency: str
    outcomes: dict[str, int]
    engagement: dict[str, int]
    revenue: dict[str, Decimal]  # currency -> recovered revenue
    recovered_orders: int
    flows: list[FlowDay]
    gate: GateDecision
    rates: list[Rate]
    window_days: int
    min_delivered: int
    warmup_cap: int
    trend: list[TrendDay]

    def outcome(self, *names: str) -> int:
        return sum(self.outcomes.get(n, 0) for n in names)

    @property
    def funnel(self) -> dict[str, int]:
        """The funnel stages, in order (see the module docstring)."""
        return {
            "eligible": sum(self.outcomes.values()),
            "suppressed": self.outcome(*SUPPRESSED),
            "capped": self.outcome(*CAPPED),
            "gated": self.outcome("gated"),
            "not_sendable": self.outcome(*NOT_SENDABLE),
            "scheduled": self.outcome("scheduled"),
            "sent": self.outcome("sent"),
            "delivered": self.engagement["delivered"],
            "opened": self.engagement["opened"],
            "clicked": self.engagement["clicked"],
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["funnel"] = self.funnel
        data["revenue"] = {currency: str(amount) for currency, amount in self.revenue.items()}
        data["rates"] = [{**asdict(rate), "level": rate.level} for rate in self.rates]
        data["trend"] = [{**asdict(t), "day": t.day.isoformat()} for t in self.trend]
        data["flows"] = [{**asdict(f), "audience": f.audience} for f in self.flows]
        return data


@dataclass
class Dashboard:
    day: date
    generated_at: datetime
    markets: list[MarketDay]
    dry_runs: int  # dry-run send runs on the day, left out of the funnel

    @property
    def totals(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for market in self.markets:
            for stage, value in market.funnel.items():
                totals[stage] += value
        return dict(totals)

    def to_dict(self) -> dict:
        return {
            "day": self.day.isoformat(),
            "generated_at": self.generated_at.isoformat(),
            "dry_runs": self.dry_runs,
            "totals": self.totals,
            "markets": [m.to_dict() for m in self.markets],
        }


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _last_tries(conn: sa.Connection, start: datetime, end: datetime) -> list[sa.Row]:
    """``send_runs`` rows of each (run, flow, market)'s last try, when that try was recorded on the day."""
    r = send_runs.c
    last = (
        sa.select(r.run_id, r.flow, r.market, sa.func.max(r.try_number).label("try_number"))
        .where(r.dry_run.is_(False))
        .group_by(r.run_id, r.flow, r.market)
        .subquery()
    )
    query = (
        sa.select(r.run_id, r.flow, r.market, r.outcome, r.count, r.gate_status, r.recorded_at)
        .join(
            last,
            sa.and_(
                r.run_id == last.c.run_id,
                r.flow == last.c.flow,
                r.market == last.c.market,
                r.try_number == last.c.try_number,
            ),
        )
        .where(r.dry_run.is_(False), r.recorded_at >= start, r.recorded_at < end)
        .order_by(r.recorded_at)
    )
    return conn.execute(query).all()


def _dry_runs(conn: sa.Connection, start: datetime, end: datetime) -> int:
    r = send_runs.c
    keys = (
        sa.select(r.run_id, r.flow, r.market)
        .where(r.dry_run.is_(True), r.recorded_at >= start, r.recorded_at < end)
        .distinct()
        .subquery()
    )
    return int(conn.execute(sa.select(sa.func.count()).select_from(keys)).scalar() or 0)


def _engagement(conn: sa.Connection, runs: set[tuple[str, str, str]]) -> dict[str, dict[str, int]]:
    """Per market: the day's mails that were delivered, opened, clicked, bounced, reported as spam.

    Read from ``send_outcomes`` by run (index run_id, market): the fold copies each mail's run
    and flow from the ledger, so only the day's outcomes are read.
    """
    result: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ENGAGEMENT, 0))
    if not runs:
        return result
    out = send_outcomes.c
    columns = {
        "delivered": out.delivered_at,
        "opened": out.opened_at,
        "clicked": out.clicked_at,
        "bounced": out.bounced_at,
        "complained": out.complained_at,
    }
    run_ids = sorted({run_id for run_id, _flow, _market in runs})
    for offset in range(0, len(run_ids), 500):
        query = (
            sa.select(out.run_id, out.flow, out.market, *(sa.func.count(c).label(n) for n, c in columns.items()))
            .where(out.run_id.in_(run_ids[offset : offset + 500]))
            .group_by(out.run_id, out.flow, out.market)
        )
        for row in conn.execute(query):
            if (row.run_id, row.flow, row.market) not in runs:
                continue  # a flow or market whose last try was recorded on another day
            for name in ENGAGEMENT:
                result[row.market][name] += int(getattr(row, name))
    return result


def _revenue(conn: sa.Connection, start: datetime, end: datetime) -> dict[str, tuple[dict[str, Decimal], int]]:
    a = recovery_attributions.c
    query = (
        sa.select(a.market, a.currency, sa.func.sum(a.revenue), sa.func.count())
        .where(a.placed_at >= start, a.placed_at < end)
        .group_by(a.market, a.currency)
    )
    result: dict[str, tuple[dict[str, Decimal], int]] = {}
    for market, currency, revenue, orders in conn.execute(query):
        amounts, count = result.get(market, ({}, 0))
        amounts[currency] = Decimal(str(revenue or 0)).quantize(Decimal("0.01"))
        result[market] = (amounts, count + int(orders))
    return result


def _trend(conn: sa.Connection, codes: list[str], day: date) -> dict[str, list[TrendDay]]:
    h = market_health.c
    first = day - timedelta(days=TREND_DAYS - 1)
    query = sa.select(h.market, h.day, h.delivered, h.bounces, h.spam_reports).where(
        h.market.in_(codes), h.day >= first, h.day <= day
    )
    stored = {
        (m, d if isinstance(d, date) else date.fromisoformat(str(d))): (dl, b, s)
        for m, d, dl, b, s in conn.execute(query)
    }
    trend: dict[str, list[TrendDay]] = {}
    for code in codes:
        days = []
        for offset in range(TREND_DAYS):
            current = first + timedelta(days=offset)
            delivered, bounces, spam = stored.get((code, current), (0, 0, 0))
            days.append(
                TrendDay(
                    day=current,
                    delivered=int(delivered),
                    bounce_rate=bounces / (delivered + bounces) if delivered + bounces else None,
                    complaint_rate=spam / delivered if delivered else None,
                )
            )
        trend[code] = days
    return trend


def _rates(market: Market, gate: GateDecision) -> list[Rate]:
    rules = market.deliverability
    judged = gate.delivered >= rules.min_delivered
    return [
        Rate("bounce rate", gate.bounce_rate, rules.bounce_warn, rules.bounce_halt, judged),
        Rate("spam complaint rate", gate.complaint_rate, rules.complaint_warn, rules.complaint_halt, judged),
    ]


def load_dashboard(engine: sa.Engine, markets: MarketConfig, day: date, *, now: datetime | None = None) -> Dashboard:
    """The page's numbers for ``day`` (UTC), every configured market, read in one pass."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    start, end = day_bounds(day)
    with engine.connect() as conn:
        rows = _last_tries(conn, start, end)
        dry_runs = _dry_runs(conn, start, end)
        runs = {(row.run_id, row.flow, row.market) for row in rows}
        engagement = _engagement(conn, runs)
        revenue = _revenue(conn, start, end)
        trend = _trend(conn, markets.codes, day)

    outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    flows: dict[str, dict[str, FlowDay]] = defaultdict(dict)
    flow_runs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:  # ordered by recorded_at: the last row of a flow is its latest run
        outcomes[row.market][row.outcome] += int(row.count)
        flow = flows[row.market].setdefault(row.flow, FlowDay(row.flow))
        flow.outcomes[row.outcome] = flow.outcomes.get(row.outcome, 0) + int(row.count)
        flow.gate_status = row.gate_status
        flow_runs[(row.market, row.flow)].add(row.run_id)
    for (code, name), run_ids in flow_runs.items():
        flows[code][name].runs = len(run_ids)

    result = []
    for market in markets:
        gate = check_market(engine, market, now=now)
        amounts, orders = revenue.get(market.code, ({}, 0))
        result.append(
            MarketDay(
                code=market.code,
                name=market.name,
                currency=market.currency,
                outcomes=dict(outcomes.get(market.code, {})),
                engagement=dict(engagement.get(market.code) or dict.fromkeys(ENGAGEMENT, 0)),
                revenue=amounts,
                recovered_orders=orders,
                flows=sorted(flows.get(market.code, {}).values(), key=lambda f: f.flow),
                gate=gate,
                rates=_rates(market, gate),
                window_days=market.deliverability.window_days,
                min_delivered=market.deliverability.min_delivered,
                warmup_cap=market.warmup_daily_cap,
                trend=trend[market.code],
            )
        )
    return Dashboard(day=day, generated_at=now, markets=result, dry_runs=dry_runs)
