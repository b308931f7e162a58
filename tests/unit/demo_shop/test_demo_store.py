"""Demo store generator: determinism, schema conformance, realism guarantees, and DB round trips.

The realism tests pin what later stages rely on (every lifecycle stage populated, recoverable carts
in the last 72 h, the "bought through another cart" trap), not exact numbers.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import available_timezones

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from databases import fresh_mariadb_database, fresh_postgres_database

from demo_shop.generator import generate_store, main, store_summary, write_store
from remarketing.markets import load_markets
from remarketing.store.schema import CANONICAL_TABLES, metadata

AS_OF = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)
NOW = pd.Timestamp(AS_OF)
RESERVED_EMAIL = re.compile(r"^[a-z0-9._]+@(?:[a-z0-9-]+\.)*example\.(?:com|net|org)$")
DECIMALS = {"JPY": 0}


@pytest.fixture(scope="module")
def store() -> dict[str, pd.DataFrame]:
    return generate_store(1000, seed=7, as_of=AS_OF)


def _minor(values: pd.Series, currency: pd.Series) -> np.ndarray:
    """Money in integer minor units (yen for JPY, cents otherwise), for exact arithmetic."""
    scale = np.where(currency.to_numpy() == "JPY", 1, 100)
    minor = np.round(values.to_numpy(dtype=float) * scale)
    assert np.allclose(minor / scale, values.to_numpy(dtype=float), atol=1e-9), "more decimals than the currency"
    return minor.astype(np.int64)


def _days_ago(ts: pd.Series) -> pd.Series:
    return (NOW - ts).dt.total_seconds() / 86400


# ------------------------------------------------------------------------------------- generation


def test_same_arguments_give_identical_frames_and_seed_matters():
    first = generate_store(300, seed=7, as_of=AS_OF)
    again = generate_store(300, seed=7, as_of=AS_OF)
    other = generate_store(300, seed=8, as_of=AS_OF)
    for name in CANONICAL_TABLES:
        pd.testing.assert_frame_equal(first[name], again[name], check_exact=True)
    assert not first["customers"]["email"].equals(other["customers"]["email"])
    assert not first["orders"].equals(other["orders"])


def test_columns_dtypes_and_keys_match_the_canonical_schema(store):
    assert list(store) == ["customers", "products", "carts", "cart_items", "orders", "order_items"]
    checks = {
        "int": pd.api.types.is_integer_dtype,
        "float": pd.api.types.is_float_dtype,
        "bool": pd.api.types.is_bool_dtype,
        "str": pd.api.types.is_string_dtype,
        "timestamp": lambda d: isinstance(d, pd.DatetimeTZDtype) and str(d.tz) == "UTC",
    }
    for name, spec in CANONICAL_TABLES.items():
        frame = store[name]
        assert list(frame.columns) == spec.column_names, name
        for column, kind in spec.columns.items():
            assert checks[kind](frame[column].dtype), f"{name}.{column}: {frame[column].dtype} is not {kind}"
        keys = frame[spec.key]
        assert keys.is_unique and keys.min() == 1 and keys.max() == len(frame), f"{name} ids are not dense"
        assert frame["updated_at"].notna().all(), name


def test_referential_integrity(store):
    customers, products = set(store["customers"]["customer_id"]), set(store["products"]["product_id"])
    carts, orders = store["carts"], store["orders"]
    assert set(store["cart_items"]["cart_id"]) <= set(carts["cart_id"])
    assert set(store["cart_items"]["product_id"]) <= products
    assert set(store["order_items"]["product_id"]) <= products
    assert set(store["order_items"]["order_id"]) == set(orders["order_id"]), "an order without lines"
    assert set(orders["customer_id"]) <= customers
    assert set(carts["customer_id"].dropna()) <= customers
    assert set(carts["order_id"].dropna()) <= set(orders["order_id"])


def test_order_totals_are_exact_to_the_minor_unit(store):
    orders, items = store["orders"], store["order_items"]
    currency = items["order_id"].map(orders.set_index("order_id")["currency"])
    line_total = items["quantity"].to_numpy() * _minor(items["unit_price"], currency)
    line_discount = _minor(items["discount_amount"], currency)
    assert (line_discount >= 0).all() and (line_discount <= line_total).all()
    by_order = pd.DataFrame({"order_id": items["order_id"], "gross": line_total, "discount": line_discount})
    sums = by_order.groupby("order_id").sum().reindex(orders["order_id"])
    total = _minor(orders["total_amount"], orders["currency"])
    discount = _minor(orders["discount_amount"], orders["currency"])
    np.testing.assert_array_equal(sums["gross"].to_numpy() - discount, total)
    np.testing.assert_array_equal(sums["discount"].to_numpy(), discount)
    assert ((discount > 0) == orders["coupon_code"].notna().to_numpy()).all()
    assert 0.12 < (discount > 0).mean() < 0.30
    statuses = orders["status"].value_counts(normalize=True)
    assert set(statuses.index) <= {"placed", "shipped", "delivered", "cancelled", "refunded"}
    assert statuses["delivered"] > 0.8 and 0.01 < statuses["cancelled"] < 0.06


def test_markets_currencies_locales_and_zones(store):
    cfg = load_markets()
    customers, orders = store["customers"], store["orders"]
    assert set(customers["market"]) == {"DE", "FR", "GB", "US", "JP", "CN", "BR"}
    for frame in (orders, store["carts"]):
        expected = frame["market"].map(lambda code: cfg[code].currency)
        assert (frame["currency"] == expected).all()
    us = customers[customers["market"] == "US"]
    assert us["time_zone"].nunique() >= 3
    zones = set(available_timezones())
    assert customers["time_zone"].dropna().isin(zones).all()
    assert 0.6 < customers["time_zone"].notna().mean() < 0.8
    with_region = customers[customers["region"].notna()]
    assert set(with_region["market"]) == {"US", "BR"}
    for _, row in with_region.iterrows():
        assert row["region"] in cfg[row["market"]].region_time_zones
    assert set(customers.loc[customers["market"] == "DE", "country"]) >= {"DE", "AT"}
    assert {"en-US", "es-US"} <= set(us["locale"])
    ja = customers[customers["locale"] == "ja-JP"]
    assert ja["last_name"].map(lambda s: not s.isascii()).all()
    consent = customers["marketing_consent"].mean()
    assert 0.5 < consent < 0.8


def test_every_lifecycle_stage_has_members_at_1k(store):
    """Proxies (days before as_of): prospect = never ordered; new = first order <= 30;
    active = last order <= 90 and first > 30; VIP = >= 6 orders and spend in the top decile of
    buyers in the same currency; at-risk = last order 90-180; dormant = last order > 365."""
    customers, orders = store["customers"], store["orders"]
    per = orders.groupby("customer_id").agg(
        n=("order_id", "size"),
        first=("placed_at", "min"),
        last=("placed_at", "max"),
        spend=("total_amount", "sum"),
        currency=("currency", "first"),
    )
    first, last = _days_ago(per["first"]), _days_ago(per["last"])
    top_decile = per.groupby("currency")["spend"].transform(lambda s: s.quantile(0.9))
    stages = {
        "prospect": len(customers) - len(per),
        "new": int((first <= 30).sum()),
        "active": int(((last <= 90) & (first > 30)).sum()),
        "vip": int(((per["n"] >= 6) & (per["spend"] >= top_decile)).sum()),
        "at_risk": int(((last > 90) & (last <= 180)).sum()),
        "dormant": int((last > 365).sum()),
    }
    assert all(count >= 10 for count in stages.values()), stages
    assert 0.25 < stages["prospect"] / len(customers) < 0.5, stages
    assert 2.5 <= len(orders) / len(per) <= 3.5
    assert 2.0 <= len(store["order_items"]) / len(orders) <= 3.0


def test_converted_carts_mirror_their_orders(store):
    carts, orders, cart_items = store["carts"], store["orders"], store["cart_items"]
    ordered = carts[carts["status"] == "ordered"]
    assert ordered["order_id"].notna().all() and ordered["order_id"].is_unique
    assert len(ordered) == len(orders)
    joined = ordered.merge(orders, on="order_id", suffixes=("_cart", "_order"))
    assert (joined["customer_id_cart"].astype("int64") == joined["customer_id_order"]).all()
    assert (joined["created_at"] <= joined["updated_at_cart"]).all()
    assert (joined["updated_at_cart"] <= joined["placed_at"]).all()
    assert ((joined["placed_at"] - joined["created_at"]) < timedelta(hours=5)).all()
    cart_lines = cart_items.merge(ordered[["cart_id", "order_id"]], on="cart_id")
    key = ["order_id", "product_id", "quantity", "unit_price"]
    left = cart_lines[key].sort_values(key).reset_index(drop=True)
    right = store["order_items"][key].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(left.astype({"order_id": "int64"}), right, check_exact=True)


def test_open_carts_ages_owners_and_the_bought_elsewhere_trap(store):
    carts, cart_items, orders = store["carts"], store["cart_items"], store["orders"]
    open_ = carts[carts["status"] == "open"]
    assert open_["order_id"].isna().all()
    idle_hours = (NOW - open_["updated_at"]).dt.total_seconds() / 3600
    assert ((idle_hours >= 1) & (idle_hours <= 72)).sum() >= 30
    assert (idle_hours < 1).any() and (idle_hours > 30 * 24).any() and (idle_hours > 180 * 24).any()
    guests = open_[open_["customer_id"].isna()]
    assert guests["email"].notna().sum() >= 5 and guests["email"].isna().sum() >= 5
    assert open_.loc[open_["customer_id"].notna(), "email"].isna().all()
    buyers = set(orders["customer_id"])
    assert (~open_["customer_id"].dropna().isin(buyers)).sum() >= 5, "no open carts from prospects"
    assert (~open_["cart_id"].isin(cart_items["cart_id"])).sum() >= 5, "no empty carts"

    # Trap: an open cart whose items its customer later bought through another (converted) cart.
    owned = open_.loc[open_["customer_id"].notna(), ["cart_id", "customer_id", "updated_at"]]
    owned = owned.rename(columns={"updated_at": "cart_updated"}).astype({"customer_id": "int64"})
    open_items = cart_items[["cart_id", "product_id"]].merge(owned, on="cart_id")
    bought = store["order_items"][["order_id", "product_id"]].merge(
        orders[["order_id", "customer_id", "placed_at"]], on="order_id"
    )
    later = open_items.merge(bought, on=["customer_id", "product_id"])
    later = later[later["placed_at"] > later["cart_updated"]]
    per_cart = later.groupby(["cart_id", "order_id"])["product_id"].nunique()
    sizes = open_items.groupby("cart_id")["product_id"].nunique()
    trapped = per_cart[per_cart.to_numpy() == sizes.reindex(per_cart.index.get_level_values(0)).to_numpy()]
    assert len(trapped) >= 5
    recent_trap = carts.set_index("cart_id").loc[trapped.index.get_level_values(0).unique(), "updated_at"]
    assert (NOW - recent_trap < timedelta(hours=72)).any(), "no trap among the carts a recovery run sees"


def test_emails_unique_ascii_and_on_reserved_domains_only(store):
    emails = store["customers"]["email"]
    assert emails.is_unique and emails.notna().all()
    guest = store["carts"]["email"].dropna()
    assert guest.is_unique and not set(guest) & set(emails)
    for email in pd.concat([emails, guest]):
        assert email.isascii() and RESERVED_EMAIL.match(email), email


def test_nothing_happens_after_as_of_and_times_are_ordered(store):
    for name, spec in CANONICAL_TABLES.items():
        for column, kind in spec.columns.items():
            if kind == "timestamp":
                values = store[name][column].dropna()
                assert (values <= NOW).all(), f"{name}.{column} after as_of"
                assert (values.dt.microsecond == 0).all() and (values.dt.nanosecond == 0).all()
    customers = store["customers"].set_index("customer_id")
    assert (customers["updated_at"] >= customers["registered_at"]).all()
    assert (customers["registered_at"] > NOW - timedelta(days=740)).all()
    assert (customers["registered_at"] > NOW - timedelta(days=14)).sum() >= 10
    orders = store["orders"]
    assert (orders["placed_at"] >= orders["customer_id"].map(customers["registered_at"])).all()
    assert (orders["updated_at"] >= orders["placed_at"]).all()
    items = store["cart_items"].merge(store["carts"], on="cart_id", suffixes=("", "_cart"))
    assert ((items["added_at"] >= items["created_at"]) & (items["added_at"] <= items["updated_at_cart"])).all()
    assert (items["updated_at"] >= items["added_at"]).all()


def test_products_have_localized_names_prices_and_urls(store):
    products = store["products"]
    assert len(products) == 200 and products["category"].nunique() >= 8
    for _, row in products.iterrows():
        names = json.loads(row["names"])
        assert set(names) == {"en", "de", "fr", "es", "pt", "ja", "zh"}
        assert not names["ja"].isascii() and not names["zh"].isascii()
        assert row["image_url"] == f"https://cdn.shop.example.com/img/{row['sku']}.jpg"
        assert row["product_url"] == f"https://shop.example.com/p/{row['sku']}"
    cents = np.round(products["price"].to_numpy() * 100).astype(int)
    assert (cents % 100 == 99).all() and (products["currency"] == "EUR").all()
    assert 0.85 < products["active"].mean() < 1.0


def test_summary_prints_no_personal_data(store):
    summary = store_summary(store)
    assert summary["rows"]["customers"] == 1000
    assert "@" not in json.dumps(summary, default=str)


# ------------------------------------------------------------------------------------- databases


def _read_back(url: str) -> dict[str, list[tuple]]:
    """Every table ordered by key, values normalized to naive-UTC datetimes and cent Decimals."""

    def norm(value):
        if isinstance(value, datetime):
            return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        if isinstance(value, Decimal | float):
            return Decimal(str(value)).quantize(Decimal("0.01"))
        return value

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            out = {}
            for name, spec in CANONICAL_TABLES.items():
                table = metadata.tables[name]
                rows = conn.execute(sa.select(table).order_by(table.c[spec.key])).all()
                out[name] = [tuple(norm(v) for v in row) for row in rows]
            return out
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.mariadb
def test_round_trip_is_identical_in_sqlite_postgres_and_mariadb(tmp_path):
    frames = generate_store(300, seed=11, as_of=AS_OF)
    sqlite_url = f"sqlite:///{tmp_path / 'store.db'}"
    with fresh_postgres_database() as pg_url, fresh_mariadb_database() as maria_url:
        results = {}
        for label, url in (("sqlite", sqlite_url), ("postgres", pg_url), ("mariadb", maria_url)):
            counts = write_store(frames, url, chunk_rows=700)  # several chunks per table
            assert counts == {name: len(frame) for name, frame in frames.items()}
            results[label] = _read_back(url)
        write_store(frames, sqlite_url)  # rewriting an existing store replaces it
        assert _read_back(sqlite_url) == results["sqlite"]
    for name in CANONICAL_TABLES:
        assert len(results["sqlite"][name]) == len(frames[name])
        assert results["sqlite"][name] == results["postgres"][name] == results["mariadb"][name], name

    product = results["mariadb"]["products"][0]
    expected_names = frames["products"]["names"].iloc[0]
    assert product[3] == expected_names and "（" in json.loads(product[3])["ja"]
    order = results["postgres"]["orders"][0]
    placed = frames["orders"]["placed_at"].iloc[0].to_pydatetime().replace(tzinfo=None)
    assert order[8] == placed
    assert order[5] == Decimal(f"{frames['orders']['total_amount'].iloc[0]:.2f}")
    customers = results["sqlite"]["customers"]
    assert any(row[8] is None for row in customers) and any(row[8] is not None for row in customers)
    assert all(isinstance(row[9], bool) for row in customers)
    assert any(row[2] is not None and not row[2].isascii() for row in customers), "CJK names lost"


def test_cli_generates_writes_and_prints_counts_only(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["--customers", "200", "--seed", "3", "--url", url, "--as-of", "2026-11-22T14:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "2026-11-22T14:00:00+00:00" in out and "@" not in out
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM customers")).scalar() == 200
        latest = conn.execute(sa.text("SELECT MAX(updated_at) FROM orders")).scalar()
    engine.dispose()
    assert latest <= "2026-11-22 14:00:00.000000"
