"""What happened to the mails we sent: delivery outcomes, opens and clicks, per-customer engagement.

Written by the email feedback loop (``flows.feedback``) from SendGrid's events; read by whoever
needs them: profiles (engagement, best hours), cart recovery (personal best hour), the
Remarketing page (outcomes by run). Addresses never appear here: customers by ref and id.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from remarketing.platform.clock import now_or_clock
from remarketing.platform.state import chunks

CHUNK = 500
ENGAGEMENT_KINDS = {"open": "open", "click": "click"}  # event -> best_hour.EVENT_WEIGHTS kind

feedback_metadata = sa.MetaData()
email_events = sa.Table(
    "email_events",
    feedback_metadata,
    sa.Column("sg_event_id", sa.String(128), primary_key=True),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ledger_key", sa.String(250)),
    sa.Column("customer_ref", sa.String(80)),
    sa.Column("customer_id", sa.String(64)),
    sa.Column("market", sa.String(8)),
    sa.Column("flow", sa.String(64)),
    sa.Column("bounce_type", sa.String(16)),
    sa.Column("reason", sa.Text),
    sa.Column("asm_group_id", sa.Integer),
    sa.Column("batch_id", sa.BigInteger, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)
OUTCOME_TIMES = ("processed_at", "delivered_at", "bounced_at", "opened_at", "clicked_at", "complained_at")
send_outcomes = sa.Table(
    "send_outcomes",
    feedback_metadata,
    sa.Column("ledger_key", sa.String(250), primary_key=True),
    sa.Column("customer_ref", sa.String(80)),
    sa.Column("market", sa.String(8)),
    sa.Column("delivery", sa.String(16), nullable=False),
    *(sa.Column(name, sa.DateTime(timezone=True)) for name in OUTCOME_TIMES),
    sa.Column("unsubscribed_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(250)),  # the mail's send run and flow, copied from the ledger (0008)
    sa.Column("flow", sa.String(64)),
)
ENGAGEMENT_COUNTS = ("delivered", "opens", "clicks", "hard_bounces", "soft_bounces", "spam_reports", "unsubscribes")
ENGAGEMENT_TIMES = ("last_open_at", "last_click_at", "last_bounce_at", "last_complaint_at")
customer_engagement = sa.Table(
    "customer_engagement",
    feedback_metadata,
    sa.Column("customer_ref", sa.String(80), primary_key=True),
    sa.Column("customer_id", sa.String(64)),
    *(sa.Column(name, sa.Integer, nullable=False) for name in ENGAGEMENT_COUNTS),
    *(sa.Column(name, sa.DateTime(timezone=True)) for name in ENGAGEMENT_TIMES),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


class EngagementError(ValueError):
    """A stored engagement row that cannot be read; names the offending value."""


def load_engagement(engine: sa.Engine) -> pd.DataFrame:
    """Engagement per known customer, for ``segments.compute_profiles(engagement=...)``.

    Columns: customer_id (int64), last_open_at, last_click_at (UTC), the counts (delivered, opens,
    clicks, hard_bounces, soft_bounces, spam_reports, unsubscribes) and last_bounce_at,
    last_complaint_at. Guests (no customer id) are not profiled and are left out.
    """
    columns = ["customer_id", *ENGAGEMENT_COUNTS, *ENGAGEMENT_TIMES]
    t = customer_engagement.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*(t[c] for c in columns)).where(t.customer_id.is_not(None))).all()
    frame = pd.DataFrame(rows, columns=columns)
    ids = pd.to_numeric(frame["customer_id"], errors="coerce")
    if ids.isna().any():
        bad = frame.loc[ids.isna(), "customer_id"].iloc[0]
        raise EngagementError(f"customer_engagement: customer_id {bad!r} is not an integer id")
    frame["customer_id"] = ids.astype("int64")
    for name in ENGAGEMENT_TIMES:
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame.sort_values("customer_id").reset_index(drop=True)


def engagement_events(engine: sa.Engine, *, since: datetime | None = None) -> pd.DataFrame:
    """Opens and clicks of known customers as ``personal_best_hour`` takes them: customer_id, occurred_at, kind."""
    t = email_events.c
    query = sa.select(t.customer_id, t.occurred_at, t.event).where(
        t.event.in_(list(ENGAGEMENT_KINDS)), t.customer_id.is_not(None)
    )
    if since is not None:
        query = query.where(t.occurred_at >= now_or_clock(since))
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).all(), columns=["customer_id", "occurred_at", "kind"])
    frame["customer_id"] = pd.to_numeric(frame["customer_id"], errors="coerce").astype("Int64")
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    frame["kind"] = frame["kind"].map(ENGAGEMENT_KINDS)
    return frame.dropna(subset=["customer_id"]).reset_index(drop=True)


def best_hours(engine: sa.Engine, customers: pd.DataFrame, markets, *, since: datetime | None = None) -> pd.DataFrame:
    """Personal best send hour of customers who opened or clicked: customer_id, best_hour, best_hour_events.

    ``customers``: customer_id, market, time_zone (country, region help resolve the zone).
    Customers without events are left out: their send time stays the market's window as before.
    """
    from remarketing.timing.best_hour import personal_best_hour
    from remarketing.timing.send_windows import resolve_time_zones

    events = engagement_events(engine, since=since)
    empty = pd.DataFrame({"customer_id": pd.Series(dtype="int64"), "best_hour": pd.Series(dtype="Int64")})
    if events.empty or customers.empty:
        return empty.assign(best_hour_events=pd.Series(dtype="int64"))
    people = customers[customers["customer_id"].isin(set(events["customer_id"].astype("int64")))]
    if people.empty:
        return empty.assign(best_hour_events=pd.Series(dtype="int64"))
    zone_columns = [c for c in ("market", "time_zone", "country", "region") if c in people]
    zones = resolve_time_zones(people[zone_columns], markets)
    people = pd.DataFrame(
        {
            "customer_id": people["customer_id"].astype("int64"),
            "market": people["market"],
            "time_zone": zones["time_zone"],
        }
    )
    best = personal_best_hour(events.astype({"customer_id": "int64"}), people, markets)
    best = best[best["best_hour_source"] == "personal"]
    return best[["customer_id", "best_hour", "best_hour_events"]].astype({"best_hour": "Int64"}).reset_index(drop=True)


def delivery_outcomes(engine: sa.Engine, keys: Iterable[str]) -> pd.DataFrame:
    """``send_outcomes`` rows for ``keys`` (index ledger_key)."""
    t = send_outcomes.c
    rows = []
    with engine.connect() as conn:
        for chunk in chunks(sorted(set(keys)), CHUNK):
            rows.extend(conn.execute(sa.select(send_outcomes).where(t.ledger_key.in_(chunk))).all())
    frame = pd.DataFrame(rows, columns=[c.name for c in send_outcomes.columns]).set_index("ledger_key")
    for name in (*OUTCOME_TIMES, "unsubscribed_at", "updated_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame
