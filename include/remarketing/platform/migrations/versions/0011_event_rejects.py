"""Quarantined webhook events: which event of which batch was refused, and why.

Revision ID: 0011
Revises: 0010

An event the feedback rules refuse (no ``sg_event_id``, a NaN or far-off timestamp, an
unsubscribe without an address...) no longer fails its whole batch, nor the fold: it is recorded
here by batch and position (the event itself stays in ``email_event_batches.body``) and the
other events go on. Position -1 is a stored body that could not be read as a batch at all. The
reason names fields, never values: no address is stored here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.create_table(
        "email_event_rejects",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.BigInteger, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("sg_event_id", sa.String(128)),
        sa.Column("event", sa.String(32)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("batch_id", "position", name="uq_email_event_rejects_batch_position"),
    )
    op.create_index("ix_email_event_rejects_rejected_at", "email_event_rejects", ["rejected_at"])


def downgrade() -> None:
    op.drop_index("ix_email_event_rejects_rejected_at", table_name="email_event_rejects")
    op.drop_table("email_event_rejects")
