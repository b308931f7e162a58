"""What the ledger tells other steps: lookups, a customer's mail history for caps, send-run counts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from remarketing.delivery.ledger.protocol import ClaimContext, transactional
from remarketing.delivery.ledger.tables import MAY_BE_SENT, send_ledger, send_runs
from remarketing.platform.clock import aware, now_or_clock
from remarketing.platform.state import chunks

# ---------------------------------------------------------------------------------------------
# Queries

_LOOKUP_COLUMNS = (
    "status",
    "retryable",
    "run_id",
    "market",
    "claim_token",
    "send_at",
    "http_status",
    "error",
    "batch_id",
)


def lookup(engine: sa.Engine, keys: Iterable[str]) -> pd.DataFrame:
    """Ledger rows for ``keys`` (index ``ledger_key``; keys without a row are absent)."""
    keys = sorted(set(keys))
    t = send_ledger.c
    rows = []
    with engine.connect() as conn:
        for chunk in chunks(keys, 2000):
            rows.extend(
                conn.execute(
                    sa.select(t.ledger_key, *(t[c] for c in _LOOKUP_COLUMNS)).where(t.ledger_key.in_(chunk))
                ).all()
            )
    frame = pd.DataFrame(rows, columns=["ledger_key", *_LOOKUP_COLUMNS]).set_index("ledger_key")
    frame["send_at"] = pd.to_datetime(frame["send_at"], utc=True)  # naive values (SQLite) are UTC
    frame["retryable"] = frame["retryable"].astype(bool)
    return frame


def already_sent(engine: sa.Engine, keys: Iterable[str]) -> set[str]:
    """Keys that must not be sent (again): any row except a ``rejected`` one with a retryable error."""
    found = lookup(engine, keys)
    blocked = ~((found["status"] == "rejected") & found["retryable"])
    return set(found.index[blocked])


def customer_history(
    engine: sa.Engine, customer_refs: Iterable[str], *, since: datetime, until: datetime | None = None
) -> pd.DataFrame:
    """Mails that may have reached each customer (claimed, sending, accepted, unknown), for caps.

    Columns: customer_ref, kind, flow, ledger_key, at (UTC: the scheduled ``send_at``, else the
    dispatch or claim time), keeping rows with ``since <= at < until``.
    """
    since = aware(since, "since")
    until = None if until is None else aware(until, "until")
    refs = sorted(set(customer_refs))
    t = send_ledger.c
    rows = []
    with engine.connect() as conn:
        for chunk in chunks(refs, 2000):
            query = sa.select(t.customer_ref, t.kind, t.flow, t.ledger_key, t.send_at, t.dispatched_at, t.claimed_at)
            query = query.where(t.customer_ref.in_(chunk), t.status.in_(MAY_BE_SENT))
            # Coarse SQL filter on the claim time (a scheduled mail is at most 72 h after its claim).
            query = query.where(t.claimed_at >= since - timedelta(days=4))
            rows.extend(conn.execute(query).all())
    frame = pd.DataFrame(
        rows, columns=["customer_ref", "kind", "flow", "ledger_key", "send_at", "dispatched_at", "claimed_at"]
    )
    when = frame["send_at"].where(frame["send_at"].notna(), frame["dispatched_at"])
    when = when.where(when.notna(), frame["claimed_at"])
    frame["at"] = pd.to_datetime(when, utc=True)  # naive values (SQLite) are UTC
    keep = frame["at"] >= pd.Timestamp(since)
    if until is not None:
        keep &= frame["at"] < pd.Timestamp(until)
    return frame.loc[keep, ["customer_ref", "kind", "flow", "ledger_key", "at"]].reset_index(drop=True)


def claimed_count(engine: sa.Engine, market: str, *, since: datetime) -> int:
    """Mails of ``market`` claimed since ``since`` that may go out (accepted, unknown or in flight).

    The warm-up cap counts these: what the market has handed (or is handing) to SendGrid today.
    """
    t = send_ledger.c
    query = sa.select(sa.func.count()).where(
        t.market == market, t.claimed_at >= aware(since, "since"), t.status.in_(MAY_BE_SENT)
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def run_batch_id(engine: sa.Engine, run_id: str, market: str) -> str | None:
    """The batch id an earlier try of this run+market already used, so a retry keeps one batch."""
    t = send_ledger.c
    with engine.connect() as conn:
        return conn.execute(
            sa.select(t.batch_id).where(t.run_id == run_id, t.market == market, t.batch_id.is_not(None)).limit(1)
        ).scalar()


def record_send_run(
    engine: sa.Engine,
    ctx: ClaimContext,
    counts: dict[str, int],
    *,
    batch_id: str | None,
    gate_status: str,
    dry_run: bool,
    now: datetime | None = None,
) -> None:
    """Per-run, per-market counts by outcome (one row per outcome with a non-zero count)."""
    now = now_or_clock(now)
    rows = [
        {
            "run_id": ctx.run_id,
            "flow": ctx.flow,
            "market": ctx.market,
            "try_number": ctx.try_number,
            "outcome": outcome,
            "count": int(count),
            "batch_id": batch_id,
            "gate_status": gate_status,
            "dry_run": dry_run,
            "recorded_at": now,
        }
        for outcome, count in counts.items()
        if count
    ]
    if rows:
        transactional(engine, lambda conn: conn.execute(sa.insert(send_runs), rows))
