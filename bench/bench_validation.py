"""Benchmark: validate_store on ``size`` cart items plus the carts and products they reference.

The data is synthetic and shaped like the demo shop's open carts: ~2.5 lines per cart, 30% guest
carts (70% of them with an email), seven markets in their own currencies, a catalogue of 5,000
products, timestamps over the last 90 days. A small share of rows is bad on purpose (orphan lines,
a line in another currency, negative prices, invalid guest emails), so quarantine is exercised
too. Snapshots are written as extract.py writes them; the timed part is ``validate_store`` alone
(GX imported and warmed up first: a task pays that import once, ~5 s).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.run import entry
from remarketing.markets import load_markets
from remarketing.store.extract import arrow_schema
from remarketing.store.schema import CANONICAL_TABLES
from remarketing.store.validation.run import validate_store

NOW = datetime(2026, 3, 27, 8, 0, tzinfo=UTC)
PRODUCTS = 5_000
LINES_PER_CART = 2.5
BAD_SHARE = 0.002  # of cart lines, spread over four kinds of bad rows


def _timestamps(rng: np.random.Generator, size: int, max_age_days: float = 90) -> pd.DatetimeIndex:
    seconds = (rng.random(size) * max_age_days * 86_400).astype(np.int64)
    return pd.DatetimeIndex(pd.Timestamp(NOW) - pd.to_timedelta(seconds, unit="s")).as_unit("us")


def build_store(cart_items: int, seed: int = 7) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    markets = load_markets()
    codes = np.array(markets.codes, dtype=object)
    currency_of = {m.code: m.currency for m in markets}

    products = pd.DataFrame(
        {
            "product_id": np.arange(1, PRODUCTS + 1, dtype=np.int64),
            "sku": [f"SKU-{i:06d}" for i in range(1, PRODUCTS + 1)],
            "category": "apparel",
            "names": ['{"de": "Leinenhemd", "en": "Linen shirt"}'] * PRODUCTS,
            "price": np.round(rng.uniform(5, 400, PRODUCTS), 2),
            "currency": "EUR",
            "image_url": None,
            "product_url": None,
            "active": True,
            "updated_at": _timestamps(rng, PRODUCTS, 400),
        }
    )

    carts_count = max(1, int(cart_items / LINES_PER_CART))
    market = codes[rng.integers(0, len(codes), carts_count)]
    guest = rng.random(carts_count) < 0.30
    with_email = guest & (rng.random(carts_count) < 0.7)
    cart_id = np.arange(1, carts_count + 1, dtype=np.int64)
    email = np.where(with_email, pd.Series(cart_id).map("guest{}@example.com".format).to_numpy(), None)
    created = _timestamps(rng, carts_count)
    carts = pd.DataFrame(
        {
            "cart_id": cart_id,
            "customer_id": pd.Series(rng.integers(1, 10**6, carts_count), dtype="Int64").mask(guest),
            "email": pd.array(email, dtype="str"),
            "market": market,
            "currency": pd.Series(market).map(currency_of).to_numpy(),
            "status": "open",
            "order_id": pd.array([None] * carts_count, dtype="Int64"),
            "created_at": created,
            "updated_at": created,
        }
    )

    line_cart = np.sort(rng.integers(0, carts_count, cart_items))
    items = pd.DataFrame(
        {
            "cart_item_id": np.arange(1, cart_items + 1, dtype=np.int64),
            "cart_id": cart_id[line_cart],
            "product_id": rng.integers(1, PRODUCTS + 1, cart_items),
            "quantity": 1 + rng.integers(0, 3, cart_items),
            "unit_price": np.round(rng.uniform(5, 400, cart_items), 2),
            "currency": carts["currency"].to_numpy()[line_cart],
            "added_at": created[line_cart],
            "updated_at": created[line_cart],
        }
    )
    bad = rng.choice(cart_items, size=int(cart_items * BAD_SHARE), replace=False)
    kinds = np.array_split(bad, 4)
    items.loc[kinds[0], "cart_id"] = carts_count + 10  # orphan line
    items.loc[kinds[1], "currency"] = "XXX"  # ISO code (no currency), not the cart's
    items.loc[kinds[2], "unit_price"] = -1.0
    guest_rows = np.flatnonzero(with_email)[: max(1, len(kinds[3]) // 10)]
    carts.loc[guest_rows, "email"] = "not-an-address"
    return {"products": products, "carts": carts, "cart_items": items}


def write_snapshots(frames: dict[str, pd.DataFrame], folder: Path) -> dict[str, Path]:
    paths = {}
    for name, frame in frames.items():
        schema = arrow_schema(CANONICAL_TABLES[name])
        table = pa.Table.from_pandas(frame.assign(_extract_issues=None), schema=schema, preserve_index=False)
        paths[name] = folder / f"{name}.parquet"
        pq.write_table(table.replace_schema_metadata(None), paths[name], compression="zstd")
    return paths


def run(size: int) -> list[dict]:
    markets = load_markets()
    with tempfile.TemporaryDirectory(prefix="bench-validation-") as tmp:
        folder = Path(tmp)
        snapshots = write_snapshots(build_store(size), folder)
        (folder / "warm").mkdir()
        warm = write_snapshots(build_store(2_000, seed=1), folder / "warm")
        validate_store(warm, markets=markets, out_dir=folder / "warm-out", run_id="warm", now=NOW)

        started = time.perf_counter()
        result = validate_store(snapshots, markets=markets, out_dir=folder / "out", run_id="bench", now=NOW)
        seconds = time.perf_counter() - started
    print(result.summary_table())
    rows = sum(t.extracted for t in result.tables.values())
    items = result.tables["cart_items"]
    return [
        entry(f"validation.validate_store cart_items+carts+products ({rows} rows)", seconds, "s", size),
        entry("validation.rows_per_second", rows / seconds, "rows/s", size),
        entry("validation.cart_items_seconds", items.seconds, "s", size),
        entry("validation.cart_items_quarantined_share", items.quarantined / items.extracted, "fraction", size),
    ]


if __name__ == "__main__":
    import sys

    from bench.run import print_table

    print_table(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
