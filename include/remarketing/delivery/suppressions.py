"""Suppressions: addresses we must never mail, synced from SendGrid and recorded by us.

SendGrid would drop mail to a suppressed address anyway, but each such request still counts
against the sender's reputation and our warm-up volume, and a send we know is pointless should
be an outcome with a reason (``suppressed``), not a silent drop downstream. So every kind is
mirrored in the ``suppressions`` table and checked per audience before anything is claimed.

* Global kinds (``bounces``, ``blocks``, ``spam_reports``, ``invalid_emails``,
  ``unsubscribes``) are stored with ``group_id`` 0 and block every market.
* Unsubscribe-group suppressions (``group_unsubscribes``) block only the market whose
  ``sendgrid_unsubscribe_group_id`` they name.
* Local suppressions (our own one-click endpoint, support requests, the event webhook) are
  written with ``add_local_suppression`` or, many at once, ``add_local_suppressions`` (bulk
  upserts of 1,000 rows a statement, in one transaction or in the caller's) and honoured by the
  next check, even within a running send.

Addresses are stored normalised (trimmed, lower-case), as SendGrid compares them. The sync is
incremental per kind from a stored high-water mark (``suppression_sync``), re-reading a small
overlap so entries created while the previous sync ran are not missed; rows are upserted, so
the overlap never duplicates. The group list has no time filter in SendGrid's API and is read
whole each time. An entry removed in SendGrid stays here until ``full=True`` rebuilds the kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pandas as pd
import sqlalchemy as sa

from remarketing.delivery.ledger import normalise_email, transactional
from remarketing.platform.state import upsert_statement, utc

GLOBAL_KINDS = ("bounces", "blocks", "spam_reports", "invalid_emails", "unsubscribes")
GROUP_KIND = "group_unsubscribes"
LOCAL_KINDS = ("unsubscribes", GROUP_KIND, "complaint", "manual")
DEFAULT_OVERLAP = timedelta(hours=1)
MAX_EMAIL_LENGTH = 320
_CHUNK = 900

suppression_metadata = sa.MetaData()
suppressions = sa.Table(
    "suppressions",
    suppression_metadata,
    sa.Column("email", sa.String(MAX_EMAIL_LENGTH), primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("group_id", sa.Integer, primary_key=True, default=0),
    sa.Column("created", sa.DateTime(timezone=True)),
    sa.Column("reason", sa.Text),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)
suppression_sync = sa.Table(
    "suppression_sync",
    suppression_metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("high_water", sa.DateTime(timezone=True)),
    sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False, default=0),
)


class SuppressionError(ValueError):
    """A suppression entry that cannot be stored (no address, bad timestamp)."""


class LocalSuppression(NamedTuple):
    """One suppression we learnt ourselves; see ``add_local_suppression`` for the kinds."""

    email: str
    kind: str = "unsubscribes"
    group_id: int | None = None
    reason: str | None = None


def _epoch(value: Any, kind: str, position: int) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError):
        raise SuppressionError(f"{kind} entry #{position}: 'created' is not epoch seconds") from None


def _entry(row: dict, kind: str, position: int, now: datetime, group_id: int = 0) -> dict:
    email = row.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise SuppressionError(f"{kind} entry #{position} from SendGrid has no address")
    reason = row.get("reason") or row.get("status") or row.get("group_name")
    return {
        "email": normalise_email(email),
        "kind": kind,
        "group_id": int(group_id),
        "created": _epoch(row.get("created", row.get("created_at")), kind, position),
        "reason": None if reason is None else str(reason)[:1000],
        "source": "sendgrid",
        "recorded_at": now,
    }


_KEYS = ["email", "kind", "group_id"]


def _unnest_upsert():
    """PostgreSQL: INSERT ... SELECT FROM unnest(one array per column) ON CONFLICT DO UPDATE.

    SQLAlchemy runs an executemany of INSERT ... ON CONFLICT DO UPDATE row by row on psycopg2
    (one round trip per address); this is one round trip per chunk, and one cached statement.
    """
    from sqlalchemy.dialects import postgresql

    names = [c.name for c in suppressions.columns]
    arrays = [sa.cast(sa.bindparam(c.name), postgresql.ARRAY(c.type)) for c in suppressions.columns]
    rows = sa.func.unnest(*arrays).table_valued(*names).render_derived()
    stmt = postgresql.insert(suppressions).from_select(names, sa.select(*(rows.c[n] for n in names)))
    return stmt.on_conflict_do_update(index_elements=_KEYS, set_={n: stmt.excluded[n] for n in names if n not in _KEYS})


def _store(conn: sa.Connection, engine: sa.Engine | sa.Connection, rows: list[dict]) -> None:
    # One row per (email, kind, group_id) in a statement: PostgreSQL refuses to update a row twice.
    unique = list({(r["email"], r["kind"], r["group_id"]): r for r in rows}.values())
    if conn.dialect.name == "postgresql":
        stmt = _unnest_upsert()
        for start in range(0, len(unique), 1000):
            chunk = unique[start : start + 1000]
            conn.execute(stmt, {c.name: [r[c.name] for r in chunk] for c in suppressions.columns})
        return
    stmt = upsert_statement(engine, suppressions, _KEYS)
    for start in range(0, len(unique), 1000):
        conn.execute(stmt, unique[start : start + 1000])  # SQLite: executemany, a loop in C


def sync_suppressions(
    engine: sa.Engine,
    api,
    *,
    now: datetime,
    overlap: timedelta = DEFAULT_OVERLAP,
    kinds: Iterable[str] = GLOBAL_KINDS,
    groups: bool = True,
    full: bool = False,
    max_age: timedelta | None = None,
) -> dict[str, int]:
    """Pull SendGrid's suppressions into ``suppressions``; returns rows read per kind.

    ``api`` offers ``iter_suppressions(kind, start_time=)`` and ``iter_group_suppressions()``
    (``remarketing.delivery.sendgrid_api.SendGridApi``). Each kind starts at its stored
    high-water mark minus ``overlap``; the mark then moves to the newest ``created`` seen (never
    backwards). ``max_age`` skips kinds synced less than that long ago (send tasks call this
    cheaply; the feedback DAG syncs every time). ``full`` re-reads a kind from the beginning
    and drops its SendGrid rows that are gone there (local rows stay).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    with engine.connect() as conn:
        marks = {row.kind: row for row in conn.execute(sa.select(suppression_sync))}
    counts: dict[str, int] = {}
    todo = list(kinds) + ([GROUP_KIND] if groups else [])
    for kind in todo:
        mark = marks.get(kind)
        if max_age is not None and not full and mark is not None and utc(mark.synced_at) > now - max_age:
            continue
        high_water = None if full or mark is None else utc(mark.high_water)
        if kind == GROUP_KIND:
            rows = [
                _entry(r, kind, i, now, group_id=r.get("group_id") or 0)
                for i, r in enumerate(api.iter_group_suppressions())
            ]
        else:
            start = None if high_water is None else high_water - overlap
            rows = [_entry(r, kind, i, now) for i, r in enumerate(api.iter_suppressions(kind, start_time=start))]
        if any(r["kind"] == GROUP_KIND and r["group_id"] <= 0 for r in rows):
            raise SuppressionError("an unsubscribe-group entry from SendGrid has no group_id")
        newest = max((r["created"] for r in rows if r["created"] is not None), default=None)
        new_mark = max(d for d in (high_water, newest) if d is not None) if (high_water or newest) else None

        def work(conn, rows=rows, kind=kind, new_mark=new_mark, replace=full or kind == GROUP_KIND):
            if replace:
                conn.execute(
                    sa.delete(suppressions).where(suppressions.c.kind == kind, suppressions.c.source == "sendgrid")
                )
            _store(conn, engine, rows)
            conn.execute(
                upsert_statement(engine, suppression_sync, ["kind"]),
                [{"kind": kind, "high_water": new_mark, "synced_at": now, "rows": len(rows)}],
            )

        transactional(engine, work)
        counts[kind] = len(rows)
    return counts


def add_local_suppression(
    engine: sa.Engine,
    email: str,
    *,
    kind: str = "unsubscribes",
    group_id: int | None = None,
    reason: str | None = None,
    now: datetime | None = None,
) -> None:
    """Record a suppression we learnt ourselves (one-click unsubscribe...); honoured at the next check.

    ``kind`` ``unsubscribes`` blocks every market; ``group_unsubscribes`` with ``group_id`` only
    the market using that SendGrid unsubscribe group. Many at once: ``add_local_suppressions``.
    """
    add_local_suppressions(engine, [LocalSuppression(email, kind, group_id, reason)], now=now)


def _local_row(entry: LocalSuppression, now: datetime) -> dict:
    email, kind, group_id, reason = entry
    if kind not in LOCAL_KINDS:
        raise SuppressionError(f"local suppression kind {kind!r} is not one of {', '.join(LOCAL_KINDS)}")
    if not isinstance(email, str) or "@" not in email:
        raise SuppressionError("a local suppression needs an email address")
    if len(normalise_email(email)) > MAX_EMAIL_LENGTH:
        raise SuppressionError(f"a local suppression's address is longer than {MAX_EMAIL_LENGTH} characters")
    if kind == GROUP_KIND and not group_id:
        raise SuppressionError("a group unsubscribe needs the group_id")
    return {
        "email": normalise_email(email),
        "kind": kind,
        "group_id": int(group_id or 0) if kind == GROUP_KIND else 0,
        "created": now,
        "reason": reason,
        "source": "local",
        "recorded_at": now,
    }


def add_local_suppressions(
    target: sa.Engine | sa.Connection, entries: Iterable[LocalSuppression], *, now: datetime | None = None
) -> int:
    """Record many local suppressions as bulk upserts; returns how many entries were given.

    Every entry is checked before anything is written (SuppressionError names no address). With
    an Engine the upserts run in one transaction of their own; with a Connection, in the caller's
    (the webhook stores a batch and its suppressions together, or neither).
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    rows = [_local_row(LocalSuppression(*entry), now) for entry in entries]
    if rows:
        if isinstance(target, sa.Connection):
            _store(target, target, rows)
        else:
            transactional(target, lambda conn: _store(conn, target, rows))
    return len(rows)


def suppression_reasons(engine: sa.Engine, emails: pd.Series, group_id: int | None) -> pd.Series:
    """Per address, the suppression kind that blocks it for this group (None when free to mail).

    Same index as ``emails``. Global kinds block everywhere; ``group_unsubscribes`` only for
    ``group_id``. Missing or non-string addresses get None here (the address check names them).
    """
    normalised = emails.map(lambda e: normalise_email(e) if isinstance(e, str) else None)
    unique = sorted({e for e in normalised.dropna()})
    groups = [0] if not group_id else [0, int(group_id)]
    found: dict[str, str] = {}
    t = suppressions.c
    with engine.connect() as conn:
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            query = sa.select(t.email, t.kind).where(t.email.in_(chunk), t.group_id.in_(groups)).order_by(t.kind)
            for email, kind in conn.execute(query):
                found.setdefault(email, kind)
    reasons = normalised.map(found).astype(object)
    return reasons.where(reasons.notna(), None)


def suppressed_mask(engine: sa.Engine, emails: pd.Series, group_id: int | None) -> pd.Series:
    """True where the address may not be mailed in the market using ``group_id``."""
    return suppression_reasons(engine, emails, group_id).notna()
