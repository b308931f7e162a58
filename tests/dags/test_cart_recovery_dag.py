"""cart_recovery end to end through real Airflow (dag.test, metadata in PostgreSQL).

The store is a generated demo shop. Runs through the outbox transport (SQLite store) happen at
the test ``instant`` (tests/support/clock.py): the shop is generated as of it and every run gets it as
``as_of``. The SendGrid transport refuses a rehearsal instant, so its run (PostgreSQL store, the
local SendGrid server) uses a shop generated as of the wall clock's hour and every hour open.
"""

from __future__ import annotations

import email
import json
import os
import re
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import sqlite_conn_env
from market_fixtures import write_open_markets

from demo_shop.generator import generate_store, write_store
from remarketing.content.cart_links import InvalidCartToken, verify_cart_token
from remarketing.flows.cart_recovery.audience import scan_carts
from remarketing.flows.cart_recovery.config import load_flows
from remarketing.markets import load_markets

pytestmark = pytest.mark.airflow_run
REPO = Path(__file__).resolve().parents[2]
SECRET = "test-link-secret-0123456789"
XSS = "<script>alert('cart')</script>"


def demo_shop(as_of: datetime) -> dict:
    frames = generate_store(customers=400, seed=5, as_of=as_of)
    # An XSS attempt in every product name (untrusted shop data): it must come out escaped.
    products = frames["products"]
    products["names"] = [
        json.dumps({locale: XSS + name for locale, name in json.loads(names).items()}) for names in products["names"]
    ]
    return frames


@pytest.fixture(scope="module")
def frames(instant):
    return demo_shop(instant)


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "cart_recovery.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("cart_recovery")


@pytest.fixture(scope="module")
def open_markets(tmp_path_factory) -> Path:
    """Every hour open, holidays not blocking (market_fixtures.open_markets_config)."""
    return Path(write_open_markets(tmp_path_factory.mktemp("config") / "markets.yaml"))


@pytest.fixture
def recovery_env(run_data, monkeypatch, open_markets):
    monkeypatch.setenv("REMARKETING_LINK_SECRET", SECRET)
    monkeypatch.setenv("REMARKETING_TRANSPORT", "outbox")
    monkeypatch.setenv("REMARKETING_MARKETS_FILE", str(open_markets))
    return run_data


def run(dag, **conf):
    """One dag.test run; every Param given, so nothing carries over from an earlier run's conf."""
    return dag.test(run_conf={"full_refresh": False, "as_of": None, "dry_run": False, **conf})


def run_at(dag, at: datetime, **conf):
    """A run whose "now" is ``at`` (a rehearsal on the outbox transport)."""
    return run(dag, as_of=at.isoformat(), **conf)


def ledger(run_data: Path) -> pd.DataFrame:
    engine = sa.create_engine(f"sqlite:///{run_data.parent / 'remarketing.db'}")
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text("SELECT * FROM send_ledger"), conn)
    engine.dispose()
    return frame


def outbox_mails(run_data: Path) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(path.read_bytes(), policy=policy.default)
        for path in sorted((run_data / "outbox").rglob("*.eml"))
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


def html_part(message) -> str:
    return message.get_body(("html",)).get_content()


def text_part(message) -> str:
    return message.get_body(("plain",)).get_content()


def test_recovery_sends_step_one_to_the_due_carts_once_and_nothing_to_converted_carts(
    airflow_metadata, recovery_env, tmp_path, monkeypatch, frames, dag, instant
):
    store = tmp_path / "store.db"
    write_store(frames, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))

    first = run_at(dag, instant)
    assert first.state == "success"
    states = task_states("cart_recovery", first.run_id)
    markets = {key[1] for key in states if key[0] == "send_market"}
    assert markets == set(load_markets().codes), "one mapped send per market, the map index names it"

    sent = ledger(recovery_env)
    assert len(sent) > 0 and set(sent["status"]) <= {"accepted"}
    assert set(sent["step"]) == {"1"}, "a first run can only send step 1"
    # The carts mailed are exactly those the scan finds due and not converted; one per cart.
    expected = scan_carts(frames, now=instant, config=load_flows().cart_recovery)
    due = set(expected.due["cart_id"])
    assert set(sent["subject_kind"]) == {"cart"} and sent["arm"].isna().all()
    mailed = set(sent["subject_id"].astype(int))
    assert mailed <= due
    converted = set(expected.reasons[expected.reasons == "converted"].index)
    assert converted and not (mailed & converted), "a converted cart gets nothing"
    assert sent["subject_id"].is_unique

    mails = outbox_mails(recovery_env)
    assert len(mails) == len(sent)
    languages = {m["Content-Language"] or "" for m in mails} | {
        re.search(r'<html lang="([^"]+)"', html_part(m)).group(1) for m in mails
    }
    assert len({lang.split("-")[0] for lang in languages if lang}) >= 4, f"mails in several languages: {languages}"
    for message in mails:
        html, text = html_part(message), text_part(message)
        assert "<script>" not in html
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert len(html.encode()) < 100_000
        assert "/cart/restore?" in text
    assert all("&lt;script&gt;" in html_part(m) for m in mails), "product names with script show, escaped"

    # The cart link verifies for the shop; a tampered one does not.
    link = re.search(r"https://\S+/cart/restore\?\S+", text_part(mails[0])).group(0)
    token = parse_qs(urlsplit(link).query)["token"][0]
    parsed = verify_cart_token(token, secrets=SECRET.encode(), now=instant)
    assert str(parsed.cart_id) in set(sent["subject_id"])
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(InvalidCartToken):
        verify_cart_token(tampered, secrets=SECRET.encode(), now=instant)

    second = run_at(dag, instant)
    assert second.state == "success"
    assert len(ledger(recovery_env)) == len(sent), "a second run in the same hour sends nothing new"
    assert len(outbox_mails(recovery_env)) == len(mails)

    # A rehearsal a day later moves the mailed carts to step 2.
    later = run_at(dag, instant + timedelta(hours=26))
    assert later.state == "success"
    after = ledger(recovery_env)
    step_two = after[after["step"] == "2"]
    assert len(step_two) > 0
    assert set(step_two["subject_id"]) <= set(sent["subject_id"]) | set(after[after["step"] == "1"]["subject_id"])


def test_a_broken_feed_stops_the_run_before_any_email(
    airflow_metadata, recovery_env, tmp_path, monkeypatch, frames, dag, instant
):
    broken = {name: frame.copy() for name, frame in frames.items()}
    customers = broken["customers"]
    customers.loc[customers.index[: len(customers) // 5], "email"] = "not-an-address"  # 20% bad > 5% allowed
    store = tmp_path / "store.db"
    write_store(broken, f"sqlite:///{store}")
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(store))

    result = run_at(dag, instant)
    assert result.state == "failed"
    states = task_states("cart_recovery", result.run_id)
    assert states[("store.validate", None)] == "failed"
    assert not any(task == "send_market" and state == "success" for (task, _), state in states.items())
    assert not (recovery_env / "outbox").exists() or not list((recovery_env / "outbox").rglob("*.eml"))


@pytest.mark.postgres
def test_recovery_through_sendgrid_from_a_postgres_store(airflow_metadata, run_data, monkeypatch, dag, open_markets):
    """On the wall clock: every hour is open, and what is checked holds whenever the runs happen."""
    from databases import fresh_postgres_database
    from fake_sendgrid import FakeSendGrid

    from remarketing.platform.connections import airflow_conn_json

    frames = demo_shop(datetime.now(UTC).replace(minute=0, second=0, microsecond=0))
    with fresh_postgres_database("rmk_store") as store_url, fresh_postgres_database("rmk_state") as state_url:
        write_store(frames, store_url)
        monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", airflow_conn_json(store_url))
        monkeypatch.setenv("AIRFLOW_CONN_REMARKETING_DB", airflow_conn_json(state_url))
        monkeypatch.setenv("REMARKETING_LINK_SECRET", SECRET)
        monkeypatch.setenv("REMARKETING_TRANSPORT", "sendgrid")
        monkeypatch.setenv("REMARKETING_MARKETS_FILE", str(open_markets))
        with FakeSendGrid() as server:
            monkeypatch.setenv(
                "AIRFLOW_CONN_SENDGRID_DEFAULT",
                json.dumps({"conn_type": "sendgrid", "password": server.api_key, "extra": {"host": server.url}}),
            )
            # An address that is due for a mail has unsubscribed at SendGrid before the run. The most
            # recently changed of the due carts: it stays due while the test runs, whatever the hour.
            due = scan_carts(frames, now=datetime.now(UTC), config=load_flows().cart_recovery).due
            consenting = frames["customers"].set_index("customer_id")["marketing_consent"]
            reachable = due[due["owner_id"].map(consenting).fillna(False).astype(bool)]
            reachable = reachable.sort_values("last_change_at", ascending=False)
            gone, gone_owner = reachable["contact_email"].iloc[0], int(reachable["owner_id"].iloc[0])
            server.add_suppression("unsubscribes", gone, created=datetime.now(UTC) - timedelta(hours=1))

            first = run(dag)
            assert first.state == "success"
            engine = sa.create_engine(state_url)
            with engine.connect() as conn:
                sent = pd.read_sql(sa.text("SELECT * FROM send_ledger"), conn)
            assert len(sent) > 0 and set(sent["status"]) == {"accepted"}
            accepted = server.accepted_recipients()
            counts = server.ledger_key_counts()
            assert set(counts) == set(sent["ledger_key"]) and set(counts.values()) == {1}, "each mail accepted once"
            markets = load_markets()
            for recipient in accepted:
                market = recipient["custom_args"]["market"]
                assert recipient["asm"]["group_id"] == markets[market].sendgrid_unsubscribe_group_id
                assert recipient["batch_id"]
                assert recipient["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
                assert recipient["headers"]["List-Unsubscribe"].startswith("<https://")
                assert not any("@" in c for c in recipient["categories"]), "no personal data in categories"
                assert f"market:{market}" in recipient["categories"]
            assert len({(r["custom_args"]["market"], r["batch_id"]) for r in accepted}) == len(
                {r["custom_args"]["market"] for r in accepted}
            ), "one batch per market run"

            # Again: nothing sent before reaches SendGrid again. (A cart whose step-1 delay passes
            # between the two runs may be mailed now, once; the wall clock decides that, not the test.)
            assert run(dag).state == "success"
            again = server.ledger_key_counts()
            assert {key: again[key] for key in counts} == counts and set(again.values()) == {1}

            engine.dispose()
            assert gone.lower() not in {r["email"].lower() for r in accepted}, "a suppressed address gets nothing"
            outcomes = pd.concat(pd.read_parquet(p) for p in (run_data / "sends").rglob("*.parquet"))
            mine = outcomes[outcomes["customer_id"] == str(gone_owner)]
            assert set(mine["outcome"]) == {"suppressed"}, mine[["outcome", "reason"]]
