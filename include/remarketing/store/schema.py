"""The canonical store schema: six tables every shop's data is mapped onto.

One definition serves three uses: the DDL the demo generator writes (SQLAlchemy Core, so the
same tables land in SQLite, PostgreSQL and MariaDB), the columns the extraction SQL in
include/sql/store/ must return, and the Arrow types of the Parquet snapshot. Timestamps are
UTC; money is a decimal in the store and float64 in snapshots; ``updated_at`` drives the
incremental watermark and is indexed.

Columns marked ``OPTIONAL`` may be left out of a shop's mapping SQL: the extract reads them as
null. A market column is optional because the project derives the market from the country
(``countries:`` in include/markets.yaml); a guest's order carries its own email and country; a
credit note may name the order it refunds.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

# DateTime(timezone=True) -> timestamptz on PostgreSQL; naive DATETIME(6) on MariaDB and text on
# SQLite, where values are written as UTC. Fractional seconds kept everywhere (mysql fsp=6).
Timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Money = sa.Numeric(12, 2)
OPTIONAL = {"optional": True}  # Column.info: the mapping SQL may leave the column out

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(320)),
    sa.Column("first_name", sa.String(200)),
    sa.Column("last_name", sa.String(200)),
    sa.Column("locale", sa.String(16)),
    sa.Column("country", sa.String(64)),  # an ISO 3166 code or a country name ("United Kingdom")
    sa.Column("region", sa.String(16)),
    sa.Column("market", sa.String(2), info=OPTIONAL),  # null: the market serving the country
    sa.Column("time_zone", sa.String(64)),
    sa.Column("marketing_consent", sa.Boolean),
    sa.Column("registered_at", Timestamp),
    sa.Column("updated_at", Timestamp, nullable=False, index=True),
)

products = sa.Table(
    "products",
    metadata,
    sa.Column("product_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("sku", sa.String(64)),
    sa.Column("category", sa.String(64)),
    # JSON object locale -> display name, e.g. {"en": "Linen shirt", "de": "Leinenhemd"}.
    sa.Column("names", sa.Text),
    sa.Column("price", Money),
    sa.Column("currency", sa.String(3)),
    sa.Column("image_url", sa.String(1000)),
    sa.Column("product_url", sa.String(1000)),
    sa.Column("active", sa.Boolean),
    sa.Column("updated_at", Timestamp, nullable=False, index=True),
)

carts = sa.Table(
    "carts",
    metadata,
    sa.Column("cart_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.BigInteger),  # null for guests
    sa.Column("email", sa.String(320)),  # guest checkout email; null when not given
    sa.Column("market", sa.String(2), info=OPTIONAL),  # null: the customer's market
    sa.Column("currency", sa.String(3)),
    sa.Column("status", sa.String(16)),  # open | ordered
    sa.Column("order_id", sa.BigInteger),
    sa.Column("created_at", Timestamp),
    sa.Column("updated_at", Timestamp, nullable=False, index=True),
)

cart_items = sa.Table(
    "cart_items",
    metadata,
    sa.Column("cart_item_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("cart_id", sa.BigInteger, index=True),
    sa.Column("product_id", sa.BigInteger),
    sa.Column("quantity", sa.Integer),
    sa.Column("unit_price", Money),
    sa.Column("currency", sa.String(3)),
    sa.Column("added_at", Timestamp),
    sa.Column("updated_at", Timestamp, nullable=False, index=True),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.BigInteger, index=True),  # null for a guest checkout
    sa.Column("market", sa.String(2), info=OPTIONAL),  # null: by the country, else the customer's market
    sa.Column("currency", sa.String(3)),
    # placed | shipped | delivered | cancelled | refunded | credit_note (money back: negative total)
    sa.Column("status", sa.String(16)),
    sa.Column("total_amount", Money),
    sa.Column("discount_amount", Money),
    sa.Column("coupon_code", sa.String(64)),
    sa.Column("placed_at", Timestamp),
    sa.Column("updated_at", Timestamp, nullable=False, index=True),
    sa.Column("email", sa.String(320), info=OPTIONAL),  # a guest's address
    sa.Column("country", sa.String(64), info=OPTIONAL),  # code or name; a guest's market comes from it
    sa.Column("original_order_id", sa.BigInteger, info=OPTIONAL),  # the order a credit note refunds
)

order_items = sa.Table(
    "order_items",
    metadata,
    sa.Column("order_item_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("order_id", sa.BigInteger, index=True),
    sa.Column("product_id", sa.BigInteger),  # null: not a product (postage, fees, adjustments)
    sa.Column("quantity", sa.Integer),  # negative on a credit note
    sa.Column("unit_price", Money),
    sa.Column("discount_amount", Money),
    sa.Column("updated_at", Timestamp, nullable=False, index=True),
)


for _table in metadata.tables.values():
    _table.dialect_kwargs["mysql_charset"] = "utf8mb4"  # names in Japanese, Chinese, emoji


@dataclass(frozen=True)
class TableSpec:
    """What extraction needs to know about one canonical table."""

    name: str
    key: str
    # column -> logical type: int, float, str, bool, timestamp
    columns: dict[str, str]
    optional: frozenset[str] = frozenset()  # columns the mapping SQL may leave out (read as null)

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    @property
    def required_names(self) -> list[str]:
        return [name for name in self.columns if name not in self.optional]


def _logical(column: sa.Column) -> str:
    if isinstance(column.type, sa.DateTime):
        return "timestamp"
    if isinstance(column.type, sa.Boolean):
        return "bool"
    if isinstance(column.type, sa.Integer):  # BigInteger is a subclass
        return "int"
    if isinstance(column.type, sa.Numeric):
        return "float"
    return "str"


CANONICAL_TABLES: dict[str, TableSpec] = {
    table.name: TableSpec(
        name=table.name,
        key=next(iter(table.primary_key.columns)).name,
        columns={column.name: _logical(column) for column in table.columns},
        optional=frozenset(column.name for column in table.columns if column.info.get("optional")),
    )
    for table in (customers, products, carts, cart_items, orders, order_items)
}
