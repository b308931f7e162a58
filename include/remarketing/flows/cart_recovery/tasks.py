"""Airflow glue for the cart_recovery DAG: scan, per-market send, attribution, summary.

Tasks pass Parquet paths and counts through XCom, never rows. Each market's send goes through
the shared send step (remarketing.delivery.send_step): gate, windows, render, ledger, send.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from remarketing.flows.cart_recovery.audience import FLOW, SUBJECT_KIND
from remarketing.platform.storage import read_clean, write_frame

RECOVERY_TABLES = ("customers", "products", "carts", "cart_items", "orders", "order_items")


def ledger_history(engine) -> Any:
    """This flow's ledger rows as (cart_id, step, status, sent_at) for the sequence position."""
    import pandas as pd
    import sqlalchemy as sa

    from remarketing.delivery.ledger import send_ledger

    query = sa.select(
        send_ledger.c.subject_id,
        send_ledger.c.step,
        send_ledger.c.status,
        sa.func.coalesce(send_ledger.c.send_at, send_ledger.c.finished_at, send_ledger.c.claimed_at).label("sent_at"),
    ).where(send_ledger.c.flow == FLOW, send_ledger.c.subject_kind == SUBJECT_KIND)
    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(query).all(), columns=["subject_id", "step", "status", "sent_at"])
    rows["cart_id"] = pd.to_numeric(rows["subject_id"], errors="coerce")
    rows["step"] = pd.to_numeric(rows["step"], errors="coerce")
    rows["sent_at"] = pd.to_datetime(rows["sent_at"], utc=True)
    return rows.dropna(subset=["cart_id", "step"]).astype({"cart_id": "int64", "step": "int64"})


def find_abandoned_carts(validated: dict, *, markets: list[str], run_id: str, as_of: str | None = None) -> list[dict]:
    """Scan the clean carts and write one audience Parquet per selected market."""
    from remarketing.delivery.tasks import resolve_now
    from remarketing.flows.cart_recovery.audience import recovery_audience, scan_carts
    from remarketing.flows.cart_recovery.config import load_flows
    from remarketing.markets import load_markets
    from remarketing.platform.connections import remarketing_engine
    from remarketing.platform.storage import run_folder

    config = load_flows().cart_recovery
    market_config = load_markets()
    frames = {table: read_clean(validated, table) for table in RECOVERY_TABLES}
    from remarketing.delivery.engagement import best_hours

    now = resolve_now(as_of)
    engine = remarketing_engine()
    try:
        history = ledger_history(engine)
        # Customers who opened or clicked our mail get it at their own best local hour.
        best = best_hours(engine, frames["customers"], market_config, since=now - timedelta(days=365))
    finally:
        engine.dispose()
    scan = scan_carts(frames, now=now, config=config, history=history)
    audience = recovery_audience(scan, frames["customers"], market_config, profiles=best)
    folder = run_folder("audiences", FLOW, run_id=run_id)
    counts = scan.reason_counts()
    print(f"carts scanned: {len(scan.reasons)}; " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"  personal best hour known for {int(audience['best_hour'].notna().sum())} of {len(audience)} due carts")
    jobs = []
    for code in markets:
        members = audience[audience["market"] == code]
        path = folder / f"market={code}.parquet"
        write_frame(members, path)
        jobs.append(
            {
                "market": code,
                "audience_path": str(path),
                "carts": len(members),
                "now": now.isoformat(),
                "rehearsal": bool(as_of),
                "clean": {t: validated["tables"][t]["clean_path"] for t in ("customers", "cart_items", "products")},
            }
        )
        print(f"  {code}: {len(members)} carts due")
    return jobs


def send_recovery_market(job: dict, *, run_id: str, try_number: int, dry_run: bool) -> dict:
    """One market's recovery send through the shared send step; logs its outcome table."""
    import pandas as pd

    from remarketing.delivery.tasks import market_sender
    from remarketing.flows.cart_recovery.config import load_flows
    from remarketing.flows.cart_recovery.mail import RecoveryRenderer
    from remarketing.platform.connections import store_connection

    config = load_flows().cart_recovery
    audience = pd.read_parquet(job["audience_path"])
    with market_sender(FLOW, job, run_id=run_id, try_number=try_number, dry_run=dry_run) as sender:
        with store_connection("carts") as conn:
            render = RecoveryRenderer(
                market=sender.market, job=job, secret=sender.secret, now=sender.now, store_conn=conn
            )
            summary = sender.send(audience, render, horizon=timedelta(hours=config.send_horizon_hours))
    print(recovered_revenue_line(sender.market.code))
    return summary.to_xcom()


def recovered_revenue_line(market: str) -> str:
    """Revenue credited so far to this market's recovery mails, for the send task's log."""
    from remarketing.flows.cart_recovery.store import revenue_by_market_step
    from remarketing.platform.connections import remarketing_engine

    engine = remarketing_engine()
    try:
        revenue = revenue_by_market_step(engine)
    finally:
        engine.dispose()
    mine = revenue[revenue["market"] == market]
    if mine.empty:
        return f"  recovered revenue ({market}): none attributed yet"
    parts = [f"step {r.step}: {r.orders} orders, {r.revenue:,.2f} {r.currency}" for r in mine.itertuples()]
    return f"  recovered revenue ({market}, all runs): " + "; ".join(parts)


def attribute_revenue(validated: dict, *, run_id: str) -> list[dict]:
    """Credit new orders to the latest recovery mail before them; store and return per market and step."""
    import pandas as pd

    from remarketing.flows.cart_recovery.audience import attribute_orders
    from remarketing.flows.cart_recovery.config import load_flows
    from remarketing.flows.cart_recovery.store import load_accepted_sends, record_attributions, revenue_by_market_step
    from remarketing.platform.connections import remarketing_engine

    config = load_flows().cart_recovery
    orders = read_clean(validated, "orders")
    engine = remarketing_engine()
    try:
        sends, already = load_accepted_sends(engine)
        won = attribute_orders(sends, orders, window=timedelta(days=config.attribution_window_days), already=already)
        record_attributions(engine, won, run_id=run_id)
        totals = revenue_by_market_step(engine)
    finally:
        engine.dispose()
    print(f"orders newly attributed to recovery mails: {len(won)}")
    return totals.to_dict("records") if isinstance(totals, pd.DataFrame) else totals


def summarize(results: list[dict], revenue: list[dict]) -> dict:
    """All markets in one table: outcomes and recovered revenue (all time, by currency)."""
    from remarketing.delivery.tasks import outcome_table

    rows = [{**r, "values": {"audience": r["audience"], **r["counts"]}} for r in results]
    lines, totals = outcome_table("cart recovery, outcomes per market", ["audience"], rows)
    lines.append("recovered revenue (orders attributed to a recovery mail, all runs)")
    for row in revenue:
        lines.append(
            f"  {row['market']:<4} step {row['step']}  {row['orders']:>6} orders  {row['revenue']:>14,.2f} {row['currency']}"
        )
    if not revenue:
        lines.append("  none yet")
    print("\n".join(lines))
    return {"outcomes": totals, "revenue": revenue}
