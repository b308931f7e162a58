"""welcome_series end to end through real Airflow (dag.test, metadata in PostgreSQL).

A generated demo shop (about 150 of its 2,000 customers registered in the last two weeks),
the outbox transport, and rehearsal instants (``as_of``) on working days.
"""

from __future__ import annotations

import email
from datetime import timedelta
from email import policy
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from clock import INSTANT
from conftest import sqlite_conn_env
from test_market_campaign_dag import working_instant

from demo_shop.generator import generate_store, write_store
from remarketing.markets import load_markets

pytestmark = [pytest.mark.airflow_run, pytest.mark.clock]
REPO = Path(__file__).resolve().parents[2]
SECRET = "test-link-secret-0123456789"
NOW = INSTANT  # the shop's clock; every run is a rehearsal at a working day after it (tests/support/clock.py)
MARKETS = ("US", "DE", "JP")


@pytest.fixture(scope="module")
def frames():
    return generate_store(customers=2000, seed=13, as_of=NOW)


@pytest.fixture
def dag(airflow_metadata):
    """Parsed per test: dag.test() keeps the last run's Param values as the DAG's defaults."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "welcome_series.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("welcome_series")


@pytest.fixture
def shop(run_data, tmp_path, monkeypatch, frames):
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))
    monkeypatch.setenv("REMARKETING_LINK_SECRET", SECRET)
    monkeypatch.setenv("REMARKETING_TRANSPORT", "outbox")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'remarketing.db'}")
    yield engine
    engine.dispose()


def ledger(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.text("SELECT * FROM send_ledger"), conn)


def outbox(run_data: Path, folder: str = "outbox") -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in sorted((run_data / folder).rglob("*.eml"))
    ]


def test_new_members_are_welcomed_once_and_reminded_only_without_an_order(shop, run_data, dag, frames):
    as_of = working_instant(14, MARKETS)
    first = dag.test(run_conf={"markets": list(MARKETS), "as_of": as_of.isoformat()})
    assert first.state == "success"
    sent = ledger(shop)
    assert len(sent) > 0 and set(sent["status"]) == {"accepted"} and set(sent["step"]) == {"member"}
    assert sent["customer_id"].is_unique, "one welcome mail per customer"

    people = frames["customers"].set_index("customer_id")
    welcomed = people.loc[sent["customer_id"].astype(int)]
    registered = pd.to_datetime(welcomed["registered_at"], utc=True)
    assert (registered >= pd.Timestamp(as_of) - pd.Timedelta(days=14)).all(), "only recent registrations"
    assert set(welcomed["market"]) <= set(MARKETS)
    markets = load_markets()
    for code in ("DE", "JP"):
        mine = welcomed[welcomed["market"] == code]
        assert mine["marketing_consent"].fillna(False).astype(bool).all(), f"{code} requires consent"
    recent = people[
        (pd.to_datetime(people["registered_at"], utc=True) >= pd.Timestamp(as_of) - pd.Timedelta(days=14))
        & people["market"].isin(["US"])
    ]
    assert set(recent.index) <= set(welcomed.index), "US needs no consent: every recent US registration is welcomed"
    assert not markets["US"].marketing_consent_required

    mails = outbox(run_data)
    assert len(mails) == len(sent)
    subjects = {m["X-Remarketing-Ledger-Key"].split("/")[2]: m["Subject"] for m in mails}
    jp = sent[sent["market"] == "JP"]["customer_ref"]
    assert any("ようこそ" in subjects[ref] or "ショップ" in subjects[ref] for ref in jp), "Japanese welcome"
    for message in mails:
        text = message.get_body(("plain",)).get_content()
        assert "-greeting_" not in text and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    second = dag.test(run_conf={"markets": list(MARKETS), "as_of": (as_of + timedelta(hours=1)).isoformat()})
    assert second.state == "success"
    assert len(ledger(shop)) == len(sent), "a second run sends nothing new"
    assert len(outbox(run_data)) == len(mails)

    # Four days later: the reminder for members who have not ordered since registering.
    later = working_instant(14, MARKETS, as_of.date() + timedelta(days=3))
    third = dag.test(run_conf={"markets": list(MARKETS), "as_of": later.isoformat()})
    assert third.state == "success"
    after = ledger(shop)
    reminders = after[after["step"] == "reminder"]
    assert len(reminders) > 0 and reminders["customer_id"].is_unique
    assert set(reminders["customer_id"]) <= set(sent["customer_id"]), "only after the welcome mail"
    orders = frames["orders"]
    valid = orders[orders["status"].isin(["placed", "shipped", "delivered"])]
    bought = valid.merge(people[["registered_at"]], left_on="customer_id", right_index=True)
    bought = set(bought.loc[bought["placed_at"] >= bought["registered_at"], "customer_id"].astype(str))
    assert not (set(reminders["customer_id"]) & bought), "members who ordered get no reminder"
    assert after[after["step"] == "member"]["customer_id"].is_unique


def test_a_dry_run_renders_samples_and_sends_nothing(shop, run_data, dag):
    as_of = working_instant(14, MARKETS)
    run = dag.test(run_conf={"markets": list(MARKETS), "as_of": as_of.isoformat(), "dry_run": True})
    assert run.state == "success"
    assert ledger(shop).empty and outbox(run_data) == []
    samples = sorted((run_data / "outbox-dry-run").rglob("*.eml"))
    assert {p.parent.name for p in samples} == set(MARKETS), "a sample per market (and language)"
    assert all("welcome_series/member/" in p.read_text() for p in samples)
