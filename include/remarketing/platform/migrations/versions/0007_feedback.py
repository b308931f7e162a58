"""Email feedback: webhook batches, events, delivery outcome per ledger key, engagement per customer.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def _id():
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "email_event_batches",
        _id(),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("folded_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("digest", name="uq_email_event_batches_digest"),
    )
    op.create_index("ix_email_event_batches_folded_at", "email_event_batches", ["folded_at"])
    op.create_table(
        "email_events",
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
    op.create_index("ix_email_events_ledger_key", "email_events", ["ledger_key"])
    op.create_index("ix_email_events_customer_ref", "email_events", ["customer_ref"])
    op.create_index("ix_email_events_market_occurred", "email_events", ["market", "occurred_at"])
    op.create_table(
        "send_outcomes",
        sa.Column("ledger_key", sa.String(250), primary_key=True),
        sa.Column("customer_ref", sa.String(80)),
        sa.Column("market", sa.String(8)),
        sa.Column("delivery", sa.String(16), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True)),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("bounced_at", sa.DateTime(timezone=True)),
        sa.Column("opened_at", sa.DateTime(timezone=True)),
        sa.Column("clicked_at", sa.DateTime(timezone=True)),
        sa.Column("complained_at", sa.DateTime(timezone=True)),
        sa.Column("unsubscribed_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "customer_engagement",
        sa.Column("customer_ref", sa.String(80), primary_key=True),
        sa.Column("customer_id", sa.String(64)),
        sa.Column("delivered", sa.Integer, nullable=False),
        sa.Column("opens", sa.Integer, nullable=False),
        sa.Column("clicks", sa.Integer, nullable=False),
        sa.Column("hard_bounces", sa.Integer, nullable=False),
        sa.Column("soft_bounces", sa.Integer, nullable=False),
        sa.Column("spam_reports", sa.Integer, nullable=False),
        sa.Column("unsubscribes", sa.Integer, nullable=False),
        sa.Column("last_open_at", sa.DateTime(timezone=True)),
        sa.Column("last_click_at", sa.DateTime(timezone=True)),
        sa.Column("last_bounce_at", sa.DateTime(timezone=True)),
        sa.Column("last_complaint_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_customer_engagement_customer_id", "customer_engagement", ["customer_id"])


def downgrade() -> None:
    op.drop_index("ix_customer_engagement_customer_id", table_name="customer_engagement")
    op.drop_table("customer_engagement")
    op.drop_table("send_outcomes")
    op.drop_index("ix_email_events_market_occurred", table_name="email_events")
    op.drop_index("ix_email_events_customer_ref", table_name="email_events")
    op.drop_index("ix_email_events_ledger_key", table_name="email_events")
    op.drop_table("email_events")
    op.drop_index("ix_email_event_batches_folded_at", table_name="email_event_batches")
    op.drop_table("email_event_batches")
