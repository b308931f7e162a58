"""Delivery: send ledger, outcomes, suppressions, market health.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

_BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "send_ledger",
        sa.Column("ledger_key", sa.String(250), primary_key=True),
        sa.Column("flow", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("market", sa.String(8), nullable=False),
        sa.Column("customer_ref", sa.String(80), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=True),
        sa.Column("subject_id", sa.String(128), nullable=False),
        sa.Column("content_version", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("claim_token", sa.String(300), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("retryable", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("message_id", sa.String(128), nullable=True),
        sa.Column("batch_id", sa.String(128), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_send_ledger_customer", "send_ledger", ["customer_ref", "kind"])
    op.create_index("ix_send_ledger_run", "send_ledger", ["run_id", "market", "status"])
    op.create_index("ix_send_ledger_status_claimed", "send_ledger", ["status", "claimed_at"])
    op.create_index("ix_send_ledger_market_claimed", "send_ledger", ["market", "claimed_at"])

    op.create_table(
        "send_runs",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("flow", sa.String(64), nullable=False),
        sa.Column("market", sa.String(8), nullable=False),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=True),
        sa.Column("gate_status", sa.String(16), nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_send_runs_run_market", "send_runs", ["run_id", "market"])

    op.create_table(
        "suppressions",
        sa.Column("email", sa.String(320), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("group_id", sa.Integer, primary_key=True, server_default="0"),
        sa.Column("created", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "suppression_sync",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("high_water", sa.DateTime(timezone=True), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),
    )

    op.create_table(
        "market_health",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("market", sa.String(8), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("delivered", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bounces", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("blocks", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("spam_reports", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("opens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("clicks", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("unsubscribes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("market_health")
    op.drop_table("suppression_sync")
    op.drop_table("suppressions")
    op.drop_index("ix_send_runs_run_market", table_name="send_runs")
    op.drop_table("send_runs")
    op.drop_index("ix_send_ledger_market_claimed", table_name="send_ledger")
    op.drop_index("ix_send_ledger_status_claimed", table_name="send_ledger")
    op.drop_index("ix_send_ledger_run", table_name="send_ledger")
    op.drop_index("ix_send_ledger_customer", table_name="send_ledger")
    op.drop_table("send_ledger")
