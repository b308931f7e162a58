"""Campaigns and the welcome series: campaign runs, content variants per customer.

Revision ID: 0006
Revises: 0005

``campaign_variants`` pins each variant's content (hash) so a variant id cannot change content
between rounds; ``campaign_members`` keeps every selected member's outcome per run (held out,
had every variant, sent, capped...). Which variant a customer had lives in ``send_ledger``
(content_version); the welcome series needs no table of its own (the ledger says who was welcomed).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "campaign_variants",
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("variant_id", sa.String(32), primary_key=True),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("first_run_id", sa.String(250), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "campaign_members",
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
    op.create_index("ix_campaign_members_campaign_outcome", "campaign_members", ["campaign_id", "outcome"])
    # Rotation reads a campaign's ledger rows: flow + subject (the campaign id).
    op.create_index("ix_send_ledger_flow_subject", "send_ledger", ["flow", "subject_id"])


def downgrade() -> None:
    op.drop_index("ix_send_ledger_flow_subject", table_name="send_ledger")
    op.drop_index("ix_campaign_members_campaign_outcome", table_name="campaign_members")
    op.drop_table("campaign_members")
    op.drop_table("campaign_variants")
