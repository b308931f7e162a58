"""Delivery outcomes carry their mail's run and flow, so a day's outcomes are read by run.

Revision ID: 0008
Revises: 0007

The Remarketing page counts what became of a day's mails; joining ``send_outcomes`` to the
ledger for that scanned every outcome ever stored. The fold now copies ``run_id`` and ``flow``
from the ledger row; existing rows are filled the same way here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    with op.batch_alter_table("send_outcomes") as batch:
        batch.add_column(sa.Column("run_id", sa.String(250), nullable=True))
        batch.add_column(sa.Column("flow", sa.String(64), nullable=True))
    op.execute(
        "UPDATE send_outcomes SET "
        "run_id = (SELECT l.run_id FROM send_ledger l WHERE l.ledger_key = send_outcomes.ledger_key), "
        "flow = (SELECT l.flow FROM send_ledger l WHERE l.ledger_key = send_outcomes.ledger_key)"
    )
    op.create_index("ix_send_outcomes_run", "send_outcomes", ["run_id", "market"])


def downgrade() -> None:
    op.drop_index("ix_send_outcomes_run", table_name="send_outcomes")
    with op.batch_alter_table("send_outcomes") as batch:
        batch.drop_column("flow")
        batch.drop_column("run_id")
