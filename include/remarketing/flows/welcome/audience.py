"""The welcome series: who is due the welcome mail or the reminder (plain pandas).

Two mails, through the shared send step (flow ``welcome_series``, kind marketing, so consent,
suppressions, caps and windows apply as for every marketing mail):

* ``member`` (welcome/member): once per customer, to customers registered within the last
  ``lookback_days`` who have not had it. The ledger key ``welcome_series/member/c<id>/welcome/v1``
  is the "once": a re-run, a retry or an overlapping run finds it and sends nothing.
* ``reminder`` (welcome/reminder): ``reminder_after_days`` after the member mail was sent, only
  if the customer has placed no valid order since registering; once per customer as well.

Who was welcomed lives in ``send_ledger`` (no table of its own). Customers whose member mail
was refused for good (a 4xx) count as handled; a retryable failure is tried again next run.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

FLOW = "welcome_series"
SUBJECT_KIND = "series"
SUBJECT_ID = "welcome"
VARIANT = "v1"
STEPS = ("member", "reminder")
DEFAULT_LOOKBACK_DAYS = 14
DEFAULT_REMINDER_AFTER_DAYS = 3
VALID_ORDER_STATUSES = ("placed", "shipped", "delivered")
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def welcome_history(engine) -> pd.DataFrame:
    """The welcome series' ledger rows: customer_id, step, status, retryable, sent_at (UTC)."""
    import sqlalchemy as sa

    from remarketing.delivery.ledger import send_ledger

    t = send_ledger.c
    query = sa.select(
        t.customer_id,
        t.step,
        t.status,
        t.retryable,
        sa.func.coalesce(t.send_at, t.finished_at, t.claimed_at).label("sent_at"),
    ).where(t.flow == FLOW)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["customer_id", "step", "status", "retryable", "sent_at"])
    frame["customer_id"] = pd.to_numeric(frame["customer_id"], errors="coerce")
    frame = frame.dropna(subset=["customer_id"]).astype({"customer_id": "int64"})
    frame["retryable"] = frame["retryable"].astype(bool)
    frame["sent_at"] = pd.to_datetime(frame["sent_at"], utc=True)
    return frame.reset_index(drop=True)


def welcome_audience(
    customers: pd.DataFrame,
    orders: pd.DataFrame,
    history: pd.DataFrame,
    *,
    now: datetime,
    markets,
    selected: list[str] | None = None,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
    reminder: bool = True,
    reminder_after_days: int = DEFAULT_REMINDER_AFTER_DAYS,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The send step's audience (both steps) and counts of who was considered and why not.

    ``customers``/``orders``: clean store frames; ``history``: ``welcome_history``. Returns
    (audience, counts) with counts registered, already_welcomed, member_due, reminder_due,
    reminder_ordered (skipped: ordered since registering), reminder_done.
    """
    from remarketing.timing.send_windows import resolve_time_zones

    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now_ts = pd.Timestamp(now).tz_convert("UTC")
    codes = list(selected) if selected is not None else [m.code for m in markets]
    people = customers[customers["market"].isin(codes)].copy()
    people["registered_at"] = pd.to_datetime(people["registered_at"], utc=True)
    handled = history[~((history["status"] == "rejected") & history["retryable"])]
    counts: dict[str, int] = {}
    due_member = _due_member(people, handled, now_ts, lookback_days, counts)
    due_reminder = people.iloc[0:0].assign(step="reminder", earliest_at=pd.Series(dtype="datetime64[ns, UTC]"))
    counts.update(reminder_due=0, reminder_ordered=0, reminder_done=0)
    if reminder:
        after = pd.Timedelta(days=reminder_after_days)
        due_reminder = _due_reminder(people, orders, history, handled, now_ts, after, lookback_days, counts)
    audience = _send_columns(pd.concat([due_member, due_reminder], ignore_index=True), markets, now_ts)
    if len(audience):
        zones = resolve_time_zones(audience[["market", "time_zone", "country", "region"]], markets)
        audience["time_zone"] = zones["time_zone"].to_numpy(dtype=object)
    return audience.reset_index(drop=True), counts


def _due_member(people, handled, now_ts, lookback_days: int, counts: dict[str, int]) -> pd.DataFrame:
    """1. The welcome mail: registered within the lookback and not welcomed yet."""
    registered = people["registered_at"]
    recent = people[registered.between(now_ts - pd.Timedelta(days=lookback_days), now_ts).to_numpy()]
    welcomed = set(handled.loc[handled["step"] == "member", "customer_id"])
    due = recent[~recent["customer_id"].isin(welcomed)].assign(step="member")
    due["earliest_at"] = due["registered_at"]
    counts["registered"] = int(len(recent))
    counts["already_welcomed"] = int(len(recent) - len(due))
    counts["member_due"] = int(len(due))
    return due


def _due_reminder(people, orders, history, handled, now_ts, after, lookback_days: int, counts) -> pd.DataFrame:
    """2. The reminder: member mail accepted long enough ago, no order since registering, no reminder yet."""
    accepted = history[(history["step"] == "member") & (history["status"] == "accepted")]
    ripe = accepted[
        (accepted["sent_at"] <= now_ts - after)
        & (accepted["sent_at"] >= now_ts - after - pd.Timedelta(days=lookback_days))
    ]
    candidates = people[people["customer_id"].isin(ripe["customer_id"])]
    reminded = set(handled.loc[handled["step"] == "reminder", "customer_id"])
    counts["reminder_done"] = int(candidates["customer_id"].isin(reminded).sum())
    candidates = candidates[~candidates["customer_id"].isin(reminded)]
    valid = orders[orders["status"].isin(VALID_ORDER_STATUSES)]
    placed = valid[["customer_id", "placed_at"]].merge(candidates[["customer_id", "registered_at"]], on="customer_id")
    bought = set(placed.loc[pd.to_datetime(placed["placed_at"], utc=True) >= placed["registered_at"], "customer_id"])
    ordered = candidates["customer_id"].isin(bought)
    counts["reminder_ordered"] = int(ordered.sum())
    due = candidates[~ordered].assign(step="reminder")
    sent_at = ripe.drop_duplicates("customer_id").set_index("customer_id")["sent_at"]
    planned = sent_at.reindex(due["customer_id"].astype("int64").to_numpy()) + after
    due["earliest_at"] = pd.Series(planned.to_numpy(), index=due.index, dtype=planned.dtype)
    counts["reminder_due"] = int(len(due))
    return due


def _send_columns(due: pd.DataFrame, markets, now_ts) -> pd.DataFrame:
    """The send step's columns for both mails; the newest registrations first under a warm-up cap."""
    from remarketing.content.locales import normalize_locale

    market_locale = due["market"].map({m.code: m.primary_locale for m in markets})
    locale = due["locale"].map(normalize_locale)
    earliest = pd.to_datetime(due["earliest_at"], utc=True)
    return pd.DataFrame(
        {
            "customer_id": due["customer_id"].astype("int64"),
            "email": due["email"].astype(object),
            "first_name": due["first_name"].astype(object),
            "last_name": due["last_name"].astype(object),
            "market": due["market"].astype(object),
            "locale": locale.where(locale.notna(), market_locale).astype(object),
            "country": due["country"].astype(object),
            "region": due["region"].astype(object),
            "time_zone": due["time_zone"].astype(object),
            "marketing_consent": due["marketing_consent"]
            .astype(object)
            .map(lambda v: v is True or v == 1)
            .astype(bool),
            "earliest_at": earliest.where(earliest > now_ts, now_ts),
            "best_hour": pd.array([pd.NA] * len(due), dtype="Int64"),
            # Warm-up cap: the newest registrations first (they remember signing up).
            "value": (pd.to_datetime(due["registered_at"], utc=True) - _EPOCH).dt.total_seconds().astype(np.float64),
            "step": due["step"].astype(object),
            "subject_kind": SUBJECT_KIND,
            "subject_id": SUBJECT_ID,
            "variant": VARIANT,
        }
    )
