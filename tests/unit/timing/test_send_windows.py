"""Send-time windows: hand-computed instants for time zones, DST, holidays, best hour, horizon.

Every expected instant is worked out in the comment next to it from the zone's offset on that
date and the market's hours; the code under test never computes its own expectation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from market_fixtures import TEST_SENDER, TEST_STOREFRONT

from remarketing.markets import load_markets, parse_markets
from remarketing.timing.best_hour import DEFAULT_HOUR_CURVE, personal_best_hour
from remarketing.timing.send_windows import (
    REASON_BEYOND_HORIZON,
    REASON_INVALID_ZONE,
    REASON_MISSING_EARLIEST,
    compute_send_at,
    resolve_time_zones,
)

ALL_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_SEND = {d: [9, 20] for d in ALL_DAYS[:5]} | {"sat": [10, 18], "sun": [11, 18]}
SHIPPED = load_markets()


def utc(*args) -> pd.Timestamp:
    return pd.Timestamp(datetime(*args, tzinfo=UTC))


def synthetic(
    zone: str,
    country: str,
    *,
    send=None,
    quiet=("21:00", "08:00"),
    policy="block",
    subdivision=None,
    code="XX",
    regions=None,
    zones=None,
):
    """A one-market config for zones and calendars the shipped YAML does not have."""
    body = {
        "name": f"Synthetic {zone}",
        "locales": ["en-US"],
        "currency": "USD",
        "default_time_zone": zone,
        "time_zones": zones or [zone],
        "region_time_zones": regions or {},
        "send_hours": send or DEFAULT_SEND,
        "quiet_hours": {"start": quiet[0], "end": quiet[1]},
        "holidays": {"country": country, "subdivision": subdivision, "policy": policy},
        "marketing_consent_required": True,
        "sender": TEST_SENDER,
        "storefront": TEST_STOREFRONT,
        "sendgrid_unsubscribe_group_id": 1,
        "warmup_daily_cap": 10,
    }
    return parse_markets({"markets": {code: body}})


def schedule(cfg, zone, earliest, now=None, best=None, market=None, **kwargs):
    """(send_at, reason) for one customer; ``now`` defaults to ``earliest``."""
    frame = pd.DataFrame(
        {
            "market": [market or cfg.codes[0]],
            "time_zone": [zone],
            "earliest_at": [earliest],
            "best_hour": pd.array([best], dtype="Int64"),
        }
    )
    row = compute_send_at(frame, (now or earliest).to_pydatetime(), markets=cfg, **kwargs).iloc[0]
    return row["send_at"], row["window_reason"]


def send_at(cfg, zone, earliest, now=None, best=None, market=None, **kwargs):
    result, reason = schedule(cfg, zone, earliest, now, best, market, **kwargs)
    assert reason is None, reason
    return result


# --- basic window arithmetic (DE: Mon-Fri 9-20, Sat 10-18, Sun 11-18, quiet 21:00-08:00) -------------


def test_candidate_inside_window_is_kept_to_the_second():
    # Tue 2026-06-09 10:15:30Z = 12:15:30 CEST, inside 9-20: unchanged, not rounded to an hour.
    assert send_at(SHIPPED, "Europe/Berlin", utc(2026, 6, 9, 10, 15, 30), market="DE") == utc(2026, 6, 9, 10, 15, 30)


def test_before_window_moves_to_window_start():
    # 04:00Z = 06:00 CEST (quiet) -> 09:00 CEST = 07:00Z.
    assert send_at(SHIPPED, "Europe/Berlin", utc(2026, 6, 9, 4), market="DE") == utc(2026, 6, 9, 7)


def test_after_window_moves_to_next_day():
    # Tue 18:30Z = 20:30 CEST, window ended at 20:00 -> Wed 09:00 CEST = Wed 07:00Z.
    assert send_at(SHIPPED, "Europe/Berlin", utc(2026, 6, 9, 18, 30), market="DE") == utc(2026, 6, 10, 7)


def test_never_before_now():
    # earliest a week ago; now Tue 10:15:30Z is inside the window, so now itself.
    result = send_at(SHIPPED, "Europe/Berlin", utc(2026, 6, 1, 7), now=utc(2026, 6, 9, 10, 15, 30), market="DE")
    assert result == utc(2026, 6, 9, 10, 15, 30)


def test_weekend_hours_apply_by_local_weekday():
    # Sat 2026-06-13 07:30Z = 09:30 CEST; Saturday opens at 10:00 -> 08:00Z.
    assert send_at(SHIPPED, "Europe/Berlin", utc(2026, 6, 13, 7, 30), market="DE") == utc(2026, 6, 13, 8)


def test_quiet_hours_ending_on_the_half_hour_is_exact_to_the_minute():
    cfg = synthetic("Asia/Tokyo", "JP", send={d: [7, 21] for d in ALL_DAYS}, quiet=("22:00", "07:30"))
    # Mon 2026-06-08 07:10 JST = Sun 22:10Z; send hours open 07:00 but quiet until 07:30 -> 07:30 JST = 22:30Z.
    assert send_at(cfg, "Asia/Tokyo", utc(2026, 6, 7, 22, 10)) == utc(2026, 6, 7, 22, 30)


# --- DST in Europe and the US ----------------------------------------------------------------------


def test_europe_spring_forward_day_uses_summer_offset():
    # now Sat 2026-03-28 19:00Z = 20:00 CET, Saturday window closed. Sunday 29 Mar clocks go to CEST at
    # 01:00Z; Sunday opens 11:00 CEST = 09:00Z (10:00Z would be the stale CET offset).
    assert send_at(SHIPPED, "Europe/Berlin", utc(2026, 3, 28, 19), market="DE") == utc(2026, 3, 29, 9)


def test_europe_window_opening_inside_the_spring_forward_gap():
    cfg = synthetic("Europe/Berlin", "DE", send={d: [0, 24] for d in ALL_DAYS}, quiet=("20:00", "02:30"))
    # Allowed from 02:30 local, which does not exist on 2026-03-29 (02:00 CET -> 03:00 CEST at 01:00Z).
    # Candidate 23:30Z = 00:30 CET. The first instant whose local time is >= 02:30 is the transition,
    # 01:00Z (shown as 03:00 CEST).
    result = send_at(cfg, "Europe/Berlin", utc(2026, 3, 28, 23, 30))
    assert result == utc(2026, 3, 29, 1)
    assert result.tz_convert("Europe/Berlin").strftime("%H:%M %Z") == "03:00 CEST"


@pytest.mark.parametrize(
    ("earliest", "expected"),
    [
        # Allowed only 02:00-03:00 local. 2026-10-25 01:00Z: 03:00 CEST -> 02:00 CET, the hour repeats.
        (utc(2026, 10, 24, 23), utc(2026, 10, 25, 0)),  # 01:00 CEST -> first 02:00 (CEST) = 00:00Z
        (utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 0, 45)),  # 02:45 CEST, inside the first pass
        (utc(2026, 10, 25, 1), utc(2026, 10, 25, 1)),  # 02:00 CET, the repeated hour is allowed too
        (utc(2026, 10, 25, 2), utc(2026, 10, 26, 1)),  # 03:00 CET -> Mon 02:00 CET = 01:00Z
    ],
)
def test_europe_fall_back_overlap(earliest, expected):
    cfg = synthetic("Europe/Berlin", "DE", send={d: [0, 24] for d in ALL_DAYS}, quiet=("03:00", "02:00"))
    assert send_at(cfg, "Europe/Berlin", earliest) == expected


def test_us_spring_forward_day():
    # Sun 2026-03-08: EST -> EDT at 07:00Z (NY), PST -> PDT at 10:00Z (LA). Sunday opens 11:00 local:
    # 11:00 EDT = 15:00Z and 11:00 PDT = 18:00Z. earliest 01:00 EST = 06:00Z.
    assert send_at(SHIPPED, "America/New_York", utc(2026, 3, 8, 6), market="US") == utc(2026, 3, 8, 15)
    assert send_at(SHIPPED, "America/Los_Angeles", utc(2026, 3, 8, 6), market="US") == utc(2026, 3, 8, 18)


def test_us_window_opening_inside_the_spring_forward_gap():
    cfg = synthetic("America/New_York", "US", send={d: [0, 24] for d in ALL_DAYS}, quiet=("20:00", "02:15"))
    # 02:15 does not exist on 2026-03-08; candidate 05:30Z = 00:30 EST -> the transition 07:00Z (03:00 EDT).
    assert send_at(cfg, "America/New_York", utc(2026, 3, 8, 5, 30)) == utc(2026, 3, 8, 7)


@pytest.mark.parametrize(
    ("earliest", "best", "expected"),
    [
        # Allowed only 01:00-02:00 local. 2026-11-01 06:00Z: 02:00 EDT -> 01:00 EST, 01:xx repeats.
        (utc(2026, 11, 1, 4, 30), None, utc(2026, 11, 1, 5)),  # 00:30 EDT -> 01:00 EDT = 05:00Z
        (utc(2026, 11, 1, 4, 30), 1, utc(2026, 11, 1, 5)),  # best hour 1: its first occurrence
        (utc(2026, 11, 1, 5, 59), None, utc(2026, 11, 1, 5, 59)),  # 01:59 EDT
        (utc(2026, 11, 1, 6, 10), None, utc(2026, 11, 1, 6, 10)),  # 01:10 EST, second pass
        (utc(2026, 11, 1, 7), None, utc(2026, 11, 2, 6)),  # 02:00 EST -> Mon 01:00 EST = 06:00Z
    ],
)
def test_us_fall_back_overlap(earliest, best, expected):
    cfg = synthetic("America/New_York", "US", send={d: [0, 24] for d in ALL_DAYS}, quiet=("02:00", "01:00"))
    assert send_at(cfg, "America/New_York", earliest, best=best) == expected


# --- half-hour and 45-minute zones, Lord Howe, the date line ------------------------------------


@pytest.mark.parametrize(
    ("zone", "country", "earliest", "expected"),
    [
        # Wed 2026-06-10 06:30 IST (+05:30) = 01:00Z -> 09:00 IST = 03:30Z.
        ("Asia/Kolkata", "IN", utc(2026, 6, 10, 1), utc(2026, 6, 10, 3, 30)),
        # Adelaide winter ACST +09:30: Wed 05:30 = Tue 20:00Z -> 09:00 ACST = Tue 23:30Z.
        ("Australia/Adelaide", "AU", utc(2026, 6, 9, 20), utc(2026, 6, 9, 23, 30)),
        # Adelaide summer ACDT +10:30: Wed 2026-01-14 06:30 = Tue 20:00Z -> 09:00 = Tue 22:30Z.
        ("Australia/Adelaide", "AU", utc(2026, 1, 13, 20), utc(2026, 1, 13, 22, 30)),
        # Chatham winter +12:45: Wed 06:45 = Tue 18:00Z -> 09:00 = Tue 20:15Z.
        ("Pacific/Chatham", "NZ", utc(2026, 6, 9, 18), utc(2026, 6, 9, 20, 15)),
        # Chatham summer +13:45: Wed 2026-01-14 06:45 = Tue 17:00Z -> 09:00 = Tue 19:15Z.
        ("Pacific/Chatham", "NZ", utc(2026, 1, 13, 17), utc(2026, 1, 13, 19, 15)),
        # Chatham window closes 20:00 +12:45 = 07:15Z: 19:59 local (07:14Z) is still inside ...
        ("Pacific/Chatham", "NZ", utc(2026, 6, 10, 7, 14), utc(2026, 6, 10, 7, 14)),
        # ... 20:00 local (07:15Z) is not -> Thu 09:00 +12:45 = Wed 20:15Z.
        ("Pacific/Chatham", "NZ", utc(2026, 6, 10, 7, 15), utc(2026, 6, 10, 20, 15)),
        # Lord Howe summer +11: Wed 2026-01-14 06:00 = Tue 19:00Z -> 09:00 = Tue 22:00Z.
        ("Australia/Lord_Howe", "AU", utc(2026, 1, 13, 19), utc(2026, 1, 13, 22)),
        # Lord Howe winter +10:30: Wed 2026-06-10 05:30 = Tue 19:00Z -> 09:00 = Tue 22:30Z.
        ("Australia/Lord_Howe", "AU", utc(2026, 6, 9, 19), utc(2026, 6, 9, 22, 30)),
    ],
)
def test_fractional_offset_zones(zone, country, earliest, expected):
    assert send_at(synthetic(zone, country, policy="target"), zone, earliest) == expected


def test_lord_howe_half_hour_spring_forward_gap():
    cfg = synthetic("Australia/Lord_Howe", "AU", send={d: [0, 24] for d in ALL_DAYS}, quiet=("20:00", "02:10"))
    # Sun 2026-10-04 02:00 +10:30 -> 02:30 +11 at 15:30Z: 02:10 does not exist. Candidate 14:00Z = 00:30
    # +10:30 -> the transition 15:30Z (02:30 +11).
    assert send_at(cfg, "Australia/Lord_Howe", utc(2026, 10, 3, 14)) == utc(2026, 10, 3, 15, 30)


@pytest.mark.parametrize(
    ("earliest", "expected"),
    [
        # Allowed 01:30-02:00 local only. Sun 2026-04-05 02:00 +11 -> 01:30 +10:30 at 15:00Z: 01:30-02:00 repeats.
        (utc(2026, 4, 4, 13), utc(2026, 4, 4, 14, 30)),  # 00:00 +11 -> 01:30 +11 = 14:30Z
        (utc(2026, 4, 4, 14, 59), utc(2026, 4, 4, 14, 59)),  # 01:59 +11
        (utc(2026, 4, 4, 15), utc(2026, 4, 4, 15)),  # 01:30 +10:30, second pass
        (utc(2026, 4, 4, 15, 30), utc(2026, 4, 5, 15)),  # 02:00 +10:30 -> Mon 01:30 +10:30 = Sun 15:00Z
    ],
)
def test_lord_howe_half_hour_fall_back_overlap(earliest, expected):
    # policy "target": Mon 6 Apr 2026 is Easter Monday, which would otherwise push the last case a day on.
    cfg = synthetic(
        "Australia/Lord_Howe", "AU", send={d: [0, 24] for d in ALL_DAYS}, quiet=("02:00", "01:30"), policy="target"
    )
    assert send_at(cfg, "Australia/Lord_Howe", earliest) == expected


def test_date_line_local_date_decides_the_holiday():
    cfg = synthetic("Pacific/Kiritimati", "KI", zones=["Pacific/Kiritimati", "Pacific/Honolulu"])
    # Same instant Thu 2026-12-24 20:00Z: Kiritimati (+14) reads Fri 25 Dec 10:00 (Christmas, blocked;
    # KI also blocks 26 Dec), so Sun 27 Dec 11:00 +14 = Sat 26 Dec 21:00Z. Honolulu (-10) reads Thu 24 Dec
    # 10:00, inside the window: sent as is.
    assert send_at(cfg, "Pacific/Kiritimati", utc(2026, 12, 24, 20)) == utc(2026, 12, 26, 21)
    assert send_at(cfg, "Pacific/Honolulu", utc(2026, 12, 24, 20)) == utc(2026, 12, 24, 20)


def test_date_line_apia():
    cfg = synthetic("Pacific/Apia", "WS")
    # 2026-12-24 11:00Z = Fri 25 Dec 00:00 +13 (Apia, no DST since 2021). WS blocks 25 and 26 Dec ->
    # Sun 27 Dec 11:00 +13 = Sat 26 Dec 22:00Z.
    assert send_at(cfg, "Pacific/Apia", utc(2026, 12, 24, 11)) == utc(2026, 12, 26, 22)


# --- a window that crosses midnight --------------------------------------------------------------


@pytest.mark.parametrize(
    ("earliest", "best", "expected"),
    [
        # Allowed 18:00-02:00 JST (send 0-24, quiet 02:00-18:00). JST = UTC+9.
        (utc(2026, 6, 8, 16, 30), None, utc(2026, 6, 8, 16, 30)),  # Tue 01:30 JST: inside
        (utc(2026, 6, 8, 17), None, utc(2026, 6, 9, 9)),  # Tue 02:00 JST -> Tue 18:00 JST = 09:00Z
        (utc(2026, 6, 9, 14, 59, 30), None, utc(2026, 6, 9, 14, 59, 30)),  # Tue 23:59:30 JST: inside
        # Best hour 21 from Tue 18:05 JST -> 21:00 JST = 12:00Z.
        (utc(2026, 6, 9, 9, 5), 21, utc(2026, 6, 9, 12)),
        # Best hour 1 from Tue 18:05 JST: 01:00 is Wednesday's date, not the same local day; the nearest
        # hour on Tuesday from 18:05 is 18 itself -> 18:05 JST = 09:05Z.
        (utc(2026, 6, 9, 9, 5), 1, utc(2026, 6, 9, 9, 5)),
    ],
)
def test_window_crossing_midnight(earliest, best, expected):
    cfg = synthetic("Asia/Tokyo", "JP", send={d: [0, 24] for d in ALL_DAYS}, quiet=("02:00", "18:00"), policy="target")
    assert send_at(cfg, "Asia/Tokyo", earliest, best=best) == expected


# --- holidays ---------------------------------------------------------------------------------


def test_christmas_in_germany():
    # Thu 2026-12-24 19:30Z = 20:30 CET, window closed. 25 and 26 Dec are holidays -> Sun 27 Dec 11:00 CET
    # = 10:00Z (within 72 h of now).
    assert send_at(SHIPPED, "Europe/Berlin", utc(2026, 12, 24, 19, 30), market="DE") == utc(2026, 12, 27, 10)


def test_new_year_in_japan_and_england():
    # Thu 2026-12-31 22:00 JST = 13:00Z (quiet). 1 Jan 2027 is a holiday -> Sat 2 Jan 10:00 JST = 01:00Z.
    assert send_at(SHIPPED, "Asia/Tokyo", utc(2026, 12, 31, 13), market="JP") == utc(2027, 1, 2, 1)
    # Thu 2026-12-31 20:00 GMT, window closed; Fri 1 Jan 2027 holiday (ENG) -> Sat 10:00 GMT = 10:00Z.
    assert send_at(SHIPPED, "Europe/London", utc(2026, 12, 31, 20), market="GB") == utc(2027, 1, 2, 10)


def test_golden_week_only_slot_after_the_holiday_weekend():
    # Golden Week 2026 in the holidays calendar: Sun 3, Mon 4, Tue 5 May and the substitute Wed 6 May.
    # Sat 2 May 20:30 JST = 11:30Z, Saturday window (10-20) closed: the next allowed slot is Thu 7 May
    # 08:00 JST = Wed 6 May 23:00Z, more than 72 h after now (limit Tue 5 May 11:30Z): wait for a later run.
    result, reason = schedule(SHIPPED, "Asia/Tokyo", utc(2026, 5, 2, 11, 30), market="JP")
    assert pd.isna(result) and reason == REASON_BEYOND_HORIZON
    # From Mon 4 May 21:00 JST (12:00Z) the same slot is within 72 h.
    assert send_at(SHIPPED, "Asia/Tokyo", utc(2026, 5, 4, 12), market="JP") == utc(2026, 5, 6, 23)


def test_chinese_new_year():
    # holidays CN 2026: 16-20 Feb and 23 Feb are off; Sat 21 / Sun 22 Feb are ordinary weekend days there.
    # now Wed 18 Feb 20:00 CST = 12:00Z -> Sat 21 Feb 10:00 CST = 02:00Z.
    assert send_at(SHIPPED, "Asia/Shanghai", utc(2026, 2, 18, 12), market="CN") == utc(2026, 2, 21, 2)
    # From Sun 15 Feb 20:00 CST (12:00Z) the first slot (21 Feb) is beyond 72 h.
    result, reason = schedule(SHIPPED, "Asia/Shanghai", utc(2026, 2, 15, 12), market="CN")
    assert pd.isna(result) and reason == REASON_BEYOND_HORIZON


def test_carnival_in_brazil_is_an_optional_holiday():
    # holidays.BR lists Carnival (16-17 Feb 2026) and Ash Wednesday (18 Feb) in the "optional" category,
    # not "public"; the shipped BR config blocks "public" and "optional".
    # Blocked 16, 17, 18 Feb -> Thu 19 Feb 09:00 BRT = 12:00Z, exactly now + 72 h: the horizon is inclusive ...
    earliest = utc(2026, 2, 16, 12)
    assert send_at(SHIPPED, "America/Sao_Paulo", earliest, market="BR") == utc(2026, 2, 19, 12)
    # ... and one second shorter it is out of reach.
    result, reason = schedule(
        SHIPPED, "America/Sao_Paulo", earliest, market="BR", horizon=timedelta(hours=72) - timedelta(seconds=1)
    )
    assert pd.isna(result) and reason == REASON_BEYOND_HORIZON
    # Overriding the categories to "public" only: Mon 16 Feb 09:00 BRT (UTC-3, no DST) = 12:00Z is allowed.
    only_public = {"BR": ("public",)}
    assert send_at(SHIPPED, "America/Sao_Paulo", earliest, market="BR", holiday_categories=only_public) == earliest


def test_target_policy_does_not_block_holidays():
    # US policy is "target": Fri 2026-12-25 10:00 EST = 15:00Z is a normal Friday slot.
    assert send_at(SHIPPED, "America/New_York", utc(2026, 12, 25, 15), market="US") == utc(2026, 12, 25, 15)


# --- best hour --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("earliest", "best", "expected"),
    [
        # DE, Tue 2026-06-09, CEST (UTC+2), window 09:00-20:00.
        (utc(2026, 6, 9, 4), 19, utc(2026, 6, 9, 17)),  # 19:00 CEST
        (utc(2026, 6, 9, 4), 22, utc(2026, 6, 9, 17)),  # 22 is quiet; nearest allowed hour 19 -> 19:00
        (utc(2026, 6, 9, 4), 3, utc(2026, 6, 9, 7)),  # nearest to 3 is 9 -> 09:00
        (utc(2026, 6, 9, 13, 20), 9, utc(2026, 6, 9, 13, 20)),  # 09 passed; nearest is 15:20 itself
        (utc(2026, 6, 9, 13, 20), 16, utc(2026, 6, 9, 14)),  # 16:00 CEST
        (utc(2026, 6, 9, 13, 20), None, utc(2026, 6, 9, 13, 20)),
        # Tue 19:30 CEST, best 10: today only hour 19 is left -> stays today, 17:30Z.
        (utc(2026, 6, 9, 17, 30), 10, utc(2026, 6, 9, 17, 30)),
    ],
)
def test_best_hour(earliest, best, expected):
    assert send_at(SHIPPED, "Europe/Berlin", earliest, best=best, market="DE") == expected


def test_best_hour_tie_goes_to_the_earlier_hour():
    cfg = synthetic("Europe/Berlin", "DE", quiet=("12:00", "13:00"), policy="target")
    # 12:00-13:00 is quiet; best 12 -> hours 11 and 13 both at distance 1 -> 11:00 CEST = 09:00Z.
    assert send_at(cfg, "Europe/Berlin", utc(2026, 6, 9, 4), best=12) == utc(2026, 6, 9, 9)


def test_best_hour_in_a_half_hour_window_start():
    cfg = synthetic("Asia/Tokyo", "JP", send={d: [7, 21] for d in ALL_DAYS}, quiet=("22:00", "07:30"))
    # Mon 2026-06-08 06:00 JST = Sun 21:00Z. Hour 7 is allowed from 07:30: best 7 -> 07:30 JST = 22:30Z;
    # best 5 -> the nearest allowed hour is 7 -> the same 07:30.
    assert send_at(cfg, "Asia/Tokyo", utc(2026, 6, 7, 21), best=7) == utc(2026, 6, 7, 22, 30)
    assert send_at(cfg, "Asia/Tokyo", utc(2026, 6, 7, 21), best=5) == utc(2026, 6, 7, 22, 30)


def test_best_hour_never_past_the_horizon():
    # now Tue 2026-06-09 13:20Z (15:20 CEST), horizon 1 h: reachable 15:20-16:20 CEST, hours 15 and 16.
    # Best 19 -> nearest reachable hour 16 -> 16:00 CEST = 14:00Z (with 72 h it would be 19:00 = 17:00Z).
    now = utc(2026, 6, 9, 13, 20)
    assert send_at(SHIPPED, "Europe/Berlin", now, best=19, market="DE", horizon=timedelta(hours=1)) == utc(
        2026, 6, 9, 14
    )
    assert send_at(SHIPPED, "Europe/Berlin", now, best=19, market="DE") == utc(2026, 6, 9, 17)


# --- horizon, reasons, shape --------------------------------------------------------------------------


def test_earliest_beyond_horizon_waits():
    result, reason = schedule(SHIPPED, "Europe/Berlin", utc(2026, 6, 13, 8), now=utc(2026, 6, 9, 8), market="DE")
    assert pd.isna(result) and reason == REASON_BEYOND_HORIZON


def test_never_placeholder_beyond_the_nanosecond_range_waits():
    # 9999-12-31 ("never") cannot be held in nanoseconds; it must not wrap around to a past instant
    # (which would mean "send now"): it is beyond the horizon, like any earliest_at after now + 72 h.
    now = utc(2026, 6, 9, 10, 15, 30)
    for never in (datetime(9999, 12, 31, tzinfo=UTC), pd.Timestamp("2262-04-12", tz="UTC").as_unit("s")):
        result, reason = schedule(SHIPPED, "Europe/Berlin", never, now=now, market="DE")
        assert pd.isna(result) and reason == REASON_BEYOND_HORIZON, never


def test_earliest_before_the_nanosecond_range_is_due_now():
    # Year 1 or 1600 (before 1677, the start of the nanosecond range) is long past: due now. Tue 10:15:30Z
    # is inside the DE window (12:15:30 CEST), so now itself.
    now = utc(2026, 6, 9, 10, 15, 30)
    for past in (datetime(1, 1, 1, tzinfo=UTC), pd.Timestamp("1600-01-01", tz="UTC").as_unit("s")):
        assert send_at(SHIPPED, "Europe/Berlin", past, now=now, market="DE") == now, past


def test_out_of_range_earliest_mixed_with_ordinary_rows():
    now = utc(2026, 6, 9, 4)  # 06:00 CEST, quiet: the first DE slot is 09:00 CEST = 07:00Z
    frame = pd.DataFrame(
        {
            "market": ["DE", "DE", "DE", "DE"],
            "time_zone": ["Europe/Berlin"] * 4,
            "earliest_at": [
                datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
                datetime(1, 1, 1, tzinfo=UTC),
                datetime(2026, 6, 9, 4, tzinfo=UTC),
                None,
            ],
        },
        index=[7, 5, 3, 1],
    )
    out = compute_send_at(frame, now.to_pydatetime(), markets=SHIPPED)
    assert list(out.index) == [7, 5, 3, 1]
    assert out["window_reason"].tolist() == [REASON_BEYOND_HORIZON, None, None, REASON_MISSING_EARLIEST]
    assert pd.isna(out["send_at"].iloc[0]) and pd.isna(out["send_at"].iloc[3])
    assert out["send_at"].iloc[1] == out["send_at"].iloc[2] == utc(2026, 6, 9, 7)


def test_reasons_order_and_index_are_preserved():
    now = utc(2026, 6, 9, 4)
    frame = pd.DataFrame(
        {
            "market": ["DE", "JP", "DE", "US"],
            "time_zone": ["Europe/Berlin", "Asia/Tokyo", "Not/AZone", None],
            "earliest_at": [utc(2026, 6, 9, 4), pd.NaT, utc(2026, 6, 9, 4), utc(2026, 6, 9, 4)],
        },
        index=[40, 10, 30, 20],
    )
    out = compute_send_at(frame, now.to_pydatetime(), markets=SHIPPED)
    assert list(out.index) == [40, 10, 30, 20]
    assert out["send_at"].tolist()[0] == utc(2026, 6, 9, 7)  # 09:00 CEST
    assert pd.isna(out["send_at"]).tolist() == [False, True, True, True]
    assert out["window_reason"].tolist() == [None, REASON_MISSING_EARLIEST, REASON_INVALID_ZONE, REASON_INVALID_ZONE]
    assert str(out["send_at"].dtype) == "datetime64[ns, UTC]"


def test_unknown_market_and_naive_now_are_errors():
    frame = pd.DataFrame({"market": ["ZZ"], "time_zone": ["UTC"], "earliest_at": [utc(2026, 6, 9)]})
    with pytest.raises(ValueError, match="unknown or missing market"):
        compute_send_at(frame, datetime(2026, 6, 9, tzinfo=UTC), markets=SHIPPED)
    frame["market"] = "DE"
    with pytest.raises(ValueError, match="aware"):
        compute_send_at(frame, datetime(2026, 6, 9), markets=SHIPPED)


def test_many_groups_at_once_match_one_by_one():
    # The vectorized path mixes markets and zones in one searchsorted; each row must equal its solo run.
    rng = np.random.default_rng(5)
    zones = {"DE": ["Europe/Berlin"], "US": ["America/New_York", "America/Phoenix", "Pacific/Honolulu"]}
    zones |= {"JP": ["Asia/Tokyo"], "BR": ["America/Manaus"], "CN": ["Asia/Urumqi"]}
    rows = []
    now = utc(2026, 3, 6, 12)
    for _ in range(60):
        market = rng.choice(sorted(zones))
        rows.append(
            {
                "market": market,
                "time_zone": rng.choice(zones[market]),
                "earliest_at": now + pd.Timedelta(minutes=int(rng.integers(-600, 4000))),
                "best_hour": int(rng.integers(0, 24)) if rng.random() < 0.5 else None,
            }
        )
    frame = pd.DataFrame(rows)
    frame["best_hour"] = frame["best_hour"].astype("Int64")
    together = compute_send_at(frame, now.to_pydatetime(), markets=SHIPPED)
    for k, row in frame.iterrows():
        best = None if pd.isna(row["best_hour"]) else int(row["best_hour"])
        solo, _ = schedule(SHIPPED, row["time_zone"], row["earliest_at"], now=now, best=best, market=row["market"])
        assert (pd.isna(solo) and pd.isna(together.loc[k, "send_at"])) or solo == together.loc[k, "send_at"]
    assert together["send_at"].notna().sum() > 30


# --- time zone resolution ----------------------------------------------------------------------------


def test_resolve_time_zones_sources():
    customers = pd.DataFrame(
        {
            "market": ["DE", "DE", "DE", "US", "US", "US", "BR", "DE", "US"],
            "time_zone": ["America/New_York", "Mars/Olympus", None, None, "", None, None, None, None],
            "country": ["DE", "DE", "AT", "US", "US", "US", "BR", None, "MX"],
            "region": [None, None, None, "CA", "tx", "ZZ", "AM", None, None],
        },
        index=list("abcdefghi"),
    )
    out = resolve_time_zones(customers, SHIPPED)
    assert list(out.index) == list("abcdefghi")
    assert out["time_zone"].tolist() == [
        "America/New_York",  # valid profile zone wins, even outside the market
        "Europe/Berlin",  # invalid profile; DE is a one-zone market -> country
        "Europe/Vienna",  # foreign country with exactly one zone
        "America/Los_Angeles",  # region map
        "America/Chicago",  # region map, case-insensitive
        "America/New_York",  # unknown state -> market default
        "America/Manaus",  # BR region map
        "Europe/Berlin",  # no country -> market default
        "America/New_York",  # Mexico has several zones -> market default
    ]
    assert out["tz_source"].tolist() == [
        "profile",
        "country",
        "country",
        "region",
        "region",
        "market_default",
        "region",
        "market_default",
        "market_default",
    ]


# --- personal best hour ------------------------------------------------------------------------------


def _events(rows):
    return pd.DataFrame(rows, columns=["customer_id", "occurred_at", "kind"])


def test_best_hour_from_three_events_and_prior_for_the_rest():
    customers = pd.DataFrame(
        {"customer_id": [1, 2, 3], "market": ["JP", "JP", "JP"], "time_zone": ["Asia/Tokyo"] * 3},
    )
    # Customer 1: three clicks at 05:xxZ = 14:xx JST (weight 2 each -> 6 at hour 14, smoothed 1.5/3/1.5).
    # Customer 3: one open at 18:00Z = 03:00 JST (smoothed 0.5 at hour 3).
    events = _events(
        [
            (1, utc(2026, 5, 1, 5, 10), "click"),
            (1, utc(2026, 5, 2, 5, 40), "click"),
            (1, utc(2026, 5, 3, 5, 5), "click"),
            (3, utc(2026, 5, 3, 18), "open"),
        ]
    )
    out = personal_best_hour(events, customers, SHIPPED)
    # Market prior: pooled (7 weighted events) + 200 default pseudo-events, whose mode is hour 10
    # (DEFAULT_HOUR_CURVE peak 3.8; pooled adds 0.25+... at 13-15 and 2-4, far from 200*3.8/50.7 = 15 there).
    assert int(np.argmax(DEFAULT_HOUR_CURVE)) == 10
    # Customer 1: posterior at 14 = 3 + 10*p(14) ~ 3.5 > 10*p(10) ~ 0.73 -> 14.
    # Customer 2: no events -> prior mode 10. Customer 3: 0.5 + 10*p(3) ~ 0.52 < 0.73 -> 10 (one stray open
    # at night does not move the send).
    assert out["customer_id"].tolist() == [1, 2, 3]
    assert out["best_hour"].tolist() == [14, 10, 10]
    assert out["best_hour_events"].tolist() == [3, 0, 1]
    assert out["best_hour_source"].tolist() == ["personal", "market_prior", "personal"]


def test_market_prior_learned_from_a_list_of_500():
    # 500 DE customers; 300 of them each have two orders at 18:xx UTC in June = 20:xx CEST. Weighted
    # pooled mass at hour 20 = 300 * 2 * 3 * 0.5 = 900 vs 200 default pseudo-events spread over 24 hours:
    # the market's mode becomes 20, so the 200 customers without events get 20.
    ids = np.arange(500)
    customers = pd.DataFrame({"customer_id": ids, "market": "DE", "time_zone": "Europe/Berlin"})
    rows = [(int(i), utc(2026, 6, 1 + k, 18, 15), "order") for i in ids[:300] for k in range(2)]
    out = personal_best_hour(_events(rows), customers, SHIPPED)
    assert (out["best_hour"] == 20).all()
    assert (out["best_hour_source"].iloc[:300] == "personal").all()
    assert (out["best_hour_source"].iloc[300:] == "market_prior").all()
    assert (out["best_hour_events"].iloc[:300] == 2).all()


def test_best_hour_local_conversion_per_zone_and_unknown_events_ignored():
    customers = pd.DataFrame(
        {"customer_id": ["a", "b"], "market": ["US", "US"], "time_zone": ["America/Los_Angeles", "Pacific/Honolulu"]}
    )
    # The same three instants 2026-01-10/11/12 22:00Z are 14:00 PST for "a" and 12:00 HST for "b".
    when = [utc(2026, 1, d, 22) for d in (10, 11, 12)]
    rows = [(c, w, "click") for c in ("a", "b") for w in when] + [("zz", when[0], "click"), ("a", when[0], "bounce")]
    out = personal_best_hour(_events(rows), customers, SHIPPED)
    assert out["best_hour"].tolist() == [14, 12]
    assert out["best_hour_events"].tolist() == [3, 3]


def test_best_hour_reads_nan_and_na_zones_in_utc():
    # A missing zone (NaN from a float column, pd.NA, None) is an invalid zone: event hours read in UTC,
    # as for "Not/AZone". Three clicks at 14:xxZ -> hour 14 for each of them.
    customers = pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 4, 5],
            "market": ["DE"] * 5,
            "time_zone": pd.Series([np.nan, pd.NA, None, "Not/AZone", "Asia/Tokyo"], dtype=object),
        }
    )
    rows = [(c, utc(2026, 5, d, 14, 10), "click") for c in range(1, 6) for d in (1, 2, 3)]
    out = personal_best_hour(_events(rows), customers, SHIPPED)
    # Customer 5 reads them in Tokyo: 14:10Z = 23:10 JST.
    assert out["best_hour"].tolist() == [14, 14, 14, 14, 23]
    assert out["best_hour_events"].tolist() == [3, 3, 3, 3, 3]
    float_zones = customers.assign(time_zone=np.nan)  # a whole column of NaN is float64
    assert personal_best_hour(_events(rows), float_zones, SHIPPED)["best_hour"].tolist() == [14] * 5


def test_best_hour_feeds_send_at():
    # End to end: customer 1's best hour 14 on a Tokyo weekday: Mon 2026-06-08 08:00 JST (Sun 23:00Z)
    # -> 14:00 JST = 05:00Z.
    customers = pd.DataFrame({"customer_id": [1], "market": ["JP"], "time_zone": ["Asia/Tokyo"]})
    events = _events([(1, utc(2026, 5, d, 5, 10), "click") for d in (1, 2, 3)])
    best = personal_best_hour(events, customers, SHIPPED)
    audience = customers.merge(best, on="customer_id").assign(earliest_at=utc(2026, 6, 7, 23))
    out = compute_send_at(audience, utc(2026, 6, 7, 23).to_pydatetime(), markets=SHIPPED)
    assert out["send_at"].iloc[0] == utc(2026, 6, 8, 5)
