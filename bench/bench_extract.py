"""Extraction time for a demo store of `size` customers, on SQLite, PostgreSQL and MariaDB.

Times a full extract of all six canonical tables through the same code the DAG runs (real
DB-API drivers: sqlite3, psycopg 3, MySQLdb), then an incremental run with nothing changed.
Loading the store into each database is reported separately and is not part of the figure.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import sqlalchemy as sa

from bench.run import entry
from demo_shop.generator import generate_store, write_store
from remarketing.platform import state
from remarketing.store import snapshots
from remarketing.store.schema import CANONICAL_TABLES

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))


def _dbapi_connect(url: str):
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return sqlite3.connect(parsed.database)
    if backend == "postgresql":
        import psycopg

        return psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database)
    import MySQLdb

    return MySQLdb.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, db=parsed.database, charset="utf8mb4"
    )


def _extract_all(url: str, work: Path, run_id: str) -> tuple[float, int]:
    engine = state.create_state_engine(f"sqlite:///{work / 'remarketing.db'}")
    state.upgrade(engine)
    rows = 0
    started = time.perf_counter()
    for table in CANONICAL_TABLES:
        conn = _dbapi_connect(url)
        try:
            result = snapshots.refresh_table(
                store_conn=conn, store_name="bench", table=table, state_engine=engine, base_path=work, run_id=run_id
            )
        finally:
            conn.close()
        rows += result.delta_rows
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds, rows


def run(size: int) -> list[dict]:
    from databases import fresh_mariadb_database, fresh_postgres_database

    frames = generate_store(customers=size, seed=7)
    entries = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-extract-")))
        targets = {
            "sqlite": f"sqlite:///{tmp / 'store.db'}",
            "postgresql": stack.enter_context(fresh_postgres_database("bench")),
            "mariadb": stack.enter_context(fresh_mariadb_database("bench")),
        }
        for name, url in targets.items():
            started = time.perf_counter()
            write_store(frames, url)
            load_seconds = time.perf_counter() - started
            work = tmp / name
            work.mkdir()
            seconds, rows = _extract_all(url, work, "full")
            again, unchanged_rows = _extract_all(url, work, "again")  # same state: nothing new to read
            assert unchanged_rows == 0, f"{name}: an unchanged store produced {unchanged_rows} rows"
            entries += [
                entry(f"extract_full_seconds[{name}]", seconds, "s", size),
                entry(f"extract_full_rows_per_second[{name}]", rows / seconds, "rows/s", size),
                entry(f"extract_incremental_unchanged_seconds[{name}]", again, "s", size),
                entry(f"store_load_seconds[{name}]", load_seconds, "s", size),
            ]
            print(f"   {name}: {rows} rows extracted in {seconds:.1f}s", file=sys.stderr, flush=True)
    return entries
