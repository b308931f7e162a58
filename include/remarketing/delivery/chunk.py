"""One chunk of a market's send: suppressions re-checked, render, validate, claim, mark, send, record.

The ledger protocol (claim -> sending -> accepted/rejected/unknown) is in the ``ledger`` package; this is
where it meets the transport. Messages are marked "sending" in small batches right before the
transport pulls them, so a crash leaves few outcomes unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from remarketing.delivery import ledger
from remarketing.delivery.gate import market_category
from remarketing.delivery.messages import Message, SendResult
from remarketing.delivery.outcomes import SCHEDULED_AFTER, outcome_of_result, scrub
from remarketing.delivery.suppressions import suppression_reasons
from remarketing.markets import Market

# Batches of the ledger protocol: small enough that a crash leaves few outcomes unknown, large
# enough that SQLite commits do not dominate (about 150 per 10,000 mails).
MARK_BATCH = 64  # recipients flipped to "sending" per transaction, just before their requests
RECORD_BATCH = 128  # results stored per transaction ...
RECORD_SECONDS = 0.25  # ... or at least this often


def categories(message: Message, flow: str, market: Market, labels: list[tuple[str, ...]]) -> tuple[str, ...]:
    """Flow and market, plus the ``step:``/``arm:`` labels every recipient of the request shares."""
    ours = [f"flow:{flow}", market_category(market.code)]
    shared = set(labels[0]).intersection(*labels[1:]) if labels else set()
    ours.extend(label for label in labels[0] if label in shared) if labels else None
    return tuple(dict.fromkeys([*ours, *message.categories]))


def _labels(chunk: pd.DataFrame) -> list[tuple[str, ...]]:
    """Per row, ``step:N`` and/or ``arm:x``: SendGrid's stats by category compare steps and A/B arms."""
    none = [None] * len(chunk)
    steps, arms = (chunk[c].tolist() if c in chunk else none for c in ("step", "arm"))
    return [
        tuple(f"{name}:{v}" for name, v in (("step", s), ("arm", a)) if v is not None and not pd.isna(v))
        for s, a in zip(steps, arms, strict=True)
    ]


class _Chunk:
    """Positions and per-key values of one chunk: ledger key -> audience row, address, step, send_at."""

    def __init__(self, chunk: pd.DataFrame):
        self.frame = chunk
        keys = chunk["ledger_key"].tolist()  # plain lists: iterating Arrow-backed columns is slow
        self.position = dict(zip(keys, chunk.index.tolist(), strict=True))
        self.email_of = dict(zip(keys, map(ledger.normalise_email, chunk["email"].tolist()), strict=True))
        self.labels_of = dict(zip(keys, _labels(chunk), strict=True))
        self.send_at_of = dict(zip(keys, chunk["send_at"].tolist(), strict=True))

    def rows_of(self, keys: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.position[k] for k in keys), dtype=np.int64)


def send_chunk(
    *, chunk, flow, kind, market, ctx, engine, transport, render, validate, out, now, batch_id, dry_run
) -> None:
    """Step 9 for one chunk: suppressions again, render and validate, then claim and send."""
    # Unsubscribes that arrived while earlier chunks were sent.
    reasons = suppression_reasons(engine, chunk["email"], market.sendgrid_unsubscribe_group_id)
    hit = reasons.notna()
    for reason in pd.unique(reasons[hit]):
        out.set(chunk.index[hit & (reasons == reason)].to_numpy(), "suppressed", reason)
    chunk = chunk.loc[~hit]
    if chunk.empty:
        return
    part = _Chunk(chunk)
    messages = _messages(part, flow=flow, market=market, render=render, validate=validate, out=out, now=now,
                         batch_id=batch_id)  # fmt: skip
    if not messages:
        return
    if dry_run:
        for message in messages:
            rows = part.rows_of([r.ledger_key for r in message.recipients])
            outcome = "scheduled" if message.send_at is not None else "sent"
            send_at = part.send_at_of[message.recipients[0].ledger_key]
            out.set(rows, outcome, "dry run: nothing claimed or sent", send_at=send_at)
        return
    _claim_and_send(part, messages, kind=kind, ctx=ctx, engine=engine, transport=transport, out=out, now=now,
                    batch_id=batch_id)  # fmt: skip


def _messages(part: _Chunk, *, flow, market, render, validate, out, now, batch_id) -> list[Message]:
    """The chunk rendered, one request per planned instant, each validated; failures get their outcome."""
    position, rows_of, email_of = part.position, part.rows_of, part.email_of
    labels_of, send_at_of, chunk = part.labels_of, part.send_at_of, part.frame
    messages: list[Message] = []
    seen: set[str] = set()
    try:
        rendered = list(render(chunk.copy()))
    except Exception as exc:  # noqa: BLE001 - a broken template fails this chunk's members, not the market
        out.set(chunk.index.to_numpy(), "failed", scrub(f"render failed: {type(exc).__name__}: {exc}"))
        return []
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
            out.set(rows_of(item_keys), outcome, scrub(item.error))
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
                categories=categories(item, flow, market, [labels_of[r.ledger_key] for r in recipients]),
                asm_group_id=item.asm_group_id
                if item.asm_group_id is not None or not item.marketing
                else market.sendgrid_unsubscribe_group_id,
            )
            try:
                validate(message, now)
            except ValueError as exc:
                out.set(rows_of([r.ledger_key for r in recipients]), "failed", scrub(f"invalid message: {exc}"))
                continue
            messages.append(message)
    missing = [k for k in position if k not in seen]
    if missing:
        out.set(rows_of(missing), "failed", "render produced no message for this member")
    return messages


def _claim_and_send(part: _Chunk, messages: list[Message], *, kind, ctx, engine, transport, out, now, batch_id):
    """The ledger protocol for the chunk's messages: claim, mark sending in small batches, send, record."""
    rows_of, send_at_of, chunk = part.rows_of, part.send_at_of, part.frame
    keys = [r.ledger_key for m in messages for r in m.recipients]
    claim_rows = chunk.set_index("ledger_key", drop=False).loc[
        keys, [c for c in ledger.CLAIM_COLUMNS if c in chunk.columns]
    ]
    claim_rows = claim_rows.assign(kind=kind, batch_id=batch_id)
    held = ledger.claim(engine, ctx, claim_rows.reset_index(drop=True), now=now)
    lost = [k for k in keys if k not in held]
    if lost:
        out.set(rows_of(lost), "already_sent", "claimed by another run meanwhile")
    to_send = only(messages, held)
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
        yield from only(batch, moved)

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
                outcome, reason = outcome_of_result(result, scheduled.get(key, False))
                grouped.setdefault((outcome, reason, result.status), []).append(key)
        for (outcome, reason, status), result_keys in grouped.items():
            send_at = [send_at_of[k] for k in result_keys] if outcome in ("sent", "scheduled") else None
            out.set(rows_of(result_keys), outcome, reason, send_at=send_at, http_status=status)


def only(messages: Iterable[Message], keys: set[str]) -> list[Message]:
    """The messages cut down to recipients in ``keys`` (messages left empty are dropped)."""
    kept = []
    for message in messages:
        recipients = tuple(r for r in message.recipients if r.ledger_key in keys)
        if recipients:
            kept.append(
                message if len(recipients) == len(message.recipients) else replace(message, recipients=recipients)
            )
    return kept
