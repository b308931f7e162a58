"""Profiles: customer profiles and lifecycle stage history.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "customer_profiles",
        sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("market", sa.String(2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("recency_days", sa.Float, nullable=True),
        sa.Column("frequency", sa.Integer, nullable=False),
        sa.Column("monetary", sa.Float, nullable=False),
        sa.Column("r_score", sa.SmallInteger, nullable=True),
        sa.Column("f_score", sa.SmallInteger, nullable=True),
        sa.Column("m_score", sa.SmallInteger, nullable=True),
        sa.Column("rfm_segment", sa.String(64), nullable=True),
        sa.Column("favourite_categories", sa.Text, nullable=False),
        sa.Column("price_sensitivity", sa.Float, nullable=True),
        sa.Column("avg_order_value", sa.Float, nullable=True),
        sa.Column("preferred_purchase_hour", sa.SmallInteger, nullable=True),
        sa.Column("engagement_level", sa.String(16), nullable=True),
        sa.Column("last_open_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_click_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("p_alive", sa.Float, nullable=True),
        sa.Column("expected_purchases_90d", sa.Float, nullable=True),
        sa.Column("first_order_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_order_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
    )
    op.create_index("ix_customer_profiles_market_stage", "customer_profiles", ["market", "stage"])
    op.create_table(
        "segment_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.BigInteger, nullable=False),
        sa.Column("market", sa.String(2), nullable=False),
        sa.Column("from_stage", sa.String(16), nullable=True),
        sa.Column("to_stage", sa.String(16), nullable=False),
        sa.Column("changed_on", sa.Date, nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("customer_id", "changed_on", "to_stage", name="uq_segment_history_customer_day_stage"),
    )
    op.create_index("ix_segment_history_stage_day", "segment_history", ["to_stage", "changed_on"])
    op.create_index("ix_segment_history_customer", "segment_history", ["customer_id"])


def downgrade() -> None:
    op.drop_index("ix_segment_history_customer", table_name="segment_history")
    op.drop_index("ix_segment_history_stage_day", table_name="segment_history")
    op.drop_table("segment_history")
    op.drop_index("ix_customer_profiles_market_stage", table_name="customer_profiles")
    op.drop_table("customer_profiles")
