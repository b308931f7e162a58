"""The campaign flow's tables: variants pinned per campaign, each member's outcome per round."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from remarketing.flows.campaigns.model import FLOW, SUBJECT_KIND, Campaign, CampaignError
from remarketing.markets import Market

MEMBER_COLUMNS = ("customer_id", "outcome", "reason", "variant_id", "arm")


campaigns_metadata = sa.MetaData()

campaign_variants = sa.Table(
    "campaign_variants",
    campaigns_metadata,
    sa.Column("campaign_id", sa.String(64), primary_key=True),
    sa.Column("variant_id", sa.String(32), primary_key=True),
    sa.Column("content_hash", sa.String(32), nullable=False),
    sa.Column("first_run_id", sa.String(250), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

campaign_members = sa.Table(
    "campaign_members",
    campaigns_metadata,
    sa.Column("campaign_id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("market", sa.String(8), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("variant_id", sa.String(32)),
    sa.Column("arm", sa.String(8)),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


def pin_variants(engine: sa.Engine, campaign: Campaign, *, run_id: str, now: datetime) -> None:
    """Record each variant's content hash; a variant id whose content changed since an earlier run is refused.

    Rotation trusts the variant id: if "v1" could change its text, "never the same content
    twice" would quietly become "never the same id twice".
    """
    t = campaign_variants.c
    with engine.begin() as conn:
        known = dict(
            conn.execute(sa.select(t.variant_id, t.content_hash).where(t.campaign_id == campaign.campaign_id)).all()
        )
        for variant in campaign.variants:
            digest = campaign.content_hash(variant.id)
            if variant.id in known and known[variant.id] != digest:
                raise CampaignError(
                    f"campaign {campaign.campaign_id}: variant {variant.id} was sent with other content before; "
                    "give changed content a new variant id"
                )
            if variant.id not in known:
                conn.execute(
                    campaign_variants.insert().values(
                        campaign_id=campaign.campaign_id,
                        variant_id=variant.id,
                        content_hash=digest,
                        first_run_id=run_id,
                        recorded_at=now,
                    )
                )


def variant_history(engine: sa.Engine, campaign_id: str, customer_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """(customer_id, variant) of this campaign's ledger rows that count as had.

    Every row except a retryable rejection (which a later run may send again): accepted,
    scheduled, unknown, in flight, or refused for good.
    """
    from remarketing.delivery.ledger import send_ledger

    t = send_ledger.c
    query = sa.select(t.customer_id, t.variant).where(
        t.flow == FLOW,
        t.subject_kind == SUBJECT_KIND,
        t.subject_id == campaign_id,
        t.customer_id.is_not(None),
        ~sa.and_(t.status == "rejected", t.retryable.is_(True)),
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["customer_id", "variant"])
    frame["customer_id"] = pd.to_numeric(frame["customer_id"], errors="coerce")
    frame = frame.dropna(subset=["customer_id"]).astype({"customer_id": "int64"})
    if customer_ids is not None:
        frame = frame[frame["customer_id"].isin(set(customer_ids))]
    return frame.drop_duplicates().reset_index(drop=True)


def had_calendar_date(engine: sa.Engine, campaign_id: str, market: Market, send_date: date) -> set[int]:
    """Customers of ``market`` with a mail of this campaign claimed by a run that could target ``send_date``.

    The calendar takes a date on the market's local day before and on the day itself, so two
    runs see each date; the first schedules it. Rows claimed since local midnight of the day
    before count (a retryable rejection does not: a later run may send it again).
    """
    from remarketing.delivery.ledger import send_ledger

    since = datetime.combine(send_date - timedelta(days=1), datetime.min.time(), tzinfo=market.zone).astimezone(UTC)
    t = send_ledger.c
    query = sa.select(t.customer_id).where(
        t.flow == FLOW,
        t.subject_kind == SUBJECT_KIND,
        t.subject_id == campaign_id,
        t.market == market.code,
        t.customer_id.is_not(None),
        t.claimed_at >= since,
        ~sa.and_(t.status == "rejected", t.retryable.is_(True)),
    )
    with engine.connect() as conn:
        ids = pd.to_numeric(pd.Series(conn.execute(query).scalars().all(), dtype=object), errors="coerce")
    return set(ids.dropna().astype("int64").tolist())


def record_members(
    engine: sa.Engine, campaign_id: str, market: str, run_id: str, members: pd.DataFrame, *, now: datetime
) -> int:
    """Replace this (campaign, run, market)'s member rows with ``members`` (MEMBER_COLUMNS); a retry rewrites them."""
    missing = [c for c in MEMBER_COLUMNS if c not in members.columns]
    if missing:
        raise ValueError(f"campaign {campaign_id} market {market}: members lack {missing}")
    frame = members[list(MEMBER_COLUMNS)].copy()
    dupes = frame["customer_id"].duplicated()
    if dupes.any():
        raise ValueError(f"campaign {campaign_id}: customer_id {frame.loc[dupes, 'customer_id'].iloc[0]} listed twice")
    frame["customer_id"] = frame["customer_id"].astype("int64")
    records = [
        {
            "campaign_id": campaign_id,
            "run_id": run_id,
            "market": market,
            "recorded_at": now,
            **{k: (None if (v is None or (isinstance(v, float) and np.isnan(v))) else v) for k, v in row.items()},
        }
        for row in frame.astype(object).to_dict("records")
    ]
    for record in records:
        record["customer_id"] = int(record["customer_id"])
    t = campaign_members.c
    with engine.begin() as conn:
        conn.execute(
            sa.delete(campaign_members).where(t.campaign_id == campaign_id, t.run_id == run_id, t.market == market)
        )
        for start in range(0, len(records), 5000):
            conn.execute(campaign_members.insert(), records[start : start + 5000])
    return len(records)


def load_members(engine: sa.Engine, campaign_id: str) -> pd.DataFrame:
    """Every recorded member row of a campaign (all runs)."""
    from remarketing.platform.state import utc

    with engine.connect() as conn:
        rows = conn.execute(sa.select(campaign_members).where(campaign_members.c.campaign_id == campaign_id)).all()
    frame = pd.DataFrame(rows, columns=[c.name for c in campaign_members.columns])
    frame["recorded_at"] = frame["recorded_at"].map(utc)
    return frame


def utcnow() -> datetime:
    return datetime.now(UTC)
