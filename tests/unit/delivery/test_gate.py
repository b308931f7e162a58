"""Deliverability before sending: the market gate, SendGrid's suppressions and stats, caps and consent.

SendGrid's side is the local fake server (tests/support/fake_sendgrid.py) spoken to by the real
SendGridApi client; the remarketing DB is SQLite, and PostgreSQL where SQL differs (upserts).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from databases import migrated_postgres_database, state_engine
from market_fixtures import TEST_SENDER, synthetic_market

from remarketing.delivery import ledger
from remarketing.delivery.caps import FrequencyCaps, cap_reasons, capped_reasons, consent_mask, flow_kind
from remarketing.delivery.gate import check_market, health_totals, market_category, refresh_market_health
from remarketing.delivery.ledger import ClaimContext
from remarketing.delivery.messages import SendResult
from remarketing.delivery.sendgrid_api import SendGridApi
from remarketing.delivery.suppressions import (
    SuppressionError,
    add_local_suppression,
    suppressed_mask,
    suppression_reasons,
    suppressions,
    sync_suppressions,
)

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # a Friday; 11:00 in Berlin
TABLES = ("send_ledger", "send_runs", "suppressions", "suppression_sync", "market_health")


def market(code="DE", zone="Europe/Berlin", **overrides):
    overrides.setdefault("deliverability", {"window_days": 7, "min_delivered": 100})
    return synthetic_market(code, default_time_zone=zone, time_zones=[zone], **overrides)


@pytest.fixture(scope="module")
def postgres_url():
    with migrated_postgres_database("rmk_gate") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_engine(request, tmp_path):
    engine = state_engine(request.param, tmp_path, request, TABLES)
    yield engine
    engine.dispose()


@pytest.fixture
def api(sendgrid):
    with SendGridApi(sendgrid.api_key, host=sendgrid.url, page_size=3) as client:  # small pages: paging is exercised
        yield client


def send(engine, run_id, market_code, keys, *, now=NOW, status="accepted", kind="recovery", send_at=None):
    """Put mails through the ledger protocol as the send step does."""
    ctx = ClaimContext(run_id, market_code, 1, "cart_recovery")
    frame = pd.DataFrame(
        {
            "ledger_key": keys,
            "kind": kind,
            "step": "1",
            "customer_ref": [k.split("/")[2] for k in keys],
            "customer_id": None,
            "subject_kind": "cart",
            "subject_id": [k.split("/")[3].removeprefix("cart") for k in keys],
            "variant": "v1",
            "send_at": send_at if send_at is not None else pd.NaT,
        }
    )
    held = ledger.claim(engine, ctx, frame, now=now)
    if status == "claimed":
        return
    ledger.mark_sending(engine, ctx, held, now=now)
    if status == "sending":
        return
    ledger.record_results(engine, ctx, [SendResult(tuple(held), status, 202, None, 1)], now=now)


# --- suppressions -------------------------------------------------------------------------------


def test_sync_pulls_every_kind_incrementally_and_the_mask_honours_groups(any_engine, sendgrid, api):
    t0 = NOW - timedelta(days=3)
    sendgrid.add_suppression("bounces", "Bounced@Example.com", created=t0, reason="550 5.1.1 unknown user")
    sendgrid.add_suppression("spam_reports", "complainer@example.com", created=t0)
    for i in range(5):  # more than one page
        sendgrid.add_suppression("unsubscribes", f"unsub{i}@example.com", created=t0 + timedelta(minutes=i))
    sendgrid.add_suppression("asm", "de-only@example.com", group_id=1001, created=t0)
    sendgrid.add_suppression("asm", "fr-only@example.com", group_id=1002, created=t0)

    counts = sync_suppressions(any_engine, api, now=NOW)
    assert counts == {
        "bounces": 1,
        "blocks": 0,
        "spam_reports": 1,
        "invalid_emails": 0,
        "unsubscribes": 5,
        "group_unsubscribes": 2,
    }
    emails = pd.Series(
        ["bounced@example.com", " COMPLAINER@example.com", "unsub4@example.com", "de-only@example.com",
         "fr-only@example.com", "fine@example.com", None],
        index=[10, 11, 12, 13, 14, 15, 16],
    )  # fmt: skip
    de = suppression_reasons(any_engine, emails, 1001)
    assert de.to_dict() == {
        10: "bounces",
        11: "spam_reports",
        12: "unsubscribes",
        13: "group_unsubscribes",
        14: None,
        15: None,
        16: None,
    }
    assert suppressed_mask(any_engine, emails, 1002).tolist() == [True, True, True, False, True, False, False]

    # Next sync: only what was created since the high-water mark (minus a 1 h overlap) is read.
    sendgrid.add_suppression("bounces", "late@example.com", created=NOW + timedelta(minutes=30))
    sendgrid.add_suppression("bounces", "backdated@example.com", created=t0 - timedelta(hours=2))
    counts = sync_suppressions(any_engine, api, now=NOW + timedelta(hours=1))
    assert counts["bounces"] == 2  # late, and the overlap re-reads bounced@ (stored once)
    assert counts["unsubscribes"] == 5 and counts["spam_reports"] == 1  # all within the overlap
    after = suppressed_mask(any_engine, pd.Series(["late@example.com", "backdated@example.com"]), 1001)
    assert after.tolist() == [True, False]
    with any_engine.connect() as conn:
        stored = conn.execute(sa.select(suppressions.c.email).where(suppressions.c.kind == "bounces")).scalars()
        assert sorted(stored) == ["bounced@example.com", "late@example.com"]  # normalised, no duplicates
    sync_suppressions(any_engine, api, now=NOW + timedelta(hours=1), kinds=["bounces"], full=True)
    assert suppressed_mask(any_engine, pd.Series(["backdated@example.com"]), 1001).all()

    # A group unsubscribe withdrawn in SendGrid disappears at the next sync (the list is read whole).
    sendgrid._asm.clear()  # the fake has no delete endpoint; emulate the resubscribe
    sync_suppressions(any_engine, api, now=NOW + timedelta(hours=2))
    assert not suppressed_mask(any_engine, pd.Series(["de-only@example.com"]), 1001).any()


def test_sync_skips_fresh_kinds_and_the_high_water_mark_keeps_an_overlap(engine, sendgrid, api):
    sendgrid.add_suppression("blocks", "blocked@example.com", created=NOW - timedelta(hours=2), reason="blocked")
    sync_suppressions(engine, api, now=NOW)
    sendgrid.reset()
    assert sync_suppressions(engine, api, now=NOW + timedelta(minutes=5), max_age=timedelta(minutes=10)) == {}
    assert sendgrid.requests_log == []
    # An entry stamped just before the mark (written while the previous sync ran) is still caught.
    sendgrid.add_suppression("blocks", "racer@example.com", created=NOW - timedelta(hours=2, minutes=30))
    sync_suppressions(engine, api, now=NOW + timedelta(hours=1))
    assert suppressed_mask(engine, pd.Series(["racer@example.com"]), None).all()


def test_local_suppressions_apply_at_once_and_bad_input_is_refused(engine):
    emails = pd.Series(["Me@Example.com", "you@example.com"])
    assert not suppressed_mask(engine, emails, 1001).any()
    add_local_suppression(engine, "me@example.com", reason="one-click unsubscribe", now=NOW)
    add_local_suppression(engine, "you@example.com", kind="group_unsubscribes", group_id=1002, now=NOW)
    assert suppressed_mask(engine, emails, 1001).tolist() == [True, False]
    assert suppressed_mask(engine, emails, 1002).tolist() == [True, True]
    with pytest.raises(SuppressionError, match="group_id"):
        add_local_suppression(engine, "x@example.com", kind="group_unsubscribes")
    with pytest.raises(SuppressionError, match="kind"):
        add_local_suppression(engine, "x@example.com", kind="bounces")


# --- market health and the gate -----------------------------------------------------------------


def test_refresh_market_health_reads_the_market_categories(any_engine, sendgrid, api):
    today = NOW.date()
    sendgrid.set_stats(today, {"requests": 500, "delivered": 480, "bounces": 12, "spam_reports": 1},
                       category=market_category("DE"))  # fmt: skip
    sendgrid.set_stats(today - timedelta(days=1), {"requests": 100, "delivered": 100}, category="market:DE")
    sendgrid.set_stats(today, {"requests": 900, "delivered": 900}, category="market:FR")
    sendgrid.set_stats(today, {"requests": 7, "delivered": 7}, category="flow:cart_recovery")
    markets = [market("DE"), market("FR", zone="Europe/Paris", locales=["fr-FR"])]
    written = refresh_market_health(any_engine, api, markets, today - timedelta(days=6), today, now=NOW)
    assert written == 14  # 7 days x 2 markets, quiet days stored as zeros
    de = health_totals(any_engine, "DE", today - timedelta(days=6), today)
    assert (de["requests"], de["delivered"], de["bounces"], de["spam_reports"]) == (600, 580, 12, 1)
    assert health_totals(any_engine, "FR", today, today)["delivered"] == 900
    # A later refresh replaces the figures of a day (no double counting).
    sendgrid.set_stats(today, {"requests": 501, "delivered": 481}, category="market:DE")
    refresh_market_health(any_engine, api, markets[:1], today, today, now=NOW)
    assert health_totals(any_engine, "DE", today, today)["delivered"] == 481


@pytest.mark.parametrize(
    ("metrics", "status", "reason"),
    [
        ({"delivered": 1000, "bounces": 10, "spam_reports": 0}, "open", None),
        ({"delivered": 1000, "bounces": 10, "spam_reports": 1}, "warn", "spam complaint rate 0.10%"),
        ({"delivered": 1000, "bounces": 10, "spam_reports": 3}, "halted", "spam complaint rate 0.30%"),
        ({"delivered": 1000, "bounces": 25, "spam_reports": 0}, "warn", "bounce rate 2.44%"),
        ({"delivered": 1000, "bounces": 60, "spam_reports": 0}, "halted", "bounce rate 5.66%"),
        ({"delivered": 99, "bounces": 50, "spam_reports": 9}, "open", "rates not judged: 99 delivered"),
    ],
)
def test_gate_judges_rates_against_the_market_thresholds(engine, sendgrid, api, metrics, status, reason):
    sendgrid.set_stats(NOW.date() - timedelta(days=2), {"requests": 2000, **metrics}, category="market:DE")
    sendgrid.set_stats(NOW.date() - timedelta(days=8), {"delivered": 9000, "spam_reports": 900}, category="market:DE")
    decision = check_market(engine, market("DE"), now=NOW, api=api)  # day -8 is outside the 7-day window
    assert decision.status == status
    assert decision.delivered == metrics["delivered"]
    if reason:
        assert any(reason in r for r in decision.reasons + decision.notes), decision
    else:
        assert decision.reasons == [] and decision.notes == []
    assert decision.may_send == (status != "halted")


def test_gate_halts_an_unauthenticated_sender(engine):
    unauthenticated = market("DE", sender={**TEST_SENDER, "authenticated": False})
    assert check_market(engine, unauthenticated, now=NOW).status == "halted"
    assert check_market(engine, unauthenticated, now=NOW).reasons[0] == "sender domain not authenticated"
    foreign = market("DE", sender={**TEST_SENDER, "from_email": "shop@other.example.org"})
    decision = check_market(engine, foreign, now=NOW)
    assert decision.status == "halted" and "not on mail.example.com" in decision.reasons[0]
    sub = market("DE", sender={**TEST_SENDER, "from_email": "shop@news.mail.example.com"})
    assert check_market(engine, sub, now=NOW).status == "open"


def test_warmup_remaining_counts_the_markets_local_day(engine):
    tokyo = market("JP", zone="Asia/Tokyo", locales=["ja-JP"], warmup_daily_cap=10,
                   holidays={"country": "JP", "policy": "target"})  # fmt: skip
    now = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)  # 01:00 on the 21st in Tokyo
    keys = [
        ledger.ledger_key("cart_recovery", i, step=1, subject_kind="cart", subject_id=i, variant="v1") for i in range(9)
    ]
    send(engine, "r1", "JP", keys[:3], now=now - timedelta(hours=2))  # 23:00 the day before, Tokyo time
    send(engine, "r2", "JP", keys[3:5], now=now - timedelta(minutes=30))  # today
    send(engine, "r3", "JP", keys[5:6], now=now - timedelta(minutes=20), status="unknown")  # may have gone out
    send(engine, "r4", "JP", keys[6:7], now=now - timedelta(minutes=10), status="sending")  # in flight
    send(engine, "r5", "JP", keys[7:8], now=now - timedelta(minutes=5), status="rejected")  # did not
    send(engine, "r6", "DE", keys[8:9], now=now - timedelta(minutes=5))  # another market
    decision = check_market(engine, tokyo, now=now)
    assert decision.warmup_remaining == 10 - 4
    full = market("JP", zone="Asia/Tokyo", locales=["ja-JP"], warmup_daily_cap=4,
                  holidays={"country": "JP", "policy": "target"})  # fmt: skip
    decision = check_market(engine, full, now=now)
    assert decision.warmup_remaining == 0 and "warm-up cap reached: 4 of 4 today" in decision.reasons


# --- frequency caps and consent -------------------------------------------------------------------


def history(*mails) -> pd.DataFrame:
    return pd.DataFrame(
        [{"customer_ref": c, "kind": k, "at": pd.Timestamp(at)} for c, k, at in mails],
        columns=["customer_ref", "kind", "at"],
    )


def candidates(*rows) -> pd.DataFrame:
    return pd.DataFrame([{"customer_ref": c, "at": pd.Timestamp(at)} for c, at in rows], index=range(len(rows)))


def at(hours: float) -> datetime:
    return NOW + timedelta(hours=hours)


def test_marketing_gap_is_checked_both_ways_around_the_planned_instant():
    caps = FrequencyCaps()
    hist = history(("c1", "marketing", at(-15)), ("c2", "marketing", at(-17)), ("c3", "marketing", at(30)),
                   ("c4", "marketing", at(10)), ("c5", "recovery", at(-2)))  # fmt: skip
    cands = candidates(("c1", at(0)), ("c2", at(0)), ("c3", at(0)), ("c4", at(26.5)), ("c5", at(0)), ("c6", at(0)))
    reasons = cap_reasons(hist, cands, kind="marketing", caps=caps)
    assert reasons.tolist() == [
        "marketing cap: another mail within 16 h",
        None,
        None,
        None,
        "marketing cap: another mail within 16 h",  # recovery mail this morning counts for marketing
        None,
    ]
    # ... unless configured otherwise.
    relaxed = cap_reasons(hist, cands, kind="marketing", caps=FrequencyCaps(recovery_counts_as_marketing=False))
    assert relaxed.iloc[4] is None


def test_recovery_has_its_own_cap_and_ignores_marketing_mail():
    caps = FrequencyCaps()
    hist = history(("c1", "marketing", at(-1)), ("c2", "recovery", at(-19)), ("c3", "recovery", at(-21)))
    reasons = cap_reasons(hist, candidates(("c1", at(0)), ("c2", at(0)), ("c3", at(0))), kind="recovery", caps=caps)
    assert reasons.tolist() == [None, "recovery cap: another mail within 20 h", None]


def test_three_per_seven_days_holds_in_every_window_containing_the_new_mail():
    caps = FrequencyCaps(marketing_min_gap=timedelta(0))
    day = 24
    hist = history(
        # c1: three in the past 7 days -> capped
        ("c1", "marketing", at(-6 * day)), ("c1", "marketing", at(-4 * day)), ("c1", "marketing", at(-2 * day)),
        # c2: two before, one scheduled after; a window of 7 days holds all four -> capped
        ("c2", "marketing", at(-5 * day)), ("c2", "marketing", at(-3 * day)), ("c2", "marketing", at(1 * day)),
        # c3: two long ago and one 2 days ahead: no 7-day window holds four -> allowed
        ("c3", "marketing", at(-6.5 * day)), ("c3", "marketing", at(-6 * day)), ("c3", "marketing", at(2 * day)),
        # c4: exactly 7 days ago falls out of the window
        ("c4", "marketing", at(-7 * day)), ("c4", "marketing", at(-1 * day)), ("c4", "marketing", at(-2 * day)),
    )  # fmt: skip
    cands = candidates(("c1", at(0)), ("c2", at(0)), ("c3", at(0)), ("c4", at(0)))
    reasons = cap_reasons(hist, cands, kind="marketing", caps=caps)
    assert reasons.tolist() == ["marketing cap: 3 mails per 7 days reached"] * 2 + [None, None]


def test_caps_read_the_ledger_history_including_scheduled_and_unknown_mail(engine):
    keys = [
        ledger.ledger_key("cart_recovery", i, step=1, subject_kind="cart", subject_id=i, variant="v1") for i in range(4)
    ]
    send(engine, "r1", "DE", keys[:1], now=at(-30), send_at=[pd.Timestamp(at(-10))])  # delivered 10 h ago
    send(engine, "r1", "DE", keys[1:2], now=at(-3), status="unknown")
    send(engine, "r1", "DE", keys[2:3], now=at(-3), status="rejected")  # never reached the customer
    send(engine, "r1", "DE", keys[3:4], now=at(-1), send_at=[pd.Timestamp(at(40))])  # scheduled ahead
    cands = pd.DataFrame({"customer_ref": ["c0", "c1", "c2", "c3"], "at": [pd.Timestamp(at(0))] * 4})
    reasons = capped_reasons(engine, cands, kind="recovery", caps=FrequencyCaps(), now=NOW)
    assert reasons.tolist() == ["recovery cap: another mail within 20 h"] * 2 + [None, None]
    later = cands.assign(at=pd.Timestamp(at(50)))
    assert capped_reasons(engine, later, kind="recovery", caps=FrequencyCaps(), now=NOW).tolist() == [
        None,
        None,
        None,
        "recovery cap: another mail within 20 h",  # 10 h before its scheduled mail
    ]


def test_consent_is_required_for_marketing_and_recovery_where_the_market_says_so():
    audience = pd.DataFrame({"marketing_consent": [True, False, None, pd.NA]})
    required, not_required = market("DE"), market("US", zone="America/New_York", marketing_consent_required=False)
    for kind in ("marketing", "recovery"):
        assert consent_mask(audience, required, kind).tolist() == [True, False, False, False]
        assert consent_mask(audience, not_required, kind).all()
    with pytest.raises(ValueError, match="marketing_consent"):
        consent_mask(pd.DataFrame({"x": [1]}), required, "marketing")
    assert flow_kind("cart_recovery") == "recovery" and flow_kind("market_campaign") == "marketing"
    with pytest.raises(ValueError, match="flow 'newsletter'"):
        flow_kind("newsletter")
    with pytest.raises(ValueError, match="marketing_max"):
        FrequencyCaps(marketing_max=0)


def test_gate_decision_dates_are_utc_days(engine, sendgrid, api):
    """The window is the last ``window_days`` UTC days including today: the day before the window is ignored."""
    m = market("DE", deliverability={"window_days": 1, "min_delivered": 10})
    sendgrid.set_stats(NOW.date() - timedelta(days=1), {"delivered": 100, "spam_reports": 50}, category="market:DE")
    sendgrid.set_stats(NOW.date(), {"delivered": 100, "spam_reports": 0}, category="market:DE")
    assert check_market(engine, m, now=NOW, api=api).status == "open"
