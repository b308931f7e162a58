"""The wall clock, in one place: every "now" a run takes comes from here (or from its ``as_of``)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime, name: str = "now") -> datetime:
    """``value`` in UTC; a naive datetime is refused (never assumed to be UTC)."""
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp
        value = value.to_pydatetime()
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def now_or_clock(now: datetime | None) -> datetime:
    """The given instant (aware, in UTC), or the clock."""
    return utcnow() if now is None else aware(now)
