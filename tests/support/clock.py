"""The instant the clock-sensitive tests run at, and the spread of instants they must pass at.

A test whose outcome could depend on when it runs (a shop generated "as of now", carts due
relative to now, hour-of-day send windows, a day boundary) is a *clock* test: it takes the
``instant`` fixture (or, at module level, ``INSTANT``), generates its shop as of that instant and
passes it (or a fixed time after it) to every flow run as ``as_of``, the outbox transport's
rehearsal instant, so the wall clock never decides what it sees. ``INSTANT`` is ``PINNED`` unless
``$REMARKETING_TEST_INSTANT`` names another; ``tests/support/clock_spread.py`` (``make test-clock``, and
``make test`` under CI) runs every clock test once per instant of ``SPREAD``: every 3 hours across
one day, the European and the US daylight-saving switches in both directions, and a Monday 00:30
UTC. One instant is reproduced with
``REMARKETING_TEST_INSTANT=2026-03-29T00:30:00+00:00 .venv/bin/python -m pytest -m clock``.

Tests that cannot take an instant (the SendGrid transport refuses an ``as_of`` away from the
clock; Asset-triggered runs compute as of their run_after) open every send hour and compare with
what the code computes at the same wall-clock moment, so they pass at any hour.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

ENV = "REMARKETING_TEST_INSTANT"

# A Wednesday noon, in the past: validation quarantines timestamps in the future of the clock.
PINNED = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)

SPREAD: dict[str, datetime] = {
    **{f"wed-{hour:02d}h": datetime(2026, 11, 18, hour, 0, tzinfo=UTC) for hour in range(0, 24, 3)},
    # Europe springs forward at 01:00 UTC: runs a day apart straddle the switch.
    "eu-dst-spring": datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
    "eu-dst-autumn": datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
    # The US switches at 02:00 local time, 07:00 / 06:00 UTC on the East coast.
    "us-dst-spring": datetime(2026, 3, 8, 6, 30, tzinfo=UTC),
    "us-dst-autumn": datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
    "mon-00h30": datetime(2026, 11, 16, 0, 30, tzinfo=UTC),
}


def parse_instant(text: str) -> datetime:
    chosen = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if chosen.tzinfo is None:
        raise ValueError(f"{ENV}={text!r} needs a UTC offset")
    chosen = chosen.astimezone(UTC)
    if chosen > datetime.now(UTC):
        raise ValueError(f"{ENV}={text!r} is in the future: validation would quarantine the shop's rows")
    return chosen


INSTANT = parse_instant(os.environ[ENV]) if os.environ.get(ENV) else PINNED
