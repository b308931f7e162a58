"""The main job on the embedded default: demo store -> real Airflow runs -> results.

Everything lives inside the repository: the demo store and remarketing DB (SQLite) and run data
under demo/, Airflow's home (SQLite metadata) under airflow_home/. Each run starts from a fresh
demo store whose "now" is the current hour, so carts are abandoned relative to the wall clock.
Usage: python scripts/demo.py [--customers N] [--seed S] | --ui
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
AIRFLOW_HOME = ROOT / "airflow_home"
STORE_DB = DEMO / "store.db"
REMARKETING_DB = DEMO / "remarketing.db"
DATA = DEMO / "data"
BIN = Path(sys.executable).parent

# The DAGs the demo runs, in order; later issues append theirs.
DEMO_DAGS = ["store_snapshot", "lifecycle_segments", "cart_recovery", "welcome_series"]
SEND_POOL = ("remarketing_sends", "4", "Send tasks running at once (bounds SendGrid concurrency)")
# Demo-only secret for signed cart and unsubscribe links; a real shop sets its own.
DEMO_LINK_SECRET = "demo-link-secret-change-me-in-production"


def airflow_env() -> dict[str, str]:
    from remarketing.platform.connections import airflow_conn_json

    env = os.environ.copy()
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
            "AIRFLOW_CONN_STORE_DB": airflow_conn_json(f"sqlite:///{STORE_DB}"),
            "AIRFLOW_CONN_REMARKETING_DB": airflow_conn_json(f"sqlite:///{REMARKETING_DB}"),
            "REMARKETING_DATA_BASE": f"file://{DATA}",
            "REMARKETING_TRANSPORT": "outbox",
            "REMARKETING_LINK_SECRET": DEMO_LINK_SECRET,
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # airflow standalone spawns `airflow`
        }
    )
    return env


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def run_logged(args: list[str], log: Path, env: dict[str, str]) -> None:
    started = time.perf_counter()
    with log.open("w") as handle:
        result = subprocess.run(args, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"failed: {' '.join(args)} (exit {result.returncode}); full log: {log}")
    print(f"    done in {time.perf_counter() - started:.1f}s (log: {log.relative_to(ROOT)})", flush=True)


def generate(customers: int, seed: int) -> None:
    from demo_shop.generator import generate_store, write_store

    step(f"generating a demo store: {customers} customers, seed {seed} -> {STORE_DB.relative_to(ROOT)}")
    started = time.perf_counter()
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir(parents=True)
    frames = generate_store(customers=customers, seed=seed)
    counts = write_store(frames, f"sqlite:///{STORE_DB}")
    print("    " + ", ".join(f"{table} {rows}" for table, rows in counts.items()), flush=True)
    print(f"    done in {time.perf_counter() - started:.1f}s", flush=True)


def report() -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{REMARKETING_DB}")
    with engine.connect() as conn:
        validated = conn.execute(
            sa.text(
                "SELECT v.table_name, v.extracted, v.clean, v.quarantined FROM validation_runs v "
                "WHERE v.finished_at = (SELECT MAX(w.finished_at) FROM validation_runs w "
                "WHERE w.table_name = v.table_name) ORDER BY v.table_name"
            )
        ).all()
        stages = conn.execute(
            sa.text("SELECT market, stage, COUNT(*) FROM customer_profiles GROUP BY market, stage ORDER BY market")
        ).all()
        sends = conn.execute(
            sa.text(
                "SELECT market, step, status, COUNT(*) FROM send_ledger WHERE flow = 'cart_recovery' "
                "GROUP BY market, step, status ORDER BY market, step"
            )
        ).all()
        outcomes = conn.execute(
            sa.text(
                "SELECT flow, market, outcome, SUM(count) FROM send_runs WHERE NOT dry_run "
                "GROUP BY flow, market, outcome ORDER BY flow, market"
            )
        ).all()
    engine.dispose()
    print()
    step("results")
    print("    validation (last run): table, rows extracted, clean, quarantined")
    for table, extracted, clean, quarantined in validated:
        print(f"      {table:<12} {extracted:>9} {clean:>9} {quarantined:>6}")
    print("    lifecycle stages per market")
    by_market: dict[str, dict[str, int]] = {}
    for market, stage, count in stages:
        by_market.setdefault(market, {})[stage] = count
    for market, counts in by_market.items():
        print(f"      {market}: " + ", ".join(f"{stage} {n}" for stage, n in sorted(counts.items())))
    print("    cart recovery mails per market and step (send ledger)")
    for market, step_no, status, count in sends:
        print(f"      {market} step {step_no}: {count} {status}")
    print("    outcomes per flow and market (every audience member ends with one; a market outside its")
    print("    send hours waits for a later run: outside_window)")
    per_market: dict[tuple[str, str], list[str]] = {}
    for flow, market, outcome, count in outcomes:
        per_market.setdefault((flow, market), []).append(f"{outcome} {count}")
    for (flow, market), parts in per_market.items():
        print(f"      {flow:<14} {market}: " + ", ".join(parts))
    print(f"\n    outbox (open in a browser): {DATA / 'outbox' / 'index.html'}")
    print(f"    run data (Parquet, reports): {DATA}")
    print(f"    remarketing DB:       {REMARKETING_DB}")
    print(f"    demo store:           {STORE_DB}")
    print(f"    Airflow home:         {AIRFLOW_HOME} (task logs under logs/)")
    print("    Airflow UI:           make ui   (then http://localhost:8080; per-market funnel and gate:")
    print("                          Remarketing in the nav bar, http://localhost:8080/plugin/remarketing)")


def ui() -> None:
    env = airflow_env()
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://localhost:8080/execution/")
    os.execvpe(str(BIN / "airflow"), [str(BIN / "airflow"), "standalone"], env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ui", action="store_true", help="start the Airflow UI over the demo's home")
    args = parser.parse_args()
    if args.ui:
        ui()
    env = airflow_env()
    generate(args.customers, args.seed)
    AIRFLOW_HOME.mkdir(exist_ok=True)
    step("migrating Airflow's metadata DB (SQLite)")
    run_logged([str(BIN / "airflow"), "db", "migrate"], AIRFLOW_HOME / "db-migrate.log", env)
    run_logged([str(BIN / "airflow"), "pools", "set", *SEND_POOL], AIRFLOW_HOME / "pools.log", env)
    today = datetime.now(UTC).date().isoformat()
    for dag_id in DEMO_DAGS:
        step(f"airflow dags test {dag_id} {today}")
        run_logged([str(BIN / "airflow"), "dags", "test", dag_id, today], AIRFLOW_HOME / f"{dag_id}.log", env)
    report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
