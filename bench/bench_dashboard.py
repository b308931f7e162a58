"""Benchmark: seconds to compute the Remarketing page for one day on a large PostgreSQL ledger.

The page (plugins/remarketing_dashboard.py) is computed per request from the remarketing DB:
the day's send runs, their accepted mails joined with their delivery outcomes, recovered
orders, the live gate per market. Seeded here in a fresh PostgreSQL database: ``size`` accepted
mails on the measured day and as many on each of the 6 days before (7 markets, 3 flows, 4 runs
a day each), 80% of them with a delivery outcome. Figures: the page's numbers (median of 5
calls, warm) and the whole HTML page.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time
from pathlib import Path

from bench.run import entry
from remarketing.dashboard.page import render_page
from remarketing.dashboard.queries import load_dashboard
from remarketing.delivery.ledger import ClaimContext, record_send_run
from remarketing.markets import load_markets
from remarketing.platform import state

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # databases
DAYS = 7
FLOWS = ("cart_recovery", "welcome_series", "market_campaign")
RUNS_PER_DAY = 4


def _copy(engine, table: str, columns: list[str], rows) -> None:
    buffer = io.StringIO()
    for row in rows:
        buffer.write("\t".join("\\N" if v is None else str(v) for v in row) + "\n")
    buffer.seek(0)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer)
        raw.commit()
    finally:
        raw.close()


def seed(engine, codes: list[str], day: date, size: int) -> None:
    ledger_columns = [
        "ledger_key", "flow", "kind", "step", "market", "customer_ref", "subject_kind", "subject_id",
        "variant",
        "run_id", "claim_token", "status", "claimed_at", "finished_at", "attempts",
    ]  # fmt: skip
    outcome_columns = [
        "ledger_key", "customer_ref", "market", "delivery", "delivered_at", "opened_at", "updated_at", "run_id", "flow",
    ]  # fmt: skip
    for back in range(DAYS):
        current = day - timedelta(days=back)
        noon = datetime.combine(current, day_time(12), tzinfo=UTC)
        ledger_rows, outcome_rows = [], []
        groups = [(code, flow, run) for code in codes for flow in FLOWS for run in range(RUNS_PER_DAY)]
        per_group = max(1, size // len(groups))
        for code, flow, run in groups:
            run_id = f"scheduled__{current}_{run}"
            ctx = ClaimContext(run_id, code, 1, flow)
            record_send_run(
                engine, ctx, {"sent": per_group, "suppressed": per_group // 10}, batch_id=None,
                gate_status="open", dry_run=False, now=noon,
            )  # fmt: skip
            for i in range(per_group):
                key = f"{flow}/{code}/{current}-{run}-{i}/s/1"
                ledger_rows.append(
                    (key, flow, "recovery", "1", code, f"c{i}", "cart", "s", "v1", run_id, ctx.token, "accepted",
                     noon.isoformat(), noon.isoformat(), 1)
                )  # fmt: skip
                if i % 5:
                    outcome_rows.append((key, f"c{i}", code, "delivered", noon.isoformat(),
                                         noon.isoformat() if i % 3 == 0 else None, noon.isoformat(),
                                         run_id, flow))  # fmt: skip
        _copy(engine, "send_ledger", ledger_columns, ledger_rows)
        _copy(engine, "send_outcomes", outcome_columns, outcome_rows)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def run(size: int) -> list[dict]:
    from databases import fresh_postgres_database

    markets = load_markets()
    day = datetime.now(UTC).date()
    with fresh_postgres_database("rmk_bench_dash") as url:
        engine = state.create_state_engine(url)
        state.upgrade(engine)
        started = time.perf_counter()
        seed(engine, markets.codes, day, size)
        print(f"   seeded {DAYS} x {size:,} mails in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        load_dashboard(engine, markets, day)  # warm
        times, pages = [], []
        for _ in range(5):
            started = time.perf_counter()
            dashboard = load_dashboard(engine, markets, day)
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            render_page(dashboard)
            pages.append(time.perf_counter() - started + times[-1])
        sent = dashboard.totals["sent"]
        delivered = dashboard.totals["delivered"]
        engine.dispose()
    print(f"   day shows {sent:,} sent, {delivered:,} delivered", file=sys.stderr)
    return [
        entry("dashboard_numbers_seconds", statistics.median(times), "s", size),
        entry("dashboard_page_seconds", statistics.median(pages), "s", size),
    ]
