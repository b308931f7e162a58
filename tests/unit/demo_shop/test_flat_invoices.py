"""The flat invoice-line export and its example mapping (include/sql/store/examples/flat_invoice_lines).

Generator tests pin the traits of the real export the mapping must cope with. Mapping tests run
every file on SQLite, PostgreSQL and MariaDB exactly as the extract wraps it (``SELECT ... FROM
(<file>) src``) and compare with an independent pandas computation over the generated frame, so
they stand on their own; the extract itself is run as well, where it accepts the export.
"""

from __future__ import annotations

import functools
import json
import re
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from databases import fresh_mariadb_database, fresh_postgres_database

from demo_shop.flat_invoices import COLUMNS, SPECIAL, generate, main, write_invoice_lines
from remarketing.store import extract
from remarketing.store.schema import CANONICAL_TABLES

MAPPING_DIR = Path(__file__).resolve().parents[3] / "include" / "sql" / "store" / "examples" / "flat_invoice_lines"
CREDIT_OFFSET = 10_000_000_000
NAMED_COUNTRIES = {"United Kingdom", "EIRE", "USA", "Germany", "France", "Channel Islands", "European Community",
                   "Unspecified", "RSA", "Netherlands", "Spain", "Japan", "Brazil"}  # fmt: skip
ORDER_EXTRAS = ("email", "country", "original_order_id")  # optional columns this mapping returns
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


@pytest.fixture(scope="module")
def full_size() -> pd.DataFrame:
    return generate()


@pytest.fixture(scope="module")
def lines() -> pd.DataFrame:
    """The export the mapping tests load into every database."""
    return generate(1500, seed=3)


def _order_id(invoice_no: str) -> int:
    return int(invoice_no[1:]) + CREDIT_OFFSET if invoice_no.startswith("C") else int(invoice_no)


def _is_product(stock_code: pd.Series) -> pd.Series:
    return stock_code.str[0].str.isdigit()


def _amount(frame: pd.DataFrame) -> pd.Series:
    return frame["quantity"] * frame["unit_price"]


# ------------------------------------------------------------------------------------- generator


def test_default_size_has_the_shape_of_the_real_export(full_size):
    frame = full_size
    assert list(frame.columns) == list(COLUMNS)
    invoices = frame.drop_duplicates("invoice_no")
    assert len(invoices) == 20_000
    assert 2_000 <= frame["customer_id"].nunique() <= 6_000, "a few thousand customers"
    assert 300_000 <= len(frame) <= 450_000
    assert frame["customer_id"].isna().mean() == pytest.approx(0.25, abs=0.03), "about a quarter of lines from guests"
    credit = invoices["invoice_no"].str.startswith("C")
    assert credit.mean() == pytest.approx(0.02, abs=0.004)
    assert frame["invoice_no"].str.fullmatch(r"C?\d{6}").all()

    assert frame["customer_id"].dtype == np.float64
    ids = frame["customer_id"].dropna()
    assert (ids == ids.round()).all() and ids.min() >= 12_346, "float ids like 17850.0"
    assert frame["country"].nunique() >= 30
    assert NAMED_COUNTRIES <= set(frame["country"])
    assert not frame["country"].str.fullmatch(r"[A-Z]{2}").any(), "country names, not ISO codes"

    assert frame["quantity"].dtype == np.int64
    on_credit_note = frame["invoice_no"].str.startswith("C")
    assert (frame.loc[on_credit_note, "quantity"] < 0).all()
    assert (frame.loc[~on_credit_note, "quantity"] > 0).all()

    products = frame[_is_product(frame["stock_code"])]
    assert products["stock_code"].str.fullmatch(r"\d{5}[A-Z]?").all()
    assert products["stock_code"].str.fullmatch(r"\d{5}[A-Z]").any(), "codes like 85123A"
    specials = frame.loc[~_is_product(frame["stock_code"]), "stock_code"]
    assert set(specials) == set(SPECIAL)
    assert len(specials) < 0.01 * len(frame), "a few postage and adjustment lines"
    assert (frame["description"] == frame["description"].str.upper()).all()

    cents = frame["unit_price"] * 100
    assert (~np.isclose(cents, cents.round())).any(), "some prices with three decimals"
    assert np.allclose(frame["unit_price"] * 1000, (frame["unit_price"] * 1000).round())


def test_times_are_naive_local_text_and_invoice_numbers_follow_them(full_size):
    frame = full_size
    assert frame["invoice_date"].str.fullmatch(TIMESTAMP.pattern).all()
    stamps = pd.to_datetime(frame["invoice_date"])
    assert stamps.min() >= pd.Timestamp("2010-12-01") and stamps.max() < pd.Timestamp("2011-12-10")
    assert not (stamps.dt.day_of_week == 5).any(), "no Saturdays, like the original"
    spread = stamps.groupby(frame["invoice_no"]).agg(lambda s: (s.max() - s.min()).total_seconds() / 60)
    assert spread.max() == 2 and (spread > 0).mean() == pytest.approx(0.05, abs=0.02), (
        "some lines a minute or two apart"
    )
    first = stamps.groupby(frame["invoice_no"].str.lstrip("C").astype(int)).min().sort_index()
    assert first.is_monotonic_increasing, "one counter for invoices and credit notes, in time order"


def test_credit_notes_reverse_earlier_invoices_and_some_customers_lose_every_purchase(full_size):
    frame = full_size.assign(amount=_amount(full_size))
    credit = frame[frame["invoice_no"].str.startswith("C")]
    assert credit["customer_id"].notna().mean() > 0.8, "most credit notes belong to a customer"
    assert set(credit.loc[credit["customer_id"].isna(), "stock_code"]) <= set(SPECIAL), "guest notes are fees"
    assert {"D", "AMAZONFEE"} <= set(credit["stock_code"])

    def signature(group: pd.DataFrame) -> tuple:
        return tuple(sorted(zip(group["stock_code"], group["quantity"].abs(), group["unit_price"], strict=True)))

    sales = frame[~frame["invoice_no"].str.startswith("C") & frame["customer_id"].notna()]
    sale_index = {(customer, signature(group)): group["invoice_date"].min() for (customer, _), group in
                  sales.groupby(["customer_id", "invoice_no"])}  # fmt: skip
    full_reversals = 0
    for (customer, _), group in credit[credit["customer_id"].notna()].groupby(["customer_id", "invoice_no"]):
        placed = sale_index.get((customer, signature(group)))
        if placed is not None:
            full_reversals += 1
            assert placed < group["invoice_date"].min(), "a credit note follows the invoice it reverses"
    assert full_reversals >= 0.3 * credit["invoice_no"].nunique()

    products = frame[_is_product(frame["stock_code"]) & frame["customer_id"].notna()]
    net = (
        products.groupby(["customer_id", "stock_code"])["quantity"]
        .sum()
        .groupby(level=0)
        .apply(lambda s: (s == 0).all())
    )
    assert net.sum() >= 20, "customers whose every purchase was refunded"


def test_same_seed_same_frame_and_the_seed_matters():
    first, again, other = generate(400, seed=5), generate(400, seed=5), generate(400, seed=6)
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    assert not first.equals(other)


def test_too_few_invoices_are_refused():
    with pytest.raises(ValueError, match="at least"):
        generate(50)


def test_cli_writes_the_table(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["--url", url, "--invoices", "300", "--seed", "2"]) == 0
    assert "300 invoices" in capsys.readouterr().out
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(DISTINCT invoice_no) FROM invoice_lines")).scalar() == 300
        guests = conn.execute(sa.text("SELECT COUNT(*) FROM invoice_lines WHERE customer_id IS NULL")).scalar()
    engine.dispose()
    assert guests > 0, "NaN ids are written as NULL"


# ------------------------------------------------------------------------------------- databases


@contextmanager
def _sqlite(tmp_path_factory):
    yield f"sqlite:///{tmp_path_factory.mktemp('flat') / 'shop.db'}"


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


def _database(kind: str, tmp_path_factory):
    if kind == "sqlite":
        return _sqlite(tmp_path_factory)
    return fresh_postgres_database("rmk_flat") if kind == "postgresql" else fresh_mariadb_database("rmk_flat")


class Shop:
    """The export loaded into one database, and the mapping's rows read back as the extract wraps them."""

    def __init__(self, kind: str, engine: sa.Engine):
        self.kind = kind
        self.engine = engine
        self._cache: dict[str, pd.DataFrame] = {}

    def mapped(self, table: str) -> pd.DataFrame:
        if table not in self._cache:
            self._cache[table] = _run_mapping(self.engine, table)
        return self._cache[table]


def _run_mapping(engine: sa.Engine, table: str) -> pd.DataFrame:
    sql = extract.mapping_sql(table, MAPPING_DIR)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"SELECT * FROM ({sql}) src")
        columns = [str(column[0]).lower() for column in cursor.description]
        rows = [[float(v) if isinstance(v, Decimal) else v for v in row] for row in cursor.fetchall()]
        cursor.close()
    finally:
        raw.close()
    return pd.DataFrame(rows, columns=columns, dtype=object)


@pytest.fixture(scope="module", params=BACKENDS)
def shop(request, lines, tmp_path_factory):
    with _database(request.param, tmp_path_factory) as url:
        engine = sa.create_engine(url)
        assert write_invoice_lines(engine, lines, chunk_rows=7_000) == len(lines)  # several chunks
        yield Shop(request.param, engine)
        engine.dispose()


def test_every_file_returns_every_canonical_column(shop):
    for table, spec in CANONICAL_TABLES.items():
        expected = set(spec.columns) | (set(ORDER_EXTRAS) if table == "orders" else set())
        assert expected <= set(shop.mapped(table).columns), table


def test_one_order_per_invoice_with_its_total_status_and_customer(shop, lines):
    orders = shop.mapped("orders").set_index("order_id")
    invoices = lines.assign(amount=_amount(lines), order_id=lines["invoice_no"].map(_order_id)).groupby("order_id")
    assert len(orders) == lines["invoice_no"].nunique() == orders.index.nunique()
    assert sorted(orders.index) == sorted(invoices.groups)

    totals = invoices["amount"].sum()
    difference = (orders["total_amount"].astype(float) - totals.reindex(orders.index)).abs()
    assert difference.max() <= 0.005 + 1e-9, "rounded to pennies, nothing else"
    credit = lines.loc[lines["invoice_no"].str.startswith("C"), "invoice_no"].nunique()
    assert (orders["status"] == "credit_note").sum() == credit
    assert set(orders["status"]) == {"credit_note", "delivered"}
    assert (orders.loc[orders["status"] == "credit_note", "total_amount"].astype(float) < 0).all()
    assert (orders.index[orders["status"] == "credit_note"] > CREDIT_OFFSET).all()

    customer = invoices["customer_id"].max()
    assert orders["customer_id"].isna().sum() == customer.isna().sum() > 0, "guest checkouts"
    known = customer.dropna().astype(int)
    assert (orders.loc[known.index, "customer_id"].astype(int) == known).all()
    assert (orders["placed_at"] == invoices["invoice_date"].min().reindex(orders.index)).all()
    assert (orders["updated_at"] == invoices["invoice_date"].max().reindex(orders.index)).all()
    assert (orders["country"] == invoices["country"].first().reindex(orders.index)).all()
    assert set(orders["currency"]) == {"GBP"}
    assert orders["email"].isna().all() and orders["original_order_id"].isna().all() and orders["market"].isna().all()


def test_one_item_per_line_and_only_products_carry_a_product(shop, lines):
    items = shop.mapped("order_items")
    assert len(items) == len(lines)
    assert items["order_item_id"].nunique() == len(items)
    assert set(items["order_id"]) == set(shop.mapped("orders")["order_id"])
    product_lines = _is_product(lines["stock_code"])
    assert items["product_id"].notna().sum() == product_lines.sum()
    assert items["product_id"].isna().sum() == (~product_lines).sum() > 0
    assert set(items["product_id"].dropna()) == set(shop.mapped("products")["product_id"])
    assert (items["quantity"] < 0).sum() == (lines["quantity"] < 0).sum()
    per_order = items.groupby("order_id").size()
    expected = lines.groupby(lines["invoice_no"].map(_order_id)).size()
    assert per_order.sort_index().tolist() == expected.sort_index().tolist()
    updated = lines.groupby(lines["invoice_no"].map(_order_id))["invoice_date"].max()
    assert (items["updated_at"] == items["order_id"].map(updated)).all()


def test_products_are_numbered_in_order_of_first_sale_with_their_newest_name_and_price(shop, lines):
    products = shop.mapped("products").set_index("sku")
    sold = lines[_is_product(lines["stock_code"])]
    first = sold.groupby("stock_code")["invoice_date"].min().reset_index()
    numbering = first.sort_values(["invoice_date", "stock_code"]).reset_index(drop=True)
    expected_ids = pd.Series(numbering.index + 1, index=numbering["stock_code"])
    assert len(products) == sold["stock_code"].nunique()
    assert (products["product_id"].astype(int) == expected_ids.reindex(products.index)).all()

    sales = sold[sold["quantity"] > 0].sort_values(["invoice_date", "invoice_no"]).groupby("stock_code").last()
    names = products["names"].map(lambda text: json.loads(text)["en"])
    assert (names == sales["description"].reindex(products.index)).all()
    assert np.allclose(products["price"].astype(float), sales["unit_price"].reindex(products.index))
    assert (products["updated_at"] == sold.groupby("stock_code")["invoice_date"].max().reindex(products.index)).all()
    assert set(products["currency"]) == {"GBP"} and set(products["active"]) == {1}


def test_customers_are_the_known_customer_numbers_with_their_newest_country(shop, lines):
    customers = shop.mapped("customers").set_index("customer_id")
    known = lines[lines["customer_id"].notna()].assign(customer_id=lambda f: f["customer_id"].astype(int))
    assert len(customers) == known["customer_id"].nunique() == customers.index.nunique()
    newest = known.sort_values(["invoice_date", "invoice_no", "country"], ascending=[False, False, True])
    country = newest.drop_duplicates("customer_id").set_index("customer_id")["country"]
    assert (customers["country"] == country.reindex(customers.index)).all()
    assert customers["country"].nunique() >= 30
    by_customer = known.groupby("customer_id")["invoice_date"]
    assert (customers["registered_at"] == by_customer.min().reindex(customers.index)).all()
    assert (customers["updated_at"] == by_customer.max().reindex(customers.index)).all()
    assert customers[["email", "market", "marketing_consent"]].isna().all().all()


def test_carts_are_empty(shop):
    assert len(shop.mapped("carts")) == len(shop.mapped("cart_items")) == 0


def test_the_extract_takes_every_row_of_every_table(shop, tmp_path, monkeypatch):
    """Through the project's extract (plan_window + extract_delta), in the store's time zone.

    The export's timestamps are London wall time without an offset (text): with
    REMARKETING_STORE_TIME_ZONE they become the right UTC instants, winter and summer alike, and
    the window bounds compare with the text on every database.
    """
    monkeypatch.setenv("REMARKETING_STORE_TIME_ZONE", "Europe/London")
    raw = shop.engine.raw_connection()
    conn = raw.driver_connection
    try:
        for table, spec in CANONICAL_TABLES.items():
            sql = extract.mapping_sql(table, MAPPING_DIR)
            window = extract.plan_window(conn, table, None, now=datetime.now(UTC), settle=timedelta(0), sql=sql)
            path = tmp_path / f"{table}.parquet"
            result = extract.extract_delta(conn, spec, window, functools.partial(path.open, "wb"), sql=sql)
            snapshot = pq.read_table(path)
            assert result.rows == snapshot.num_rows == len(shop.mapped(table)), table
            assert snapshot.column(extract.ISSUES_COLUMN).null_count == snapshot.num_rows, table
            if table == "orders":
                got = snapshot.to_pandas().set_index("order_id")["placed_at"]
                local = pd.to_datetime(shop.mapped("orders").set_index("order_id")["placed_at"].astype(str))
                want = local.dt.tz_localize("Europe/London", ambiguous=True, nonexistent="shift_forward")
                assert (got.reindex(want.index) == want.dt.tz_convert("UTC")).all()
                summer = want[want.dt.month == 7]
                assert len(summer) and (got.reindex(summer.index).dt.hour == (summer.dt.hour - 1) % 24).all()
    finally:
        raw.close()


@pytest.mark.postgres
@pytest.mark.mariadb
def test_the_mapping_returns_the_same_rows_on_sqlite_postgres_and_mariadb(tmp_path_factory):
    frame = generate(600, seed=9)
    results: dict[str, dict[str, list]] = {}
    for kind in ("sqlite", "postgresql", "mariadb"):
        with _database(kind, tmp_path_factory) as url:
            engine = sa.create_engine(url)
            write_invoice_lines(engine, frame)
            results[kind] = {table: _normalised(_run_mapping(engine, table)) for table in CANONICAL_TABLES}
            engine.dispose()
    for table in CANONICAL_TABLES:
        assert results["sqlite"][table] == results["postgresql"][table] == results["mariadb"][table], table


def _normalised(frame: pd.DataFrame) -> list[tuple]:
    rows = []
    for row in frame.itertuples(index=False):
        rows.append(tuple(round(v, 6) if isinstance(v, float) else v for v in row))
    return sorted(rows, key=repr)
