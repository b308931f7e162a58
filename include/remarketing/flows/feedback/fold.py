"""The hourly fold: stored webhook batches into events, the ledger, outcomes, engagement and market health.

Every step is idempotent and batches are marked folded last, so a fold cut off half-way is simply
done again. See ``store`` for the two-step design (the webhook stores, the fold interprets).
Each stored event is checked again with ``store.check_event``: what it refuses is quarantined
(``email_event_rejects``) and counted, and the fold goes on with the other events and batches.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from remarketing.delivery import ledger
from remarketing.delivery.engagement import (
    customer_engagement,
    email_events,
    send_outcomes,
)
from remarketing.delivery.gate import METRICS, market_health
from remarketing.flows.feedback.store import (
    CHUNK,
    Checked,
    apply_suppressions,
    check_events,
    clean_text,
    custom_arg,
    email_event_batches,
    event_market,
    group_id_of,
    occurred_at,
    quarantine,
    scrub_reason,
    unreadable_batch,
)
from remarketing.flows.feedback.webhook import EVENT_TYPES, InvalidPayload, parse_batch
from remarketing.platform.clock import now_or_clock
from remarketing.platform.state import chunks, dialect_insert, upsert_statement

BATCHES_PER_PASS = 200
RECOUNT_DAYS = 14  # market-health days recounted from events on every fold (gate windows are 7 by default)
# Delivery outcome of a key: the most telling event seen, first in this list wins.
DELIVERY_ORDER = ("bounced", "dropped", "blocked", "delivered", "deferred", "processed")


@dataclass
class FoldSummary:
    batches: int = 0
    events: int = 0  # events in the folded batches
    new_events: int = 0  # not seen before (by sg_event_id)
    duplicates: int = 0
    rejected: int = 0  # events (or unreadable bodies) quarantined by ``check_event``
    by_type: dict[str, int] = field(default_factory=dict)  # new events per type
    unknown_types: dict[str, int] = field(default_factory=dict)  # stored, not counted anywhere
    without_ledger_key: int = 0  # not our mail, or sent without a key
    unmatched_keys: int = 0  # a ledger key the ledger does not know
    reconciled: dict[str, int] = field(default_factory=dict)  # unknown -> accepted / rejected
    suppressed: int = 0
    outcomes_updated: int = 0
    customers_updated: int = 0
    health_rows: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def log_table(self) -> str:
        lines = [
            f"batches folded: {self.batches}; events {self.events}: new {self.new_events}, "
            f"duplicates {self.duplicates}, rejected (quarantined): {self.rejected}",
            "  new events by type: " + (", ".join(f"{k} {v}" for k, v in sorted(self.by_type.items())) or "none"),
            f"  unknown event types (stored only): {self.unknown_types or 'none'}",
            f"  without ledger key: {self.without_ledger_key}; ledger key unknown to the ledger: {self.unmatched_keys}",
            f"  ledger outcomes reconciled: {self.reconciled or 'none'}",
            f"  suppressions applied: {self.suppressed}",
            f"  send outcomes updated: {self.outcomes_updated}; customers updated: {self.customers_updated}; "
            f"market-health rows: {self.health_rows}",
        ]
        return "\n".join(lines)


def _ledger_rows(engine: sa.Engine, keys: list[str]) -> dict[str, Any]:
    t = ledger.send_ledger.c
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        for chunk in chunks(sorted(set(keys)), CHUNK):
            query = sa.select(t.ledger_key, t.customer_ref, t.customer_id, t.market, t.flow, t.status, t.run_id).where(
                t.ledger_key.in_(chunk)
            )
            found.update({row.ledger_key: row for row in conn.execute(query)})
    return found


def _event_rows(batch_id: int, events: list[dict], known: dict[str, Any], now: datetime) -> list[dict]:
    """``email_events`` rows of checked events (``store.check_event``), text cut to its columns."""
    rows = []
    for position, event in enumerate(events):
        key = custom_arg(event, "ledger_key")
        sent = known.get(key) if key else None
        reason = event.get("reason") or event.get("response")
        rows.append(
            {
                "sg_event_id": event["sg_event_id"],
                "event": clean_text(event["event"], 32),
                "occurred_at": occurred_at(event, position),
                "ledger_key": key[:250] if key else None,
                "customer_ref": sent.customer_ref if sent is not None else None,
                "customer_id": sent.customer_id if sent is not None else None,
                "market": sent.market if sent is not None else event_market(event),
                "flow": sent.flow if sent is not None else clean_text(custom_arg(event, "flow"), 64),
                "bounce_type": clean_text(event.get("type"), 16) if event.get("event") == "bounce" else None,
                "reason": scrub_reason(reason),
                "asm_group_id": group_id_of(event),
                "batch_id": batch_id,
                "recorded_at": now,
            }
        )
    return rows


def _check_stored(batch, now: datetime) -> Checked:
    """A stored batch's events split by the webhook's rule; an unreadable body is quarantined whole."""
    try:
        items = parse_batch(batch.body)
    except InvalidPayload as exc:
        return Checked([], [unreadable_batch(batch.id, str(exc), now)])
    return check_events(items, batch_id=batch.id, now=now)


def fold_pending(
    engine: sa.Engine,
    *,
    now: datetime | None = None,
    batches_per_pass: int = BATCHES_PER_PASS,
    recount_days: int = RECOUNT_DAYS,
) -> FoldSummary:
    """Fold every unfolded webhook batch (see the module docstring); returns what changed.

    Market health is recounted for the days new events fall on and for the last ``recount_days``.
    """
    now = now_or_clock(now)
    summary = FoldSummary()
    by_type: Counter = Counter()
    unknown: Counter = Counter()
    reconciled: Counter = Counter()
    b = email_event_batches.c
    all_days: dict[str, set[date]] = {}
    while True:
        with engine.connect() as conn:
            batches = conn.execute(
                sa.select(b.id, b.body).where(b.folded_at.is_(None)).order_by(b.id).limit(batches_per_pass)
            ).all()
        if not batches:
            break
        touched_keys: set[str] = set()
        touched_refs: set[str] = set()
        touched_days: dict[str, set[date]] = {}
        sent: dict[str, Any] = {}  # ledger rows of the batches' keys, for the outcomes' run and flow
        new_rows: list[dict] = []
        for batch in batches:
            checked = _check_stored(batch, now)
            events = checked.events
            summary.events += len(events) + sum(r["position"] >= 0 for r in checked.rejects)
            summary.rejected += len(checked.rejects)
            keys = [k for k in (custom_arg(e, "ledger_key") for e in events) if k]
            known = _ledger_rows(engine, keys)
            sent.update(known)
            rows = _event_rows(batch.id, events, known, now)
            rows = list({r["sg_event_id"]: r for r in rows}.values())  # a batch repeating an event
            fresh, suppressed = _insert_new_events(engine, rows, events, checked.rejects, now)
            summary.new_events += len(fresh)
            summary.duplicates += len(events) - len(fresh)
            summary.suppressed += suppressed
            for row in fresh:
                name = row["event"]
                (by_type if name in EVENT_TYPES else unknown)[name] += 1
                if row["ledger_key"] is None:
                    summary.without_ledger_key += 1
                elif row["customer_ref"] is None:
                    summary.unmatched_keys += 1
                else:
                    touched_keys.add(row["ledger_key"])
                    touched_refs.add(row["customer_ref"])
                if row["market"] and name in EVENT_TYPES:
                    touched_days.setdefault(row["market"], set()).add(row["occurred_at"].date())
            new_rows.extend(fresh)
        reconciled.update(_reconcile_ledger(engine, touched_keys, now))
        summary.outcomes_updated += _refresh_outcomes(engine, touched_keys, sent, now)
        summary.customers_updated += _refresh_engagement(engine, touched_refs, now)
        for market, days in touched_days.items():
            all_days.setdefault(market, set()).update(days)
        ids = [batch.id for batch in batches]
        ledger.transactional(
            engine,
            lambda conn, ids=ids: conn.execute(sa.update(email_event_batches).where(b.id.in_(ids)), {"folded_at": now}),
        )
        summary.batches += len(batches)
    # Recount the recent days too: a stats refresh may have replaced event counts with lower ones.
    for market, days in _recent_days(engine, now, recount_days).items():
        all_days.setdefault(market, set()).update(days)
    summary.health_rows = _refresh_health(engine, all_days, now)
    summary.by_type = dict(by_type)
    summary.unknown_types = dict(unknown)
    summary.reconciled = dict(reconciled)
    return summary


def _insert_new_events(
    engine: sa.Engine, rows: list[dict], events: list[dict], rejects: list[dict], now: datetime
) -> tuple[list[dict], int]:
    """Insert the events not stored yet, their suppressions and the batch's quarantine rows, in one
    transaction; returns the new rows (the others were delivered before) and the suppressions."""
    t = email_events.c

    def work(conn):
        quarantine(conn, rejects)
        fresh = []
        for chunk in chunks(rows, CHUNK):
            ids = [r["sg_event_id"] for r in chunk]
            seen = set(conn.execute(sa.select(t.sg_event_id).where(t.sg_event_id.in_(ids))).scalars())
            todo = [r for r in chunk if r["sg_event_id"] not in seen]
            if todo:
                conn.execute(
                    dialect_insert(engine.dialect.name)(email_events).on_conflict_do_nothing(
                        index_elements=["sg_event_id"]
                    ),
                    todo,
                )
            fresh.extend(todo)
        new_ids = {r["sg_event_id"] for r in fresh}
        return fresh, apply_suppressions(conn, [e for e in events if e["sg_event_id"] in new_ids], now=now)

    return ledger.transactional(engine, work)


def _events_for(engine: sa.Engine, column: str, values: Iterable[str], names: list[str]) -> pd.DataFrame:
    t = email_events.c
    rows = []
    with engine.connect() as conn:
        for chunk in chunks(sorted(values), CHUNK):
            rows.extend(conn.execute(sa.select(*(t[n] for n in names)).where(t[column].in_(chunk))).all())
    frame = pd.DataFrame(rows, columns=names)
    if "occurred_at" in frame:
        frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)  # SQLite: naive UTC
    return frame


def _reconcile_ledger(engine: sa.Engine, keys: set[str], now: datetime) -> Counter:
    """Rows a cut-off send left ``unknown``/``sending``: any event but dropped proves acceptance."""
    done: Counter = Counter()
    if not keys:
        return done
    found = ledger.lookup(engine, keys)
    open_keys = set(found.index[found["status"].isin(("unknown", "sending"))])
    if not open_keys:
        return done
    events = _events_for(engine, "ledger_key", open_keys, ["ledger_key", "event", "reason", "occurred_at"])
    for key, group in events.groupby("ledger_key"):
        accepted = group["event"] != "dropped"
        if accepted.any():
            changed = ledger.mark_outcome(engine, key, "accepted", http_status=202, now=now)
            done["accepted"] += int(changed)
        else:
            reason = group["reason"].dropna()
            error = "dropped by SendGrid" + (f": {reason.iloc[0]}" if len(reason) else "")
            done["rejected"] += int(ledger.mark_outcome(engine, key, "rejected", error=error, now=now))
    return done


def _masks(events: pd.DataFrame) -> dict[str, pd.Series]:
    """Boolean columns per kind of event, vectorised over all events."""
    name = events["event"].astype(object)
    bounce = name == "bounce"
    hard = bounce & (events["bounce_type"].astype(object).fillna("bounce") != "blocked")
    return {
        "processed": name == "processed",
        "delivered": name == "delivered",
        "deferred": name == "deferred",
        "dropped": name == "dropped",
        "bounce": bounce,
        "hard": hard,
        "blocked": bounce & ~hard,
        "open": name == "open",
        "click": name == "click",
        "spamreport": name == "spamreport",
        "unsubscribe": name.isin(("unsubscribe", "group_unsubscribe")),
    }


def _times(events: pd.DataFrame, key: str, wanted: dict[str, pd.Series], how: str) -> pd.DataFrame:
    """Per ``key``, the first (``min``) or last (``max``) instant of each kind of event."""
    frame = pd.DataFrame({name: events["occurred_at"].where(mask) for name, mask in wanted.items()})
    frame[key] = events[key].astype(object)
    return frame.groupby(key).agg(how)


def _counts(events: pd.DataFrame, key: str, wanted: dict[str, pd.Series]) -> pd.DataFrame:
    frame = pd.DataFrame({name: mask.astype("int64") for name, mask in wanted.items()})
    frame[key] = events[key].astype(object)
    return frame.groupby(key).sum()


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows for SQLAlchemy: NaT/NaN as None, Timestamps as datetimes, numpy ints as ints."""
    out = []
    for row in frame.to_dict("records"):
        clean = {}
        for name, value in row.items():
            if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
                clean[name] = None
            elif isinstance(value, pd.Timestamp):
                clean[name] = value.to_pydatetime()
            elif hasattr(value, "item"):
                clean[name] = value.item()
            else:
                clean[name] = value
        out.append(clean)
    return out


def _refresh_outcomes(engine: sa.Engine, keys: set[str], sent: dict[str, Any], now: datetime) -> int:
    """Recompute the outcome of ``keys`` from all their events; ``sent``: their ledger rows (run, flow)."""
    if not keys:
        return 0
    events = _events_for(
        engine, "ledger_key", keys, ["ledger_key", "customer_ref", "market", "event", "bounce_type", "occurred_at"]
    )
    if events.empty:
        return 0
    m = _masks(events)
    seen = (
        _counts(
            events,
            "ledger_key",
            {
                "bounced": m["hard"],
                "dropped": m["dropped"],
                "blocked": m["blocked"],
                "delivered": m["delivered"],
                "deferred": m["deferred"],
            },
        )
        > 0
    )
    delivery = pd.Series("processed", index=seen.index, dtype=object)
    for outcome in reversed(DELIVERY_ORDER[:-1]):  # the first in the order is applied last, so it wins
        delivery = delivery.mask(seen[outcome], outcome)
    times = _times(
        events,
        "ledger_key",
        {
            "processed_at": m["processed"],
            "delivered_at": m["delivered"],
            "bounced_at": m["bounce"],
            "opened_at": m["open"],
            "clicked_at": m["click"],
            "complained_at": m["spamreport"],
            "unsubscribed_at": m["unsubscribe"],
        },
        "min",
    )
    first = (
        events.assign(ledger_key=events["ledger_key"].astype(object))
        .groupby("ledger_key")[["customer_ref", "market"]]
        .first()
    )
    table = first.join(times).assign(delivery=delivery, updated_at=now).reset_index()
    table["run_id"] = [getattr(sent.get(k), "run_id", None) for k in table["ledger_key"]]
    table["flow"] = [getattr(sent.get(k), "flow", None) for k in table["ledger_key"]]
    _write(engine, send_outcomes, ["ledger_key"], _records(table))
    return len(table)


def _refresh_engagement(engine: sa.Engine, refs: set[str], now: datetime) -> int:
    if not refs:
        return 0
    events = _events_for(
        engine, "customer_ref", refs, ["customer_ref", "customer_id", "event", "bounce_type", "occurred_at"]
    )
    if events.empty:
        return 0
    m = _masks(events)
    counts = _counts(
        events,
        "customer_ref",
        {
            "delivered": m["delivered"],
            "opens": m["open"],
            "clicks": m["click"],
            "hard_bounces": m["hard"],
            "soft_bounces": m["blocked"],
            "spam_reports": m["spamreport"],
            "unsubscribes": m["unsubscribe"],
        },
    )
    times = _times(
        events,
        "customer_ref",
        {
            "last_open_at": m["open"],
            "last_click_at": m["click"],
            "last_bounce_at": m["bounce"],
            "last_complaint_at": m["spamreport"],
        },
        "max",
    )
    ids = (
        events.assign(customer_ref=events["customer_ref"].astype(object)).groupby("customer_ref")["customer_id"].first()
    )
    table = counts.join(times).assign(customer_id=ids, updated_at=now).reset_index()
    _write(engine, customer_engagement, ["customer_ref"], _records(table))
    return len(table)


def health_counts(events: pd.DataFrame) -> pd.DataFrame:
    """The gate's metrics per UTC day and market from events (event, bounce_type, market, occurred_at)."""
    name = events["event"]
    hard = (name == "bounce") & (events["bounce_type"].fillna("bounce") != "blocked")
    flags = pd.DataFrame(
        {
            "requests": name == "processed",
            "delivered": name == "delivered",
            "bounces": hard,
            "blocks": (name == "bounce") & ~hard,
            "spam_reports": name == "spamreport",
            "opens": name == "open",
            "clicks": name == "click",
            "unsubscribes": name.isin(("unsubscribe", "group_unsubscribe")),
        }
    ).astype("int64")
    flags["day"] = pd.to_datetime(events["occurred_at"], utc=True).dt.date
    flags["market"] = events["market"]
    return flags.groupby(["day", "market"], as_index=False)[list(METRICS)].sum()


def _recent_days(engine: sa.Engine, now: datetime, days: int) -> dict[str, set[date]]:
    if days <= 0:
        return {}
    t = email_events.c
    start = datetime.combine(now.date() - timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)
    with engine.connect() as conn:
        markets = conn.execute(
            sa.select(t.market).where(t.market.is_not(None), t.occurred_at >= start).distinct()
        ).scalars()
        wanted = {start.date() + timedelta(days=i) for i in range(days)}
        return {market: set(wanted) for market in markets}


def _refresh_health(engine: sa.Engine, days: dict[str, set[date]], now: datetime) -> int:
    """Recount the touched (market, day) pairs from all stored events; merge by per-metric maximum."""
    if not days:
        return 0
    t = email_events.c
    records = []
    with engine.connect() as conn:
        for market, wanted in days.items():
            start = datetime.combine(min(wanted), datetime.min.time(), tzinfo=UTC)
            end = datetime.combine(max(wanted), datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
            query = sa.select(t.event, t.bounce_type, t.market, t.occurred_at).where(
                t.market == market, t.occurred_at >= start, t.occurred_at < end
            )
            events = pd.DataFrame(conn.execute(query).all(), columns=["event", "bounce_type", "market", "occurred_at"])
            counts = health_counts(events)
            for row in counts[counts["day"].isin(wanted)].to_dict("records"):
                records.append(
                    {**row, **{m: int(row[m]) for m in METRICS}, "source": "event_webhook", "updated_at": now}
                )
    if not records:
        return 0
    stmt = dialect_insert(engine.dialect.name)(market_health)
    biggest = sa.func.greatest if engine.dialect.name == "postgresql" else sa.func.max
    stmt = stmt.on_conflict_do_update(
        index_elements=["day", "market"],
        set_={
            **{m: biggest(market_health.c[m], stmt.excluded[m]) for m in METRICS},
            "updated_at": stmt.excluded.updated_at,
        },
    )
    ledger.transactional(engine, lambda conn: conn.execute(stmt, records))
    return len(records)


def _write(engine: sa.Engine, table: sa.Table, keys: list[str], records: list[dict]) -> None:
    if records:
        stmt = upsert_statement(engine, table, keys)
        ledger.transactional(engine, lambda conn: [conn.execute(stmt, c) for c in chunks(records, CHUNK)])
