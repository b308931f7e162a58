"""The email feedback loop: SendGrid's events back into the ledger, suppressions, engagement and health.

Two steps, so the webhook answers fast and nothing it accepted is lost:

1. ``store_batch`` (the webhook, per request): the raw signed batch goes into
   ``email_event_batches`` (the same body twice is stored once, by SHA-256), and the events that
   must stop mail at once are applied right away as local suppressions: a hard bounce
   (``manual``), a spam report (``complaint``), an unsubscribe (``unsubscribes``), a group
   unsubscribe (``group_unsubscribes`` of its ASM group). The next send's suppression check,
   even a running send's next chunk, honours them. The batch, its quarantined events and its
   suppressions (bulk upserts) are written in one transaction: the webhook acknowledges a batch
   only once all of it is stored, and a failure leaves nothing, so SendGrid's retry redoes all.
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

Each event is checked on its own by ``check_event``, the one rule both steps use: the webhook
before it stores a batch, the fold again on every stored batch (one stored by an older webhook,
or edited since, gets the same verdicts). An event the rule refuses (not an object, no
``sg_event_id``, a timestamp that is not epoch seconds between 2000 and 2100 such as NaN or
1e300, a suppressing event without a usable address) is quarantined: a row in
``email_event_rejects`` names its batch, position and reason (the event itself stays in the
stored body) and it is counted, but it never holds up the other events or later batches. A
stored body that cannot be read as a batch at all is quarantined whole (position -1). Text
stored from events is cut to its column and cleared of NUL, other control characters and lone
surrogates, which PostgreSQL (or the driver) refuses.

Events are identified in logs by ``sg_event_id`` and ledger key, never by address. Bounce and
drop reasons are stored with addresses masked; quarantine reasons name fields, never values.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from remarketing.delivery import ledger
from remarketing.delivery.engagement import (
    feedback_metadata,
)
from remarketing.delivery.suppressions import (
    GROUP_KIND,
    MAX_EMAIL_LENGTH,
    LocalSuppression,
    add_local_suppressions,
)
from remarketing.flows.feedback.webhook import InvalidPayload, digest, parse_batch
from remarketing.platform.clock import now_or_clock
from remarketing.platform.state import chunks, dialect_insert

CHUNK = 500
_ADDRESS = re.compile(r"[^\s@<>()\"',;:\[\]]+@[^\s@<>()\"',;:\[\]]+")
_SPACE = re.compile(r"\s")
# Control characters (NUL included: PostgreSQL text cannot hold it) and lone surrogates (not UTF-8).
_UNSTORABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# Event timestamps the fold can place on a day: pandas holds 1677-2262, SendGrid's are recent.
EARLIEST_EVENT = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
LATEST_EVENT = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp())
MAX_GROUP_ID = 2**31 - 1  # an Integer column on PostgreSQL
WHOLE_BATCH = -1  # the position of a quarantined body that could not be read as a batch

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
email_event_rejects = sa.Table(  # quarantined events: the event itself stays in its batch's body
    "email_event_rejects",
    feedback_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("batch_id", sa.BigInteger, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),  # in the batch; WHOLE_BATCH for an unreadable body
    sa.Column("sg_event_id", sa.String(128)),
    sa.Column("event", sa.String(32)),
    sa.Column("reason", sa.Text, nullable=False),  # names fields, never values
    sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("batch_id", "position", name="uq_email_event_rejects_batch_position"),
)


class FeedbackError(ValueError):
    """A stored batch or event that cannot be folded; names the batch id and event position."""


# ---------------------------------------------------------------------------------------------
# Helpers


def clean_text(value: Any, limit: int) -> str | None:
    """Text as a column can hold it: no control characters or lone surrogates, at most ``limit``."""
    if value is None:
        return None
    return _UNSTORABLE.sub("", str(value))[:limit] or None


def scrub_reason(text: Any) -> str | None:
    if text is None:
        return None
    return clean_text(_ADDRESS.sub("<address>", str(text)), 1000)


def custom_arg(event: dict, name: str) -> str | None:
    """A custom arg of the mail: a top-level event field (SendGrid's shape) or under ``custom_args``."""
    value = event.get(name)
    if value is None and isinstance(event.get("custom_args"), dict):
        value = event["custom_args"].get(name)
    return clean_text(value, 1000) if isinstance(value, str) else None


def event_market(event: dict) -> str | None:
    market = custom_arg(event, "market")
    if market:
        return market[:8]
    categories = event.get("category")
    if isinstance(categories, str):
        categories = [categories]
    for category in categories if isinstance(categories, list) else []:
        if isinstance(category, str) and category.startswith("market:"):
            return clean_text(category.removeprefix("market:"), 8)
    return None


def event_time(stamp: Any) -> datetime | None:
    """The instant of an event's ``timestamp`` (epoch seconds, 2000-2100), or None.

    Compared as the number it is, before any conversion: NaN and infinities fail the comparison,
    and 1e300 or a 30-digit integer never reach ``float`` or ``datetime``.
    """
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        return None
    if not EARLIEST_EVENT <= stamp <= LATEST_EVENT:
        return None
    return datetime.fromtimestamp(stamp, UTC)


def occurred_at(event: dict, position: int) -> datetime:
    when = event_time(event.get("timestamp"))
    if when is None:
        raise FeedbackError(f"event #{position} ({event.get('sg_event_id')}): 'timestamp' is not epoch seconds")
    return when


def group_id_of(event: dict) -> int | None:
    """The event's ASM group id, when it is one (a positive integer a column can hold)."""
    group = event.get("asm_group_id")
    if isinstance(group, int) and not isinstance(group, bool) and 0 < group <= MAX_GROUP_ID:
        return group
    return None


def usable_address(value: Any) -> str | None:
    """The address to suppress, normalised, or None: an ``@`` between two non-empty parts, no
    spaces or control characters, at most the suppression column's length."""
    if not isinstance(value, str):
        return None
    email = ledger.normalise_email(value)
    local, at, domain = email.rpartition("@")
    if not (at and local and domain) or len(email) > MAX_EMAIL_LENGTH:
        return None
    if not email.isprintable() or _SPACE.search(email):
        return None
    return email


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
        group = group_id_of(event)
        if group is not None:
            return GROUP_KIND, group, "group unsubscribe (event webhook)"
        return "unsubscribes", None, "group unsubscribe without a group id (event webhook): blocked everywhere"
    return None


def _event_id_problem(event_id: Any) -> str | None:
    if not isinstance(event_id, str):
        return "field 'sg_event_id' is missing or not a string"
    if not event_id.strip() or len(event_id) > 128:
        return "field 'sg_event_id' is empty or longer than 128 characters"
    if _UNSTORABLE.search(event_id):
        return "field 'sg_event_id' holds control characters or lone surrogates"
    return None


def check_event(event: Any) -> str | None:
    """Why an event cannot be taken (its quarantine reason), or None: the one rule of webhook and fold.

    An event that passes can be stored and folded without error: it is an object with an
    ``event`` name, an ``sg_event_id`` (1-128 characters, no control characters or lone
    surrogates), a ``timestamp`` in epoch seconds between 2000 and 2100, and, if it suppresses
    (``suppression_for``), a usable address. Reasons name fields, never values.
    """
    if not isinstance(event, dict):
        return "not an object"
    name = event.get("event")
    if not isinstance(name, str) or not (clean_text(name, 32) or "").strip():
        return "field 'event' is missing, empty or not a string"
    problem = _event_id_problem(event.get("sg_event_id"))
    if problem is not None:
        return problem
    stamp = event.get("timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        return "field 'timestamp' is missing or not a number"
    if event_time(stamp) is None:
        return "field 'timestamp' is not epoch seconds between 2000 and 2100"
    if suppression_for(event) is not None and usable_address(event.get("email")) is None:
        return f"{event['event']} event without a usable address in 'email': nothing to suppress"
    return None


@dataclass(frozen=True)
class Checked:
    """A batch's items split by ``check_event``: the events to take, and the quarantine rows."""

    events: list[dict]
    rejects: list[dict]


def check_events(items: list, *, batch_id: int | None = None, now: datetime) -> Checked:
    """Split a batch's items into good events and quarantine rows (``email_event_rejects``)."""
    good, rejects = [], []
    for position, item in enumerate(items):
        reason = check_event(item)
        if reason is None:
            good.append(item)
            continue
        event_id = item.get("sg_event_id") if isinstance(item, dict) else None
        name = item.get("event") if isinstance(item, dict) else None
        rejects.append(
            {
                "batch_id": batch_id,
                "position": position,
                "sg_event_id": event_id if _event_id_problem(event_id) is None else None,
                "event": clean_text(_ADDRESS.sub("<address>", name), 32) if isinstance(name, str) else None,
                "reason": reason,
                "rejected_at": now,
            }
        )
    return Checked(good, rejects)


def unreadable_batch(batch_id: int | None, reason: str, now: datetime) -> dict:
    """The quarantine row of a stored body that cannot be read as a batch at all."""
    return {
        "batch_id": batch_id,
        "position": WHOLE_BATCH,
        "sg_event_id": None,
        "event": None,
        "reason": reason,
        "rejected_at": now,
    }


def quarantine(conn: sa.Connection, rejects: list[dict]) -> None:
    """Record quarantine rows; a batch's position is recorded once (a refold adds nothing)."""
    stmt = dialect_insert(conn.dialect.name)(email_event_rejects).on_conflict_do_nothing(
        index_elements=["batch_id", "position"]
    )
    for chunk in chunks(rejects, CHUNK):
        conn.execute(stmt, chunk)


# ---------------------------------------------------------------------------------------------
# Webhook side


@dataclass(frozen=True)
class StoredBatch:
    batch_id: int
    new: bool
    events: int
    suppressed: int
    rejected: int = 0  # events quarantined (``email_event_rejects``)
    reasons: dict[str, int] = field(default_factory=dict)  # quarantine reason -> events


def suppressions_for(events: Iterable[dict]) -> list[LocalSuppression]:
    """The local suppressions checked events call for (hard bounces, spam reports, unsubscribes)."""
    wanted = []
    for event in events:
        kind = suppression_for(event)
        if kind is not None:
            wanted.append(LocalSuppression(usable_address(event.get("email")), *kind))
    return wanted


def apply_suppressions(
    target: sa.Engine | sa.Connection, events: Iterable[dict], *, now: datetime | None = None
) -> int:
    """Local suppressions for hard bounces, spam reports and unsubscribes; returns how many were written.

    Idempotent bulk upserts, in the caller's transaction when given a Connection. An event
    without a usable address cannot suppress anything and fails, naming its ``sg_event_id``,
    before anything is written (``check_event`` quarantines such events first).
    """
    now = now_or_clock(now)
    events = list(events)
    for position, event in enumerate(events):
        if suppression_for(event) is not None and usable_address(event.get("email")) is None:
            raise FeedbackError(
                f"event #{position} ({event.get('sg_event_id')}, {event.get('event')}) has no address to suppress"
            )
    return add_local_suppressions(target, suppressions_for(events), now=now)


def store_batch(engine: sa.Engine, body: bytes, events: list | None = None, *, now=None) -> StoredBatch:
    """Keep a verified batch (raw) for the fold, quarantine its bad events, suppress whom it asks to.

    ``events`` is ``webhook.parse_batch(body)`` when the caller already parsed it. All of it is
    written in one transaction (or none of it: the caller must not acknowledge the batch). The
    same body stored twice keeps one row and quarantines and suppresses nothing more.
    """
    now = now_or_clock(now)
    if events is None:
        events = parse_batch(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPayload("body is not UTF-8") from None
    key = digest(body)
    checked = check_events(events, now=now)
    wanted = suppressions_for(checked.events)
    row = {"digest": key, "received_at": now, "events": len(events), "body": text, "folded_at": None}

    def work(conn):
        inserted = conn.execute(
            dialect_insert(engine.dialect.name)(email_event_batches).on_conflict_do_nothing(index_elements=["digest"]),
            [row],
        ).rowcount
        batch_id = conn.execute(
            sa.select(email_event_batches.c.id).where(email_event_batches.c.digest == key)
        ).scalar_one()
        if inserted == 1:
            quarantine(conn, [{**r, "batch_id": batch_id} for r in checked.rejects])
            add_local_suppressions(conn, wanted, now=now)
        return batch_id, inserted == 1

    batch_id, new = ledger.transactional(engine, work)
    return StoredBatch(
        batch_id=int(batch_id),
        new=new,
        events=len(events),
        suppressed=len(wanted) if new else 0,
        rejected=len(checked.rejects),
        reasons=dict(Counter(r["reason"] for r in checked.rejects)),
    )


# ---------------------------------------------------------------------------------------------
# Readers


def pending_batches(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).where(email_event_batches.c.folded_at.is_(None))).scalar_one()
        )


def rejected_events(engine: sa.Engine) -> dict[str, int]:
    """Quarantined events per reason (``email_event_rejects``), for an operator or a dashboard."""
    t = email_event_rejects.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.reason, sa.func.count()).group_by(t.reason)).all()
    return {reason: int(count) for reason, count in rows}


def event_json(events: list[dict]) -> bytes:
    """A batch body as SendGrid sends it (compact JSON); for tests and tools."""
    return json.dumps(events, separators=(",", ":")).encode("utf-8")
