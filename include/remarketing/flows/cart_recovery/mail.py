"""What a cart-recovery mail holds: the cart, its products and link back, help, an incentive at step 3.

``cart_recovery_context`` builds the template context; ``RecoveryRenderer`` is the send step's
render callback: conversion re-checked against the live store, then one personal mail per cart.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from remarketing.content.amounts import quantize_amount, to_decimal
from remarketing.content.context import (
    MAX_ITEMS_SHOWN,
    base_context,
    http_url,
    incentive_context,
    product_name,
    text_or_none,
)
from remarketing.content.errors import RenderError
from remarketing.flows.cart_recovery.audience import FLOW
from remarketing.markets import Market


def cart_recovery_context(
    *,
    step: int,
    market: Market,
    customer: Mapping[str, Any] | None,
    cart: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    products: Mapping[int, Mapping[str, Any]],
    cart_link: str,
    unsubscribe_url: str,
    incentive: Mapping[str, Any] | None = None,
    locale: str,
    feedback_url: str | None = None,
) -> dict[str, Any]:
    """Context for ``cart_recovery/step<step>``.

    customer: a customers row (first_name, last_name, time_zone; None or {} for guests); cart: a
    carts row (cart_id, currency); items: its cart_items rows (cart_item_id, product_id, quantity,
    unit_price, currency); products: product_id -> products row (names JSON, image_url);
    incentive: {code, percent, expires_at} (required for step 3); feedback_url: optional survey.
    Lines with quantity 0 are removed lines and not shown; everything else that does not fit
    raises RenderError naming the cart_id / cart_item_id / product_id.

    Returns keys: step, items (name, image_url, quantity, unit_price, line_total, product_id),
    items_hidden, item_count, cart_total, cart_id, cart_link, feedback_url, incentive, plus the
    base keys (shop_name, shop_url, privacy_url, support_email, support_phone, unsubscribe_url,
    first_name, last_name, currency, time_zone, market).
    """
    template = f"cart_recovery/step{step}"
    if step not in (1, 2, 3):
        raise RenderError(template, str(locale), f"unknown cart recovery step {step!r}")
    context = base_context(template, market=market, customer=customer, unsubscribe_url=unsubscribe_url, locale=locale)
    cart_id = cart.get("cart_id")
    currency = text_or_none(cart.get("currency")) or market.currency
    context["currency"] = currency
    lines, total = _cart_lines(template, locale, cart_id, currency, items, products)
    if not lines:
        raise RenderError(template, locale, f"cart_id {cart_id} has no items to show")
    incentive_ctx = incentive_context(template, locale, incentive)
    if step == 3 and incentive_ctx is None:
        raise RenderError(template, locale, f"cart_id {cart_id}: step 3 needs an incentive", variable="incentive")
    context.update(
        step=step,
        cart_id=cart_id,
        items=lines[:MAX_ITEMS_SHOWN],
        items_hidden=len(lines) - min(len(lines), MAX_ITEMS_SHOWN),
        item_count=sum(line["quantity"] for line in lines),
        cart_total=total,
        cart_link=http_url(template, locale, cart_link, "cart_link"),
        feedback_url=http_url(template, locale, feedback_url, "feedback_url", required=False),
        incentive=incentive_ctx,
    )
    return context


def _cart_lines(
    template: str,
    locale: str,
    cart_id: Any,
    currency: str,
    items: Sequence[Mapping[str, Any]],
    products: Mapping[int, Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], Decimal]:
    """The lines the mail shows, in cart order, and their total: what the customer sees adds up."""
    lines = []
    total = Decimal(0)
    for item in items:
        line = _cart_line(template, locale, cart_id, currency, item, products)
        if line is None:
            continue
        total += line["line_total"]
        lines.append(line)
    return lines, total


def _cart_line(
    template: str,
    locale: str,
    cart_id: Any,
    currency: str,
    item: Mapping[str, Any],
    products: Mapping[int, Mapping[str, Any]],
) -> dict[str, Any] | None:
    """One cart_items row as the mail shows it, None for a removed line (quantity 0); RenderError names the ids."""
    item_id = item.get("cart_item_id")
    if item.get("cart_id") is not None and item.get("cart_id") != cart_id:
        raise RenderError(template, locale, f"cart_item_id {item_id} belongs to another cart than cart_id {cart_id}")
    quantity = item.get("quantity")
    if isinstance(quantity, float) and quantity.is_integer():
        quantity = int(quantity)
    if isinstance(quantity, bool) or not isinstance(quantity, numbers.Integral) or quantity < 0:
        raise RenderError(template, locale, f"cart_item_id {item_id} has an invalid quantity")
    quantity = int(quantity)
    if quantity == 0:
        return None
    item_currency = text_or_none(item.get("currency")) or currency
    if item_currency != currency:
        raise RenderError(template, locale, f"cart_item_id {item_id} is in {item_currency}, the cart in {currency}")
    pid = item.get("product_id")
    product = products.get(pid) if pid is not None else None
    if product is None:
        raise RenderError(template, locale, f"cart_item_id {item_id}: product_id {pid} not found")
    name = product_name(product.get("names"), locale)
    if name is None:
        raise RenderError(template, locale, f"product_id {pid} has no usable name in 'names'")
    try:
        unit_price = to_decimal(item.get("unit_price"), "unit_price")
    except ValueError:
        raise RenderError(template, locale, f"cart_item_id {item_id} has no valid unit_price") from None
    if unit_price < 0:
        raise RenderError(template, locale, f"cart_item_id {item_id} has a negative unit_price")
    unit_price = quantize_amount(template, locale, unit_price, currency)
    line_total = unit_price * quantity
    image = http_url(template, locale, product.get("image_url"), f"product_id {pid} image_url", required=False)
    return {
        "product_id": pid,
        "name": name,
        "image_url": image,
        "quantity": quantity,
        "unit_price": unit_price,
        "line_total": line_total,
    }


class RecoveryRenderer:
    """The send step's render callback: live re-check, then one personal mail per cart."""

    def __init__(self, *, market, job: dict, secret: bytes, now, store_conn=None):
        import pandas as pd
        import pyarrow.parquet as pq
        from airflow.sdk import ObjectStoragePath

        from remarketing.content.renderer import MailRenderer
        from remarketing.flows.cart_recovery.config import load_flows

        self.market = market
        self.config = load_flows().cart_recovery
        self.secret = secret
        self.now = now
        self.store_conn = store_conn
        self.renderer = MailRenderer()

        def read(table):
            with ObjectStoragePath(job["clean"][table]).open("rb") as handle:
                return pq.read_table(handle).to_pandas()

        audience_carts = set(pd.read_parquet(job["audience_path"], columns=["cart_id"])["cart_id"].astype(int))
        items = read("cart_items")
        self.items = items[items["cart_id"].isin(audience_carts)].groupby("cart_id")
        products = read("products")
        self.products = {int(p["product_id"]): p for p in products.to_dict("records")}
        customers = read("customers")
        self.customers = customers.set_index("customer_id", drop=False)

    def __call__(self, chunk):
        from remarketing.content.cart_links import signed_cart_link
        from remarketing.content.errors import RenderError
        from remarketing.delivery.compose import marketing_message, marketing_recipient, unsubscribe_link
        from remarketing.delivery.send_step import RenderFailure
        from remarketing.flows.cart_recovery.audience import recheck_converted
        from remarketing.flows.cart_recovery.mail import cart_recovery_context

        market = self.market
        converted: set[int] = set()
        if self.store_conn is not None:
            due = chunk.assign(owner_id=chunk["customer_id"].astype("float64"))[
                ["cart_id", "owner_id", "last_change_at"]
            ]
            converted = recheck_converted(self.store_conn, due)
        for row in chunk.to_dict("records"):
            key = row["ledger_key"]
            cart_id = int(row["cart_id"])
            if cart_id in converted:
                yield RenderFailure((key,), f"cart {cart_id} converted since the scan", outcome="converted")
                continue
            step = self.config.step(int(row["step"]))
            unsubscribe = unsubscribe_link(market, row["customer_ref"], self.secret)
            link = signed_cart_link(
                market.storefront.cart_url,
                cart_id,
                step=step.step,
                market=market.code,
                secret=self.secret,
                expires_at=self.now + timedelta(days=self.config.max_cart_age_days),
            )
            incentive = None
            if step.incentive is not None:
                incentive = {
                    "code": step.incentive.code,
                    "percent": step.incentive.percent,
                    "expires_at": self.now + timedelta(days=step.incentive.valid_days),
                }
            customer = None
            if row["customer_id"] is not None and row["customer_id"] == row["customer_id"]:
                customer = self.customers.loc[int(row["customer_id"])].to_dict()
            try:
                items = self.items.get_group(cart_id).to_dict("records")
                context = cart_recovery_context(
                    step=step.step,
                    market=market,
                    customer=customer,
                    cart={"cart_id": cart_id, "currency": row["currency"]},
                    items=items,
                    products=self.products,
                    cart_link=link,
                    unsubscribe_url=unsubscribe,
                    incentive=incentive,
                    locale=row["locale"],
                )
                mail = self.renderer.render(step.template, row["locale"], context)
            except (RenderError, KeyError) as exc:
                yield RenderFailure((key,), f"render failed for cart {cart_id}: {exc}")
                continue
            recipient = marketing_recipient(row, unsubscribe=unsubscribe, name=(customer or {}).get("first_name"))
            yield marketing_message(
                market,
                mail,
                (recipient,),
                categories=(f"template:{step.template.replace('/', '-')}",),
                custom_args={"flow": FLOW, "market": market.code, "step": str(step.step)},
            )
