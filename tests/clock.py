"""The instant the clock-sensitive tests run at, and the spread of instants they must pass at.

A test whose outcome could depend on when it runs (a shop generated "as of now", carts due
relative to now, hour-of-day send windows, a day boundary) is marked ``clock`` and takes the
``instant`` fixture: it generates its shop as of that instant and passes the same instant to
every flow run as ``as_of`` (the outbox transport's rehearsal instant), so the wall clock never
decides what it sees. A normal run uses ``PINNED``. ``pytest -m clock --instants=spread`` runs
the same tests at every instant of ``SPREAD``: every 3 hours across one day, the European and
the US daylight-saving switches in both directions, and a Monday 00:30 UTC. One instant is
reproduced with ``REMARKETING_TEST_INSTANT=2026-03-29T00:30:00+00:00 pytest -m clock``.

Tests that cannot take an instant (the SendGrid transport refuses an ``as_of`` away from the
clock) compare against what the code computes at the same wall-clock moment and open every
send hour, so they pass at any hour.
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


def instants(mode: str) -> dict[str, datetime]:
    """The instants a run covers: ``pinned`` (or the one in $REMARKETING_TEST_INSTANT) or ``spread``."""
    if mode == "spread":
        return dict(SPREAD)
    if os.environ.get(ENV):
        return {"env": parse_instant(os.environ[ENV])}
    return {"pinned": PINNED}
