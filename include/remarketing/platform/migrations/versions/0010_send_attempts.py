"""Send attempts: one row per process attempt of a market send, with a heartbeat (fencing and leases).

Revision ID: 0010
Revises: 0009

A claim token is unique to a process attempt; an attempt whose heartbeat is older than the lease
is dead, and the next run reconciles the ledger rows it left in flight.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "send_attempts",
        sa.Column("claim_token", sa.String(300), primary_key=True),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("market", sa.String(8), nullable=False),
        sa.Column("flow", sa.String(64), nullable=False),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_send_attempts_heartbeat", "send_attempts", ["heartbeat_at"])
    op.create_index("ix_send_ledger_claim_token", "send_ledger", ["claim_token"])


def downgrade() -> None:
    op.drop_index("ix_send_ledger_claim_token", table_name="send_ledger")
    op.drop_index("ix_send_attempts_heartbeat", table_name="send_attempts")
    op.drop_table("send_attempts")
