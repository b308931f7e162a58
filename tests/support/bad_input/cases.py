"""The bad-input corpus: every kind of bad row or bad table validation must handle, and its outcome.

Built on a small valid demo store (``generate_store(60)`` written as extract.py writes snapshots).
Each case changes one thing:

- row cases (``scope="row"``) append their own fresh rows (new keys, copied from a valid row, then
  one value changed; cascade cases add a fresh parent with fresh children). They never touch
  another case's rows, so all row cases are validated together in one run and each is still
  judged on its own rows; the share threshold is relaxed for that run (it is a table case here);
- table cases (``scope="table"``) change a whole table (a column's type, a missing column, an
  unreadable file...) and are validated alone, on the tables they name, with the default policy.

Outcomes: Quarantined (reason, expectation, column; a quarantined parent's children follow with
"parent ... quarantined"), Accepted (kept, with the normalised value in the clean output and
optionally a note), TableFails (FeedBroken naming the expectation). Data-driven families live in
data/: emails.csv (addresses and their normalised form) and timestamps.csv (timestamp text).
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from demo_shop.generator import generate_store
from remarketing.store.extract import ISSUES_COLUMN, arrow_schema
from remarketing.store.schema import CANONICAL_TABLES
from remarketing.store.validation.rules import REFERENCES, TABLE_ORDER

DATA = Path(__file__).resolve().parent / "data"
AS_OF = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
NOW = AS_OF + timedelta(minutes=1)  # the validation clock
CUSTOMERS = 60


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Quarantined:
    reason: str  # substring of the quarantine reason
    expectation: str  # substring of the first failing expectation (GX type and column)
    column: str  # the column named
    cascade: tuple[str, ...] = ()  # child tables whose fresh rows must follow ("parent ... quarantined")


@dataclass(frozen=True)
class Accepted:
    column: str | None = None  # the column to compare in the clean output (None: row kept is enough)
    value: Any = None  # its expected normalised value (a callable is called first: values of the base store)
    note: str | None = None  # a note check that must list the row (kept, reported)
    targets_quarantined: bool = False  # the table passes, yet the case's rows are quarantined

    def expected(self) -> Any:
        return self.value() if callable(self.value) else self.value


@dataclass(frozen=True)
class TableFails:
    expectation: str  # substring of FeedBroken.expectation
    message: str = ""  # substring of the message
    with_keys: bool = False  # the message must name example keys


@dataclass
class Target:
    table: str
    keys: list = field(default_factory=list)  # keys of the rows the case made (row cases)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # the family of bad input; the corpus covers >= 30 distinct kinds
    scope: str  # row | table
    outcome: Quarantined | Accepted | TableFails
    mutate: Callable[[Store], Target]
    tables: tuple[str, ...] = ()  # table cases: the snapshots validated
    policy: dict = field(default_factory=dict)  # table cases: ValidationPolicy arguments


# --------------------------------------------------------------------------- the store under test


@lru_cache(maxsize=1)
def _base_tables() -> dict[str, pa.Table]:
    frames = generate_store(CUSTOMERS, seed=7, as_of=AS_OF)
    tables = {}
    for name, frame in frames.items():
        schema = arrow_schema(CANONICAL_TABLES[name])
        table = pa.Table.from_pandas(frame.assign(**{ISSUES_COLUMN: None}), schema=schema, preserve_index=False)
        tables[name] = table.replace_schema_metadata(None)
    return tables


class Store:
    """The six snapshots as Arrow tables (or raw bytes), with the edits cases need."""

    def __init__(self):
        self.tables: dict[str, pa.Table] = dict(_base_tables())
        self.files: dict[str, bytes] = {}
        self._ids = {name: itertools.count(10_000_001) for name in TABLE_ORDER}

    def key(self, table: str) -> str:
        return CANONICAL_TABLES[table].key

    def rows(self, table: str) -> list[dict]:
        return self.tables[table].to_pylist()

    def row(self, table: str, key: Any) -> dict:
        return next(r for r in self.rows(table) if r[self.key(table)] == key)

    def first(self, table: str, where: Callable[[dict], bool] = lambda r: True) -> dict:
        return next(r for r in self.rows(table) if where(r))

    def add(self, table: str, based_on: dict | None = None, *, keep_key: bool = False, **changes) -> Any:
        """Append a copy of ``based_on`` (default: the first row) with a fresh key and ``changes``."""
        row = dict(based_on or self.rows(table)[0])
        if not keep_key:
            row[self.key(table)] = next(self._ids[table])
        row.update(changes)
        current = self.tables[table]
        self.tables[table] = pa.concat_tables([current, pa.Table.from_pylist([row], schema=current.schema)])
        return row[self.key(table)]

    def set_column(self, table: str, name: str, array: pa.Array) -> None:
        current = self.tables[table]
        index = current.schema.get_field_index(name)
        self.tables[table] = current.set_column(index, pa.field(name, array.type), array)

    def drop_column(self, table: str, name: str) -> None:
        self.tables[table] = self.tables[table].drop_columns([name])

    def children(self, table: str, keys: list) -> dict[str, list]:
        """Rows that reference these rows, recursively: they follow a quarantined parent."""
        found: dict[str, list] = {}
        frontier = [(table, list(keys))]
        while frontier:
            parent, parent_keys = frontier.pop()
            for child, refs in REFERENCES.items():
                for ref in refs:
                    if ref.parent != parent:
                        continue
                    child_keys = [r[self.key(child)] for r in self.rows(child) if r[ref.column] in parent_keys]
                    if child_keys:
                        found.setdefault(child, []).extend(child_keys)
                        frontier.append((child, child_keys))
        return found

    def write(self, folder: Path, tables: tuple[str, ...] | None = None) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in tables or TABLE_ORDER:
            path = folder / f"{name}.parquet"
            if name in self.files:
                path.write_bytes(self.files[name])
            else:
                pq.write_table(self.tables[name], path, compression="zstd")
            paths[name] = path
        return paths


# --------------------------------------------------------------------------- helpers for cases


def _customer(store: Store, **changes) -> Target:
    return Target("customers", [store.add("customers", **changes)])


def _order_with_line(store: Store, order_changes: dict, customer_id=None) -> tuple[Any, Any]:
    """A fresh order (copy of a valid one) with one fresh line; returns (order_id, order_item_id)."""
    base = store.rows("orders")[0]
    order_id = store.add("orders", base, **({"customer_id": customer_id} if customer_id else {}), **order_changes)
    line = store.first("order_items", lambda r: r["order_id"] == base["order_id"])
    return order_id, store.add("order_items", line, order_id=order_id)


def _cart_with_line(store: Store, cart_changes: dict, line_changes: dict | None = None) -> tuple[Any, Any]:
    """A fresh open cart (copy of a valid registered one) with one fresh line."""
    base = store.first("carts", lambda r: r["customer_id"] is not None and r["status"] == "open")
    cart_id = store.add("carts", base, **cart_changes)
    line = store.first("cart_items", lambda r: r["cart_id"] == base["cart_id"])
    return cart_id, store.add("cart_items", line, cart_id=cart_id, **(line_changes or {}))


def _line(store: Store, **changes) -> Target:
    return Target("cart_items", [store.add("cart_items", **changes)])


def _product(store: Store, **changes) -> Target:
    return Target("products", [store.add("products", **changes)])


def _text_timestamps(store: Store, table: str, column: str, special: str) -> Target:
    """Turn a timestamp column into ISO text with offsets (valid), one row carrying ``special``."""
    values = [None if v is None else v.isoformat() for v in store.tables[table].column(column).to_pylist()]
    values[0] = special
    store.set_column(table, column, pa.array(values, pa.string()))
    return Target(table, [store.rows(table)[0][store.key(table)]])


# --------------------------------------------------------------------------- row cases

ROW = "row"
TABLE = "table"


def _email_cases() -> list[Case]:
    cases = []
    with (DATA / "emails.csv").open(encoding="utf-8", newline="") as handle:
        for number, entry in enumerate(csv.DictReader(handle), start=1):
            address = entry["address"]
            if entry["outcome"] == "accepted":
                outcome = Accepted("email", entry["normalised"])
            else:
                outcome = Quarantined("email is not a valid address", "__check__email", "email")
            cases.append(
                Case(
                    f"email_{number:02d}",
                    f"customer email: {entry['why']}",
                    ROW,
                    outcome,
                    lambda store, address=address: _customer(store, email=address),
                )
            )
    return cases


def _timestamp_cases() -> list[Case]:
    cases = []
    with (DATA / "timestamps.csv").open(encoding="utf-8", newline="") as handle:
        for number, entry in enumerate(csv.DictReader(handle), start=1):
            if entry["outcome"] == "accepted":
                outcome = Accepted("registered_at", datetime.fromisoformat(entry["utc"]))
            else:
                outcome = Quarantined(entry["reason"], "__check__timestamp_registered_at", "registered_at")
            cases.append(
                Case(
                    f"timestamp_text_{number:02d}",
                    f"timestamp as text: {entry['why']}",
                    TABLE,
                    outcome,
                    lambda store, text=entry["text"]: _text_timestamps(store, "customers", "registered_at", text),
                    tables=("customers",),
                )
            )
    return cases


def _cascade_customer(store: Store) -> Target:
    customer = store.add("customers", email="not an address")
    _order_with_line(store, {}, customer_id=customer)
    cart = store.first("carts", lambda r: r["customer_id"] is not None and r["status"] == "open")
    cart_id = store.add("carts", cart, customer_id=customer)
    store.add("cart_items", store.first("cart_items", lambda r: r["cart_id"] == cart["cart_id"]), cart_id=cart_id)
    return Target("customers", [customer])


def _duplicate_order(store: Store) -> Target:
    order_id, _ = _order_with_line(store, {})
    store.add("orders", store.row("orders", order_id), keep_key=True, status="shipped")  # a second version
    return Target("orders", [order_id])


def _null_key_order(store: Store) -> Target:
    store.add("orders", keep_key=True, order_id=None)
    return Target("orders", [None])


def _mixed_currency_order(store: Store) -> Target:
    """An EUR order placed from a cart in USD: each row agrees with its own market, not with each other."""
    order_id, _ = _order_with_line(store, {"market": "DE", "currency": "EUR"})
    cart_id, _ = _cart_with_line(
        store, {"status": "ordered", "order_id": order_id, "market": "US", "currency": "USD"}, {"currency": "USD"}
    )
    return Target("carts", [cart_id])


def _orphan_order(store: Store) -> Target:
    order_id, _ = _order_with_line(store, {}, customer_id=99_999_999)
    return Target("orders", [order_id])


def _guest_cart_bad_email(store: Store) -> Target:
    cart_id, _ = _cart_with_line(store, {"customer_id": None, "email": "guest@@example.com"})
    return Target("carts", [cart_id])


def _product_with_lines(store: Store, **changes) -> Target:
    product_id = store.add("products", **changes)
    store.add("cart_items", product_id=product_id)
    store.add("order_items", product_id=product_id)
    return Target("products", [product_id])


def _credit_note(store: Store, *, total: float, quantity: int) -> Target:
    """A credit note (money back) with one negative line."""
    base = store.rows("orders")[0]
    order_id = store.add("orders", base, status="credit_note", total_amount=total)
    line = store.first("order_items", lambda r: r["order_id"] == base["order_id"])
    store.add("order_items", line, order_id=order_id, quantity=quantity)
    return Target("orders", [order_id])


def _order_changes(**changes) -> Callable[[Store], Target]:
    def mutate(store: Store) -> Target:
        return Target("orders", [_order_with_line(store, changes)[0]])

    return mutate


def _in_future(store: Store) -> Target:
    return Target("orders", [_order_with_line(store, {"placed_at": NOW + timedelta(days=1)})[0]])


def _within_skew(store: Store) -> Target:
    return Target("orders", [_order_with_line(store, {"placed_at": NOW + timedelta(minutes=5)})[0]])


ROW_CASES: list[Case] = [
    *_email_cases(),
    Case("guest_cart_email", "guest cart with a malformed checkout email", ROW,
         Quarantined("email is not a valid address", "__check__email", "email", cascade=("cart_items",)),
         _guest_cart_bad_email),
    Case("guest_cart_without_email", "guest cart without email or customer (not an orphan)", ROW,
         Accepted("email", None), lambda s: Target("carts", [_cart_with_line(s, {"customer_id": None, "email": None})[0]])),
    Case("customer_cascade", "customer quarantined: their orders, lines, carts and cart lines follow", ROW,
         Quarantined("email is not a valid address", "__check__email", "email",
                     cascade=("orders", "order_items", "carts", "cart_items")),
         _cascade_customer),
    Case("duplicate_order_id", "two rows with one order_id: both quarantined, the lines follow", ROW,
         Quarantined("duplicate order_id", "expect_column_values_to_be_unique(order_id)", "order_id",
                     cascade=("order_items",)),
         _duplicate_order),
    Case("duplicate_cart_item_id", "duplicate cart line id", ROW,
         Quarantined("duplicate cart_item_id", "expect_column_values_to_be_unique(cart_item_id)", "cart_item_id"),
         lambda s: Target("cart_items", [s.add("cart_items", s.row("cart_items", s.add("cart_items")), keep_key=True)])),
    Case("null_order_id", "order without its key", ROW,
         Quarantined("order_id is missing", "expect_column_values_to_not_be_null(order_id)", "order_id"),
         _null_key_order),
    Case("negative_total", "negative order total on an order that is no credit note", ROW,
         Quarantined("total_amount is negative but status is not credit_note", "__check__credit_note",
                     "total_amount", cascade=("order_items",)),
         _order_changes(total_amount=-12.5)),
    Case("credit_note", "a credit note: negative total, negative line quantity (money back, valid)", ROW,
         Accepted("total_amount", -12.5), lambda s: _credit_note(s, total=-12.5, quantity=-1)),
    Case("positive_credit_note", "a credit note with a positive total", ROW,
         Quarantined("a credit_note has a positive total_amount", "__check__credit_note", "total_amount",
                     cascade=("order_items",)),
         _order_changes(status="credit_note", total_amount=12.5)),
    Case("negative_line_outside_credit_note", "negative quantity on an ordinary order's line", ROW,
         Quarantined("quantity is negative outside a credit_note", "__check__quantity_sign", "quantity"),
         lambda s: Target("order_items", [s.add("order_items", quantity=-2)])),
    Case("zero_order_quantity", "order line with quantity 0", ROW,
         Quarantined("quantity is 0", "__check__quantity_sign", "quantity"),
         lambda s: Target("order_items", [s.add("order_items", quantity=0)])),
    Case("non_product_line", "order line that is no product (postage, a fee): kept", ROW,
         Accepted("product_id", None), lambda s: Target("order_items", [s.add("order_items", product_id=None)])),
    Case("guest_order", "guest checkout: no customer, its own email and country name", ROW,
         Accepted("market", "FR"),
         _order_changes(customer_id=None, market=None, email="guest@example.com", country="France")),
    Case("guest_order_out_of_scope", "guest checkout from a country no market serves: kept, no market", ROW,
         Accepted("market", None), _order_changes(customer_id=None, market=None, country="Netherlands")),
    Case("negative_unit_price", "negative price on a cart line", ROW,
         Quarantined("unit_price not within", "expect_column_values_to_be_between(unit_price)", "unit_price"),
         lambda s: _line(s, unit_price=-0.01)),
    Case("absurd_price", "order line price beyond max_amount", ROW,
         Quarantined("unit_price not within", "expect_column_values_to_be_between(unit_price)", "unit_price"),
         lambda s: Target("order_items", [s.add("order_items", unit_price=2e9)])),
    Case("infinite_price", "infinite product price", ROW,
         Quarantined("price not within", "expect_column_values_to_be_between(price)", "price"),
         lambda s: _product(s, price=float("inf"))),
    Case("nan_price", "NaN price on a cart line (NaN is missing)", ROW,
         Quarantined("unit_price is missing", "expect_column_values_to_not_be_null(unit_price)", "unit_price"),
         lambda s: _line(s, unit_price=float("nan"))),
    Case("nan_product_price", "NaN product price (optional column: NaN is not a missing price)", ROW,
         Quarantined("price is not a number", "__check__number_price", "price"),
         lambda s: _product(s, price=float("nan"))),
    Case("nan_discount", "NaN order discount: its lines follow", ROW,
         Quarantined("discount_amount is not a number", "__check__number_discount_amount", "discount_amount",
                     cascade=("order_items",)),
         _order_changes(discount_amount=float("nan"))),
    Case("null_product_price", "product without a price (null, not NaN): kept", ROW,
         Accepted("price", None), lambda s: _product(s, price=None)),
    Case("zero_quantity", "cart line with quantity 0", ROW,
         Quarantined("quantity not within [1, 1000]", "expect_column_values_to_be_between(quantity)", "quantity"),
         lambda s: _line(s, quantity=0)),
    Case("huge_quantity", "order line with quantity beyond max_quantity", ROW,
         Quarantined("quantity not within [-1000, 1000]", "expect_column_values_to_be_between(quantity)", "quantity"),
         lambda s: Target("order_items", [s.add("order_items", quantity=250_000)])),
    Case("unknown_currency", "order in a currency that is not ISO 4217", ROW,
         Quarantined("currency is not an ISO 4217 code", "__check__currency", "currency", cascade=("order_items",)),
         _order_changes(currency="ABC")),
    Case("currency_not_of_market", "order in ISK in the DE market, and no ISK rate to convert it", ROW,
         Quarantined("currency ISK is not the DE market's currency (EUR) and no EUR->ISK rate on or before",
                     "__check__currency_market", "currency", cascade=("order_items",)),
         _order_changes(market="DE", currency="ISK")),
    Case("currency_converted", "order in USD in the DE market: converted with the FX rates, valid", ROW,
         Accepted("currency", "USD"), _order_changes(market="DE", currency="USD")),
    Case("mixed_currency_cart", "an USD line in an EUR cart: the line differing from its cart", ROW,
         Quarantined("currency differs from its cart's (EUR)", "__check__currency_cart", "currency"),
         lambda s: Target("cart_items", [_cart_with_line(s, {"market": "DE", "currency": "EUR"},
                                                         {"currency": "USD"})[1]])),
    Case("mixed_currency_order", "order placed from a cart in another currency", ROW,
         Quarantined("currency differs from its order's (EUR)", "__check__currency_order", "currency",
                     cascade=("cart_items",)),
         _mixed_currency_order),
    Case("product_currency_not_sold", "product priced in CHF, a currency no market sells in", ROW,
         Quarantined("currency is not the currency of any configured market",
                     "expect_column_values_to_be_in_set(currency)", "currency"),
         lambda s: _product(s, currency="CHF")),
    Case("unknown_market", "customer in a market the config does not have", ROW,
         Quarantined("market is not a configured market", "expect_column_values_to_be_in_set(market)", "market"),
         lambda s: _customer(s, market="XX")),
    Case("unknown_country", "customer country that is neither a code nor a country name", ROW,
         Quarantined("country is neither an ISO 3166 code nor a country name", "__check__country", "country"),
         lambda s: _customer(s, country="Atlantis")),
    Case("country_lower_case", "customer country code in lower case", ROW,
         Accepted("country", "DE"), lambda s: _customer(s, country="de")),
    Case("country_name", "customer country as a local name, no market: the market serving it", ROW,
         Accepted("market", "DE"), lambda s: _customer(s, market=None, country="Österreich")),
    Case("country_alias", "customer country as exports spell it (EIRE)", ROW,
         Accepted("country", "IE"), lambda s: _customer(s, market=None, country="EIRE")),
    Case("unserved_country", "customer in a country no market serves: kept, no market", ROW,
         Accepted("market", None), lambda s: _customer(s, market=None, country="Netherlands")),
    Case("not_a_country", "customer country 'Unspecified': kept, no market", ROW,
         Accepted("country", None), lambda s: _customer(s, market=None, country="Unspecified")),
    Case("cross_border_country", "Austrian customer served by the DE market", ROW,
         Accepted("country", "AT"), lambda s: _customer(s, market="DE", country="AT", time_zone="Europe/Vienna")),
    Case("missing_market", "order without market: its customer's", ROW,
         Accepted("market", lambda: _first_value("orders", "market")), _order_changes(market=None)),
    Case("unknown_order_status", "order status the shop does not use", ROW,
         Quarantined("status is not one of placed", "expect_column_values_to_be_in_set(status)", "status",
                     cascade=("order_items",)),
         _order_changes(status="paid")),
    Case("unknown_cart_status", "cart status outside open|ordered", ROW,
         Quarantined("status is not one of open, ordered", "expect_column_values_to_be_in_set(status)", "status",
                     cascade=("cart_items",)),
         lambda s: Target("carts", [_cart_with_line(s, {"status": "abandoned"})[0]])),
    Case("orphan_cart_item", "cart line whose cart is not in the extract", ROW,
         Quarantined("cart_id: no such cart in the extract", "__ref__cart_id", "cart_id"),
         lambda s: _line(s, cart_id=99_999_999)),
    Case("orphan_order_item_product", "order line for an unknown product", ROW,
         Quarantined("product_id: no such product in the extract", "__ref__product_id", "product_id"),
         lambda s: Target("order_items", [s.add("order_items", product_id=99_999_999)])),
    Case("order_of_unknown_customer", "order whose customer is not in the extract", ROW,
         Quarantined("customer_id: no such customer in the extract", "__ref__customer_id", "customer_id",
                     cascade=("order_items",)),
         _orphan_order),
    Case("product_cascade", "product with broken names: its cart and order lines follow", ROW,
         Quarantined("names is not a JSON object of locale to text", "__check__names", "names",
                     cascade=("cart_items", "order_items")),
         lambda s: _product_with_lines(s, names="Linen shirt")),
    Case("future_timestamp", "order placed a day in the future", ROW,
         Quarantined("placed_at is more than 10 min in the future", "__check__timestamp_placed_at", "placed_at",
                     cascade=("order_items",)),
         _in_future),
    Case("timestamp_within_skew", "order placed 5 min ahead (clock skew tolerated)", ROW,
         Accepted("placed_at", NOW + timedelta(minutes=5)), _within_skew),
    Case("epoch_zero_timestamp", "order placed at 1970-01-01 (an epoch-zero placeholder)", ROW,
         Quarantined("placed_at is before 2000-01-01", "__check__timestamp_placed_at", "placed_at",
                     cascade=("order_items",)),
         _order_changes(placed_at=datetime(1970, 1, 1, tzinfo=UTC))),
    Case("year_one_timestamp", "customer registered in year 1 (a zero date)", ROW,
         Quarantined("registered_at is before 2000-01-01", "__check__timestamp_registered_at", "registered_at"),
         lambda s: _customer(s, registered_at=datetime(1, 1, 1, tzinfo=UTC))),
    Case("timestamp_at_lower_bound", "customer updated exactly at 2000-01-01T00:00Z (the lower bound itself)", ROW,
         Accepted("updated_at", datetime(2000, 1, 1, tzinfo=UTC)),
         lambda s: _customer(s, updated_at=datetime(2000, 1, 1, tzinfo=UTC))),
    Case("missing_required_timestamp", "order without placed_at", ROW,
         Quarantined("placed_at is missing", "expect_column_values_to_not_be_null(placed_at)", "placed_at",
                     cascade=("order_items",)),
         _order_changes(placed_at=None)),
    Case("invalid_time_zone", "customer time zone that is not an IANA name: nulled, row kept", ROW,
         Accepted("time_zone", None, note="time_zone"), lambda s: _customer(s, time_zone="Mars/Olympus_Mons")),
    Case("legacy_time_zone_alias", "IANA backward link (US/Eastern) is a valid zone", ROW,
         Accepted("time_zone", "US/Eastern"), lambda s: _customer(s, market="US", time_zone="US/Eastern")),
    Case("nul_in_name", "NUL bytes in a name: stripped, row kept", ROW,
         Accepted("first_name", "Jürgen", note="nul"), lambda s: _customer(s, first_name="J\x00ürgen\x00")),
    Case("nul_in_currency", "NUL byte padding a currency code: stripped before the checks", ROW,
         Accepted("currency", "EUR", note="nul"),
         lambda s: Target("cart_items", [_cart_with_line(s, {"market": "DE", "currency": "EUR"},
                                                         {"currency": "EUR\x00"})[1]])),
    Case("long_name", "5,000-character last name", ROW,
         Quarantined("last_name longer than 200 characters", "__check__length", "last_name"),
         lambda s: _customer(s, last_name="Müller" * 1000)),
    Case("long_product_names", "product names JSON over text_max_length", ROW,
         Quarantined("names longer than 20000 characters", "__check__length", "names"),
         lambda s: _product(s, names='{"en": "' + "x" * 25_000 + '"}')),
    Case("script_in_product_name", "<script> in a product name: kept (escaped at render), noted", ROW,
         Accepted("names", '{"en": "<script>alert(1)</script> Linen shirt", "de": "Leinenhemd"}', note="names:markup"),
         lambda s: _product(s, names='{"en": "<script>alert(1)</script> Linen shirt", "de": "Leinenhemd"}')),
    Case("names_not_object", "product names JSON that is a list, not locale -> text", ROW,
         Quarantined("names is not a JSON object", "__check__names", "names"),
         lambda s: _product(s, names='["Linen shirt"]')),
    Case("javascript_image_url", "javascript: product image_url (refused at render, never valid)", ROW,
         Quarantined("image_url is not an https URL", "__check__image_url", "image_url"),
         lambda s: _product(s, image_url="javascript:alert(document.cookie)")),
    Case("data_image_url", "data: URI as product image_url", ROW,
         Quarantined("image_url is not an https URL", "__check__image_url", "image_url"),
         lambda s: _product(s, image_url="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==")),
    Case("http_product_url", "plain http product_url: cart and order lines follow", ROW,
         Quarantined("product_url is not an https URL", "__check__product_url", "product_url",
                     cascade=("cart_items", "order_items")),
         lambda s: _product_with_lines(s, product_url="http://shop.example.com/p/linen-shirt")),
    Case("javascript_product_url", "javascript: product_url, upper case and padded", ROW,
         Quarantined("product_url is not an https URL", "__check__product_url", "product_url"),
         lambda s: _product(s, product_url="  JavaScript:alert(1)//https://shop.example.com")),
    Case("url_without_host", "https: product_url without a host", ROW,
         Quarantined("product_url is not an https URL", "__check__product_url", "product_url"),
         lambda s: _product(s, product_url="https:///p/linen-shirt")),
    Case("no_image_url", "product without image_url (optional): kept", ROW,
         Accepted("image_url", None), lambda s: _product(s, image_url=None)),
    Case("https_upper_case_scheme", "HTTPS:// product_url (schemes are case-insensitive): kept as is", ROW,
         Accepted("product_url", "HTTPS://shop.example.com/p/linen-shirt"),
         lambda s: _product(s, product_url="HTTPS://shop.example.com/p/linen-shirt")),
    Case("extract_issue", "value that did not fit its column at extract time (nulled, noted by extract)", ROW,
         Quarantined("quantity: not a valid int", "expect_column_values_to_be_null(_extract_issues)", "quantity"),
         lambda s: _line(s, quantity=None, **{ISSUES_COLUMN: "quantity: not a valid int"})),
]  # fmt: skip


# --------------------------------------------------------------------------- table cases


def _drop(table: str, column: str) -> Callable[[Store], Target]:
    def mutate(store: Store) -> Target:
        store.drop_column(table, column)
        return Target(table)

    return mutate


def _cast(table: str, column: str, to: pa.DataType, key_of_row: int = 0) -> Callable[[Store], Target]:
    def mutate(store: Store) -> Target:
        store.set_column(table, column, store.tables[table].column(column).cast(to).combine_chunks())
        return Target(table, [store.rows(table)[key_of_row][store.key(table)]])

    return mutate


def _strings(table: str, column: str) -> Callable[[Store], Target]:
    def mutate(store: Store) -> Target:
        values = store.tables[table].column(column).to_pylist()
        store.set_column(table, column, pa.array([None if v is None else str(v) for v in values], pa.string()))
        return Target(table)

    return mutate


def _fractional_quantity(store: Store) -> Target:
    values = [float(v) for v in store.tables["cart_items"].column("quantity").to_pylist()]
    values[3] = 1.5
    store.set_column("cart_items", "quantity", pa.array(values, pa.float64()))
    return Target("cart_items")


def _empty(table: str) -> Callable[[Store], Target]:
    def mutate(store: Store) -> Target:
        store.tables[table] = store.tables[table].slice(0, 0)
        return Target(table)

    return mutate


def _unreadable(store: Store) -> Target:
    store.files["customers"] = (DATA / "not_parquet.parquet").read_bytes()
    return Target("customers")


def _truncated(store: Store) -> Target:
    import io

    buffer = io.BytesIO()
    pq.write_table(store.tables["orders"], buffer)
    store.files["orders"] = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    return Target("orders")


def _many_bad(share: float) -> Callable[[Store], Target]:
    def mutate(store: Store) -> Target:
        prices = store.tables["cart_items"].column("unit_price").to_pylist()
        bad = int(len(prices) * share)
        store.set_column("cart_items", "unit_price", pa.array([-1.0] * bad + prices[bad:], pa.float64()))
        return Target("cart_items", [r["cart_item_id"] for r in store.rows("cart_items")[:bad]])

    return mutate


def _naive_column(store: Store) -> Target:
    store.set_column("orders", "updated_at", store.tables["orders"].column("updated_at").cast(pa.timestamp("us")))
    return Target("orders")


def _berlin_column(store: Store) -> Target:
    column = store.tables["orders"].column("placed_at")
    store.set_column("orders", "placed_at", column.cast(pa.timestamp("ns", tz="Europe/Berlin")).combine_chunks())
    return Target("orders", [store.rows("orders")[0]["order_id"]])


def _decimal_prices(store: Store) -> Target:
    values = [None if v is None else Decimal(f"{v:.2f}") for v in store.tables["products"].column("price").to_pylist()]
    store.set_column("products", "price", pa.array(values, pa.decimal128(12, 2)))
    return Target("products", [store.rows("products")[0]["product_id"]])


def _dictionary_currency(store: Store) -> Target:
    column = store.tables["orders"].column("currency").combine_chunks().dictionary_encode()
    store.set_column("orders", "currency", column)
    return Target("orders", [store.rows("orders")[0]["order_id"]])


def _extra_column(store: Store) -> Target:
    table = store.tables["customers"]
    store.tables["customers"] = table.append_column("loyalty_tier", pa.array(["gold"] * table.num_rows))
    return Target("customers", [store.rows("customers")[0]["customer_id"]])


def _without_issues_column(store: Store) -> Target:
    store.drop_column("products", ISSUES_COLUMN)
    return Target("products", [store.rows("products")[0]["product_id"]])


def _first_value(table: str, column: str) -> Any:
    return _base_tables()[table].column(column)[0].as_py()


TABLE_CASES: list[Case] = [
    *_timestamp_cases(),
    Case("missing_column", "customers snapshot without the email column", TABLE,
         TableFails("expect_table_columns_to_match_set", "column email missing"),
         _drop("customers", "email"), tables=("customers",)),
    Case("missing_key_column", "orders snapshot without order_id", TABLE,
         TableFails("expect_table_columns_to_match_set", "the key column order_id missing"),
         _drop("orders", "order_id"), tables=("orders",)),
    Case("key_wrong_type", "order_id as text", TABLE,
         TableFails("expect_column_values_to_be_of_type(order_id)", "the key column order_id has the wrong type"),
         _strings("orders", "order_id"), tables=("orders",)),
    Case("column_wrong_type", "cart line quantity as text", TABLE,
         TableFails("expect_column_values_to_be_of_type(quantity)", "found string, expected int"),
         _strings("cart_items", "quantity"), tables=("cart_items",)),
    Case("fractional_int", "a fractional quantity in a float column where integers belong", TABLE,
         TableFails("expect_column_values_to_be_of_type(quantity)", "found double, expected int", with_keys=True),
         _fractional_quantity, tables=("cart_items",)),
    Case("empty_customers", "empty customers extract (a shop always has customers)", TABLE,
         TableFails("expect_table_row_count_to_be_between", "empty extract"),
         _empty("customers"), tables=("customers",)),
    Case("empty_products", "empty products extract", TABLE,
         TableFails("expect_table_row_count_to_be_between", "empty extract"),
         _empty("products"), tables=("products",)),
    Case("empty_carts", "no carts at all is a valid state", TABLE, Accepted(), _empty("carts"), tables=("carts",)),
    Case("not_parquet", "snapshot file that is CSV text", TABLE,
         TableFails("read_parquet", "not readable Parquet"), _unreadable, tables=("customers",)),
    Case("truncated_parquet", "snapshot cut off half-way (interrupted copy)", TABLE,
         TableFails("read_parquet", "not readable Parquet"), _truncated, tables=("orders",)),
    Case("too_many_bad_rows", "10% of cart lines with a negative price (max_bad_share 5%)", TABLE,
         TableFails("expect_column_values_to_be_between(unit_price)", "more than max_bad_share 5.0%", with_keys=True),
         _many_bad(0.10), tables=("cart_items",)),
    Case("bad_share_within_override", "the same 10% with max_bad_share 20% for cart_items", TABLE,
         Accepted(targets_quarantined=True), _many_bad(0.10), tables=("cart_items",),
         policy={"per_table": {"cart_items": {"max_bad_share": 0.2}}}),
    Case("naive_timestamp_column", "Parquet timestamps without time zone: never guessed to be UTC", TABLE,
         TableFails("__check__timestamp_updated_at", "more than max_bad_share", with_keys=True),
         _naive_column, tables=("orders",)),
    Case("timestamps_in_other_zone", "timestamp column in Europe/Berlin (ns): converted to UTC", TABLE,
         Accepted("placed_at", lambda: _first_value("orders", "placed_at")), _berlin_column, tables=("orders",)),
    Case("decimal_money", "prices as DECIMAL(12,2): read as float", TABLE,
         Accepted("price", lambda: float(_first_value("products", "price"))), _decimal_prices, tables=("products",)),
    Case("int32_quantity", "quantity as int32", TABLE,
         Accepted("quantity", lambda: _first_value("cart_items", "quantity")),
         _cast("cart_items", "quantity", pa.int32()), tables=("cart_items",)),
    Case("dictionary_strings", "dictionary-encoded currency column", TABLE,
         Accepted("currency", lambda: _first_value("orders", "currency")), _dictionary_currency, tables=("orders",)),
    Case("extra_column", "a column the canonical schema does not know: ignored", TABLE,
         Accepted("email", lambda: _first_value("customers", "email")), _extra_column, tables=("customers",)),
    Case("no_issues_column", "snapshot written without _extract_issues", TABLE,
         Accepted("sku", lambda: _first_value("products", "sku")), _without_issues_column, tables=("products",)),
]  # fmt: skip

CASES: list[Case] = ROW_CASES + TABLE_CASES
