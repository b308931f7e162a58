"""The remarketing DB schema is created and upgraded by the project, on SQLite and PostgreSQL."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import run_record
from databases import fresh_postgres_database

from remarketing.platform import state


@contextmanager
def sqlite_url(tmp_path):
    yield f"sqlite:///{tmp_path / 'remarketing.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    factory = sqlite_url(tmp_path) if request.param == "sqlite" else fresh_postgres_database("rmk_state")
    with factory as url:
        engine = state.create_state_engine(url)
        yield engine
        engine.dispose()


def test_upgrade_creates_the_schema_and_is_idempotent(engine):
    assert state.current_revision(engine) is None
    assert state.upgrade(engine) == state.head_revision()
    assert state.upgrade(engine) == state.head_revision()  # a second run changes nothing
    tables = set(sa.inspect(engine).get_table_names())
    assert {"store_watermarks", "extract_runs", state.VERSION_TABLE} <= tables
    assert "alembic_version" not in tables, "our version table must not collide with Airflow's"


def test_watermarks_round_trip_as_aware_utc_and_compare_and_set(engine):
    state.upgrade(engine)
    first = datetime(2026, 11, 22, 9, 30, 15, 123456, tzinfo=UTC)
    empty = state.get_watermark(engine, "orders")
    state.advance_watermark(
        engine, expected=empty, watermark=first, snapshot_path="a", snapshot_rows=5, run=run_record("orders", "r1")
    )
    stored = state.get_watermark(engine, "orders")
    assert stored.watermark == first and stored.snapshot_path == "a" and stored.snapshot_rows == 5

    state.advance_watermark(
        engine,
        expected=stored,
        watermark=first + timedelta(hours=1),
        snapshot_path="b",
        snapshot_rows=6,
        run=run_record("orders", "r2"),
    )
    with pytest.raises(state.WatermarkConflict):  # a run that started from `stored` is now stale
        state.advance_watermark(
            engine, expected=stored, watermark=first, snapshot_path="c", snapshot_rows=1, run=run_record("orders", "r3")
        )
    with pytest.raises(state.WatermarkConflict):  # two first runs: only one may create the row
        state.advance_watermark(
            engine, expected=empty, watermark=first, snapshot_path="d", snapshot_rows=1, run=run_record("orders", "r4")
        )
    assert state.get_watermark(engine, "orders").snapshot_path == "b"
    with engine.connect() as conn:
        runs = conn.execute(sa.select(state.extract_runs.c.run_id).order_by(state.extract_runs.c.id)).scalars().all()
    assert runs == ["r1", "r2"], "a refused publish records no run"


def test_0008_fills_the_run_and_flow_of_outcomes_stored_before_it(engine):
    """Outcomes folded before 0008 get their mail's run and flow from the ledger."""
    state.upgrade(engine, "0007")
    at = datetime(2026, 11, 20, 9, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO send_ledger (ledger_key, flow, kind, step, market, customer_ref, subject_id,"
                " content_version, run_id, claim_token, status, retryable, claimed_at, attempts)"
                " VALUES ('k1', 'cart_recovery', 'recovery', '1', 'DE', 'c1', 'cart1', 'v1', 'run-7', 't',"
                " 'accepted', false, :at, 1)"
            ),
            {"at": at},
        )
        for key in ("k1", "k-unknown"):
            conn.execute(
                sa.text(
                    "INSERT INTO send_outcomes (ledger_key, market, delivery, updated_at)"
                    " VALUES (:k, 'DE', 'delivered', :at)"
                ),
                {"k": key, "at": at},
            )
    assert state.upgrade(engine) == state.head_revision()
    with engine.connect() as conn:
        rows = dict(
            (r.ledger_key, (r.run_id, r.flow))
            for r in conn.execute(sa.text("SELECT ledger_key, run_id, flow FROM send_outcomes"))
        )
    assert rows == {"k1": ("run-7", "cart_recovery"), "k-unknown": (None, None)}


def _insert_ledger_row(conn, key: str, flow: str, step: str, subject_id: str, version: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO send_ledger (ledger_key, flow, kind, step, market, customer_ref, subject_id,"
            " content_version, run_id, claim_token, status, retryable, claimed_at, attempts)"
            " VALUES (:key, :flow, 'marketing', :step, 'DE', 'c1', :subject, :version, 'r', 't',"
            " 'accepted', false, :at, 1)"
        ),
        {"key": key, "flow": flow, "step": step, "subject": subject_id, "version": version, "at": datetime.now(UTC)},
    )


def test_0009_gives_each_ledger_column_one_meaning_and_keeps_the_keys(engine):
    """A step that was an A/B arm, a cart-prefixed subject, a content version that was a variant."""
    state.upgrade(engine, "0008")
    rows = [
        ("cart_recovery/2/c1/cart9001/v1", "cart_recovery", "2", "cart9001", "v1"),
        ("welcome_series/reminder/c1/welcome/v1", "welcome_series", "reminder", "welcome", "v1"),
        ("market_campaign/b/c1/spring/v2", "market_campaign", "b", "spring", "v2"),
        ("someone_elses/x/c1/thing/v9", "someone_elses", "x", "thing", "v9"),
    ]
    with engine.begin() as conn:
        for row in rows:
            _insert_ledger_row(conn, *row)
    assert state.upgrade(engine) == state.head_revision()
    with engine.connect() as conn:
        got = {
            r.ledger_key: (r.step, r.arm, r.subject_kind, r.subject_id, r.variant)
            for r in conn.execute(sa.text("SELECT * FROM send_ledger"))
        }
    assert got == {
        "cart_recovery/2/c1/cart9001/v1": ("2", None, "cart", "9001", "v1"),
        "welcome_series/reminder/c1/welcome/v1": ("reminder", None, "series", "welcome", "v1"),
        "market_campaign/b/c1/spring/v2": (None, "b", "campaign", "spring", "v2"),
        "someone_elses/x/c1/thing/v9": ("x", None, "unknown", "thing", "v9"),
    }
    from remarketing.delivery import ledger

    for key, (step, arm, kind, subject, variant) in got.items():
        if kind != "unknown":
            rebuilt = ledger.ledger_key(
                key.split("/")[0], 1, step=step, arm=arm, subject_kind=kind, subject_id=subject, variant=variant
            )
            assert rebuilt == key, "the converted columns must rebuild the very key SendGrid's events carry"


def test_the_api_servers_engine_follows_the_connection_and_is_migrated_once_per_database(tmp_path, monkeypatch):
    """The plugins live as long as the API server: an edited remarketing_db must be used at once."""
    from conftest import sqlite_conn_env

    from remarketing.platform.connections import migrated_remarketing_engine

    monkeypatch.setenv("AIRFLOW_CONN_REMARKETING_DB", sqlite_conn_env(tmp_path / "first.db"))
    first = migrated_remarketing_engine()
    assert migrated_remarketing_engine() is first, "one engine per database, not one per request"
    monkeypatch.setenv("AIRFLOW_CONN_REMARKETING_DB", sqlite_conn_env(tmp_path / "second.db"))
    second = migrated_remarketing_engine()
    assert second is not first and str(second.url).endswith("second.db")
    assert state.current_revision(second) == state.head_revision()
