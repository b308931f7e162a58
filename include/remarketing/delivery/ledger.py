"""The send ledger: exactly-once intent for every email, across retries, re-runs and crashes.

One row per email we mean to send, keyed by ``flow/step/customer/subject/content_version``
(``ledger_key``). The key holds no personal data: a guest without a customer id is named by a
stable hash of the normalised address (``g`` + 20 hex digits), never by the address.

Protocol (the send step follows it chunk by chunk):

1. **claim**: INSERT the chunk's keys as ``claimed`` with this try's ``claim_token``
   (``run_id|market|try N``). The primary key makes a second claimer lose; the claimer then
   reads back which keys carry its own token. Keys are claimed in sorted order, so concurrent
   PostgreSQL writers take row locks in the same order and cannot deadlock each other.
2. **mark sending**: one transaction flips keys to ``sending`` right before their HTTP calls
   (the send step does it in batches of a few dozen recipients as the transport pulls messages,
   so a crash leaves few rows in doubt). Only rows still ``claimed`` under this token move, and only those are sent.
3. **record**: each result becomes ``accepted``, ``rejected`` or ``unknown`` as it arrives
   (batched). The update is conditioned on this token, so a late zombie cannot overwrite a
   newer try's work.

What a crash leaves behind, and who cleans it up:

* ``claimed`` rows never reached the HTTP call (step 2 commits before any request). The retry
  of the same task (same run and market, higher try number; Airflow runs one try at a time)
  takes them over at its start (compare-and-set on the token, so a zombie earlier try can no
  longer send them) and sends them; those no longer due (the member left the audience, or is
  now suppressed or capped) are released (deleted) at the end of the try.
* ``sending`` rows may or may not have reached SendGrid. The retry marks them ``unknown``
  and does NOT resend them.
* Another run's ``claimed``/``sending`` rows are never touched (overlapping runs). Only
  ``reconcile_stale`` deals with rows older than a stale age (default 6 h) whose run is gone:
  ``sending`` becomes ``unknown``; ``claimed`` is released, since it provably was never sent
  (a zombie holding that token can no longer move it to ``sending``).

Retry policy for finished rows:

* ``accepted`` and ``unknown`` are final for sending: the key is never sent again. ``unknown``
  is reconciled later from SendGrid's ``processed`` events (the feedback loop) through
  ``mark_outcome``; by default an unknown outcome is not resent, because a duplicate email is
  worse than a missed one.
* ``rejected`` is retried by a later run only when the failure was retryable (429 or 5xx after
  the transport's retries, or a request that provably never left): ``retryable`` is true. A
  4xx other than 429 is final: the same request would be refused again.

Times are stored timezone-aware UTC; SQLite hands them back naive, and they are read as UTC.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from remarketing.delivery.messages import SendResult
from remarketing.platform.clock import aware, now_or_clock
from remarketing.platform.state import chunks, dialect_insert

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
    sa.Column("step", sa.String(32), nullable=False),
    sa.Column("market", sa.String(8), nullable=False),
    sa.Column("customer_ref", sa.String(80), nullable=False),
    sa.Column("customer_id", sa.String(64)),
    sa.Column("subject_id", sa.String(128), nullable=False),
    sa.Column("content_version", sa.String(64), nullable=False),
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


_BAD_KEY_PART = re.compile(r"[/\s]")


class LedgerError(ValueError):
    """A ledger key or row that cannot be built from the given values."""


# ---------------------------------------------------------------------------------------------
# Keys


def normalise_email(email: str) -> str:
    """Lower-case, trimmed: how SendGrid compares addresses, and how we hash and match them."""
    return email.strip().lower()


def guest_ref(email: str) -> str:
    """A stable, non-reversible name for a guest: ``g`` + 20 hex digits of SHA-256 of the address."""
    if not isinstance(email, str) or not email.strip():
        raise LedgerError("a guest (no customer_id) needs an email to derive its ledger identity")
    return "g" + hashlib.sha256(normalise_email(email).encode("utf-8")).hexdigest()[:20]


def _part(value: Any, field: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        raise LedgerError(f"ledger key field {field} is missing")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # ids that went through a float column (NaN for guests)
    text = str(value).strip()
    if not text or _BAD_KEY_PART.search(text):
        raise LedgerError(f"ledger key field {field}={text!r} must be non-empty, without '/' or spaces")
    return text


def customer_ref(customer_id: Any, email: str | None = None) -> str:
    """``c<customer_id>`` for customers, ``g<hash>`` for guests."""
    if customer_id is None or customer_id is pd.NA or (isinstance(customer_id, float) and math.isnan(customer_id)):
        return guest_ref(email)  # type: ignore[arg-type]
    return "c" + _part(customer_id, "customer_id")


def ledger_key(
    flow: str, step: Any, customer_id: Any, subject_id: Any, content_version: Any, *, email: str | None = None
) -> str:
    """Readable key without personal data, e.g. ``cart_recovery/1/c42/cart9001/v1``.

    ``customer_id`` None (a guest) needs ``email``, which is hashed (``g...``), never stored.
    """
    parts = (
        _part(flow, "flow"),
        _part(step, "step"),
        customer_ref(customer_id, email),
        _part(subject_id, "subject_id"),
        _part(content_version, "content_version"),
    )
    key = "/".join(parts)
    if len(key) > 250:
        raise LedgerError(f"ledger key longer than 250 characters (subject_id {parts[3]!r})")
    return key


def ledger_keys(flow: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Vectorised keys for an audience: a copy with ``customer_ref`` and ``ledger_key`` columns.

    Needs ``step``, ``subject_id``, ``content_version`` and either ``customer_ref`` or
    ``customer_id`` and ``email``. Errors name the customer.
    """
    out = frame.copy()
    if "customer_ref" not in out:
        refs = [
            customer_ref(cid, email)
            for cid, email in zip(out["customer_id"].astype(object).tolist(), out["email"].tolist(), strict=True)
        ]
        out["customer_ref"] = pd.Series(refs, index=out.index, dtype=object)
    flow_part = _part(flow, "flow")
    keys = []
    columns = (out["customer_ref"], out["step"], out["subject_id"], out["content_version"])
    for ref, step, subject, version in zip(*(c.astype(object).tolist() for c in columns), strict=True):
        try:
            parts = (_part(step, "step"), _part(ref, "customer_ref"), _part(subject, "subject_id"))
            key = "/".join((flow_part, *parts, _part(version, "content_version")))
        except LedgerError as exc:
            raise LedgerError(f"customer {ref}: {exc}") from None
        if len(key) > 250:
            raise LedgerError(f"customer {ref}: ledger key longer than 250 characters")
        keys.append(key)
    out["ledger_key"] = pd.Series(keys, index=out.index, dtype=object)
    return out


# ---------------------------------------------------------------------------------------------
# Helpers


@dataclass(frozen=True)
class ClaimContext:
    """Who is claiming: one try of one market task of one run of one flow."""

    run_id: str
    market: str
    try_number: int
    flow: str

    @property
    def token(self) -> str:
        return f"{self.run_id}|{self.market}|try{self.try_number}"


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

    ``rows`` columns: ledger_key, kind, step, customer_ref, customer_id, subject_id, content_version,
    send_at (aware or NaT), batch_id (optional). Besides fresh inserts, this try takes over rows
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
    names = ("ledger_key", "kind", "step", "customer_ref", "customer_id", "subject_id", "content_version")
    columns = [rows[name].astype(object).tolist() for name in names]
    for (key, kind, step, ref, customer_id, subject_id, version), at, batch_id in zip(
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
                "step": str(step),
                "market": ctx.market,
                "customer_ref": ref,
                "customer_id": customer_id,
                "subject_id": str(subject_id),
                "content_version": str(version),
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
