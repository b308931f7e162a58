"""Property tests for compute_send_at against a minute-stepping reference.

The reference is deliberately naive: it walks UTC minute by minute and asks zoneinfo for the local
wall time of every instant. Allowed status only changes on whole local minutes (quiet hours are
HH:MM, send hours whole hours, holidays whole days, and every zone used here has whole-minute
offsets and transitions), so the first allowed minute is the exact first allowed instant.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from market_fixtures import TEST_SENDER, TEST_STOREFRONT

from remarketing.markets import WEEKDAYS, parse_markets
from remarketing.timing.send_windows import REASON_BEYOND_HORIZON, compute_send_at

HORIZON = timedelta(hours=72)
# Zones with DST at 02:00/03:00, at midnight (Havana, Santiago), half-hour DST (Lord Howe), 45-minute
# offsets (Chatham), half-hour offsets (Kolkata, Adelaide) and both sides of the date line.
ZONES = {
    "Europe/Berlin": "DE",
    "America/New_York": "US",
    "America/Havana": "CU",
    "America/Santiago": "CL",
    "Australia/Lord_Howe": "AU",
    "Australia/Adelaide": "AU",
    "Pacific/Chatham": "NZ",
    "Asia/Kolkata": "IN",
    "Pacific/Kiritimati": "KI",
    "Pacific/Apia": "WS",
    "Pacific/Honolulu": "US",
    "Asia/Tokyo": "JP",
}
# Instants near DST transitions and holidays of 2026, plus anywhere in the year.
ANCHORS = [
    datetime(2026, 3, 8, 6, tzinfo=UTC),  # US spring forward
    datetime(2026, 3, 28, 23, tzinfo=UTC),  # EU spring forward
    datetime(2026, 4, 4, 12, tzinfo=UTC),  # AU/NZ fall back, Easter
    datetime(2026, 9, 5, 3, tzinfo=UTC),  # Chile spring forward
    datetime(2026, 9, 26, 12, tzinfo=UTC),  # Chatham spring forward
    datetime(2026, 10, 3, 14, tzinfo=UTC),  # Lord Howe / Adelaide spring forward
    datetime(2026, 10, 24, 23, tzinfo=UTC),  # EU fall back
    datetime(2026, 10, 31, 4, tzinfo=UTC),  # US and Cuba fall back
    datetime(2026, 12, 23, 10, tzinfo=UTC),  # Christmas
    datetime(2026, 12, 30, 10, tzinfo=UTC),  # New Year
]


def build_market(zone, send, quiet, policy):
    body = {
        "name": "Property",
        "locales": ["en-US"],
        "currency": "USD",
        "default_time_zone": zone,
        "time_zones": [zone],
        "send_hours": dict(zip(WEEKDAYS, send, strict=True)),
        "quiet_hours": {"start": quiet[0], "end": quiet[1]},
        "holidays": {"country": ZONES[zone], "subdivision": None, "policy": policy},
        "marketing_consent_required": False,
        "sender": TEST_SENDER,
        "storefront": TEST_STOREFRONT,
        "sendgrid_unsubscribe_group_id": 1,
        "warmup_daily_cap": 10,
    }
    return parse_markets({"markets": {"PX": body}})


class Rules:
    """The allowed-instant predicate, spelled out the slow way."""

    def __init__(self, market, zone):
        self.market = market
        self.tz = ZoneInfo(zone)
        q = market.quiet_hours
        self.qs, self.qe = q.start.hour * 60 + q.start.minute, q.end.hour * 60 + q.end.minute
        self.blocked = set()
        if market.holidays.policy == "block":
            self.blocked = set(holidays.country_holidays(market.holidays.country, years=[2025, 2026, 2027]))

    def local(self, u: datetime) -> datetime:
        return u.astimezone(self.tz)

    def in_quiet(self, loc: datetime) -> bool:
        minute = loc.hour * 60 + loc.minute
        if self.qs < self.qe:
            return self.qs <= minute < self.qe
        if self.qs > self.qe:
            return minute >= self.qs or minute < self.qe
        return False

    def in_send_hours(self, loc: datetime) -> bool:
        first, end = self.market.send_hours[WEEKDAYS[loc.weekday()]]
        return first <= loc.hour < end

    def allowed(self, u: datetime) -> bool:
        loc = self.local(u)
        return self.in_send_hours(loc) and not self.in_quiet(loc) and loc.date() not in self.blocked


def next_minute(u: datetime) -> datetime:
    return u.replace(second=0, microsecond=0) + timedelta(minutes=1)


def reference(rules: Rules, earliest: datetime, now: datetime, best: int | None) -> datetime | None:
    """First allowed instant >= max(earliest, now) within the horizon, then the best-hour rule."""
    limit = now + HORIZON
    u = max(earliest, now)
    while u <= limit and not rules.allowed(u):
        u = next_minute(u)
    if u > limit:
        return None
    if best is None:
        return u
    day = rules.local(u).date()
    first_in_hour: dict[int, datetime] = {}
    v = u
    while v <= limit and v < u + timedelta(hours=50):
        if rules.allowed(v):
            loc = rules.local(v)
            if loc.date() != day:
                break  # the same-local-day run ends at the first allowed instant of another date
            first_in_hour.setdefault(loc.hour, v)
        v = next_minute(v)
    hour = min(first_in_hour, key=lambda h: (abs(h - best), first_in_hour[h]))
    return first_in_hour[hour]


hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 0, 15, 30, 45, 7]))
send_range = st.integers(0, 23).flatmap(lambda first: st.tuples(st.just(first), st.integers(first + 1, 24)))
wide = st.just((0, 24))


@st.composite
def scenarios(draw):
    zone = draw(st.sampled_from(sorted(ZONES)))
    send = [list(draw(st.one_of(send_range, wide))) for _ in WEEKDAYS]
    quiet = (draw(hhmm), draw(hhmm))
    policy = draw(st.sampled_from(["block", "target"]))
    anchor = draw(st.one_of(st.sampled_from(ANCHORS), st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31))))
    anchor = anchor.replace(tzinfo=UTC) if anchor.tzinfo is None else anchor
    now = anchor + timedelta(seconds=draw(st.integers(-6 * 3600, 6 * 3600)))
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(-10 * 3600, 80 * 3600),  # earliest relative to now, seconds
                st.one_of(st.none(), st.integers(0, 23)),
            ),
            min_size=1,
            max_size=4,
        )
    )
    return zone, send, quiet, policy, now, rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_matches_minute_stepping_reference_and_invariants(scenario):
    zone, send, quiet, policy, now, rows = scenario
    cfg = build_market(zone, send, quiet, policy)
    rules = Rules(cfg["PX"], zone)
    earliest = [now + timedelta(seconds=s) for s, _ in rows]
    frame = pd.DataFrame(
        {
            "market": "PX",
            "time_zone": zone,
            "earliest_at": pd.to_datetime(earliest, utc=True),
            "best_hour": pd.array([b for _, b in rows], dtype="Int64"),
        }
    )
    out = compute_send_at(frame, now, markets=cfg)
    for k, (e, (_, best)) in enumerate(zip(earliest, rows, strict=True)):
        got = out["send_at"].iloc[k]
        expected = reference(rules, e, now, best)
        if expected is None:
            assert pd.isna(got) and out["window_reason"].iloc[k] == REASON_BEYOND_HORIZON
            continue
        got = got.to_pydatetime()
        # Invariants first, so a failure says which guarantee broke.
        loc = rules.local(got)
        assert not rules.in_quiet(loc), (got, loc)
        assert rules.in_send_hours(loc), (got, loc)
        assert loc.date() not in rules.blocked, (got, loc)
        assert got >= e and got >= now
        assert got <= now + HORIZON
        assert out["window_reason"].iloc[k] is None
        # And the exact instant: the first allowed one (or the best-hour choice on its day).
        assert got == expected, (zone, e, best, got, expected, loc)
