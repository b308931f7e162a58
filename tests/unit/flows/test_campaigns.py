"""Campaign logic without Airflow: targeting, holdout, A/B arms, rotation, calendar, tables."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from remarketing.flows.campaigns import audience as campaigns_audience
from remarketing.flows.campaigns import calendar as campaigns_calendar
from remarketing.flows.campaigns import model as campaigns_model
from remarketing.flows.campaigns import store as campaigns_store
from remarketing.flows.campaigns.mail import check_localized
from remarketing.markets import load_markets
from remarketing.platform.state import create_state_engine, upgrade
from remarketing.profiles.config import STAGES

NOW = datetime(2026, 11, 24, 9, tzinfo=UTC)
TEXTS = {
    "subject": {"de": "Betreff", "fr": "Objet", "en": "Subject"},
    "preheader": {"de": "Vorschau", "fr": "Aperçu", "en": "Preview"},
    "headline": {"de": "Titel", "fr": "Titre", "en": "Title"},
    "paragraphs": {"de": ["Text"], "fr": ["Texte"], "en": ["Text"]},
    "cta_url": "https://shop.example.com/x",
}


def campaign(**overrides) -> campaigns_model.Campaign:
    raw = {"campaign_id": "autumn-test", "markets": ("DE", "FR"), "stages": ("vip",), "content": TEXTS}
    return campaigns_model.parse_campaign({**raw, **overrides})


def profiles(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1),
            "market": rng.choice(["DE", "FR", "US"], n),
            "stage": rng.choice(list(STAGES), n),
            "rfm_segment": rng.choice(["Champions", "At risk", "Lost"], n),
            "preferred_purchase_hour": pd.array(rng.integers(0, 24, n), dtype="Int64"),
            "monetary": rng.uniform(0, 500, n),
        }
    )


def customers(ids) -> pd.DataFrame:
    ids = list(ids)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "email": [f"c{i}@example.com" for i in ids],
            "first_name": "Ana",
            "last_name": "Lee",
            "locale": None,
            "country": None,
            "region": None,
            "time_zone": None,
            "marketing_consent": True,
        }
    )


def test_the_stage_list_and_patterns_match_the_dag_params():
    from remarketing.flows.campaigns import params

    assert campaigns_model.STAGES == STAGES
    assert tuple(params.STAGES) == STAGES
    form = {name: param.schema for name, param in params.campaign_params().items()}
    assert form["campaign_id"]["pattern"] == campaigns_model.CAMPAIGN_ID_PATTERN
    assert form["variants"]["items"]["properties"]["id"]["pattern"] == campaigns_model.VARIANT_ID_PATTERN
    assert form["stages"]["items"]["enum"] == list(STAGES)
    assert "Champions" in form["rfm_segments"]["items"]["enum"]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"campaign_id": "Bad Id"}, "campaign_id"),
        ({"stages": ("vipp",)}, "stages"),
        ({"stages": ()}, "no audience"),
        ({"variants": ({"id": "v1"}, {"id": "v1"})}, "distinct"),
        ({"holdout_share": 0.7}, "holdout_share"),
        ({"template": "campaign/nope"}, "template"),
    ],
)
def test_bad_campaigns_are_refused_naming_the_field(overrides, named):
    with pytest.raises(campaigns_model.CampaignError, match=named):
        campaign(**overrides)


def test_localization_is_checked_in_each_markets_main_language():
    markets = load_markets()
    assert check_localized(campaign(), markets) == []
    only_english = {**TEXTS, "subject": {"en": "Subject"}}
    with pytest.raises(campaigns_model.CampaignError, match=r"variant v1: subject has no text in 'de' \(market DE"):
        check_localized(campaign(content=only_english), markets)
    with pytest.raises(campaigns_model.CampaignError, match="cta_url"):
        check_localized(campaign(content={**TEXTS, "cta_url": "ftp://x"}), markets)


def test_holdout_is_deterministic_independent_of_the_ab_split_and_within_tolerance():
    ids = np.arange(1, 5001)
    held = campaigns_audience.holdout_mask("autumn-test", ids, 0.1)
    assert abs(held.mean() - 0.1) < 0.015  # binomial sd 0.004 at n=5000
    assert (campaigns_audience.holdout_mask("autumn-test", ids, 0.1) == held).all(), "same customers every round"
    assert (campaigns_audience.holdout_mask("autumn-test", ids[::-1], 0.1)[::-1] == held).all(), "order does not matter"
    other = campaigns_audience.holdout_mask("winter-test", ids, 0.1)
    assert 0.0 < (held & other).mean() < 0.03, "another campaign holds out other customers"
    arms = campaigns_audience.subject_arms("autumn-test", ids, 0.3)
    assert abs((arms == "b").mean() - 0.3) < 0.02
    assert abs((arms[held] == "b").mean() - 0.3) < 0.07, "the A/B split does not depend on the holdout"
    assert set(campaigns_audience.subject_arms("autumn-test", ids, None)) == {"a"}
    assert not campaigns_audience.holdout_mask("autumn-test", ids, 0.0).any()


def test_targeting_by_stage_rfm_and_transition_combines_with_and():
    frame = profiles(200)
    vip = campaigns_audience.select_targets(frame, campaign())
    assert set(vip["stage"]) == {"vip"} and set(vip["market"]) <= {"DE", "FR"}
    assert len(vip) == ((frame["stage"] == "vip") & frame["market"].isin(["DE", "FR"])).sum()
    both = campaigns_audience.select_targets(frame, campaign(rfm_segments=("Champions",)))
    assert set(both["rfm_segment"]) == {"Champions"} and set(both["stage"]) == {"vip"}
    at_risk = frame[frame["stage"] == "at_risk"]["customer_id"].head(5)
    transitions = pd.DataFrame({"customer_id": at_risk, "to_stage": "at_risk"})
    became = campaigns_audience.select_targets(frame, campaign(stages=(), became="at_risk"), transitions)
    expected = frame[frame["customer_id"].isin(at_risk) & frame["market"].isin(["DE", "FR"])]
    assert sorted(became["customer_id"]) == sorted(expected["customer_id"])
    with pytest.raises(campaigns_model.CampaignError, match="transitions"):
        campaigns_audience.select_targets(frame, campaign(stages=(), became="at_risk"))


def test_rotation_picks_the_first_unseen_variant_and_none_after_all():
    had = pd.DataFrame({"customer_id": [1, 2, 2, 3, 3, 3], "variant": ["v1", "v1", "v2", "v1", "v2", "v3"]})
    picked = campaigns_audience.pick_variants(pd.Series([1, 2, 3, 4]), had, ["v1", "v2", "v3"])
    assert picked.tolist() == ["v2", "v3", None, "v1"]
    assert campaigns_audience.pick_variants(
        pd.Series([1]), pd.DataFrame(columns=["customer_id", "variant"]), ["v1"]
    ).tolist() == ["v1"]


def test_the_audience_has_every_target_once_with_holdout_rotation_and_local_send_day():
    markets = load_markets()
    frame = profiles(400)
    frame["stage"] = "vip"
    camp = campaign(
        variants=({"id": "v1"}, {"id": "v2"}),
        holdout_share=0.2,
        subject_b={"de": "B", "fr": "B", "en": "B"},
    )
    targets = campaigns_audience.select_targets(frame, camp)
    de = targets[targets["market"] == "DE"]
    store = customers(de["customer_id"].iloc[1:])  # the first target has no customer row any more
    had = pd.DataFrame({"customer_id": list(de["customer_id"]) * 2, "variant": ["v1"] * len(de) + ["v2"] * len(de)})
    had = had[had["customer_id"].isin(de["customer_id"].iloc[:10])]  # ten had both variants
    send_date = date(2026, 11, 25)
    result = campaigns_audience.campaign_audience(
        campaign=camp, market=markets["DE"], targets=targets, customers=store, had=had, send_date=send_date, now=NOW
    )
    audience, skipped = result.audience, result.skipped
    assert len(audience) + len(skipped) == len(de), "every target has exactly one place"
    assert not set(audience["customer_id"]) & set(skipped["customer_id"])
    assert skipped.set_index("customer_id").loc[de["customer_id"].iloc[0], "outcome"] == "invalid_address"
    exhausted = skipped[skipped["outcome"] == "already_sent"]
    assert set(exhausted["reason"]) == {campaigns_model.REASON_EXHAUSTED}
    assert set(exhausted["customer_id"]) <= set(de["customer_id"].iloc[:10])
    assert set(audience["variant"]) == {"v1"} and set(audience["arm"]) == {"a", "b"}
    assert (audience["subject_id"] == "autumn-test").all() and set(audience["locale"]) == {"de-DE"}
    midnight = pd.Timestamp("2026-11-25 00:00", tz="Europe/Berlin").tz_convert(UTC)
    assert (audience["earliest_at"] == midnight).all(), "the send day starts at local midnight"
    for column in ("email", "time_zone", "marketing_consent", "best_hour", "value", "market"):
        assert column in audience


def test_send_horizon_ends_with_the_send_day_and_refuses_past_or_far_dates():
    de = load_markets()["DE"]
    horizon = campaigns_audience.send_horizon(date(2026, 11, 24), de, NOW)
    assert NOW + horizon == pd.Timestamp("2026-11-25 00:00", tz="Europe/Berlin")
    with pytest.raises(campaigns_model.CampaignError, match="is over"):
        campaigns_audience.send_horizon(date(2026, 11, 23), de, NOW)
    with pytest.raises(campaigns_model.CampaignError, match="72 h"):
        campaigns_audience.send_horizon(date(2026, 11, 30), de, NOW)


def test_the_calendar_loads_and_local_holidays_decide_the_day():
    markets = load_markets()
    entries = campaigns_calendar.load_calendar(markets=markets)
    ids = {e.campaign.campaign_id for e in entries}
    assert {"us-thanksgiving", "christmas-last-orders"} <= ids
    assert any(e.holiday for e in entries), "at least one local-holiday campaign"
    due = campaigns_calendar.due_campaigns(entries, markets, datetime(2026, 11, 25, 12, tzinfo=UTC))
    assert [(d.campaign.campaign_id, d.market, d.send_date) for d in due] == [
        ("us-thanksgiving", "US", date(2026, 11, 26))
    ]
    christmas = campaigns_calendar.due_campaigns(entries, markets, datetime(2026, 12, 22, 8, tzinfo=UTC))
    assert {(d.market, d.send_date) for d in christmas} == {(m, date(2026, 12, 22)) for m in ("DE", "FR", "GB")}
    for entry in entries:
        check_localized(entry.campaign, markets)


def test_a_holiday_campaign_in_a_market_that_blocks_holidays_needs_days_before():
    raw = {"campaigns": [{"holiday": "Christmas Day", "campaign": {**campaign().model_dump(mode="json")}}]}
    with pytest.raises(campaigns_model.CampaignError, match="blocks sends on its holidays"):
        campaigns_calendar.parse_calendar(raw, load_markets())
    raw["campaigns"][0]["holiday"] = "No Such Day"
    with pytest.raises(campaigns_model.CampaignError, match="no holiday named"):
        campaigns_calendar.parse_calendar(raw, load_markets())
    raw["campaigns"][0].pop("holiday")
    with pytest.raises(campaigns_model.CampaignError, match="exactly one"):
        campaigns_calendar.parse_calendar(raw, load_markets())


def _state_engines(tmp_path):
    yield create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    from databases import fresh_postgres_database

    with fresh_postgres_database("rmk_campaigns") as url:
        yield create_state_engine(url)


def test_tables_pin_variants_and_keep_members_on_sqlite_and_postgres(tmp_path):
    for engine in _state_engines(tmp_path):
        upgrade(engine)
        camp = campaign(variants=({"id": "v1"}, {"id": "v2"}))
        campaigns_store.pin_variants(engine, camp, run_id="r1", now=NOW)
        campaigns_store.pin_variants(engine, camp, run_id="r2", now=NOW)  # same content: fine
        changed = campaign(variants=({"id": "v1", "headline": "Other"}, {"id": "v2"}))
        with pytest.raises(campaigns_model.CampaignError, match="variant v1 was sent with other content"):
            campaigns_store.pin_variants(engine, changed, run_id="r3", now=NOW)
        members = pd.DataFrame(
            {
                "customer_id": [1, 2, 3],
                "outcome": ["holdout", "sent", "already_sent"],
                "reason": ["holdout", None, campaigns_model.REASON_EXHAUSTED],
                "variant_id": [None, "v1", None],
                "arm": [None, "a", None],
            }
        )
        assert campaigns_store.record_members(engine, "autumn-test", "DE", "r1", members, now=NOW) == 3
        assert (
            campaigns_store.record_members(engine, "autumn-test", "DE", "r1", members.iloc[:2], now=NOW) == 2
        )  # a retry rewrites
        stored = campaigns_store.load_members(engine, "autumn-test")
        assert sorted(stored["customer_id"]) == [1, 2]
        assert stored["recorded_at"].iloc[0] == NOW, "timezone-aware UTC on read"
        with pytest.raises(ValueError, match="customer_id 1 listed twice"):
            campaigns_store.record_members(engine, "autumn-test", "DE", "r1", pd.concat([members, members]), now=NOW)
        engine.dispose()


def test_variant_history_reads_the_ledger_and_skips_retryable_rejections(tmp_path):
    from remarketing.delivery.ledger import send_ledger

    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)
    base = {
        "flow": campaigns_model.FLOW, "kind": "marketing", "arm": "a", "market": "DE",
        "subject_kind": "campaign", "subject_id": "autumn-test",
        "run_id": "r", "claim_token": "t", "claimed_at": NOW, "attempts": 1,
    }  # fmt: skip
    rows = [
        {**base, "ledger_key": "k1", "customer_ref": "c1", "customer_id": "1", "variant": "v1", "status": "accepted", "retryable": False},
        {**base, "ledger_key": "k2", "customer_ref": "c2", "customer_id": "2", "variant": "v1", "status": "rejected", "retryable": True},
        {**base, "ledger_key": "k3", "customer_ref": "c3", "customer_id": "3", "variant": "v2", "status": "unknown", "retryable": False},
        {**base, "ledger_key": "k4", "customer_ref": "c4", "customer_id": "4", "variant": "v1", "status": "accepted", "retryable": False, "subject_id": "other"},
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(send_ledger.insert(), rows)
    had = campaigns_store.variant_history(engine, "autumn-test")
    assert sorted(map(tuple, had.to_numpy().tolist())) == [(1, "v1"), (3, "v2")]
    engine.dispose()


def test_welcome_audience_once_per_customer_and_reminder_only_without_an_order():
    from remarketing.flows.welcome.audience import welcome_audience

    markets = load_markets()
    people = customers(range(1, 7)).assign(market="US", registered_at=NOW - timedelta(days=2))
    people.loc[people["customer_id"] == 6, "registered_at"] = NOW - timedelta(days=40)  # too old
    history = pd.DataFrame(
        {
            "customer_id": [1, 2, 3],
            "step": ["member", "member", "member"],
            "status": ["accepted", "accepted", "rejected"],
            "retryable": [False, False, True],
            "sent_at": [NOW - timedelta(days=4)] * 3,
        }
    )
    orders = pd.DataFrame({"customer_id": [2], "placed_at": [NOW - timedelta(days=1)], "status": ["placed"]})
    audience, counts = welcome_audience(people, orders, history, now=NOW, markets=markets, reminder_after_days=3)
    steps = audience.set_index("customer_id")["step"].to_dict()
    assert steps == {3: "member", 4: "member", 5: "member", 1: "reminder"}, "3 retried; 2 ordered; 6 too old"
    assert counts["already_welcomed"] == 2 and counts["reminder_ordered"] == 1
    assert (audience["earliest_at"] >= pd.Timestamp(NOW)).all()
    assert set(audience["subject_id"]) == {"welcome"} and set(audience["variant"]) == {"v1"}
