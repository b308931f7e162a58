"""market_campaign end to end through real Airflow (dag.test, metadata in PostgreSQL).

The store is a generated demo shop; profiles (and, for the transition test, stage history) are
written into the remarketing DB with the lifecycle modules, as the lifecycle_segments DAG would.
Runs use the outbox transport and a rehearsal instant (``as_of``) on a working day, so send
windows and holidays do not depend on when the suite runs.
"""

from __future__ import annotations

import email
import json
import os
from datetime import UTC, date, datetime, timedelta
from email import policy
from pathlib import Path

import holidays
import pandas as pd
import pytest
import sqlalchemy as sa
from clock import INSTANT
from conftest import sqlite_conn_env

from demo_shop.generator import generate_store, write_store
from remarketing.flows.campaigns.model import FLOW, REASON_EXHAUSTED
from remarketing.flows.campaigns.store import load_members
from remarketing.markets import load_markets
from remarketing.platform.state import create_state_engine, upgrade
from remarketing.profiles.config import load_lifecycle_config
from remarketing.profiles.lifecycle import compute_profiles
from remarketing.profiles.store import write_profiles

pytestmark = [pytest.mark.airflow_run, pytest.mark.clock]
REPO = Path(__file__).resolve().parents[2]
SECRET = "test-link-secret-0123456789"
NOW = INSTANT  # the shop's clock; every run is a rehearsal at a working day after it (tests/support/clock.py)

CONTENT = {
    "headline": {
        "de": "Neu für Sie ausgewählt",
        "fr": "Sélectionné pour vous",
        "ja": "あなたのための新作",
        "en": "New for you",
    },
    "paragraphs": {
        "de": ["Entdecken Sie unsere Herbstkollektion."],
        "fr": ["Découvrez notre collection d'automne."],
        "ja": ["秋の新コレクションをご覧ください。"],
        "en": ["Discover our autumn collection."],
    },
    "cta_url": "https://shop.example.com/autumn",
}
SUBJECT = {"de": "Herbst: Ihre Auswahl", "fr": "Automne : votre sélection", "ja": "秋のおすすめ", "en": "Autumn picks"}
PREHEADER = {"de": "Nur für Sie", "fr": "Rien que pour vous", "ja": "あなただけに", "en": "Just for you"}


def working_instant(hour_utc: int, markets: tuple[str, ...], after: date | None = None) -> datetime:
    """The first day after ``after`` (default today) that is no public holiday and no weekend in ``markets``."""
    day = (after or NOW.date()) + timedelta(days=1)
    config = load_markets()
    while True:
        blocked = day.weekday() >= 5 or any(
            day in holidays.country_holidays(config[m].holidays.country, subdiv=config[m].holidays.subdivision)
            for m in markets
        )
        if not blocked:
            return datetime(day.year, day.month, day.day, hour_utc, tzinfo=UTC)
        day += timedelta(days=1)


@pytest.fixture(scope="module")
def frames():
    return generate_store(customers=2000, seed=11, as_of=NOW)


@pytest.fixture(scope="module")
def profiles(frames):
    return compute_profiles(
        frames["customers"],
        frames["orders"],
        frames["order_items"],
        frames["products"],
        markets=load_markets(),
        as_of=NOW,
        config=load_lifecycle_config(),
    )


@pytest.fixture
def dag(airflow_metadata):
    """Parsed per test: dag.test() keeps the last run's Param values as the DAG's defaults."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "market_campaign.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("market_campaign")


@pytest.fixture
def shop(run_data, tmp_path, monkeypatch, frames, profiles):
    """Store, remarketing DB with profiles, outbox transport; returns the remarketing DB engine."""
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))
    monkeypatch.setenv("REMARKETING_LINK_SECRET", SECRET)
    monkeypatch.setenv("REMARKETING_TRANSPORT", "outbox")
    engine = create_state_engine(f"sqlite:///{tmp_path / 'remarketing.db'}")
    upgrade(engine)
    write_profiles(engine, profiles, None, run_id="profiles", as_of=NOW)
    yield engine
    engine.dispose()


def conf(**overrides) -> dict:
    base = {
        "campaign_id": "autumn-picks",
        "markets": ["DE", "FR", "JP"],
        "stages": ["active", "vip"],
        "subject": SUBJECT,
        "preheader": PREHEADER,
        "content": CONTENT,
        "as_of": working_instant(9, ("DE", "FR", "JP")).isoformat(),
    }
    return {**base, **overrides}


def ledger(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.text("SELECT * FROM send_ledger"), conn)


def outbox(run_data: Path, folder: str = "outbox") -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in sorted((run_data / folder).rglob("*.eml"))
    ]


def task_states(dag_id: str, run_id: str) -> dict:
    engine = sa.create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT task_id, rendered_map_index, state FROM task_instance WHERE dag_id = :d AND run_id = :r"),
            {"d": dag_id, "r": run_id},
        ).all()
    engine.dispose()
    return {(r.task_id, r.rendered_map_index): r.state for r in rows}


def outcome_table(members: pd.DataFrame) -> pd.DataFrame:
    return members.pivot_table(index="market", columns="outcome", values="customer_id", aggfunc="count", fill_value=0)


def test_a_localized_campaign_to_a_segment_in_three_markets_from_the_trigger_form(shop, run_data, dag, profiles):
    run = dag.test(run_conf=conf())
    assert run.state == "success"
    states = task_states("market_campaign", run.run_id)
    assert {k[1] for k in states if k[0] == "send_market"} == {f"{m} · autumn-picks" for m in ("DE", "FR", "JP")}

    members = load_members(shop, "autumn-picks")
    table = outcome_table(members)
    print("\noutcome counts, autumn-picks to active+vip in DE, FR, JP:\n" + table.to_string())
    stage = profiles.profiles.set_index("customer_id")["stage"]
    market = profiles.profiles.set_index("customer_id")["market"]
    expected = stage[(stage.isin(["active", "vip"])) & market.isin(["DE", "FR", "JP"])].index
    assert sorted(members["customer_id"]) == sorted(expected), "every targeted customer has one outcome, no one else"

    sent = ledger(shop)
    assert len(sent) > 0 and set(sent["status"]) == {"accepted"}
    assert set(sent["flow"]) == {FLOW} and set(sent["kind"]) == {"marketing"}
    assert set(sent["market"]) == {"DE", "FR", "JP"}
    assert set(members.loc[members["outcome"].isin(["sent", "scheduled"]), "customer_id"].astype(str)) == set(
        sent["customer_id"]
    )
    assert (members["outcome"] == "no_consent").sum() > 0, "DE, FR and JP require consent: some are refused"

    mails = outbox(run_data)
    assert len(mails) == len(sent)
    by_market = {}
    for message in mails:
        key = message["X-Remarketing-Ledger-Key"]
        row = sent.set_index("ledger_key").loc[key]
        by_market.setdefault(row["market"], set()).add(message["Subject"])
        html = message.get_body(("html",)).get_content()
        text = message.get_body(("plain",)).get_content()
        assert "-greeting_" not in html + text and "-unsubscribe_url_" not in html + text, "substitutions applied"
        assert message["List-Unsubscribe"].startswith("<https://shop.example.com/")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "utm_campaign=autumn-picks" in text
    assert SUBJECT["de"] in by_market["DE"] and SUBJECT["fr"] in by_market["FR"] and SUBJECT["ja"] in by_market["JP"]


def test_targeting_by_transition_mails_only_recent_entrants(shop, run_data, dag, profiles):
    frame = profiles.profiles
    at_risk = frame[(frame["stage"] == "at_risk") & (frame["market"] == "US")]["customer_id"].tolist()
    assert len(at_risk) >= 20
    recent, old = at_risk[: len(at_risk) // 2], at_risk[len(at_risk) // 2 :]
    as_of = working_instant(15, ("US",))
    rows = [
        {"customer_id": c, "market": "US", "from_stage": "active", "to_stage": "at_risk", "changed_on": day}
        for ids, day in ((recent, (as_of - timedelta(days=3)).date()), (old, (as_of - timedelta(days=40)).date()))
        for c in ids
    ]
    write_profiles(shop, profiles, pd.DataFrame(rows), run_id="history", as_of=NOW)

    run = dag.test(
        run_conf=conf(
            campaign_id="winback-at-risk",
            markets=["US"],
            stages=[],
            became="at_risk",
            within_days=7,
            as_of=as_of.isoformat(),
        )
    )
    assert run.state == "success"
    members = load_members(shop, "winback-at-risk")
    print("\noutcome counts, winback-at-risk:\n" + outcome_table(members).to_string())
    assert sorted(members["customer_id"]) == sorted(recent), "only customers who became at-risk within 7 days"
    mailed = set(ledger(shop)["customer_id"].astype(int))
    assert mailed and mailed <= set(recent)


def test_content_rotation_over_three_rounds_with_a_stable_holdout(shop, run_data, dag, profiles):
    first = working_instant(15, ("US", "GB"))
    rounds = [first, working_instant(15, ("US", "GB"), first.date() + timedelta(days=1))]
    rounds.append(working_instant(15, ("US", "GB"), rounds[1].date() + timedelta(days=1)))
    variants = [{"id": "v1"}, {"id": "v2", "headline": {"en": "Another look at autumn"}}]
    base = {"campaign_id": "autumn-rotation", "markets": ["US", "GB"], "stages": ["active", "vip", "at_risk", "new"]}
    base.update(variants=variants, holdout_share=0.2, subject_b={"en": "Autumn, picked for you"}, ab_share=0.5)

    for n, as_of in enumerate(rounds, start=1):
        run = dag.test(run_conf=conf(**base, as_of=as_of.isoformat()))
        assert run.state == "success", f"round {n}"
    sent = ledger(shop)
    members = load_members(shop, "autumn-rotation")
    by_run = {run_id: group for run_id, group in members.groupby("run_id")}
    assert len(by_run) == 3
    ordered = sorted(by_run.values(), key=lambda g: g["recorded_at"].min())
    for n, group in enumerate(ordered, start=1):
        print(f"\nround {n}:\n" + outcome_table(group).to_string())

    # Never the same content twice; the variants in order.
    assert not sent.duplicated(["customer_id", "variant"]).any()
    first_round = sent[sent["run_id"].str.contains(ordered[0]["run_id"].iloc[0], regex=False)]
    assert set(first_round["variant"]) == {"v1"}
    second_round = sent[sent["run_id"].str.contains(ordered[1]["run_id"].iloc[0], regex=False)]
    assert len(second_round) > 0 and set(second_round["variant"]) == {"v2"}
    assert set(second_round["customer_id"]) <= set(first_round["customer_id"]) | set(
        ordered[0].loc[ordered[0]["outcome"] != "holdout", "customer_id"].astype(str)
    )
    # Round 3: whoever had both variants is skipped with that reason, and nothing new reaches them.
    both = sent.groupby("customer_id")["variant"].nunique()
    both = set(both[both == 2].index.astype(int))
    third = ordered[2].set_index("customer_id")
    assert both and all(third.loc[c, "outcome"] == "already_sent" for c in both)
    assert set(third.loc[list(both), "reason"]) == {REASON_EXHAUSTED}
    third_round = sent[sent["run_id"].str.contains(ordered[2]["run_id"].iloc[0], regex=False)]
    assert not (set(third_round["customer_id"].astype(int)) & both)

    # Holdout: the same customers every round, never mailed, about 20% of the targets.
    held = [set(g.loc[g["outcome"] == "holdout", "customer_id"]) for g in ordered]
    assert held[0] == held[1] == held[2]
    share = len(held[0]) / len(ordered[0])
    assert abs(share - 0.2) < 0.04, share
    assert not (held[0] & set(sent["customer_id"].astype(int)))
    # A/B subjects: both arms used, arm b carries subject B.
    assert set(sent["arm"]) == {"a", "b"} and sent["step"].isna().all()
    subjects = {m["X-Remarketing-Ledger-Key"].split("/")[1]: m["Subject"] for m in outbox(run_data)}
    assert subjects["b"] == "Autumn, picked for you" and subjects["a"] == SUBJECT["en"]


def test_a_dry_run_computes_and_renders_but_claims_and_sends_nothing(shop, run_data, dag):
    run = dag.test(run_conf=conf(dry_run=True))
    assert run.state == "success"
    assert ledger(shop).empty
    assert outbox(run_data) == [], "nothing in the real outbox"
    samples = outbox(run_data, "outbox-dry-run")
    assert {m["Subject"] for m in samples} >= {SUBJECT["de"], SUBJECT["fr"], SUBJECT["ja"]}
    assert load_members(shop, "autumn-picks").empty
    with shop.connect() as conn:
        runs = pd.read_sql(sa.text("SELECT * FROM send_runs"), conn)
    assert set(runs["market"]) == {"DE", "FR", "JP"} and runs["dry_run"].astype(bool).all()
    counts = runs.groupby("outcome")["count"].sum()
    assert counts.get("sent", 0) + counts.get("scheduled", 0) > 0, "the dry run reports what would be sent"


@pytest.mark.parametrize(
    "bad",
    [
        {"campaign_id": "Spring Sale!"},
        {"markets": ["XX"]},
        {"stages": ["vipp"]},
        {"holdout_share": 0.9},
        {"ab_share": -0.1},
        {"send_date": "2026-02-30"},
        {"variants": [{"id": "a/b"}]},
        {"variants": []},
        {"within_days": 0},
        {"content": {"cta_url": "javascript:alert(1)"}},
        {"became": "gone"},
    ],
    ids=lambda bad: next(iter(bad)),
)
def test_bad_params_are_refused_before_any_task_runs(shop, run_data, dag, bad):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError) as refused:
        dag.test(run_conf=conf(**bad))
    assert "Failed validating" in str(refused.value), "jsonschema says which rule the value broke"
    assert ledger(shop).empty and not (run_data / "outbox").exists()


def test_a_campaign_without_texts_fails_in_planning_with_the_field_named(shop, run_data, dag):
    run = dag.test(run_conf=conf(subject={}, content={"cta_url": "https://shop.example.com/x"}))
    assert run.state == "failed"
    states = task_states("market_campaign", run.run_id)
    assert states[("plan_campaigns", None)] == "failed"
    assert not any(t == "send_market" and s == "success" for (t, _), s in states.items())
    assert ledger(shop).empty


def test_the_calendar_runs_a_local_holiday_campaign_on_its_day(shop, run_data, dag, tmp_path, monkeypatch):
    calendar = {
        "campaigns": [
            {
                "holiday": "Thanksgiving Day",
                "campaign": {
                    "campaign_id": "us-thanks",
                    "markets": ["US"],
                    "stages": ["active", "vip"],
                    "content": {"subject": "Thank you", "preheader": "From all of us", **CONTENT},
                },
            },
            {
                "date": "2031-01-15",
                "campaign": {
                    "campaign_id": "not-today",
                    "markets": ["US", "DE"],
                    "stages": ["vip"],
                    "content": {"subject": {"en": "Later", "de": "Später"}, "preheader": "x", **CONTENT},
                },
            },
        ]
    }
    path = tmp_path / "campaigns.yaml"
    path.write_text(json.dumps(calendar))
    monkeypatch.setenv("REMARKETING_CAMPAIGNS_FILE", str(path))
    thanksgiving = next(d for d, n in holidays.US(years=NOW.year + 1).items() if n == "Thanksgiving Day")
    as_of = datetime(thanksgiving.year, thanksgiving.month, thanksgiving.day, 13, tzinfo=UTC)
    # The scheduled run's shape: Param defaults (no campaign_id) and, Asset-triggered, no logical
    # date or data interval: "today" comes from the clock (here the rehearsal instant).
    run = dag.test(logical_date=None, run_conf={"as_of": as_of.isoformat()})
    assert run.state == "success"
    assert run.logical_date is None and run.data_interval_end is None
    sent = ledger(shop)
    assert len(sent) > 0 and set(sent["subject_id"]) == {"us-thanks"}
    rows = [json.loads(p.read_text()) for p in (run_data / "outbox" / "US").glob("*.json")]
    assert len(rows) == len(sent)
    local_days = {row["local_send_at"][:10] for row in rows}  # in each customer's own zone
    assert local_days == {thanksgiving.isoformat()}, "sent on the holiday, in each customer's window"
    assert load_members(shop, "not-today").empty


def test_a_calendar_date_seen_by_two_runs_is_one_round(shop, run_data, dag, tmp_path, monkeypatch):
    """The calendar takes a date the day before and on the day; the second run mails nobody the first scheduled.

    Without this rule the frequency cap would still stop most second mails ("capped"); the
    outcome here must be the rotation's own "already_sent" for this date.
    """
    from remarketing.flows.campaigns.model import REASON_THIS_DATE

    day_before = working_instant(13, ("DE",))
    send_day = working_instant(13, ("DE",), after=day_before.date())
    calendar = {
        "campaigns": [
            {
                "date": send_day.date().isoformat(),
                "campaign": {
                    "campaign_id": "two-variant-date",
                    "markets": ["DE"],
                    "stages": ["active", "vip"],
                    "content": {"subject": {"de": "Neu"}, "preheader": {"de": "Für Sie"}, **CONTENT},
                    "variants": [{"id": "v1"}, {"id": "v2", "headline": "Zweite Fassung"}],
                },
            }
        ]
    }
    path = tmp_path / "campaigns.yaml"
    path.write_text(json.dumps(calendar))
    monkeypatch.setenv("REMARKETING_CAMPAIGNS_FILE", str(path))
    first = dag.test(logical_date=None, run_conf={"as_of": day_before.isoformat()})
    assert first.state == "success"
    scheduled = ledger(shop)
    assert len(scheduled) > 0 and set(scheduled["variant"]) == {"v1"}
    second = dag.test(logical_date=None, run_conf={"as_of": send_day.isoformat()})
    assert second.state == "success"
    after = ledger(shop)
    assert len(after) == len(scheduled) and set(after["variant"]) == {"v1"}, "nobody got v2 for the same date"
    members = load_members(shop, "two-variant-date")
    again = members[members["run_id"] == second.run_id]
    mailed = set(scheduled["customer_id"].astype("int64"))
    repeat = again[again["customer_id"].astype("int64").isin(mailed)]
    assert len(repeat) == len(mailed) and set(repeat["outcome"]) == {"already_sent"}
    assert set(repeat["reason"]) == {REASON_THIS_DATE}
