"""Ledger columns with one meaning each: ``step``, ``arm``, ``subject_kind`` + ``subject_id``, ``variant``.

Revision ID: 0009
Revises: 0008

Before, ``step`` held a recovery step, a welcome mail or a campaign's A/B arm; ``subject_id`` a
``cart``-prefixed cart id or a campaign id; ``content_version`` the campaign variant. Existing rows
are converted by their flow; the ledger keys themselves are unchanged (SendGrid's events carry them).
A row of a flow this revision does not know keeps its values, with ``subject_kind`` ``unknown``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    with op.batch_alter_table("send_ledger") as batch:
        batch.add_column(sa.Column("arm", sa.String(8), nullable=True))
        batch.add_column(sa.Column("subject_kind", sa.String(32), nullable=True))
        batch.alter_column("content_version", new_column_name="variant", existing_type=sa.String(64))
        batch.alter_column("step", existing_type=sa.String(32), nullable=True)
    op.execute(
        "UPDATE send_ledger SET subject_kind = 'cart', subject_id = substr(subject_id, 5) "
        "WHERE flow = 'cart_recovery' AND subject_id LIKE 'cart%'"
    )
    op.execute("UPDATE send_ledger SET subject_kind = 'series' WHERE flow = 'welcome_series'")
    op.execute(
        "UPDATE send_ledger SET subject_kind = 'campaign', arm = step, step = NULL WHERE flow = 'market_campaign'"
    )
    op.execute("UPDATE send_ledger SET subject_kind = 'unknown' WHERE subject_kind IS NULL")
    with op.batch_alter_table("send_ledger") as batch:
        batch.alter_column("subject_kind", existing_type=sa.String(32), nullable=False)


def downgrade() -> None:
    op.execute("UPDATE send_ledger SET step = arm WHERE flow = 'market_campaign'")
    op.execute("UPDATE send_ledger SET subject_id = 'cart' || subject_id WHERE subject_kind = 'cart'")
    with op.batch_alter_table("send_ledger") as batch:
        batch.alter_column("step", existing_type=sa.String(32), nullable=False)
        batch.alter_column("variant", new_column_name="content_version", existing_type=sa.String(64))
        batch.drop_column("subject_kind")
        batch.drop_column("arm")
