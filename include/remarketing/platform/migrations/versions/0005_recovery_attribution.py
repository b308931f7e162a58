"""Recovery attribution: orders credited to the recovery mail that won them back.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "recovery_attributions",
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
    op.create_index("ix_recovery_attributions_market_step", "recovery_attributions", ["market", "step"])


def downgrade() -> None:
    op.drop_index("ix_recovery_attributions_market_step", table_name="recovery_attributions")
    op.drop_table("recovery_attributions")
