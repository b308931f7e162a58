"""The per-market send step every flow ends in: gate, checks, windows, render, ledger, send.

One implementation for recovery, welcome and campaign mail, so the guarantees (exactly once,
never to a suppressed address, never outside the customer's window, every member accounted
for) are written and tested once. ``send_market`` takes one market's audience and gives every
member exactly one outcome (``OUTCOMES``) with a reason, in this order of precedence:

0. a retry first reports what its own earlier tries already did (sent, scheduled, failed,
   unknown), from the ledger;
1. ``gated``: the market's deliverability gate is halted (nothing at all is sent);
2. ``invalid_address``: not a syntactically valid address (email-validator);
3. ``suppressed``: on a SendGrid or local suppression list (global, or the market's group);
4. ``no_consent``: the market requires marketing consent and the member has none;
5. ``already_sent``: the ledger key was sent, is in flight, or is unknown in another run;
6. ``capped``: one mail per person per run (highest ``value`` kept), then the frequency caps
   (``caps.py``) at the planned instant;
7. ``outside_window``: no allowed send instant within the horizon (72 h) (``send_windows``);
8. ``capped``: the market's daily warm-up cap, highest ``value`` first. Applied after the
   windows so that the day's slots go to members that can actually be sent now;
9. render, ledger claim, transport: ``failed`` (render error, invalid message, SendGrid
   refusal), ``sent``/``scheduled`` (accepted; scheduled when ``send_at`` is more than a
   minute after ``now``), ``unknown`` (the request may have reached SendGrid), or
   ``already_sent`` if another run claimed the key in the meantime. A render callback may also
   drop a member with ``RenderFailure(outcome="converted")`` (a cart bought at the last moment).

Suppressions are checked again for each chunk right before its claim, so an unsubscribe
recorded while a large market is being sent is honoured at once. The ledger protocol and its
crash policy are described in the ``ledger`` package.

Steps 0 to 8 are ``eligibility.Eligibility``; step 9, per chunk, is ``chunk.send_chunk``;
outcomes and their bookkeeping are ``outcomes``. This module is the template that runs them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from remarketing.delivery import ledger
from remarketing.delivery.caps import FrequencyCaps, flow_kind
from remarketing.delivery.chunk import send_chunk
from remarketing.delivery.eligibility import SUPPRESSION_SYNC_MAX_AGE, Eligibility, id_text
from remarketing.delivery.messages import Message
from remarketing.delivery.outcomes import OUTCOMES, RenderFailure
from remarketing.markets import Market
from remarketing.timing.send_windows import SEND_AT_HORIZON

log = logging.getLogger(__name__)
__all__ = ["OUTCOMES", "MarketSendSummary", "RenderFailure", "send_market"]


@dataclass
class MarketSendSummary:
    """What one market's send did: counts by outcome; XCom gets this, never rows."""

    flow: str
    market: str
    run_id: str
    try_number: int
    dry_run: bool
    batch_id: str | None
    gate: dict
    audience: int
    counts: dict[str, int]
    outcomes_path: str | None
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    def log_table(self) -> str:
        mode = " (dry run)" if self.dry_run else ""
        lines = [
            f"{self.flow} / {self.market}{mode}: gate {self.gate['status']}, audience {self.audience}, "
            f"{self.seconds:.1f} s"
        ]
        lines += [f"  gate: {reason}" for reason in self.gate.get("reasons") or []]
        lines += [f"  gate note: {note}" for note in self.gate.get("notes") or []]
        lines += [f"  note: {note}" for note in self.notes]
        width = max(len(o) for o in OUTCOMES)
        lines.append(f"  {'outcome'.ljust(width)}  count")
        for outcome in OUTCOMES:
            lines.append(f"  {outcome.ljust(width)}  {self.counts.get(outcome, 0)}")
        if self.outcomes_path:
            lines.append(f"  outcomes: {self.outcomes_path}")
        return "\n".join(lines)


def send_market(
    *,
    flow: str,
    market: Market,
    audience: pd.DataFrame,
    render: Callable[[pd.DataFrame], Iterable[Message | RenderFailure]],
    transport,
    engine: sa.Engine,
    run_id: str,
    try_number: int,
    now: datetime,
    caps: FrequencyCaps | None = None,
    dry_run: bool = False,
    api=None,
    horizon: timedelta = SEND_AT_HORIZON,
    outcomes_dir: Any = None,
    chunk_size: int = 1000,
    validate: Callable[[Message, datetime], None] | None = None,
) -> MarketSendSummary:
    """Send one market's audience; every member ends with one outcome (see module docstring).

    ``render`` gets a chunk of the audience (its columns plus ``ledger_key``, ``customer_ref``
    and ``send_at``) and yields Messages whose recipients carry those ledger keys, and
    RenderFailures for members it cannot mail. ``transport`` has ``send(messages) ->
    Iterator[SendResult]`` and ``create_batch_id()``. ``api`` (SendGridApi), when given,
    refreshes suppressions (if older than 10 min) and the market's stats first. ``outcomes_dir``
    (a Path or ObjectStoragePath) receives ``<flow>/run=<id>/market=<code>/try=<n>.parquet``.
    ``validate(message, now)`` checks a message before anything is claimed (default: SendGrid's
    rules, ``sendgrid_transport.validate_message``); ValueError makes those members ``failed``.
    Raises ValueError on a malformed audience (missing columns, another market, duplicate keys).
    """
    started = time.perf_counter()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    kind = flow_kind(flow)
    members = Eligibility(flow=flow, kind=kind, market=market, audience=audience, engine=engine, now=now)
    ctx = ledger.ClaimContext(run_id=run_id, market=market.code, try_number=int(try_number), flow=flow)
    if validate is None:
        from remarketing.delivery.sendgrid_transport import validate_message as validate

    recovered = {"unknown": 0, "taken_over": 0}
    if not dry_run:
        _reconcile_dead_attempts(engine, members.notes)
        ledger.begin_attempt(engine, ctx)
        recovered = _recover_earlier_try(engine, ctx, now, members.notes)
    members.earlier_tries(run_id)
    decision = members.gate(api, sync_max_age=SUPPRESSION_SYNC_MAX_AGE)
    if decision.status == "halted":
        log.warning("market %s halted: %s", market.code, "; ".join(decision.reasons))
    members.invalid_addresses()
    members.suppressed()
    members.no_consent()
    members.sent_elsewhere()
    members.one_per_person()
    windows = members.send_windows(horizon)
    members.frequency_capped(windows, caps or FrequencyCaps())
    members.outside_window(windows)
    members.warmup_capped(decision, recovered["taken_over"])
    batch_id = _render_claim_send(
        members, windows, ctx=ctx, transport=transport, render=render, validate=validate,
        run_id=run_id, dry_run=dry_run, chunk_size=chunk_size,
    )  # fmt: skip
    return _finish(
        members, decision, ctx=ctx, batch_id=batch_id, run_id=run_id, try_number=try_number,
        dry_run=dry_run, outcomes_dir=outcomes_dir, started=started,
    )  # fmt: skip


def _reconcile_dead_attempts(engine: sa.Engine, notes: list[str]) -> None:
    """Before planning: rows that attempts killed (or finished) left in flight, whatever their run."""
    reconciled = ledger.reconcile_dead_attempts(engine)
    if reconciled["released"] or reconciled["unknown"]:
        notes.append(
            f"reconciled the rows of dead attempts: {reconciled['released']} claims released (never sent, "
            f"eligible again), {reconciled['unknown']} in flight when they died: unknown, not resent"
        )


def _recover_earlier_try(engine: sa.Engine, ctx: ledger.ClaimContext, now: datetime, notes: list[str]) -> dict:
    """An earlier try of this run that died mid-send: its in-flight rows become unknown, its claims ours."""
    recovered = ledger.recover_try(engine, ctx, now=now)
    if recovered["unknown"]:
        notes.append(f"{recovered['unknown']} mails of an earlier try were cut off mid-send: unknown, not resent")
    if recovered["taken_over"]:
        notes.append(f"{recovered['taken_over']} claims of an earlier try taken over")
    return recovered


def _render_claim_send(
    members: Eligibility, windows: pd.DataFrame, *, ctx, transport, render, validate, run_id, dry_run, chunk_size
) -> str | None:
    """9. Render, claim, send the members still pending, chunk by chunk; returns the run's batch id."""
    frame, out, engine, market = members.frame, members.out, members.engine, members.market
    pending = np.flatnonzero(out.pending())
    batch_id = None if dry_run else ledger.run_batch_id(engine, run_id, market.code)  # one batch per market run
    if not len(pending):
        if not dry_run:
            ledger.release_claims(engine, ctx)
            ledger.finish_attempt(engine, ctx)
        return batch_id
    frame["send_at"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    frame.loc[pending, "send_at"] = windows["send_at"].reindex(frame.index[pending])
    if not dry_run and batch_id is None:
        batch_id = transport.create_batch_id()
    todo = frame.loc[pending].sort_values("ledger_key")
    for start in range(0, len(todo), chunk_size):
        send_chunk(
            chunk=todo.iloc[start : start + chunk_size], flow=members.flow, kind=members.kind, market=market,
            ctx=ctx, engine=engine, transport=transport, render=render, validate=validate, out=out,
            now=members.now, batch_id=batch_id, dry_run=dry_run,
        )  # fmt: skip
    if not dry_run:
        released = ledger.release_claims(engine, ctx)
        if released:
            members.notes.append(f"{released} claims of earlier tries released (no longer due)")
        ledger.finish_attempt(engine, ctx)
    return batch_id


def _optional_text(frame: pd.DataFrame, column: str) -> pd.Series:
    """A text column the audience may lack (``step`` or ``arm``): None where missing."""
    if column not in frame:
        return pd.Series(None, index=frame.index, dtype=object)
    values = frame[column].astype(object)
    return values.where(values.notna(), None).map(lambda v: v if v is None else str(v))


def _finish(
    members: Eligibility, decision, *, ctx, batch_id, run_id, try_number, dry_run, outcomes_dir, started
) -> MarketSendSummary:
    """Every member accounted for: outcomes to Parquet, counts to ``send_runs``, the summary."""
    frame, out, market = members.frame, members.out, members.market
    left = np.flatnonzero(out.pending())
    if len(left):  # a bug, not a member to lose silently
        raise AssertionError(f"market {market.code}: {len(left)} audience rows got no outcome")
    counts = {o: int(c) for o, c in pd.Series(out.outcome).value_counts().items()}
    outcomes = pd.DataFrame(
        {
            "ledger_key": frame["ledger_key"].astype(object),
            "customer_ref": frame["customer_ref"].astype(object),
            "customer_id": frame["customer_id"].astype(object).map(id_text),
            "step": _optional_text(frame, "step"),
            "arm": _optional_text(frame, "arm"),
            "subject_kind": frame["subject_kind"].astype(str),
            "subject_id": frame["subject_id"].astype(str),
            "variant": frame["variant"].astype(str),
            "outcome": out.outcome,
            "reason": out.reason,
            "send_at": pd.to_datetime(pd.Series(out.send_at, dtype=object), utc=True),
            "http_status": pd.array(out.http_status, dtype="Int64"),
        }
    )
    path = write_outcomes(
        outcomes, outcomes_dir, flow=members.flow, run_id=run_id, market=market.code, try_number=try_number,
        dry_run=dry_run,
    )  # fmt: skip
    ledger.record_send_run(
        members.engine, ctx, counts, batch_id=batch_id, gate_status=decision.status, dry_run=dry_run, now=members.now
    )
    summary = MarketSendSummary(
        flow=members.flow,
        market=market.code,
        run_id=run_id,
        try_number=int(try_number),
        dry_run=dry_run,
        batch_id=batch_id,
        gate=decision.to_dict(),
        audience=len(frame),
        counts={o: counts.get(o, 0) for o in OUTCOMES},
        outcomes_path=path,
        seconds=round(time.perf_counter() - started, 3),
        notes=members.notes,
    )
    log.info("%s", summary.log_table())
    return summary


def write_outcomes(
    outcomes: pd.DataFrame, base: Any, *, flow: str, run_id: str, market: str, try_number: int, dry_run: bool
) -> str | None:
    if base is None:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    from remarketing.platform.storage import run_folder_name

    if isinstance(base, str):
        from pathlib import Path

        base = Path(base)
    folder = base / "sends" / flow / run_folder_name(run_id) / f"market={market}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"try={try_number}{'-dry' if dry_run else ''}.parquet"
    table = pa.Table.from_pandas(outcomes, preserve_index=False)
    with path.open("wb") as handle:
        pq.write_table(table, handle, compression="zstd")
    return str(path)
