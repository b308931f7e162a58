"""Recovered revenue in the remarketing DB: which order a recovery mail won back.

An order is credited once (its order_id is the key), so re-running attribution over the same
orders changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from remarketing.delivery.ledger import send_ledger
from remarketing.flows.cart_recovery.audience import FLOW, SUBJECT_KIND

recovery_metadata = sa.MetaData()
recovery_attributions = sa.Table(
    "recovery_attributions",
    recovery_metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("market", sa.String(8), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("cart_id", sa.BigInteger, nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("revenue", sa.Numeric(18, 4), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("attributed_at", sa.DateTime(timezone=True), nullable=False),
)


def load_accepted_sends(engine: sa.Engine) -> tuple[pd.DataFrame, set[int]]:
    """Recovery mails SendGrid accepted (customer_id, market, step, cart_id, sent_at) and orders already credited."""
    sent_at = sa.func.coalesce(send_ledger.c.send_at, send_ledger.c.finished_at)
    query = sa.select(
        send_ledger.c.customer_id,
        send_ledger.c.market,
        send_ledger.c.step,
        send_ledger.c.subject_id,
        sent_at.label("sent_at"),
    ).where(
        send_ledger.c.flow == FLOW,
        send_ledger.c.subject_kind == SUBJECT_KIND,
        send_ledger.c.status == "accepted",
        send_ledger.c.customer_id.is_not(None),
    )
    with engine.connect() as conn:
        sends = pd.DataFrame(
            conn.execute(query).all(), columns=["customer_id", "market", "step", "subject_id", "sent_at"]
        )
        already = {int(o) for o in conn.execute(sa.select(recovery_attributions.c.order_id)).scalars()}
    sends["customer_id"] = pd.to_numeric(sends["customer_id"], errors="coerce")
    sends["cart_id"] = pd.to_numeric(sends["subject_id"], errors="coerce")
    sends["step"] = pd.to_numeric(sends["step"], errors="coerce")
    sends["sent_at"] = pd.to_datetime(sends["sent_at"], utc=True)
    sends = sends.dropna(subset=["customer_id", "cart_id", "step", "sent_at"])
    return sends.astype({"customer_id": "int64", "cart_id": "int64", "step": "int64"}).drop(
        columns="subject_id"
    ), already


def record_attributions(engine: sa.Engine, won: pd.DataFrame, *, run_id: str) -> int:
    """Insert newly credited orders; an order already credited is left as it is."""
    if won.empty:
        return 0
    now = datetime.now(UTC)
    records = [
        {
            "order_id": int(r.order_id),
            "customer_id": int(r.customer_id),
            "market": r.market,
            "step": int(r.step),
            "cart_id": int(r.cart_id),
            "sent_at": r.sent_at.to_pydatetime(),
            "placed_at": r.placed_at.to_pydatetime(),
            "currency": r.currency,
            "revenue": round(float(r.revenue), 4),
            "run_id": run_id,
            "attributed_at": now,
        }
        for r in won.itertuples(index=False)
    ]
    with engine.begin() as conn:
        existing = set(
            conn.execute(
                sa.select(recovery_attributions.c.order_id).where(
                    recovery_attributions.c.order_id.in_([r["order_id"] for r in records])
                )
            ).scalars()
        )
        fresh = [r for r in records if r["order_id"] not in existing]
        if fresh:
            conn.execute(sa.insert(recovery_attributions), fresh)
    return len(fresh)


def revenue_by_market_step(engine: sa.Engine) -> pd.DataFrame:
    """Recovered orders and revenue per market, step and currency, over all runs."""
    t = recovery_attributions
    query = (
        sa.select(t.c.market, t.c.step, t.c.currency, sa.func.count().label("orders"), sa.func.sum(t.c.revenue))
        .group_by(t.c.market, t.c.step, t.c.currency)
        .order_by(t.c.market, t.c.step)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["market", "step", "currency", "orders", "revenue"])
    frame["revenue"] = frame["revenue"].astype("float64").round(2)
    frame["orders"] = frame["orders"].astype("int64")
    frame["step"] = frame["step"].astype("int64")
    return frame
