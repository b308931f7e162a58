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
crash policy are described in ``ledger.py``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from remarketing.delivery import ledger
from remarketing.delivery.caps import FrequencyCaps, capped_reasons, consent_mask, flow_kind
from remarketing.delivery.gate import GateDecision, check_market, market_category
from remarketing.delivery.messages import Message, SendResult
from remarketing.delivery.suppressions import suppression_reasons, sync_suppressions
from remarketing.markets import Market, MarketConfig
from remarketing.timing.send_windows import SEND_AT_HORIZON, compute_send_at, resolve_time_zones

log = logging.getLogger(__name__)

OUTCOMES = (
    "sent",
    "scheduled",
    "suppressed",
    "capped",
    "gated",
    "no_consent",
    "invalid_address",
    "outside_window",
    "already_sent",
    "converted",
    "failed",
    "unknown",
)
REQUIRED_COLUMNS = (
    "customer_id",
    "email",
    "market",
    "locale",
    "time_zone",
    "earliest_at",
    "best_hour",
    "marketing_consent",
    "value",
    "step",
    "subject_id",
    "content_version",
)
SCHEDULED_AFTER = timedelta(minutes=1)
# Batches of the ledger protocol: small enough that a crash leaves few outcomes unknown, large
# enough that SQLite commits do not dominate (about 150 per 10,000 mails).
MARK_BATCH = 64  # recipients flipped to "sending" per transaction, just before their requests
RECORD_BATCH = 128  # results stored per transaction ...
RECORD_SECONDS = 0.25  # ... or at least this often
SUPPRESSION_SYNC_MAX_AGE = timedelta(minutes=10)
_EMAIL = re.compile(r"[^\s@<>()\"',;:]+@[^\s@<>()\"',;:]+")


@dataclass(frozen=True)
class RenderFailure:
    """A member the render callback could not (or should not) mail; ``outcome`` failed or converted."""

    ledger_keys: tuple[str, ...]
    error: str
    outcome: str = "failed"


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


def _scrub(text: object) -> str:
    """No addresses in reasons: they end up in logs and Parquet."""
    return _EMAIL.sub("<address>", str(text))[:1000]


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def _valid_addresses(emails: pd.Series) -> pd.Series:
    """email-validator's syntax verdict per address (no DNS).

    Most audiences share a few domains: a plain ASCII dot-atom local part on a domain that
    email-validator already accepted is valid without asking again; anything else is checked
    whole. That keeps 100k addresses well under a second.
    """
    from email_validator import EmailNotValidError, validate_email

    def check(address: str) -> bool:
        try:
            validate_email(address, check_deliverability=False)
            return True
        except EmailNotValidError:
            return False

    domains: dict[str, bool] = {}
    verdicts: dict[str, bool] = {}
    for email in pd.unique(emails.dropna()):
        if not isinstance(email, str):
            continue
        address = email.strip()
        local, at, domain = address.rpartition("@")
        if at and len(address) <= 254 and len(local) <= 64 and _DOT_ATOM.fullmatch(local):
            if domain not in domains:
                domains[domain] = check(f"a@{domain}")
            verdicts[email] = domains[domain]
        else:
            verdicts[email] = check(address)
    return emails.map(lambda e: verdicts.get(e, False) if isinstance(e, str) else False).astype(bool)


def _id_text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _refs(frame: pd.DataFrame, valid: pd.Series) -> pd.Series:
    """customer_ref per row; None for a guest without a usable address (no key can name it)."""
    out = []
    columns = (frame["customer_id"].astype(object).tolist(), frame["email"].tolist(), valid.tolist())
    for cid, email, ok in zip(*columns, strict=True):
        if cid is None or cid is pd.NA or (isinstance(cid, float) and np.isnan(cid)):
            out.append(ledger.guest_ref(email) if ok else None)
        else:
            out.append(ledger.customer_ref(cid))
    return pd.Series(out, index=frame.index, dtype=object)


class _Outcomes:
    """Outcome, reason and send_at per audience row (positional), set once each."""

    def __init__(self, n: int):
        self.outcome = np.full(n, None, dtype=object)
        self.reason = np.full(n, None, dtype=object)
        self.send_at = np.full(n, None, dtype=object)
        self.http_status = np.full(n, None, dtype=object)

    def pending(self) -> np.ndarray:
        return pd.isna(self.outcome)

    def set(self, rows, outcome: str, reason=None, send_at=None, http_status=None) -> None:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if len(rows) == 0:
            return
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        already = rows[~pd.isna(self.outcome[rows])]
        if len(already):
            raise AssertionError(f"rows {already[:3].tolist()} got a second outcome {outcome!r}")
        self.outcome[rows] = outcome
        self.reason[rows] = reason
        if send_at is not None:
            if isinstance(send_at, list):
                values = np.empty(len(send_at), dtype=object)
                values[:] = send_at  # Timestamps stay whole (numpy would otherwise try to unpack them)
                send_at = values
            self.send_at[rows] = send_at
        if http_status is not None:
            self.http_status[rows] = http_status


def _check_audience(audience: pd.DataFrame, market: Market) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in audience.columns]
    if missing:
        raise ValueError(f"market {market.code}: the audience lacks columns {missing}")
    wrong = audience["market"].astype(object) != market.code
    if wrong.any():
        row = audience.loc[wrong].iloc[0]
        raise ValueError(
            f"market {market.code}: {int(wrong.sum())} audience rows belong to another market "
            f"(first: customer_id {row['customer_id']}, market {row['market']})"
        )


def _outcome_of_result(result: SendResult, scheduled: bool) -> tuple[str, str | None]:
    if result.outcome == "accepted":
        return ("scheduled" if scheduled else "sent"), None
    if result.outcome == "unknown":
        return "unknown", _scrub(result.error or "no answer after the request was sent")
    status = f"HTTP {result.status}: " if result.status else ""
    return "failed", _scrub(f"{status}{result.error or 'rejected'}")


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
    caps = caps or FrequencyCaps()
    kind = flow_kind(flow)
    _check_audience(audience, market)
    ctx = ledger.ClaimContext(run_id=run_id, market=market.code, try_number=int(try_number), flow=flow)
    if validate is None:
        from remarketing.delivery.sendgrid_transport import validate_message as validate

    frame = audience.reset_index(drop=True).copy()
    frame["email"] = frame["email"].map(lambda e: e.strip() if isinstance(e, str) else e)  # as it will be sent
    n = len(frame)
    out = _Outcomes(n)
    notes: list[str] = []

    valid = _valid_addresses(frame["email"])
    frame["customer_ref"] = _refs(frame, valid)
    keys = np.full(n, None, dtype=object)
    keyed = frame["customer_ref"].notna().to_numpy()
    if keyed.any():
        keys[keyed] = ledger.ledger_keys(flow, frame.loc[keyed])["ledger_key"].to_numpy()
    frame["ledger_key"] = keys
    dupes = frame["ledger_key"].dropna()
    dupes = dupes[dupes.duplicated()]
    if len(dupes):
        raise ValueError(f"market {market.code}: ledger key {dupes.iloc[0]} appears twice in the audience")

    recovered = {"unknown": 0, "taken_over": 0}
    if not dry_run:
        recovered = ledger.recover_try(engine, ctx, now=now)
        if recovered["unknown"]:
            notes.append(f"{recovered['unknown']} mails of an earlier try were cut off mid-send: unknown, not resent")
        if recovered["taken_over"]:
            notes.append(f"{recovered['taken_over']} claims of an earlier try taken over")

    # 0. What this run's earlier tries already did.
    found = ledger.lookup(engine, frame["ledger_key"].dropna())
    row_of = pd.Series(np.flatnonzero(keyed), index=frame.loc[keyed, "ledger_key"].to_numpy())
    own = found[(found["run_id"] == run_id) & (found["market"] == market.code)]
    for status, group in own.groupby("status"):
        rows = row_of.reindex(group.index).to_numpy()
        if status == "accepted":
            later = (group["send_at"] > now + SCHEDULED_AFTER).to_numpy()
            send_at = group["send_at"].to_numpy(dtype=object)
            for flag, outcome in ((later, "scheduled"), (~later, "sent")):
                out.set(rows[flag], outcome, "sent by an earlier try of this run", send_at=send_at[flag])
        elif status == "unknown":
            out.set(rows, "unknown", _scrub(group["error"].iloc[0] or "outcome unknown"))
        elif status == "rejected":
            out.set(
                rows, "failed", "rejected in an earlier try of this run", http_status=group["http_status"].to_numpy()
            )

    # 1. Gate.
    if api is not None:
        synced = sync_suppressions(engine, api, now=now, max_age=SUPPRESSION_SYNC_MAX_AGE)
        if synced:
            notes.append("suppressions synced: " + ", ".join(f"{k} {v}" for k, v in synced.items()))
    decision: GateDecision = check_market(engine, market, now=now, api=api)
    if decision.status == "halted":
        out.set(out.pending(), "gated", "; ".join(decision.reasons))
        log.warning("market %s halted: %s", market.code, "; ".join(decision.reasons))

    # 2. Address syntax.
    out.set(out.pending() & ~valid.to_numpy(), "invalid_address", "not a valid email address")

    # 3. Suppressions (global kinds and this market's unsubscribe group).
    group_id = market.sendgrid_unsubscribe_group_id
    pending = out.pending()
    if pending.any():
        reasons = suppression_reasons(engine, frame.loc[pending, "email"], group_id).to_numpy(dtype=object)
        rows = np.flatnonzero(pending)
        hit = pd.notna(reasons)
        for reason in pd.unique(reasons[hit]):
            out.set(rows[hit & (reasons == reason)], "suppressed", reason)

    # 4. Consent.
    allowed = consent_mask(frame, market, kind).to_numpy()
    out.set(out.pending() & ~allowed, "no_consent", f"market {market.code} requires marketing consent")

    # 5. Sent, in flight or unknown in another run.
    others = found.loc[~found.index.isin(own.index)]
    blocked = others[~((others["status"] == "rejected") & others["retryable"])]
    if len(blocked):
        rows = row_of.reindex(blocked.index).to_numpy()
        still = out.pending()[rows]
        for status in pd.unique(blocked["status"][still]):
            sel = rows[still & (blocked["status"] == status).to_numpy()]
            out.set(sel, "already_sent", f"{status} in another run")

    # 6a. One mail per person per run: highest value first.
    pending = out.pending()
    value = pd.to_numeric(frame["value"], errors="coerce").fillna(-np.inf)
    order = (
        frame.loc[pending].assign(_value=value[pending]).sort_values(["_value", "ledger_key"], ascending=[False, True])
    )
    address = order["email"].map(ledger.normalise_email)
    for column, reason in (
        (order["customer_ref"], "another mail to this customer in this run"),
        (address, "another mail to the same address in this run"),
    ):
        dup = column.duplicated().to_numpy() & out.pending()[order.index.to_numpy()]
        out.set(order.index.to_numpy()[dup], "capped", reason)

    # Send windows (needed by the caps: a cap is judged at the planned instant).
    pending = out.pending()
    windows = pd.DataFrame(index=frame.index[pending])
    if pending.any():
        cfg = MarketConfig(markets={market.code: market})
        zone_input = frame.loc[pending, [c for c in ("market", "time_zone", "country", "region") if c in frame]]
        zones = resolve_time_zones(zone_input, cfg)
        timed = frame.loc[pending, ["earliest_at", "best_hour"]].assign(
            market=market.code, time_zone=zones["time_zone"]
        )
        windows = compute_send_at(timed, now, cfg, horizon=horizon)

    # 6b. Frequency caps at the planned instant (now, for members beyond the window).
    if pending.any():
        at = windows["send_at"].where(windows["send_at"].notna(), pd.Timestamp(now))
        candidates = pd.DataFrame(
            {
                "customer_ref": frame.loc[pending, "customer_ref"],
                "ledger_key": frame.loc[pending, "ledger_key"],
                "at": at,
            }
        )
        reasons = capped_reasons(engine, candidates, kind=kind, caps=caps, now=now)
        for reason in pd.unique(reasons.dropna()):
            out.set(reasons.index[reasons == reason].to_numpy(), "capped", reason)

    # 7. Outside the window.
    pending = out.pending()
    if pending.any():
        reason = windows["window_reason"].reindex(frame.index[pending])
        for r in pd.unique(reason.dropna()):
            out.set(reason.index[reason == r].to_numpy(), "outside_window", r)

    # 8. Warm-up cap: the day's remaining slots go to the highest value.
    pending = out.pending()
    ranked = (
        frame.loc[pending].assign(_value=value[pending]).sort_values(["_value", "ledger_key"], ascending=[False, True])
    )
    # Claims taken over from an earlier try are in today's count and among these members again.
    slots = min(market.warmup_daily_cap, decision.warmup_remaining + recovered["taken_over"])
    excess = ranked.index[slots:].to_numpy()
    out.set(excess, "capped", f"warm-up cap: {market.warmup_daily_cap} mails per day")

    # 9. Render, claim, send.
    pending = np.flatnonzero(out.pending())
    batch_id = None if dry_run else ledger.run_batch_id(engine, run_id, market.code)  # one batch per market run
    if len(pending):
        frame["send_at"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
        frame.loc[pending, "send_at"] = windows["send_at"].reindex(frame.index[pending])
        if not dry_run and batch_id is None:
            batch_id = transport.create_batch_id()
        todo = frame.loc[pending].sort_values("ledger_key")
        for start in range(0, len(todo), chunk_size):
            chunk = todo.iloc[start : start + chunk_size]
            _send_chunk(
                chunk=chunk,
                flow=flow,
                kind=kind,
                market=market,
                ctx=ctx,
                engine=engine,
                transport=transport,
                render=render,
                validate=validate,
                out=out,
                now=now,
                batch_id=batch_id,
                dry_run=dry_run,
            )
        if not dry_run:
            released = ledger.release_claims(engine, ctx)
            if released:
                notes.append(f"{released} claims of earlier tries released (no longer due)")
    elif not dry_run:
        ledger.release_claims(engine, ctx)

    left = np.flatnonzero(out.pending())
    if len(left):  # a bug, not a member to lose silently
        raise AssertionError(f"market {market.code}: {len(left)} audience rows got no outcome")

    counts = {o: int(c) for o, c in pd.Series(out.outcome).value_counts().items()}
    outcomes = pd.DataFrame(
        {
            "ledger_key": frame["ledger_key"].astype(object),
            "customer_ref": frame["customer_ref"].astype(object),
            "customer_id": frame["customer_id"].astype(object).map(_id_text),
            "step": frame["step"].astype(str),
            "subject_id": frame["subject_id"].astype(str),
            "outcome": out.outcome,
            "reason": out.reason,
            "send_at": pd.to_datetime(pd.Series(out.send_at, dtype=object), utc=True),
            "http_status": pd.array(out.http_status, dtype="Int64"),
        }
    )
    path = _write_outcomes(
        outcomes, outcomes_dir, flow=flow, run_id=run_id, market=market.code, try_number=try_number, dry_run=dry_run
    )
    ledger.record_send_run(
        engine, ctx, counts, batch_id=batch_id, gate_status=decision.status, dry_run=dry_run, now=now
    )
    summary = MarketSendSummary(
        flow=flow,
        market=market.code,
        run_id=run_id,
        try_number=int(try_number),
        dry_run=dry_run,
        batch_id=batch_id,
        gate=decision.to_dict(),
        audience=n,
        counts={o: counts.get(o, 0) for o in OUTCOMES},
        outcomes_path=path,
        seconds=round(time.perf_counter() - started, 3),
        notes=notes,
    )
    log.info("%s", summary.log_table())
    return summary


def _categories(message: Message, flow: str, market: Market, steps: set[str]) -> tuple[str, ...]:
    ours = [f"flow:{flow}", market_category(market.code)]
    if len(steps) == 1:
        ours.append(f"step:{next(iter(steps))}")
    return tuple(dict.fromkeys([*ours, *message.categories]))


def _send_chunk(
    *, chunk, flow, kind, market, ctx, engine, transport, render, validate, out, now, batch_id, dry_run
) -> None:
    # Unsubscribes that arrived while earlier chunks were sent.
    reasons = suppression_reasons(engine, chunk["email"], market.sendgrid_unsubscribe_group_id)
    hit = reasons.notna()
    for reason in pd.unique(reasons[hit]):
        out.set(chunk.index[hit & (reasons == reason)].to_numpy(), "suppressed", reason)
    chunk = chunk.loc[~hit]
    if chunk.empty:
        return
    chunk_keys = chunk["ledger_key"].tolist()  # plain lists: iterating Arrow-backed columns is slow
    position = dict(zip(chunk_keys, chunk.index.tolist(), strict=True))

    def rows_of(keys: Iterable[str]) -> np.ndarray:
        return np.fromiter((position[k] for k in keys), dtype=np.int64)

    email_of = dict(zip(chunk_keys, map(ledger.normalise_email, chunk["email"].tolist()), strict=True))
    step_of = dict(zip(chunk_keys, map(str, chunk["step"].tolist()), strict=True))
    send_at_of = dict(zip(chunk_keys, chunk["send_at"].tolist(), strict=True))

    messages: list[Message] = []
    seen: set[str] = set()
    try:
        rendered = list(render(chunk.copy()))
    except Exception as exc:  # noqa: BLE001 - a broken template fails this chunk's members, not the market
        out.set(chunk.index.to_numpy(), "failed", _scrub(f"render failed: {type(exc).__name__}: {exc}"))
        return
    for item in rendered:
        item_keys = [r.ledger_key for r in item.recipients] if isinstance(item, Message) else list(item.ledger_keys)
        unknown = [k for k in item_keys if k not in position]
        if unknown:
            raise ValueError(f"render returned ledger key {unknown[0]} that is not in the chunk it was given")
        twice = [k for k in item_keys if k in seen]
        if twice:
            raise ValueError(f"render returned ledger key {twice[0]} twice")
        seen.update(item_keys)
        if not isinstance(item, Message):
            outcome = getattr(item, "outcome", "failed")
            if outcome not in ("failed", "converted"):
                raise ValueError(f"RenderFailure outcome must be 'failed' or 'converted', not {outcome!r}")
            out.set(rows_of(item_keys), outcome, _scrub(item.error))
            continue
        for recipient in item.recipients:
            if ledger.normalise_email(recipient.email) != email_of[recipient.ledger_key]:
                raise ValueError(f"render addressed ledger key {recipient.ledger_key} to another address")
        # One send_at per request: split a shared message by its recipients' planned instants.
        by_time: dict[Any, list] = {}
        for recipient in item.recipients:
            by_time.setdefault(send_at_of[recipient.ledger_key], []).append(recipient)
        for planned, recipients in by_time.items():
            later = pd.notna(planned) and planned > now + SCHEDULED_AFTER
            message = replace(
                item,
                recipients=tuple(recipients),
                send_at=planned.to_pydatetime() if later else None,
                batch_id=batch_id,
                categories=_categories(item, flow, market, {step_of[r.ledger_key] for r in recipients}),
                asm_group_id=item.asm_group_id
                if item.asm_group_id is not None or not item.marketing
                else market.sendgrid_unsubscribe_group_id,
            )
            try:
                validate(message, now)
            except ValueError as exc:
                out.set(rows_of([r.ledger_key for r in recipients]), "failed", _scrub(f"invalid message: {exc}"))
                continue
            messages.append(message)
    missing = [k for k in position if k not in seen]
    if missing:
        out.set(rows_of(missing), "failed", "render produced no message for this member")
    if not messages:
        return

    keys = [r.ledger_key for m in messages for r in m.recipients]
    if dry_run:
        for message in messages:
            rows = rows_of([r.ledger_key for r in message.recipients])
            outcome = "scheduled" if message.send_at is not None else "sent"
            out.set(
                rows, outcome, "dry run: nothing claimed or sent", send_at=send_at_of[message.recipients[0].ledger_key]
            )
        return

    claim_rows = chunk.set_index("ledger_key", drop=False).loc[
        keys, ["ledger_key", "step", "customer_ref", "customer_id", "subject_id", "content_version", "send_at"]
    ]
    claim_rows = claim_rows.assign(kind=kind, batch_id=batch_id)
    held = ledger.claim(engine, ctx, claim_rows.reset_index(drop=True), now=now)
    lost = [k for k in keys if k not in held]
    if lost:
        out.set(rows_of(lost), "already_sent", "claimed by another run meanwhile")
    to_send = _only(messages, held)
    if not to_send:
        return
    scheduled = {r.ledger_key: m.send_at is not None for m in to_send for r in m.recipients}
    marked: set[str] = set()

    def dispatch(batch: list[Message]):
        """Step 2 of the ledger protocol for one small batch, right before the transport sends it."""
        batch_keys = [r.ledger_key for m in batch for r in m.recipients]
        moved = ledger.mark_sending(engine, ctx, batch_keys, now=now, batch_id=batch_id)
        marked.update(moved)
        gone = [k for k in batch_keys if k not in moved]
        if gone:  # taken over by a newer try of this run: that try sends them
            out.set(rows_of(gone), "already_sent", "taken over by a newer try")
        yield from _only(batch, moved)

    def feed():
        # Marked in batches as the transport pulls messages: a crash leaves at most a batch plus
        # the requests in flight "sending" (unknown); the rest of the chunk stays "claimed" and
        # the retry sends it.
        batch: list[Message] = []
        size = 0
        for message in to_send:
            batch.append(message)
            size += len(message.recipients)
            if size >= MARK_BATCH:
                yield from dispatch(batch)
                batch, size = [], 0
        if batch:
            yield from dispatch(batch)

    results: list[SendResult] = []
    try:
        with ledger.ResultRecorder(engine, ctx, batch=RECORD_BATCH, seconds=RECORD_SECONDS) as recorder:
            for result in transport.send(feed()):
                recorder.add(result)  # the ledger first: it is what survives a crash
                results.append(result)
            answered = {k for r in results for k in r.ledger_keys}
            silent = tuple(k for k in marked if k not in answered)
            if silent:  # the transport ended without a word on these: they may have gone out
                result = SendResult(silent, "unknown", error="the transport returned no result")
                recorder.add(result)
                results.append(result)
    finally:
        # Outcomes in bulk after the chunk, to keep the main thread light while requests fly.
        grouped: dict[tuple, list[str]] = {}
        for result in results:
            for key in result.ledger_keys:
                outcome, reason = _outcome_of_result(result, scheduled.get(key, False))
                grouped.setdefault((outcome, reason, result.status), []).append(key)
        for (outcome, reason, status), result_keys in grouped.items():
            send_at = [send_at_of[k] for k in result_keys] if outcome in ("sent", "scheduled") else None
            out.set(rows_of(result_keys), outcome, reason, send_at=send_at, http_status=status)


def _only(messages: Iterable[Message], keys: set[str]) -> list[Message]:
    """The messages cut down to recipients in ``keys`` (messages left empty are dropped)."""
    kept = []
    for message in messages:
        recipients = tuple(r for r in message.recipients if r.ledger_key in keys)
        if recipients:
            kept.append(
                message if len(recipients) == len(message.recipients) else replace(message, recipients=recipients)
            )
    return kept


def _write_outcomes(
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
