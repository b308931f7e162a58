"""The deliverability gate: may this market send now, and how much?

Mailbox providers judge a sender by its bounce and spam-complaint rates; once Gmail or Yahoo
start junking a domain, every market sharing it suffers. So each market is checked before any
of its mail is claimed, and a market past a halt threshold sends nothing at all (the others go
on). The verdict (``GateDecision``) says why, for the task log and the run summary.

Checks, in order:

* sender identity: ``sender.authenticated`` must be true and ``from_email`` must be on the
  ``authenticated_domain`` (or a subdomain), else ``halted``: unauthenticated mail is junked
  or refused outright since Gmail's and Yahoo's 2024 rules;
* rates over the trailing ``deliverability.window_days`` UTC days (today included) from the
  ``market_health`` table: bounce rate = bounces / (delivered + bounces), complaint rate =
  spam reports / delivered; each against its warn and halt threshold, judged only when at
  least ``min_delivered`` mails were delivered (a handful of mails proves nothing);
* warm-up: ``warmup_daily_cap`` minus what the ledger shows claimed today (the market's local
  day) that may go out (accepted, unknown or in flight). The send step caps the excess.

``market_health`` is filled by ``refresh_market_health`` from SendGrid's per-category stats:
every mail we send carries the category ``market:<code>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

import sqlalchemy as sa

from remarketing.delivery.ledger import claimed_count, transactional
from remarketing.markets import Market
from remarketing.platform.state import upsert_statement

GateStatus = Literal["open", "warn", "halted"]
METRICS = ("requests", "delivered", "bounces", "blocks", "spam_reports", "opens", "clicks", "unsubscribes")

health_metadata = sa.MetaData()
market_health = sa.Table(
    "market_health",
    health_metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("market", sa.String(8), primary_key=True),
    *(sa.Column(name, sa.BigInteger, nullable=False, default=0) for name in METRICS),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def market_category(code: str) -> str:
    """The SendGrid category every mail of a market carries; stats are read back per category."""
    return f"market:{code}"


@dataclass(frozen=True)
class GateDecision:
    market: str
    status: GateStatus
    reasons: list[str] = field(default_factory=list)  # why it warns or halts, and the warm-up state
    notes: list[str] = field(default_factory=list)  # for the log: what could not be judged
    bounce_rate: float | None = None
    complaint_rate: float | None = None
    delivered: int = 0
    warmup_remaining: int = 0

    @property
    def may_send(self) -> bool:
        return self.status != "halted"

    def to_dict(self) -> dict:
        return asdict(self)


def refresh_market_health(
    engine: sa.Engine, api, markets: Iterable[Market], start: date, end: date, *, now: datetime | None = None
) -> int:
    """Store SendGrid's daily stats of category ``market:<code>`` per market and day; returns rows written.

    Days without a stats row are stored as zeros, so a quiet day replaces stale figures.
    """
    markets = list(markets)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    by_category = {market_category(m.code): m.code for m in markets}
    rows: dict[tuple[date, str], dict] = {}
    day = start
    while day <= end:
        for code in by_category.values():
            rows[(day, code)] = {"day": day, "market": code, **dict.fromkeys(METRICS, 0)}
        day += timedelta(days=1)
    for stat in api.category_stats(list(by_category), start, end):
        code = by_category.get(stat.get("category"))
        day = stat.get("date")
        if code is None or (day, code) not in rows:
            continue  # a category or day we did not ask for
        row = rows[(day, code)]
        for name in METRICS:
            value = stat.get(name) or 0
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"SendGrid stats for {code} on {day}: {name}={value!r} is not a count")
            row[name] += value
    records = [{**r, "source": "sendgrid_category_stats", "updated_at": now} for r in rows.values()]
    if records:
        transactional(
            engine, lambda conn: conn.execute(upsert_statement(engine, market_health, ("day", "market")), records)
        )
    return len(records)


def health_totals(engine: sa.Engine, market: str, start: date, end: date) -> dict[str, int]:
    """Summed ``market_health`` metrics for ``market`` over ``[start, end]``."""
    t = market_health.c
    query = sa.select(*(sa.func.coalesce(sa.func.sum(t[m]), 0) for m in METRICS)).where(
        t.market == market, t.day >= start, t.day <= end
    )
    with engine.connect() as conn:
        values = conn.execute(query).one()
    return {m: int(v) for m, v in zip(METRICS, values, strict=True)}


def _sender_problem(market: Market) -> str | None:
    sender = market.sender
    if sender is None or not sender.from_email:
        return "sender identity missing"
    domain = sender.from_email.rsplit("@", 1)[-1].lower()
    authenticated = (sender.authenticated_domain or "").lower()
    if not sender.authenticated or not authenticated:
        return "sender domain not authenticated"
    if domain != authenticated and not domain.endswith("." + authenticated):
        return f"sender domain not authenticated: from address is not on {authenticated}"
    return None


def local_day_start(market: Market, now: datetime) -> datetime:
    """Midnight of the market's local day containing ``now``, in UTC."""
    local = now.astimezone(market.zone)
    return datetime.combine(local.date(), time(), tzinfo=market.zone).astimezone(UTC)


def check_market(engine: sa.Engine, market: Market, *, now: datetime, api=None) -> GateDecision:
    """The gate verdict for ``market`` at ``now``; with ``api`` the stats are refreshed first."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    rules = market.deliverability
    end = now.astimezone(UTC).date()
    start = end - timedelta(days=rules.window_days - 1)
    if api is not None:
        refresh_market_health(engine, api, [market], start, end, now=now)

    reasons: list[str] = []
    notes: list[str] = []
    status: GateStatus = "open"

    def escalate(level: GateStatus, reason: str) -> None:
        nonlocal status
        reasons.append(reason)
        if level == "halted" or (level == "warn" and status == "open"):
            status = level

    problem = _sender_problem(market)
    if problem:
        escalate("halted", problem)

    totals = health_totals(engine, market.code, start, end)
    delivered = totals["delivered"]
    bounce_rate = totals["bounces"] / (delivered + totals["bounces"]) if delivered + totals["bounces"] else None
    complaint_rate = totals["spam_reports"] / delivered if delivered else None
    window = f"last {rules.window_days} d"
    if delivered < rules.min_delivered:
        notes.append(f"rates not judged: {delivered} delivered in the {window} < {rules.min_delivered}")
    else:
        for name, rate, warn, halt in (
            ("spam complaint rate", complaint_rate, rules.complaint_warn, rules.complaint_halt),
            ("bounce rate", bounce_rate, rules.bounce_warn, rules.bounce_halt),
        ):
            if rate is None:
                continue
            if rate >= halt:
                escalate("halted", f"{name} {rate:.2%} over the {window} is at or above the halt threshold {halt:.2%}")
            elif rate >= warn:
                escalate("warn", f"{name} {rate:.2%} over the {window} is at or above the warn threshold {warn:.2%}")

    used = claimed_count(engine, market.code, since=local_day_start(market, now))
    remaining = max(0, market.warmup_daily_cap - used)
    if remaining == 0:
        reasons.append(f"warm-up cap reached: {used} of {market.warmup_daily_cap} today")
    return GateDecision(
        market=market.code,
        status=status,
        reasons=reasons,
        notes=notes,
        bounce_rate=bounce_rate,
        complaint_rate=complaint_rate,
        delivered=delivered,
        warmup_remaining=remaining,
    )
