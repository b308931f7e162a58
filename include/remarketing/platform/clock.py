"""The wall clock, in one place: every "now" a run takes comes from here (or from its ``as_of``)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
