"""What a valid store row is: the vocabulary of checks and the GX suites of each table (as code).

Why derived columns: Great Expectations has no built-in for "a valid email address", "an IANA
zone", "the currency of this row's market" or "the parent cart exists and is clean". Those are
computed beside this module, vectorised in pandas, into ``__check__*`` / ``__ref__*`` columns
holding ``ok`` or a reason; a GX ``expect_column_values_to_be_in_set(value_set=["ok"])`` then
asserts them, so the GX results stay the single record of what failed and why. Reasons never
contain personal data (no emails or names; only column names, codes and keys).

A check either quarantines its failing rows or only notes them (the value is kept or nulled and
the note is reported): an invalid customer ``time_zone`` is nulled (send windows fall back to
region, country or market zone), HTML in product names is kept (templates autoescape) and NUL
bytes are stripped from text. Among the quarantining ones: timestamps before the policy's
``min_timestamp`` (placeholders such as 1970-01-01 or year 1) and product URLs that are not
https (``javascript:``, ``data:``, plain http), which a mail would otherwise link to.

The steps live beside this module: conform (types, UTC timestamps, NUL-free text), then
column_checks (a row's own values) and references (its market, cart, order and parents), whose
derived columns derived adds to the frame; gx_runtime runs the suites with Great Expectations.

Plain Python; Great Expectations is not imported here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from remarketing.store.extract import ISSUES_COLUMN
from remarketing.store.schema import CANONICAL_TABLES

ROW = "__row"  # position of the row in the snapshot: identifies rows even when keys are null or duplicated
OK = "ok"
QUARANTINE = "quarantine"
NOTE = "note"

# Parents before children, so a child of a quarantined parent is quarantined too.
TABLE_ORDER = ("customers", "products", "orders", "order_items", "carts", "cart_items")


@dataclass(frozen=True)
class Reference:
    column: str
    parent: str
    noun: str  # the parent row in words: "cart"


REFERENCES: dict[str, tuple[Reference, ...]] = {
    "orders": (Reference("customer_id", "customers", "customer"),),
    "order_items": (Reference("order_id", "orders", "order"), Reference("product_id", "products", "product")),
    "carts": (Reference("customer_id", "customers", "customer"),),  # guests (null) are not checked
    "cart_items": (Reference("cart_id", "carts", "cart"), Reference("product_id", "products", "product")),
}

# Columns a row is useless without (besides its key). Everything else may be null.
# A market may be derived (scope), an order may be a guest's (no customer_id), an order line may
# be no product (postage, fees, adjustments).
REQUIRED: dict[str, tuple[str, ...]] = {
    "customers": ("updated_at",),
    "products": ("currency", "updated_at"),
    "carts": ("currency", "status", "updated_at"),
    "cart_items": ("cart_id", "product_id", "quantity", "unit_price", "currency", "updated_at"),
    "orders": ("currency", "status", "total_amount", "placed_at", "updated_at"),
    "order_items": ("order_id", "quantity", "unit_price", "updated_at"),
}
CREDIT_NOTE = "credit_note"  # money back: a negative total, negative line quantities
STATUSES = {
    "carts": ("open", "ordered"),
    "orders": ("placed", "shipped", "delivered", "cancelled", "refunded", CREDIT_NOTE),
}
AMOUNTS = {
    "products": ("price",),
    "cart_items": ("unit_price",),
    "orders": ("discount_amount",),
    "order_items": ("unit_price", "discount_amount"),
}
SIGNED_AMOUNTS = {"orders": ("total_amount",)}  # negative on a credit note
MONEY = {t: AMOUNTS.get(t, ()) + SIGNED_AMOUNTS.get(t, ()) for t in (*AMOUNTS, *SIGNED_AMOUNTS)}
QUANTITIES = {"cart_items": ("quantity",), "order_items": ("quantity",)}
SIGNED_QUANTITIES = ("order_items",)  # negative on a credit note
EMAILS = {"customers": "email", "carts": "email"}  # carts: the guest checkout address
MARKET_TABLES = ("customers", "carts", "orders")
# Links a mail shows: https only (null allowed). javascript:, data: or plain http never reach a template.
URLS = {"products": ("image_url", "product_url")}
# Timestamps before this are placeholders (1970-01-01, 0001-01-01), not events of a shop.
MIN_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
CURRENCY_TABLES = ("products", "carts", "cart_items", "orders")


@dataclass(frozen=True)
class Check:
    """One GX expectation and how its failing rows are treated."""

    name: str  # stable id, e.g. "email", "not_null:market"
    expectation: str  # GX expectation class, e.g. "ExpectColumnValuesToBeInSet"
    kwargs: Mapping[str, Any]
    column: str | None  # the canonical column it is about; None: named by the failing value (extract issues)
    action: str = QUARANTINE  # or NOTE: reported, row kept
    reason: str | None = None  # fixed reason; None: the failing (derived) value is the reason

    @property
    def gx_column(self) -> str | None:
        return self.kwargs.get("column")

    @property
    def label(self) -> str:
        """The expectation as GX names it, with its column: expect_column_values_to_be_in_set(__check__email)."""
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", self.expectation).lower()
        return f"{snake}({self.gx_column})" if self.gx_column else snake


# --------------------------------------------------------------------------- the suites (as code)


def schema_checks(table: str, *, expect_rows: bool) -> list[Check]:
    """Table-level expectations GX runs on the snapshot as read: every column there, rows if expected."""
    spec = CANONICAL_TABLES[table]
    checks = [
        Check(
            "columns",
            "ExpectTableColumnsToMatchSet",
            {"column_set": spec.required_names, "exact_match": False},  # extra columns are ignored
            None,
            reason="columns missing",
        )
    ]
    if expect_rows:
        checks.append(Check("rows", "ExpectTableRowCountToBeBetween", {"min_value": 1}, None, reason="empty extract"))
    return checks


def row_checks(
    table: str,
    *,
    markets,
    parents: Iterable[str],
    max_amount: float,
    max_quantity: int,
) -> list[Check]:
    """The row-level suite of one table, in the order reasons are listed."""
    spec = CANONICAL_TABLES[table]
    key = spec.key
    parents = set(parents)
    checks = [
        Check("extract_issues", "ExpectColumnValuesToBeNull", {"column": ISSUES_COLUMN}, None),
        Check(f"not_null:{key}", "ExpectColumnValuesToNotBeNull", {"column": key}, key, reason=f"{key} is missing"),
        Check(f"unique:{key}", "ExpectColumnValuesToBeUnique", {"column": key}, key, reason=f"duplicate {key}"),
    ]
    for name in REQUIRED[table]:
        checks.append(
            Check(
                f"not_null:{name}", "ExpectColumnValuesToNotBeNull", {"column": name}, name, reason=f"{name} is missing"
            )
        )
    for name, kind in spec.columns.items():
        if kind == "timestamp":
            checks.append(_derived(f"timestamp:{name}", f"__check__timestamp_{name}", name))
    checks.append(_derived("length", "__check__length", None))
    if table in MARKET_TABLES:
        checks.append(_in_set("market", sorted(m.code for m in markets), "market is not a configured market"))
    if table in ("customers", "orders"):
        checks.append(_derived("country", "__check__country", "country"))
    if table in CURRENCY_TABLES:
        checks.append(_derived("currency", "__check__currency", "currency"))
    if table == "products":
        shop = sorted({m.currency for m in markets})
        checks.append(
            _in_set("currency", shop, "currency is not the currency of any configured market", name="currency:shop")
        )
    if table in STATUSES:
        allowed = STATUSES[table]
        checks.append(_in_set("status", list(allowed), f"status is not one of {', '.join(allowed)}"))
    if table in EMAILS:
        checks.append(_derived("email", f"__check__{EMAILS[table]}", EMAILS[table]))
    if table == "customers":
        checks.append(_derived("time_zone", "__check__time_zone", "time_zone", action=NOTE))
    if table in ("carts", "orders"):
        checks.append(_derived("currency:market", "__check__currency_market", "currency"))
    if table == "cart_items":
        checks.append(_derived("currency:cart", "__check__currency_cart", "currency"))
    if table == "carts" and "orders" in parents:
        checks.append(_derived("currency:order", "__check__currency_order", "currency"))
    for name in MONEY.get(table, ()):
        checks.append(_derived(f"number:{name}", f"__check__number_{name}", name))
    for name in AMOUNTS.get(table, ()):
        checks.append(_between(name, 0, max_amount))
    for name in SIGNED_AMOUNTS.get(table, ()):
        checks.append(_between(name, -max_amount, max_amount))
    if table == "orders":
        checks.append(_derived("credit_note", "__check__credit_note", "total_amount"))
    for name in QUANTITIES.get(table, ()):
        low = -max_quantity if table in SIGNED_QUANTITIES else 1
        checks.append(_between(name, low, max_quantity))
    if table in SIGNED_QUANTITIES:
        checks.append(_derived("quantity:sign", "__check__quantity_sign", "quantity"))
    if table == "products":
        checks.append(_derived("names", "__check__names", "names"))
        checks.append(_derived("names:markup", "__check__names_markup", "names", action=NOTE))
    for name in URLS.get(table, ()):
        checks.append(_derived(f"url:{name}", f"__check__{name}", name))
    for ref in REFERENCES.get(table, ()):
        if ref.parent in parents:
            checks.append(_derived(f"reference:{ref.column}", f"__ref__{ref.column}", ref.column))
    checks.append(_derived("nul", "__check__nul", None, action=NOTE))
    return checks


def _derived(name: str, derived_column: str, column: str | None, action: str = QUARANTINE) -> Check:
    return Check(name, "ExpectColumnValuesToBeInSet", {"column": derived_column, "value_set": [OK]}, column, action)


def _in_set(column: str, values: list[str], reason: str, name: str | None = None) -> Check:
    return Check(
        name or f"in_set:{column}",
        "ExpectColumnValuesToBeInSet",
        {"column": column, "value_set": values},
        column,
        reason=reason,
    )


def _between(column: str, low: float, high: float) -> Check:
    return Check(
        f"between:{column}",
        "ExpectColumnValuesToBeBetween",
        {"column": column, "min_value": low, "max_value": high},
        column,
        reason=f"{column} not within [{low:g}, {high:g}]",
    )
