"""Extraction and the watermark: exactness at the boundary, crash safety, bad input.

These run the package directly on real DB-API connections (no Airflow), except the tests of
connection handling, which go through Airflow connections defined as AIRFLOW_CONN_* env vars.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from conftest import run_record

from remarketing.platform import state
from remarketing.store import extract, snapshots
from remarketing.store.schema import metadata

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _customer(customer_id: int, updated_at: datetime, **overrides) -> dict:
    row = {
        "customer_id": customer_id,
        "email": f"customer{customer_id}@example.com",
        "first_name": "Jürgen",
        "last_name": "山田",
        "locale": "de-DE",
        "country": "DE",
        "region": None,
        "market": "DE",
        "time_zone": "Europe/Berlin",
        "marketing_consent": customer_id % 2 == 0,
        "registered_at": T0 - timedelta(days=30),
        "updated_at": updated_at,
    }
    row.update(overrides)
    return row


@pytest.fixture
def store(tmp_path) -> sa.Engine:
    """A small SQLite store: 20 customers updated an hour apart, the rest of the tables empty."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(metadata.tables["customers"].insert(), [_customer(i, T0 + timedelta(hours=i)) for i in range(20)])
    return engine


@pytest.fixture
def state_engine(tmp_path) -> sa.Engine:
    engine = state.create_state_engine(f"sqlite:///{tmp_path / 'remarketing.db'}")
    state.upgrade(engine)
    return engine


def refresh(store_engine, state_engine, base: Path, run_id: str, *, now=NOW, settle=timedelta(0), full=False):
    conn = sqlite3.connect(store_engine.url.database)
    try:
        return snapshots.refresh_table(
            store_conn=conn,
            store_name="store_db",
            table="customers",
            state_engine=state_engine,
            base_path=base,
            run_id=run_id,
            full_refresh=full,
            now=now,
            settle=settle,
        )
    finally:
        conn.close()


def read(path: str):
    return pq.read_table(path).sort_by("customer_id")


def touch(store_engine, customer_ids, updated_at, **values):
    table = metadata.tables["customers"]
    with store_engine.begin() as conn:
        conn.execute(
            table.update().where(table.c.customer_id.in_(customer_ids)).values(updated_at=updated_at, **values)
        )


def test_first_run_copies_every_row_with_canonical_types(store, state_engine, tmp_path):
    result = refresh(store, state_engine, tmp_path, "run1")
    snapshot = read(result.snapshot_path)
    assert result.delta_rows == result.snapshot_rows == snapshot.num_rows == 20
    assert str(snapshot.schema.field("updated_at").type) == "timestamp[us, tz=UTC]"
    assert snapshot.column("updated_at").to_pylist()[-1] == T0 + timedelta(hours=19)
    assert snapshot.column("last_name").to_pylist()[0] == "山田"
    assert snapshot.column("marketing_consent").to_pylist()[:2] == [True, False]
    assert snapshot.column(extract.ISSUES_COLUMN).null_count == 20
    assert state.get_watermark(state_engine, "customers").watermark == T0 + timedelta(hours=19)


def test_a_row_updated_after_the_watermark_is_taken_exactly_once(store, state_engine, tmp_path):
    refresh(store, state_engine, tmp_path, "run1")
    touch(store, [3], T0 + timedelta(days=5), first_name="Changed")

    second = refresh(store, state_engine, tmp_path, "run2")
    assert second.delta_rows == 1
    snapshot = read(second.snapshot_path)
    assert snapshot.num_rows == 20, "an updated row replaces its old version, it is not added"
    assert snapshot.column("first_name").to_pylist()[3] == "Changed"

    third = refresh(store, state_engine, tmp_path, "run3")
    assert third.delta_rows == 0
    assert third.snapshot_path == second.snapshot_path, "no change: the previous snapshot stays published"


def test_rows_sharing_the_watermark_timestamp_are_neither_missed_nor_repeated(store, state_engine, tmp_path):
    tie = T0 + timedelta(days=2)
    touch(store, [1, 2, 3], tie)  # three rows at the newest timestamp: the watermark will be exactly `tie`
    first = refresh(store, state_engine, tmp_path, "run1")
    assert first.delta_rows == 20
    assert state.get_watermark(state_engine, "customers").watermark == tie

    touch(store, [4], tie + timedelta(microseconds=1))  # the smallest step past the boundary
    second = refresh(store, state_engine, tmp_path, "run2")
    assert second.delta_rows == 1
    assert read(second.delta_path).column("customer_id").to_pylist() == [4]


def test_rows_inside_the_settle_time_wait_for_the_next_run(store, state_engine, tmp_path):
    settle = timedelta(minutes=5)
    fresh = NOW - timedelta(minutes=2)  # still settling at NOW
    touch(store, [7, 8], fresh)
    first = refresh(store, state_engine, tmp_path, "run1", settle=settle)
    assert first.delta_rows == 18
    assert state.get_watermark(state_engine, "customers").watermark == NOW - settle

    # A transaction that started before the first run commits late, stamped inside the settle window.
    touch(store, [9], NOW - timedelta(minutes=3))
    second = refresh(store, state_engine, tmp_path, "run2", now=NOW + timedelta(minutes=10), settle=settle)
    assert sorted(read(second.delta_path).column("customer_id").to_pylist()) == [7, 8, 9]
    assert read(second.snapshot_path).num_rows == 20


def test_full_refresh_rebuilds_the_mirror_and_sees_deletes(store, state_engine, tmp_path):
    refresh(store, state_engine, tmp_path, "run1")
    with store.begin() as conn:
        conn.execute(sa.text("DELETE FROM customers WHERE customer_id IN (0, 1)"))
    incremental = refresh(store, state_engine, tmp_path, "run2")
    assert incremental.snapshot_rows == 20, "hard deletes are invisible incrementally (documented)"
    full = refresh(store, state_engine, tmp_path, "run3", full=True)
    assert full.full_refresh and full.snapshot_rows == 18
    assert 0 not in read(full.snapshot_path).column("customer_id").to_pylist()


def test_a_crash_before_publishing_leaves_the_watermark_and_snapshot_untouched(
    store, state_engine, tmp_path, monkeypatch
):
    first = refresh(store, state_engine, tmp_path, "run1")
    touch(store, [5], T0 + timedelta(days=9))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("worker killed")

    monkeypatch.setattr(extract, "merge_snapshot", crash)
    with pytest.raises(KeyboardInterrupt):
        refresh(store, state_engine, tmp_path, "run2")
    after_crash = state.get_watermark(state_engine, "customers")
    assert after_crash.watermark == T0 + timedelta(hours=19)
    assert after_crash.snapshot_path == first.snapshot_path

    monkeypatch.undo()
    retry = refresh(store, state_engine, tmp_path, "run2")  # the task retry: same run, same window
    assert retry.delta_rows == 1
    assert read(retry.snapshot_path).num_rows == 20


def test_overlapping_runs_cannot_both_publish(store, state_engine, tmp_path):
    refresh(store, state_engine, tmp_path, "run1")
    stale = state.get_watermark(state_engine, "customers")
    touch(store, [6], T0 + timedelta(days=3))
    refresh(store, state_engine, tmp_path, "run2")  # the overlapping run publishes first
    with pytest.raises(state.WatermarkConflict):
        state.advance_watermark(
            state_engine,
            expected=stale,
            watermark=T0 + timedelta(days=3),
            snapshot_path="elsewhere",
            snapshot_rows=1,
            run=run_record("customers", "late"),
        )
    assert state.get_watermark(state_engine, "customers").snapshot_path != "elsewhere"


def test_values_of_the_wrong_type_are_flagged_on_their_row_not_dropped(store, state_engine, tmp_path):
    with store.begin() as conn:  # SQLite stores whatever it is given, as real shops' exports do
        conn.execute(
            sa.text("UPDATE customers SET marketing_consent = 'maybe', registered_at = 'soon' WHERE customer_id = 4")
        )
    result = refresh(store, state_engine, tmp_path, "run1")
    snapshot = read(result.snapshot_path)
    assert snapshot.num_rows == 20
    issues = snapshot.column(extract.ISSUES_COLUMN).to_pylist()
    assert issues[4] == "marketing_consent: not a valid bool; registered_at: not a valid timestamp"
    assert sum(issue is not None for issue in issues) == 1
    assert snapshot.column("marketing_consent").to_pylist()[4] is None


def test_a_missing_table_fails_permanently_naming_connection_and_table(store, state_engine, tmp_path):
    with store.begin() as conn:
        conn.execute(sa.text("DROP TABLE customers"))
    with pytest.raises(extract.StoreExtractError) as failure:
        refresh(store, state_engine, tmp_path, "run1")
    assert failure.value.permanent
    assert "connection 'store_db', table customers" in str(failure.value)
    assert "no such table" in str(failure.value)
    assert state.get_watermark(state_engine, "customers").snapshot_path is None


def test_a_missing_column_fails_permanently_naming_connection_and_table(store, state_engine, tmp_path):
    with store.begin() as conn:
        conn.execute(sa.text("ALTER TABLE customers DROP COLUMN time_zone"))
    with pytest.raises(extract.StoreExtractError) as failure:
        refresh(store, state_engine, tmp_path, "run1")
    assert failure.value.permanent
    assert "connection 'store_db', table customers" in str(failure.value)
    assert "time_zone" in str(failure.value)


# ----------------------------------------------------------------- Airflow connections


def test_an_unreachable_store_is_a_retryable_error_naming_the_connection(monkeypatch):
    from remarketing.platform import connections

    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", "postgres://nobody@127.0.0.1:1/shop")
    with pytest.raises(connections.ConnectionSetupError) as failure:
        with connections.store_connection("orders"):
            pass
    assert not failure.value.permanent
    assert "connection 'store_db' (postgres), table orders: cannot connect" in str(failure.value)


def test_a_connection_of_the_wrong_type_is_refused_by_name(monkeypatch):
    from remarketing.platform import connections

    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", "http://shop.example.com")
    with pytest.raises(connections.ConnectionSetupError) as failure:
        with connections.store_connection("carts"):
            pass
    assert failure.value.permanent
    assert "connection 'store_db' (store database) has type 'http'" in str(failure.value)


def test_an_undefined_connection_is_refused_by_name(monkeypatch):
    from remarketing.platform import connections

    monkeypatch.delenv("AIRFLOW_CONN_STORE_DB", raising=False)
    with pytest.raises(connections.ConnectionSetupError) as failure:
        with connections.store_connection("carts"):
            pass
    assert "connection 'store_db' (store database) is not defined" in str(failure.value)


def test_a_missing_sqlite_store_file_is_not_created_silently(monkeypatch, tmp_path):
    from conftest import sqlite_conn_env

    from remarketing.platform import connections

    missing = tmp_path / "nope.db"
    monkeypatch.setenv("AIRFLOW_CONN_STORE_DB", sqlite_conn_env(missing))
    with pytest.raises(connections.ConnectionSetupError, match="does not exist"):
        with connections.store_connection("customers"):
            pass
    assert not missing.exists()


# ----------------------------------------------------------------- merge


def test_merge_keeps_duplicate_keys_of_a_delta_for_validation_to_judge():
    import pyarrow as pa

    schema = extract.arrow_schema(extract.table_spec("customers"))
    rows = [_customer(1, T0), _customer(1, T0 + timedelta(hours=1)), _customer(2, T0)]
    columns = {name: [r[name] for r in rows] for name in extract.table_spec("customers").columns}
    columns[extract.ISSUES_COLUMN] = [None] * 3
    delta = pa.table(columns, schema=schema)
    previous = delta.slice(2, 1)
    merged = extract.merge_snapshot(previous, delta.slice(0, 2), "customer_id")
    assert sorted(merged.column("customer_id").to_pylist()) == [1, 1, 2]


def test_timestamps_without_an_offset_are_wall_time_in_the_store_zone_dst_correct():
    from remarketing.store.extract import localize

    values = [
        "2011-01-10 09:00:00",  # winter: London is UTC
        "2011-07-10 09:00:00",  # summer: UTC+1
        datetime(2011, 3, 27, 1, 30),  # skipped by the spring change: moves forward to 02:00 BST
        "2011-10-30 01:30:00",  # repeated in autumn: its first occurrence (BST)
        "2011-07-10T09:00:00+02:00",  # an offset is kept as given
        None,
    ]
    got = localize(values, "Europe/London")
    assert [str(v) for v in got[:5]] == [
        "2011-01-10 09:00:00+00:00",
        "2011-07-10 08:00:00+00:00",
        "2011-03-27 01:00:00+00:00",
        "2011-10-30 00:30:00+00:00",
        "2011-07-10 07:00:00+00:00",
    ]
    assert pd.isna(got.iloc[5]) and localize([], "Europe/London").empty
    assert localize(["2011-07-10 09:00:00"], "UTC").iloc[0] == pd.Timestamp("2011-07-10 09:00", tz="UTC")


def test_an_unknown_store_zone_is_a_setup_error(monkeypatch):
    from remarketing.store.extract import StoreExtractError, store_zone

    monkeypatch.setenv("REMARKETING_STORE_TIME_ZONE", "Europe/Londn")
    with pytest.raises(StoreExtractError, match="not an IANA time zone"):
        store_zone()
