"""Validation: quarantined rows and per-table validation runs.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

_Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "validation_runs",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("extracted", sa.BigInteger, nullable=False),
        sa.Column("clean", sa.BigInteger, nullable=False),
        sa.Column("quarantined", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failed_expectation", sa.String(250), nullable=True),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("run_id", "table_name", name="uq_validation_runs_run_table"),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("row_key", sa.String(64), nullable=True),
        sa.Column("row_number", sa.BigInteger, nullable=False),
        sa.Column("expectation", sa.String(250), nullable=False),
        sa.Column("column_name", sa.String(250), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("row_json", sa.Text, nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_quarantine_run_table", "quarantine", ["run_id", "table_name"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_run_table", table_name="quarantine")
    op.drop_table("quarantine")
    op.drop_table("validation_runs")
