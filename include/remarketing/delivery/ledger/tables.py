"""The ledger's tables and status vocabulary (schema changes go through platform/migrations)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

STATUSES = ("claimed", "sending", "accepted", "rejected", "unknown")
IN_FLIGHT = ("claimed", "sending")
# Statuses that mean "this email may have gone out, or is about to": they count for caps and warm-up.
MAY_BE_SENT = ("claimed", "sending", "accepted", "unknown")
DEFAULT_STALE_AGE = timedelta(hours=6)
KEY_CHUNK = 500  # keys per statement (well under SQLite's bound-parameter limit)

ledger_metadata = sa.MetaData()
send_ledger = sa.Table(
    "send_ledger",
    ledger_metadata,
    sa.Column("ledger_key", sa.String(250), primary_key=True),
    sa.Column("flow", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("step", sa.String(32)),
    sa.Column("arm", sa.String(8)),
    sa.Column("market", sa.String(8), nullable=False),
    sa.Column("customer_ref", sa.String(80), nullable=False),
    sa.Column("customer_id", sa.String(64)),
    sa.Column("subject_kind", sa.String(32), nullable=False),
    sa.Column("subject_id", sa.String(128), nullable=False),
    sa.Column("variant", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("claim_token", sa.String(300), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("retryable", sa.Boolean, nullable=False, default=False),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("dispatched_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("send_at", sa.DateTime(timezone=True)),
    sa.Column("http_status", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("message_id", sa.String(128)),
    sa.Column("batch_id", sa.String(128)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
)
send_runs = sa.Table(
    "send_runs",
    ledger_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("flow", sa.String(64), nullable=False),
    sa.Column("market", sa.String(8), nullable=False),
    sa.Column("try_number", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("batch_id", sa.String(128)),
    sa.Column("gate_status", sa.String(16), nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)
# One row per process attempt of a market send (its claim token): started, alive (heartbeat), finished.
# An attempt whose heartbeat is older than the lease is dead; the next run reconciles its rows.
send_attempts = sa.Table(
    "send_attempts",
    ledger_metadata,
    sa.Column("claim_token", sa.String(300), primary_key=True),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("market", sa.String(8), nullable=False),
    sa.Column("flow", sa.String(64), nullable=False),
    sa.Column("try_number", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)
DEFAULT_LEASE = timedelta(minutes=10)  # no heartbeat for this long: the attempt is dead
