"""The claim protocol: claim, mark sending, record; and the clean-up of what a crash leaves."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from remarketing.delivery.ledger.keys import LedgerError, text_or_none
from remarketing.delivery.ledger.tables import (
    DEFAULT_LEASE,
    DEFAULT_STALE_AGE,
    IN_FLIGHT,
    KEY_CHUNK,
    send_attempts,
    send_ledger,
)
from remarketing.delivery.messages import SendResult
from remarketing.platform.clock import now_or_clock
from remarketing.platform.state import chunks, dialect_insert


def _new_attempt() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class ClaimContext:
    """Who is claiming: one process attempt of one try of one market task of one run of one flow.

    The token is unique to the process attempt (``attempt``, random), not only to the try: two
    processes running the same try (a zombie worker after a lost heartbeat, ``airflow tasks test``
    beside the scheduled one) hold different tokens, and the later one fences the earlier out.
    """

    run_id: str
    market: str
    try_number: int
    flow: str
    attempt: str = field(default_factory=_new_attempt)

    @property
    def token(self) -> str:
        return f"{self.run_id}|{self.market}|try{self.try_number}|{self.attempt}"


def _insert_ignoring_duplicates(engine: sa.Engine):
    """INSERT ... ON CONFLICT DO NOTHING on the ledger key (SQLite and PostgreSQL)."""
    return dialect_insert(engine.dialect.name)(send_ledger).on_conflict_do_nothing(index_elements=["ledger_key"])


_TRANSIENT = ("deadlock detected", "could not serialize", "database is locked", "database table is locked")


def transactional(engine: sa.Engine, work, attempts: int = 6):
    """Run ``work(connection)`` in a transaction, retrying lock conflicts (deadlock, SQLite busy)."""
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                return work(conn)
        except sa.exc.OperationalError as exc:
            if attempt == attempts - 1 or not any(t in str(exc.orig).lower() for t in _TRANSIENT):
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def _is_retryable(result: SendResult) -> bool:
    """A rejected result a later run may retry: rate limit or server error, or never sent at all."""
    if result.outcome != "rejected":
        return False
    return result.status is None or result.status == 429 or result.status >= 500


# ---------------------------------------------------------------------------------------------
# Protocol


def _wall(wall_now: datetime | None) -> datetime:
    """Leases are about real processes: the wall clock, whatever instant a run rehearses."""
    return (wall_now or datetime.now(UTC)).astimezone(UTC)


def begin_attempt(engine: sa.Engine, ctx: ClaimContext, *, wall_now: datetime | None = None) -> None:
    """Register this process attempt (its token) as alive."""
    now = _wall(wall_now)
    row = {"claim_token": ctx.token, "run_id": ctx.run_id, "market": ctx.market, "flow": ctx.flow}
    row.update(try_number=ctx.try_number, started_at=now, heartbeat_at=now, finished_at=None)
    transactional(engine, lambda conn: conn.execute(sa.insert(send_attempts), [row]))


def heartbeat(engine: sa.Engine, ctx: ClaimContext, *, wall_now: datetime | None = None, conn=None) -> None:
    """This attempt is alive: moves its lease on (inside ``conn``'s transaction when given)."""
    statement = (
        sa.update(send_attempts).where(send_attempts.c.claim_token == ctx.token).values(heartbeat_at=_wall(wall_now))
    )
    if conn is not None:
        conn.execute(statement)
    else:
        transactional(engine, lambda c: c.execute(statement))


def finish_attempt(engine: sa.Engine, ctx: ClaimContext, *, wall_now: datetime | None = None) -> None:
    """This attempt is done: whatever it still holds in flight is for the next run to reconcile."""
    now = _wall(wall_now)
    statement = (
        sa.update(send_attempts)
        .where(send_attempts.c.claim_token == ctx.token)
        .values(heartbeat_at=now, finished_at=now)
    )
    transactional(engine, lambda conn: conn.execute(statement))


def reconcile_dead_attempts(
    engine: sa.Engine, *, lease: timedelta = DEFAULT_LEASE, wall_now: datetime | None = None
) -> dict[str, int]:
    """Before a run plans: rows in flight under attempts that are finished or dead (no heartbeat within ``lease``).

    ``claimed`` rows never reached SendGrid: released (deleted), so the member is eligible again;
    ``sending`` rows may have: ``unknown``, never resent. Rows of attempts still alive are left
    alone (overlapping runs). Returns ``{"unknown": n, "released": m}``.
    """
    cutoff = _wall(wall_now) - lease
    a, t = send_attempts.c, send_ledger.c
    gone = sa.select(a.claim_token).where(sa.or_(a.finished_at.is_not(None), a.heartbeat_at < cutoff))

    def work(conn):
        unknown = conn.execute(
            sa.update(send_ledger)
            .where(t.status == "sending", t.claim_token.in_(gone))
            .values(status="unknown", finished_at=_wall(wall_now), error="attempt died after dispatch; outcome unknown")
        ).rowcount
        released = conn.execute(sa.delete(send_ledger).where(t.status == "claimed", t.claim_token.in_(gone))).rowcount
        conn.execute(
            sa.delete(send_attempts).where(
                a.claim_token.in_(gone),
                ~sa.exists().where(t.claim_token == a.claim_token, t.status.in_(IN_FLIGHT)),
                a.heartbeat_at < cutoff,
            )
        )
        return {"unknown": unknown, "released": released}

    return transactional(engine, work)


def recover_try(engine: sa.Engine, ctx: ClaimContext, *, now: datetime | None = None) -> dict[str, int]:
    """Start of a try: settle what this run+market's earlier tries left in flight.

    ``sending`` rows become ``unknown`` (they may have reached SendGrid: never resent);
    ``claimed`` rows are taken over by this try's token at once, so a zombie earlier try can no
    longer move them to ``sending``. Returns ``{"unknown": n, "taken_over": m}``.
    """
    now = now_or_clock(now)
    t = send_ledger.c
    mine = (t.run_id == ctx.run_id, t.market == ctx.market, t.claim_token != ctx.token)

    def work(conn):
        unknown = conn.execute(
            sa.update(send_ledger)
            .where(t.status == "sending", *mine)
            .values(status="unknown", finished_at=now, error="try interrupted after dispatch; outcome unknown")
        ).rowcount
        taken = conn.execute(
            sa.update(send_ledger).where(t.status == "claimed", *mine).values(claim_token=ctx.token, claimed_at=now)
        ).rowcount
        return {"unknown": unknown, "taken_over": taken}

    return transactional(engine, work)


def claim(engine: sa.Engine, ctx: ClaimContext, rows: pd.DataFrame, *, now: datetime | None = None) -> set[str]:
    """Claim ``rows`` (one chunk); returns the keys this try now holds, the others belong to someone else.

    ``rows`` columns: ledger_key, kind, customer_ref, customer_id, subject_kind, subject_id, variant,
    step and/or arm, send_at (aware or NaT), batch_id (optional). Besides fresh inserts, this try takes over rows
    its own run+market left ``claimed`` in an earlier try, and re-claims rows another run left
    ``rejected`` with a retryable error.
    """
    now = now_or_clock(now)
    if rows.empty:
        return set()
    if not rows["ledger_key"].is_unique:
        dupes = rows.loc[rows["ledger_key"].duplicated(), "ledger_key"].head(3).tolist()
        raise LedgerError(f"duplicate ledger keys in one claim: {dupes}")
    rows = rows.sort_values("ledger_key")  # one lock order for every claimer
    send_at = pd.to_datetime(rows["send_at"], utc=True) if "send_at" in rows else pd.Series(pd.NaT, index=rows.index)
    batch = rows["batch_id"] if "batch_id" in rows else pd.Series(None, index=rows.index, dtype=object)
    records = []
    none = pd.Series(None, index=rows.index, dtype=object)
    names = (
        "ledger_key",
        "kind",
        "step",
        "arm",
        "customer_ref",
        "customer_id",
        "subject_kind",
        "subject_id",
        "variant",
    )
    columns = [rows.get(name, none).astype(object).tolist() for name in names]
    for (key, kind, step, arm, ref, customer_id, subject_kind, subject_id, variant), at, batch_id in zip(
        zip(*columns, strict=True), send_at.tolist(), batch.tolist(), strict=True
    ):
        if customer_id is None or customer_id is pd.NA or (isinstance(customer_id, float) and math.isnan(customer_id)):
            customer_id = None
        elif isinstance(customer_id, float) and customer_id.is_integer():
            customer_id = str(int(customer_id))
        else:
            customer_id = str(customer_id)
        records.append(
            {
                "ledger_key": key,
                "flow": ctx.flow,
                "kind": kind,
                "step": text_or_none(step),
                "arm": text_or_none(arm),
                "market": ctx.market,
                "customer_ref": ref,
                "customer_id": customer_id,
                "subject_kind": str(subject_kind),
                "subject_id": str(subject_id),
                "variant": str(variant),
                "run_id": ctx.run_id,
                "claim_token": ctx.token,
                "status": "claimed",
                "retryable": False,
                "claimed_at": now,
                "send_at": None if pd.isna(at) else at.to_pydatetime(),
                "batch_id": None if batch_id is None or pd.isna(batch_id) else str(batch_id),
                "attempts": 0,
            }
        )
    held: set[str] = set()
    insert = _insert_ignoring_duplicates(engine)
    for chunk in chunks(records, KEY_CHUNK):
        held |= transactional(engine, lambda conn, c=chunk: _claim_chunk(conn, ctx, c, insert, now))
    return held


def _claim_chunk(conn: sa.Connection, ctx: ClaimContext, records: list[dict], insert, now: datetime) -> set[str]:
    t = send_ledger.c
    keys = [r["ledger_key"] for r in records]
    heartbeat(conn.engine, ctx, conn=conn)
    conn.execute(insert, records)
    # Take over our own run+market's rows that an earlier try claimed but never dispatched.
    conn.execute(
        sa.update(send_ledger)
        .where(
            t.ledger_key.in_(keys),
            t.run_id == ctx.run_id,
            t.market == ctx.market,
            t.status == "claimed",
            t.claim_token != ctx.token,
        )
        .values(claim_token=ctx.token, claimed_at=now)
    )
    # Re-claim keys another run could not send for a retryable reason (compare-and-set on status).
    retry = set(
        conn.execute(
            sa.select(t.ledger_key).where(
                t.ledger_key.in_(keys), t.status == "rejected", t.retryable.is_(True), t.run_id != ctx.run_id
            )
        ).scalars()
    )
    for record in records:
        if record["ledger_key"] not in retry:
            continue
        values = {k: v for k, v in record.items() if k not in ("ledger_key", "attempts")}
        values.update(dispatched_at=None, finished_at=None, http_status=None, error=None, message_id=None)
        conn.execute(
            sa.update(send_ledger)
            .where(t.ledger_key == record["ledger_key"], t.status == "rejected", t.retryable.is_(True))
            .values(**values)
        )
    held = conn.execute(
        sa.select(t.ledger_key).where(t.ledger_key.in_(keys), t.claim_token == ctx.token, t.status == "claimed")
    )
    return set(held.scalars())


def mark_sending(
    engine: sa.Engine,
    ctx: ClaimContext,
    keys: Iterable[str],
    *,
    now: datetime | None = None,
    batch_id: str | None = None,
) -> set[str]:
    """Step 2, in one transaction: the held ``claimed`` keys become ``sending``; returns those moved.

    Only keys returned here may be handed to the transport: a key another try took over (or
    ``reconcile_stale`` released) is no longer ``claimed`` under this token and stays unsent.
    """
    now = now_or_clock(now)
    keys = sorted(set(keys))
    t = send_ledger.c
    values: dict[str, Any] = {"status": "sending", "dispatched_at": now}
    if batch_id is not None:
        values["batch_id"] = batch_id

    def work(conn):
        heartbeat(engine, ctx, conn=conn)
        moved = 0
        for chunk in chunks(keys, KEY_CHUNK):
            moved += conn.execute(
                sa.update(send_ledger)
                .where(t.ledger_key.in_(chunk), t.claim_token == ctx.token, t.status == "claimed")
                .values(**values)
            ).rowcount
        if moved == len(keys):
            return set(keys)
        held = set()
        for chunk in chunks(keys, KEY_CHUNK):
            held |= set(
                conn.execute(
                    sa.select(t.ledger_key).where(
                        t.ledger_key.in_(chunk), t.claim_token == ctx.token, t.status == "sending"
                    )
                ).scalars()
            )
        return held

    return transactional(engine, work)


_RESULT_UPDATE = (
    sa.update(send_ledger)
    .where(
        send_ledger.c.ledger_key == sa.bindparam("b_key"),
        send_ledger.c.claim_token == sa.bindparam("b_token"),
        # Literal comparisons, not IN: an expanding IN cannot be used with executemany.
        sa.or_(send_ledger.c.status == "sending", send_ledger.c.status == "unknown"),
    )
    .values(
        status=sa.bindparam("b_status"),
        retryable=sa.bindparam("b_retryable"),
        finished_at=sa.bindparam("b_finished"),
        http_status=sa.bindparam("b_http"),
        error=sa.bindparam("b_error"),
        message_id=sa.bindparam("b_message"),
        attempts=send_ledger.c.attempts + sa.bindparam("b_attempts"),
    )
)


def record_results(
    engine: sa.Engine, ctx: ClaimContext, results: Iterable[SendResult], *, now: datetime | None = None
) -> int:
    """Step 3: store outcomes (one transaction for the batch); returns rows updated.

    Conditioned on this try's token and on ``sending`` (or ``unknown``, should a newer try have
    given up on this one while its answer was still on the way): a finished row never changes.
    """
    now = now_or_clock(now)
    params = []
    for result in results:
        if result.outcome not in ("accepted", "rejected", "unknown"):
            raise LedgerError(f"unknown send outcome {result.outcome!r} for keys {list(result.ledger_keys)[:3]}")
        for key in result.ledger_keys:
            params.append(
                {
                    "b_key": key,
                    "b_token": ctx.token,
                    "b_status": result.outcome,
                    "b_retryable": _is_retryable(result),
                    "b_finished": now,
                    "b_http": result.status,
                    "b_error": None if result.error is None else str(result.error)[:2000],
                    "b_message": result.message_id,
                    "b_attempts": int(result.attempts or 0),
                }
            )
    if not params:
        return 0
    return transactional(engine, lambda conn: conn.execute(_RESULT_UPDATE, params).rowcount)


class ResultRecorder:
    """Batches ``record_results`` while results stream in: flushes every ``batch`` keys or ``seconds``."""

    def __init__(self, engine: sa.Engine, ctx: ClaimContext, *, batch: int = 500, seconds: float = 0.5):
        self.engine, self.ctx, self.batch, self.seconds = engine, ctx, batch, seconds
        self._pending: list[SendResult] = []
        self._pending_keys = 0
        self._last = time.monotonic()
        self.recorded = 0

    def add(self, result: SendResult) -> None:
        self._pending.append(result)
        self._pending_keys += len(result.ledger_keys)
        if self._pending_keys >= self.batch or time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.recorded += record_results(self.engine, self.ctx, self._pending)
        self._pending, self._pending_keys, self._last = [], 0, time.monotonic()

    def __enter__(self) -> ResultRecorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.flush()  # also on error: whatever arrived is worth keeping


def release_claims(engine: sa.Engine, ctx: ClaimContext) -> int:
    """End of a try: delete this run+market's rows still ``claimed`` (taken over but no longer due).

    Every row this try meant to send has moved on to ``sending`` by now; what is left never
    reached SendGrid, and releasing it lets a later run send it if it becomes due again.
    """
    t = send_ledger.c

    def work(conn):
        return conn.execute(
            sa.delete(send_ledger).where(t.run_id == ctx.run_id, t.market == ctx.market, t.status == "claimed")
        ).rowcount

    return transactional(engine, work)


def reconcile_stale(
    engine: sa.Engine,
    older_than: timedelta = DEFAULT_STALE_AGE,
    *,
    now: datetime | None = None,
    live_run_ids: Iterable[str] = (),
) -> dict[str, int]:
    """Clean up in-flight rows of runs that are gone: claimed before ``now - older_than``.

    ``sending`` rows become ``unknown`` (they may have been sent); ``claimed`` rows are released
    (deleted: they never reached SendGrid). Rows of ``live_run_ids`` are left alone.
    Returns ``{"unknown": n, "released": m}``.
    """
    now = now_or_clock(now)
    cutoff = now - older_than
    live = list(live_run_ids)
    t = send_ledger.c

    def work(conn):
        base = [t.claimed_at < cutoff]
        if live:
            base.append(t.run_id.not_in(live))
        unknown = conn.execute(
            sa.update(send_ledger)
            .where(t.status == "sending", *base)
            .values(status="unknown", finished_at=now, error="stale: run gone after dispatch; outcome unknown")
        ).rowcount
        released = conn.execute(sa.delete(send_ledger).where(t.status == "claimed", *base)).rowcount
        return {"unknown": unknown, "released": released}

    return transactional(engine, work)


def mark_outcome(
    engine: sa.Engine,
    ledger_key: str,
    status: str,
    *,
    http_status: int | None = None,
    error: str | None = None,
    message_id: str | None = None,
    retryable: bool = False,
    now: datetime | None = None,
) -> bool:
    """Reconcile an ``unknown`` (or ``sending``) row from SendGrid's events: ``accepted`` or ``rejected``.

    For the feedback loop: a ``processed`` event proves acceptance, a ``dropped`` one rejection.
    Finished rows are not changed (returns False); True when the row was updated.
    """
    if status not in ("accepted", "rejected"):
        raise LedgerError(f"ledger key {ledger_key}: an outcome is 'accepted' or 'rejected', not {status!r}")
    now = now_or_clock(now)
    t = send_ledger.c
    values: dict[str, Any] = {"status": status, "finished_at": now, "retryable": retryable and status == "rejected"}
    if http_status is not None:
        values["http_status"] = http_status
    if error is not None:
        values["error"] = error[:2000]
    if message_id is not None:
        values["message_id"] = message_id

    def work(conn):
        return conn.execute(
            sa.update(send_ledger)
            .where(t.ledger_key == ledger_key, t.status.in_(("unknown", "sending")))
            .values(**values)
        ).rowcount

    return transactional(engine, work) == 1
