"""Store extraction state: watermark per canonical table and a record of every extract run.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "store_watermarks",
        sa.Column("table_name", sa.String(64), primary_key=True),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=True),
        sa.Column("snapshot_path", sa.Text, nullable=True),
        sa.Column("snapshot_rows", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("run_id", sa.String(250), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "extract_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("full_refresh", sa.Boolean, nullable=False),
        sa.Column("lower_bound", sa.DateTime(timezone=True), nullable=True),
        sa.Column("upper_bound", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delta_rows", sa.BigInteger, nullable=False),
        sa.Column("snapshot_rows", sa.BigInteger, nullable=False),
        sa.Column("delta_path", sa.Text, nullable=False),
        sa.Column("snapshot_path", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_extract_runs_table_finished", "extract_runs", ["table_name", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_extract_runs_table_finished", table_name="extract_runs")
    op.drop_table("extract_runs")
    op.drop_table("store_watermarks")
