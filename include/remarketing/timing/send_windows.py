"""Localized send-time windows: customer time zones, allowed send instants, placing a send at a best hour.

The best hour itself (from a customer's opens, clicks and orders) comes from
:mod:`remarketing.timing.best_hour`.

Why this module exists: a remarketing email must land when the customer can read it, in the
customer's own local time, never in the market's quiet hours, never on a public holiday the market
blocks, and never further ahead than SendGrid's ``send_at`` accepts (72 hours). Everything here is
vectorized over a whole audience: the per-(market, zone) calendar is tiny and precomputed, and
every customer is one ``numpy.searchsorted`` against it.

Semantics (the contract the tests check):

* An instant ``u`` is *allowed* for a customer when its local wall-clock time in the customer's
  zone (as the zone actually shows it at ``u``) lies inside the weekday's ``send_hours``, outside
  ``quiet_hours`` and, when the market's holiday policy is ``block``, its local date is not a
  public holiday of the market's calendar. Because the rule is about real instants, a DST
  spring-forward gap cannot produce a non-existent local time, and in a fall-back overlap the
  repeated hour is simply allowed twice: the first allowed instant is the first occurrence.
* ``send_at`` is the first allowed instant at or after ``max(earliest_at, now)``; an allowed
  candidate is kept to the nanosecond (never rounded up to the next hour). When that instant is
  more than ``horizon`` (72 h) after ``now`` the row gets ``NaT`` and a ``window_reason``: the
  customer waits for a later run.
* Best hour: let ``f`` be the first allowed instant and ``D`` its local date. Among the allowed
  instants from ``f`` on that same local day (and within the horizon), take for every local hour
  the first allowed instant in that hour; choose the hour closest to ``best_hour`` (plain
  ``|hour - best_hour|`` within the day, ties to the earlier instant). When ``best_hour`` itself
  is available that is the first allowed instant at that hour; when it already passed, the
  nearest hour is ``f``'s hour, so the send is ``f``. The result is never earlier than ``f``.
  "The same local day" is the run of allowed slots after ``f`` that stays on date ``D`` (only a
  zone that falls back across midnight can interleave dates; the run then stops).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import numpy as np
import pandas as pd

from remarketing.markets import WEEKDAYS, Market, MarketConfig, load_markets

SEND_AT_HORIZON = timedelta(hours=72)  # SendGrid rejects a send_at more than 72 hours ahead.
REASON_BEYOND_HORIZON = "beyond_send_at_horizon"
REASON_MISSING_EARLIEST = "missing_earliest_at"
REASON_INVALID_ZONE = "invalid_time_zone"
TZ_SOURCES = ("profile", "region", "country", "market_default")

_NS = 1_000_000_000
_DAY_S = 86_400
_MINUTES = 1_440
_SAMPLE_S = 900  # zone offsets are sampled every 15 min to find DST transitions (then bisected to the second)


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


@cache
def _zone(name: str) -> ZoneInfo | None:
    if not isinstance(name, str) or name not in _zone_names():
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def is_valid_zone(name: object) -> bool:
    """True for an IANA zone name zoneinfo can load."""
    return isinstance(name, str) and _zone(name) is not None


@cache
def _single_zone_of_country(country: str) -> str | None:
    """The country's only time zone per CLDR (babel), else None (several zones or unknown)."""
    from babel.core import get_global

    zones = get_global("territory_zones").get(country, [])
    return zones[0] if len(zones) == 1 else None


def markets_or_default(markets: MarketConfig | None) -> MarketConfig:
    """The given market configuration, else the shipped one (config/markets.yaml)."""
    return markets if markets is not None else load_markets()


def check_markets(codes: pd.Series, cfg: MarketConfig) -> None:
    """Every row needs a configured market: its calendar and zones come from there."""
    unknown = sorted(set(pd.unique(codes.dropna())) - set(cfg.codes))
    if unknown or codes.isna().any():
        raise ValueError(f"rows with unknown or missing market {unknown or [None]}; configured: {', '.join(cfg.codes)}")


def resolve_time_zones(customers: pd.DataFrame, markets: MarketConfig | None = None) -> pd.DataFrame:
    """Give every customer a usable IANA zone and record where it came from.

    Rule, first match wins (``tz_source``):

    1. ``profile``: the profile's ``time_zone`` if it is a valid IANA name (any zone: a German
       customer living in New York reads mail in New York).
    2. ``region``: the market's ``region_time_zones`` map for the customer's ``region`` when the
       customer's country is the market's own (or unknown); region codes are per country.
    3. ``country``: the customer's country is the market's own and the market has a single zone
       (DE -> Europe/Berlin), or a foreign country CLDR lists with exactly one zone (AT -> Europe/Vienna).
    4. ``market_default``: everything else (US customer without state, multi-zone foreign country,
       no country), the market's ``default_time_zone``.

    Returns a copy with the same index and order, ``time_zone`` resolved and ``tz_source`` added.
    """
    cfg = markets_or_default(markets)
    out = customers.copy()
    check_markets(out["market"], cfg)
    market = out["market"].astype(object)
    profile = out["time_zone"] if "time_zone" in out else pd.Series(None, index=out.index, dtype=object)
    country = out["country"] if "country" in out else pd.Series(None, index=out.index, dtype=object)
    region = out["region"] if "region" in out else pd.Series(None, index=out.index, dtype=object)
    country = country.astype(object).where(country.notna(), None)
    country = country.map(lambda c: c.strip().upper() if isinstance(c, str) else None)
    region = region.astype(object).map(lambda r: r.strip().upper() if isinstance(r, str) else None)

    zones = np.full(len(out), None, dtype=object)
    source = np.full(len(out), None, dtype=object)

    valid_profile = profile.map(is_valid_zone).to_numpy(dtype=bool)
    zones[valid_profile] = profile.to_numpy(dtype=object)[valid_profile]
    source[valid_profile] = "profile"

    for code in pd.unique(market):
        m = cfg[code]
        rows = (market == code).to_numpy() & ~valid_profile
        if not rows.any():
            continue
        own = (country.isna() | (country == m.code)).to_numpy()
        region_zone = region.map(m.region_time_zones).to_numpy(dtype=object)
        by_region = rows & own & pd.notna(region_zone)
        zones[by_region] = region_zone[by_region]
        source[by_region] = "region"
        rest = rows & ~by_region
        own_country = rest & (country == m.code).to_numpy()
        if len(m.time_zones) == 1:
            zones[own_country] = m.default_time_zone
            source[own_country] = "country"
        foreign = rest & ~own & country.notna().to_numpy()
        foreign_zone = country.map(lambda c: _single_zone_of_country(c) if c else None).to_numpy(dtype=object)
        by_foreign = foreign & pd.notna(foreign_zone)
        zones[by_foreign] = foreign_zone[by_foreign]
        source[by_foreign] = "country"
        default = rows & pd.isna(source)
        zones[default] = m.default_time_zone
        source[default] = "market_default"

    out["time_zone"] = zones
    out["tz_source"] = source
    return out


# ---------------------------------------------------------------------------------------------
# Allowed-instant calendar per (market, zone)


@lru_cache(maxsize=256)
def _holiday_dates(country: str, subdivision: str | None, years: tuple[int, ...], categories: tuple[str, ...]):
    import holidays

    return frozenset(holidays.country_holidays(country, subdiv=subdivision, years=years, categories=categories))


def _allowed_minutes(market: Market) -> tuple[np.ndarray, np.ndarray]:
    """(7, 1440) send-hours mask by weekday (Mon=0) and the (1440,) quiet-hours mask, in local minutes."""
    send = np.zeros((7, _MINUTES), dtype=bool)
    for i, day in enumerate(WEEKDAYS):
        first, end = market.send_hours[day]
        send[i, first * 60 : end * 60] = True
    quiet = np.zeros(_MINUTES, dtype=bool)
    qs = market.quiet_hours.start.hour * 60 + market.quiet_hours.start.minute
    qe = market.quiet_hours.end.hour * 60 + market.quiet_hours.end.minute
    if qs < qe:
        quiet[qs:qe] = True
    elif qs > qe:  # crosses midnight; start == end means no quiet hours at all
        quiet[qs:] = True
        quiet[:qe] = True
    return send, quiet


def _offset_at(tz: ZoneInfo, t: int) -> int:
    return int(datetime.fromtimestamp(t, tz).utcoffset().total_seconds())


def _offset_segments(tz: ZoneInfo, start_s: int, end_s: int) -> list[tuple[int, int, int]]:
    """Constant-offset UTC segments [(from_s, to_s, offset_s)] covering [start_s, end_s), transitions exact to the second."""
    samples = list(range(start_s, end_s, _SAMPLE_S)) + [end_s]
    offsets = [_offset_at(tz, t) for t in samples]
    segments = []
    seg_start, seg_offset = start_s, offsets[0]
    for k in range(1, len(samples)):
        if offsets[k] == seg_offset:
            continue
        lo, hi = samples[k - 1], samples[k]  # offset(lo) == seg_offset != offset(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _offset_at(tz, mid) == seg_offset:
                lo = mid
            else:
                hi = mid
        segments.append((seg_start, hi, seg_offset))
        seg_start, seg_offset = hi, offsets[k]
    segments.append((seg_start, end_s, seg_offset))
    return segments


def _zone_calendar(
    market: Market, zone: str, window_s: tuple[int, int], categories: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Allowed slots of one (market, zone) over a UTC window, sorted by instant.

    A slot is a maximal allowed stretch inside one local (date, hour); returns UTC start and end
    in seconds, local day number (days since 1970-01-01 on the local calendar) and local hour.
    Built in local wall time (minute mask), then mapped to UTC segment by segment of constant
    offset, so DST gaps and overlaps come out right by construction.
    """
    tz = _zone(zone)
    start_s, end_s = window_s
    day_lo, day_hi = start_s // _DAY_S - 2, end_s // _DAY_S + 2  # |UTC offset| < 1 day
    days = np.arange(day_lo, day_hi + 1)
    send, quiet = _allowed_minutes(market)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    mask = send[weekday] & ~quiet[None, :]
    if market.holidays.policy == "block":
        epoch = date(1970, 1, 1)
        dates = [epoch + timedelta(days=int(d)) for d in days]
        years = tuple(range(dates[0].year, dates[-1].year + 1))
        blocked = _holiday_dates(market.holidays.country, market.holidays.subdivision, years, categories)
        mask[np.array([d in blocked for d in dates])] = False
    flat = mask.ravel()
    minute = np.arange(flat.size)
    prev = np.concatenate(([False], flat[:-1]))
    nxt = np.concatenate((flat[1:], [False]))
    starts = np.flatnonzero(flat & ((minute % 60 == 0) | ~prev))
    ends = np.flatnonzero(flat & ((minute % 60 == 59) | ~nxt)) + 1
    local_start = (day_lo * _MINUTES + starts) * 60
    local_end = (day_lo * _MINUTES + ends) * 60
    day = day_lo + starts // _MINUTES
    hour = (starts % _MINUTES) // 60

    parts = []
    for seg_from, seg_to, offset in _offset_segments(tz, start_s, end_s):
        u_start = np.maximum(local_start - offset, seg_from)
        u_end = np.minimum(local_end - offset, seg_to)
        keep = u_start < u_end
        parts.append((u_start[keep], u_end[keep], day[keep], hour[keep]))
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def _best_hour_choice(day: np.ndarray, hour: np.ndarray) -> np.ndarray:
    """choice[p, h]: the slot (index) to use when the first allowed slot is p and the best hour is h.

    Among slots from p on within the same local-day run, the one whose hour is nearest to h,
    ties to the earlier slot. Slot arrays are small (a few days x 24), so this is cheap.
    """
    n = len(day)
    choice = np.empty((n, 24), dtype=np.int64)
    if n == 0:
        return choice
    breaks = np.flatnonzero(np.diff(day) != 0) + 1
    bounds = np.concatenate(([0], breaks, [n]))
    wanted = np.arange(24)[:, None]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = np.arange(a, b)
        key = np.abs(hour[a:b][None, :] - wanted) * (n + 1) + idx[None, :]  # (24, run)
        suffix_min = np.minimum.accumulate(key[:, ::-1], axis=1)[:, ::-1]
        choice[a:b] = (suffix_min % (n + 1)).T
    return choice


def compute_send_at(
    audience: pd.DataFrame,
    now: datetime,
    markets: MarketConfig | None = None,
    horizon: timedelta = SEND_AT_HORIZON,
    holiday_categories: dict[str, tuple[str, ...]] | None = None,
) -> pd.DataFrame:
    """Schedule every row at its first allowed local instant (see module docstring for the rules).

    Input columns: ``market``, ``time_zone`` (resolved IANA), ``earliest_at`` (aware), optional
    ``best_hour`` (local hour 0-23 or NA). Returns a copy, same index and order, with ``send_at``
    (UTC, ``NaT`` when not schedulable in this run) and ``window_reason`` (None when scheduled,
    else ``beyond_send_at_horizon``, ``missing_earliest_at`` or ``invalid_time_zone``).
    ``holiday_categories`` maps a market code to the ``holidays`` categories blocked for it,
    overriding the market's configured ``holidays.categories`` (default ``("public",)``).
    The result is never before ``now`` or ``earliest_at`` and never after ``now + horizon``.
    ``earliest_at`` may lie outside the nanosecond range (1677-2262): a far-past one (year 1) is
    due now, a far-future one (a 9999-12-31 "never" placeholder) is ``beyond_send_at_horizon``.
    """
    cfg = markets_or_default(markets)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now_ns = pd.Timestamp(now).tz_convert("UTC").as_unit("ns").value
    limit_ns = now_ns + int(horizon.total_seconds() * _NS)
    out = audience.copy()
    n = len(out)
    check_markets(out["market"], cfg)

    earliest, missing = _earliest_ns(out["earliest_at"], now_ns, limit_ns)
    candidate = np.maximum(earliest, now_ns)
    invalid_zone, active, group_id, pairs = _group_rows(out, missing)
    base_ns, stride, starts_all, ends_all, gid_all, choice_all = _slot_table(
        cfg, pairs, now_ns, limit_ns, holiday_categories
    )

    send_at = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    beyond = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(active)
    c = np.minimum(candidate[rows], limit_ns + 1)
    key_rows = group_id * stride + (c - base_ns)
    i = np.searchsorted(ends_all, key_rows, side="right")
    i_safe = np.minimum(i, max(len(ends_all) - 1, 0))
    found = (i < len(ends_all)) & (gid_all[i_safe] == group_id) if len(ends_all) else np.zeros(len(rows), bool)
    first = np.maximum(key_rows, starts_all[i_safe] if len(starts_all) else key_rows)
    result = first
    if "best_hour" in out:
        result = _at_best_hour(out["best_hour"], rows, found, first, i_safe, starts_all, choice_all)
    send_at[rows[found]] = result[found] - group_id[found] * stride + base_ns
    beyond[rows[~found]] = True

    reason = np.full(n, None, dtype=object)
    reason[beyond] = REASON_BEYOND_HORIZON
    reason[invalid_zone] = REASON_INVALID_ZONE
    reason[missing] = REASON_MISSING_EARLIEST
    out["send_at"] = pd.Series(send_at.view("datetime64[ns]"), index=out.index).dt.tz_localize("UTC")
    out["window_reason"] = pd.Series(reason, index=out.index, dtype=object)
    return out


def _earliest_ns(values: pd.Series, now_ns: int, limit_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """``earliest_at`` as UTC nanoseconds, and which rows have none.

    Nanoseconds hold 1677-2262 only, and a cast silently wraps anything outside. Instants at or
    before ``now`` all mean "due now" and those after ``now + horizon`` all mean "not in this
    run", so each is clamped before the cast: a far-past one (year 1) to ``now``, a far-future
    one (a 9999-12-31 "never" placeholder) just past the horizon.
    """
    parsed = pd.to_datetime(values, utc=True)
    now = pd.Timestamp(now_ns, unit="ns", tz="UTC")
    limit = pd.Timestamp(limit_ns, unit="ns", tz="UTC")
    missing = parsed.isna().to_numpy(dtype=bool)
    past = (parsed < now).to_numpy(dtype=bool)  # NaT compares False
    beyond = (parsed > limit).to_numpy(dtype=bool)
    inside = parsed.where(~(past | beyond))  # within [now, limit]: representable in ns
    earliest = inside.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view("int64").copy()
    earliest[past] = now_ns
    earliest[beyond] = limit_ns + 1
    return earliest, missing


def _group_rows(out: pd.DataFrame, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple]]:
    """Rows by (market, zone), since one calendar serves a whole group; rows without a usable zone or date sit out.

    Returns the invalid-zone mask, the active mask, each active row's group number and the
    (market code, zone) of every group.
    """
    market_codes, market_uniques = pd.factorize(out["market"], sort=False)
    zone_codes, zone_uniques = pd.factorize(out["time_zone"], sort=False, use_na_sentinel=True)
    zone_ok = np.array([is_valid_zone(z) for z in zone_uniques] + [False], dtype=bool)
    invalid_zone = ~zone_ok[zone_codes]  # NA sentinel -1 picks the trailing False
    group_key = market_codes.astype(np.int64) * (len(zone_uniques) + 1) + zone_codes
    active = ~missing & ~invalid_zone
    groups, group_id = np.unique(group_key[active], return_inverse=True)
    pairs = [
        (market_uniques[key // (len(zone_uniques) + 1)], zone_uniques[key % (len(zone_uniques) + 1)]) for key in groups
    ]
    return invalid_zone, active, group_id, pairs


def _slot_table(
    cfg: MarketConfig,
    pairs: list[tuple],
    now_ns: int,
    limit_ns: int,
    holiday_categories: dict[str, tuple[str, ...]] | None,
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every group's allowed slots in one sorted array, group g shifted by g x stride: one searchsorted serves all rows.

    Returns ``base_ns`` and ``stride`` (to map a row's instant into the table and back), the
    slots' starts and ends, their group numbers and the flattened best-hour choice table.
    """
    # One UTC window for every group: candidates are >= now and results <= now + horizon.
    window_s = (now_ns // _NS - _DAY_S, limit_ns // _NS + _DAY_S + 1)
    base_ns = window_s[0] * _NS
    stride = (window_s[1] - window_s[0] + 1) * _NS
    if stride * (len(pairs) + 1) >= 2**62:
        raise ValueError("horizon too long for this many (market, zone) groups")
    starts, ends, days, hours, gids, choices = [], [], [], [], [], []
    offset = 0
    categories = holiday_categories or {}
    for g, (code, zone) in enumerate(pairs):
        market = cfg[code]
        u_start, u_end, day, hour = _zone_calendar(
            market, zone, window_s, tuple(categories.get(market.code, market.holidays.categories))
        )
        s_ns, e_ns = u_start * _NS, np.minimum(u_end * _NS, limit_ns + 1)
        keep = (s_ns <= limit_ns) & (e_ns > now_ns)
        s_ns, e_ns, day, hour = s_ns[keep], e_ns[keep], day[keep], hour[keep]
        starts.append(g * stride + (s_ns - base_ns))
        ends.append(g * stride + (e_ns - base_ns))
        days.append(day)
        hours.append(hour)
        gids.append(np.full(len(s_ns), g))
        choices.append(_best_hour_choice(day, hour) + offset)
        offset += len(s_ns)
    starts_all = np.concatenate(starts) if starts else np.empty(0, np.int64)
    ends_all = np.concatenate(ends) if ends else np.empty(0, np.int64)
    gid_all = np.concatenate(gids) if gids else np.empty(0, np.int64)
    choice_all = np.concatenate(choices).ravel() if choices else np.empty(0, np.int64)
    return base_ns, stride, starts_all, ends_all, gid_all, choice_all


def _at_best_hour(
    best_hour: pd.Series,
    rows: np.ndarray,
    found: np.ndarray,
    first: np.ndarray,
    i_safe: np.ndarray,
    starts_all: np.ndarray,
    choice_all: np.ndarray,
) -> np.ndarray:
    """Move each row with a usable ``best_hour`` to that hour's slot on the first allowed slot's local day.

    ``first`` (table instants of the first allowed slots ``i_safe``) stays where there is no best
    hour, or where the chosen slot is the first one itself.
    """
    result = first
    best = pd.to_numeric(best_hour, errors="coerce").to_numpy(dtype=float, na_value=np.nan)[rows]
    use = found & ~np.isnan(best) & (best >= 0) & (best <= 23)
    if use.any():
        j = choice_all[i_safe[use] * 24 + best[use].astype(np.int64)]
        result = first.copy()
        result[use] = np.where(j == i_safe[use], first[use], starts_all[j])
    return result
