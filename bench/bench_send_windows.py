"""Benchmark: vectorized ``compute_send_at`` vs a per-row Python loop with the same semantics.

The audience is synthetic: ``size`` customers over the shipped markets with realistic zone mixes,
earliest moments from two days ago to four days ahead, and a best hour for 60% of them; ``now`` is
the Friday before the EU switch to summer time, so the 72 h horizon crosses a DST change.

The baseline is an honest per-row implementation (not minute stepping): it jumps from boundary to
boundary of the local window with zoneinfo, bisecting DST transitions. It runs on a sample
(``LOOP_SAMPLE`` rows) and is extrapolated linearly to ``size``; the entry name says so. Both
results are compared on that sample and the benchmark fails if they differ.
"""

from __future__ import annotations

import time as clock
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import holidays
import numpy as np
import pandas as pd

from bench.run import entry
from remarketing.markets import WEEKDAYS, load_markets
from remarketing.timing.send_windows import SEND_AT_HORIZON, compute_send_at

LOOP_SAMPLE = 20_000
NOW = datetime(2026, 3, 27, 8, 0, tzinfo=UTC)
MARKET_SHARE = {"US": 0.35, "DE": 0.2, "GB": 0.15, "FR": 0.1, "JP": 0.08, "BR": 0.07, "CN": 0.05}
ZONE_SHARE = {
    "US": {
        "America/New_York": 0.47,
        "America/Chicago": 0.29,
        "America/Denver": 0.05,
        "America/Phoenix": 0.02,
        "America/Los_Angeles": 0.15,
        "America/Anchorage": 0.01,
        "Pacific/Honolulu": 0.01,
    },
    "BR": {"America/Sao_Paulo": 0.8, "America/Bahia": 0.1, "America/Manaus": 0.06, "America/Cuiaba": 0.04},
    "CN": {"Asia/Shanghai": 0.97, "Asia/Urumqi": 0.03},
}


def build_audience(size: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cfg = load_markets()
    codes = np.array(list(MARKET_SHARE))
    market = codes[rng.choice(len(codes), size=size, p=list(MARKET_SHARE.values()))]
    zone = np.empty(size, dtype=object)
    for code in codes:
        rows = market == code
        shares = ZONE_SHARE.get(code, {cfg[code].default_time_zone: 1.0})
        names = np.array(list(shares), dtype=object)
        zone[rows] = names[rng.choice(len(names), size=rows.sum(), p=list(shares.values()))]
    offset_s = rng.integers(-2 * 86_400, 4 * 86_400, size=size)
    earliest = pd.to_datetime(NOW) + pd.to_timedelta(offset_s, unit="s")
    best = np.clip(np.round(rng.normal(13, 4, size=size)), 0, 23)
    best_hour = pd.array(np.where(rng.random(size) < 0.6, best, np.nan), dtype="Int64")
    return pd.DataFrame(
        {"market": market.astype(object), "time_zone": zone, "earliest_at": earliest, "best_hour": best_hour}
    )


# --- the per-row baseline ----------------------------------------------------------------------------


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@cache
def _day_intervals(code: str) -> dict[int, list[tuple[int, int]]]:
    """Allowed [start, end) seconds of the local day per weekday: send hours minus quiet hours."""
    m = load_markets()[code]
    qs = m.quiet_hours.start.hour * 3600 + m.quiet_hours.start.minute * 60
    qe = m.quiet_hours.end.hour * 3600 + m.quiet_hours.end.minute * 60
    quiet = [(qs, qe)] if qs < qe else [(qs, 86_400), (0, qe)] if qs > qe else []
    out = {}
    for wd, day in enumerate(WEEKDAYS):
        first, end = m.send_hours[day]
        pieces = [(first * 3600, end * 3600)]
        for q0, q1 in quiet:
            pieces = [p for a, b in pieces for p in ((a, min(b, q0)), (max(a, q1), b)) if p[0] < p[1]]
        out[wd] = sorted(pieces)
    return out


@cache
def _blocked(code: str) -> frozenset[date]:
    m = load_markets()[code]
    if m.holidays.policy != "block":
        return frozenset()
    years = range(NOW.year - 1, NOW.year + 2)
    return frozenset(holidays.country_holidays(m.holidays.country, subdiv=m.holidays.subdivision, years=years))


def _offset(u: datetime, tz: ZoneInfo) -> timedelta:
    return u.astimezone(tz).utcoffset()


def _jump(u: datetime, wall: datetime, tz: ZoneInfo) -> datetime:
    """The first instant after ``u`` showing local ``wall``, or the DST transition before it (re-check there)."""
    loc = u.astimezone(tz)
    target = u + (wall - loc.replace(tzinfo=None))
    if _offset(target, tz) == loc.utcoffset():
        return target
    lo, hi = u, target  # the offset changes in (lo, hi]: bisect to the second
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if _offset(mid, tz) == loc.utcoffset():
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def _first_allowed(u: datetime, code: str, tz: ZoneInfo, limit: datetime) -> datetime | None:
    intervals, blocked = _day_intervals(code), _blocked(code)
    while u <= limit:
        loc = u.astimezone(tz)
        wall = loc.replace(tzinfo=None)
        midnight = datetime.combine(loc.date(), time())
        sec = (wall - midnight).total_seconds()
        day = [] if loc.date() in blocked else intervals[loc.weekday()]
        if any(a <= sec < b for a, b in day):
            return u
        later = [a for a, _ in day if a > sec]
        u = _jump(u, midnight + timedelta(seconds=later[0] if later else 86_400), tz)
    return None


def loop_send_at(audience: pd.DataFrame, now: datetime, horizon: timedelta = SEND_AT_HORIZON) -> list:
    """Per-row reference: first allowed instant, then the best hour on that local day."""
    limit = now + horizon
    results = []
    for code, zone, earliest, best in zip(
        audience["market"], audience["time_zone"], audience["earliest_at"], audience["best_hour"], strict=True
    ):
        tz = _zone(zone)
        first = _first_allowed(max(earliest.to_pydatetime(), now), code, tz, limit)
        if first is None or pd.isna(best):
            results.append(first)
            continue
        day = first.astimezone(tz).date()
        by_hour: dict[int, datetime] = {}
        u = first
        while u is not None:
            loc = u.astimezone(tz)
            if loc.date() != day:
                break
            by_hour.setdefault(loc.hour, u)
            next_hour = loc.replace(tzinfo=None, minute=0, second=0, microsecond=0) + timedelta(hours=1)
            u = _first_allowed(_jump(u, next_hour, tz), code, tz, limit)
        hour = min(by_hour, key=lambda h: (abs(h - int(best)), by_hour[h]))
        results.append(by_hour[hour])
    return results


def run(size: int) -> list[dict]:
    audience = build_audience(size)
    compute_send_at(audience.head(1000), NOW)  # warm caches (market file, holiday calendars)

    started = clock.perf_counter()
    vectorized = compute_send_at(audience, NOW)
    vector_s = clock.perf_counter() - started

    sample = audience.sample(n=min(LOOP_SAMPLE, size), random_state=11)
    loop_send_at(sample.head(200), NOW)  # warm the baseline's caches too
    started = clock.perf_counter()
    looped = loop_send_at(sample, NOW)
    loop_s = clock.perf_counter() - started

    expected = pd.Series(pd.to_datetime(looped, utc=True), index=sample.index).dt.as_unit("ns")
    got = vectorized.loc[sample.index, "send_at"]
    mismatch = ~((got == expected) | (got.isna() & expected.isna()))
    if mismatch.any():
        bad = sample.loc[mismatch].assign(vectorized=got[mismatch], loop=expected[mismatch])
        raise AssertionError(f"vectorized and per-row loop disagree on {mismatch.sum()} rows:\n{bad.head()}")
    scheduled = vectorized["send_at"].notna().mean()

    loop_extrapolated = loop_s * size / len(sample)
    return [
        entry(
            f"send_windows.compute_send_at vs per-row loop (baseline extrapolated from {len(sample)} rows)",
            vector_s,
            "s",
            size,
            baseline_value=loop_extrapolated,
        ),
        entry("send_windows.scheduled_within_72h_share", scheduled, "fraction", size),
    ]
