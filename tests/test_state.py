"""The remarketing DB schema is created and upgraded by the project, on SQLite and PostgreSQL."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import run_record
from databases import fresh_postgres_database

from remarketing import state


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
