"""The email feedback loop: SendGrid's events back into the ledger, suppressions, engagement and health.

Two steps, so the webhook answers fast and nothing it accepted is lost:

1. ``store_batch`` (the webhook, per request): the raw signed batch goes into
   ``email_event_batches`` (the same body twice is stored once, by SHA-256), and the events that
   must stop mail at once are applied right away as local suppressions: a hard bounce
   (``manual``), a spam report (``complaint``), an unsubscribe (``unsubscribes``), a group
   unsubscribe (``group_unsubscribes`` of its ASM group). The next send's suppression check,
   even a running send's next chunk, honours them.
2. ``fold_pending`` (the hourly ``email_feedback`` DAG): every unfolded batch's events go into
   ``email_events`` (deduplicated by ``sg_event_id``), joined to the send ledger through
   ``custom_args.ledger_key`` (SendGrid repeats custom args as top-level event fields; a nested
   ``custom_args`` object is read too). Then, for what the new events touch:

   * ledger rows left ``unknown`` (or ``sending``) by a cut-off send are reconciled
     (``ledger.mark_outcome``): any event but ``dropped`` proves SendGrid accepted the mail;
     only ``dropped`` makes it ``rejected``;
   * ``send_outcomes``: each sent key's delivery outcome (bounced > dropped > blocked >
     delivered > deferred > processed) and when it was opened, clicked, reported, unsubscribed;
   * ``customer_engagement``: per customer, counts and the last open, click, bounce and
     complaint (the bounce/complaint history; ``load_engagement`` feeds ``compute_profiles``);
   * ``market_health``: per market and UTC day, the gate's metrics counted from events. SendGrid's
     category stats (``gate.refresh_market_health``) write the same rows; events only ever raise
     a count (per-metric maximum), so whichever source has seen more wins until the stats,
     which are complete, replace the row.

   Batches are marked folded last: a fold cut off half-way is simply done again (every step is
   idempotent).

Events are identified in logs by ``sg_event_id`` and ledger key, never by address. Bounce and
drop reasons are stored with addresses masked.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from remarketing.delivery import ledger
from remarketing.delivery.engagement import (
    feedback_metadata,
)
from remarketing.delivery.suppressions import GROUP_KIND, add_local_suppression
from remarketing.flows.feedback.webhook import digest, parse_events
from remarketing.platform.clock import now_or_clock
from remarketing.platform.state import dialect_insert

CHUNK = 500
_ADDRESS = re.compile(r"[^\s@<>()\"',;:\[\]]+@[^\s@<>()\"',;:\[\]]+")

email_event_batches = sa.Table(  # on the engagement tables' metadata: one schema
    "email_event_batches",
    feedback_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("folded_at", sa.DateTime(timezone=True)),
)


class FeedbackError(ValueError):
    """A stored batch or event that cannot be folded; names the batch id and event position."""


# ---------------------------------------------------------------------------------------------
# Helpers


def scrub_reason(text: Any) -> str | None:
    if text is None:
        return None
    return _ADDRESS.sub("<address>", str(text))[:1000]


def custom_arg(event: dict, name: str) -> str | None:
    """A custom arg of the mail: a top-level event field (SendGrid's shape) or under ``custom_args``."""
    value = event.get(name)
    if value is None and isinstance(event.get("custom_args"), dict):
        value = event["custom_args"].get(name)
    return value if isinstance(value, str) and value else None


def event_market(event: dict) -> str | None:
    market = custom_arg(event, "market")
    if market:
        return market[:8]
    categories = event.get("category")
    if isinstance(categories, str):
        categories = [categories]
    for category in categories or []:
        if isinstance(category, str) and category.startswith("market:"):
            return category.removeprefix("market:")[:8]
    return None


def occurred_at(event: dict, position: int) -> datetime:
    stamp = event.get("timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        raise FeedbackError(f"event #{position} ({event.get('sg_event_id')}): 'timestamp' is not epoch seconds")
    try:
        return datetime.fromtimestamp(stamp, UTC)
    except (OverflowError, OSError, ValueError):
        raise FeedbackError(f"event #{position} ({event.get('sg_event_id')}): 'timestamp' is out of range") from None


def is_hard_bounce(event: dict) -> bool:
    """SendGrid's ``bounce`` event: ``type`` ``bounce`` is permanent, ``blocked`` is a (soft) block."""
    return event.get("event") == "bounce" and event.get("type", "bounce") != "blocked"


def suppression_for(event: dict) -> tuple[str, int | None, str] | None:
    """(local suppression kind, group id, reason) an event calls for at once, or None."""
    name = event.get("event")
    if is_hard_bounce(event):
        return "manual", None, "hard bounce (event webhook)"
    if name == "spamreport":
        return "complaint", None, "spam report (event webhook)"
    if name == "unsubscribe":
        return "unsubscribes", None, "unsubscribe (event webhook)"
    if name == "group_unsubscribe":
        group = event.get("asm_group_id")
        if isinstance(group, int) and not isinstance(group, bool) and group > 0:
            return GROUP_KIND, group, "group unsubscribe (event webhook)"
        return "unsubscribes", None, "group unsubscribe without a group id (event webhook): blocked everywhere"
    return None


# ---------------------------------------------------------------------------------------------
# Webhook side


@dataclass(frozen=True)
class StoredBatch:
    batch_id: int
    new: bool
    events: int
    suppressed: int


def apply_suppressions(engine: sa.Engine, events: Iterable[dict], *, now: datetime | None = None) -> int:
    """Local suppressions for hard bounces, spam reports and unsubscribes; returns how many were written.

    Idempotent (an upsert per address and kind). An event without an address cannot suppress
    anything and fails, naming its ``sg_event_id``.
    """
    now = now_or_clock(now)
    written = 0
    for position, event in enumerate(events):
        wanted = suppression_for(event)
        if wanted is None:
            continue
        email = event.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise FeedbackError(
                f"event #{position} ({event.get('sg_event_id')}, {event.get('event')}) has no address to suppress"
            )
        kind, group_id, reason = wanted
        add_local_suppression(engine, email, kind=kind, group_id=group_id, reason=reason, now=now)
        written += 1
    return written


def store_batch(engine: sa.Engine, body: bytes, events: list[dict] | None = None, *, now=None) -> StoredBatch:
    """Keep a verified batch (raw) for the fold, and suppress at once whom it asks to; safe to repeat.

    ``events`` is ``webhook.parse_events(body)`` when the caller already parsed it. The same body
    stored twice keeps one row and suppresses nothing more.
    """
    now = now_or_clock(now)
    if events is None:
        events = parse_events(body)
    key = digest(body)
    text = body.decode("utf-8")
    row = {"digest": key, "received_at": now, "events": len(events), "body": text, "folded_at": None}

    def work(conn):
        inserted = conn.execute(
            dialect_insert(engine.dialect.name)(email_event_batches).on_conflict_do_nothing(index_elements=["digest"]),
            [row],
        ).rowcount
        batch_id = conn.execute(
            sa.select(email_event_batches.c.id).where(email_event_batches.c.digest == key)
        ).scalar_one()
        return batch_id, inserted == 1

    batch_id, new = ledger.transactional(engine, work)
    suppressed = apply_suppressions(engine, events, now=now) if new else 0
    return StoredBatch(batch_id=int(batch_id), new=new, events=len(events), suppressed=suppressed)


# ---------------------------------------------------------------------------------------------
# Readers


def pending_batches(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).where(email_event_batches.c.folded_at.is_(None))).scalar_one()
        )


def event_json(events: list[dict]) -> bytes:
    """A batch body as SendGrid sends it (compact JSON); for tests and tools."""
    return json.dumps(events, separators=(",", ":")).encode("utf-8")
