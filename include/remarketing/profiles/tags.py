"""Profile tags: favourite categories, price sensitivity and the preferred local purchase hour.

Why apart from the stages: tags say what and when a customer buys, and need the order lines,
products and time zones that the stages never read. Definitions: remarketing.profiles.lifecycle.
"""

from __future__ import annotations

from datetime import UTC

import numpy as np
import pandas as pd
import pyarrow as pa

from remarketing.markets import MarketConfig
from remarketing.profiles.clv import PurchaseHistory
from remarketing.profiles.frames import examples, int_keys, locate, require_columns, unique_or_fail
from remarketing.profiles.inputs import Customers, Orders, ProfileInputError, numbers


def customer_tags(
    customers: pd.DataFrame,
    order_items: pd.DataFrame,
    products: pd.DataFrame,
    cust: Customers,
    ords: Orders,
    history: PurchaseHistory,
    markets: MarketConfig,
) -> tuple[pd.api.extensions.ExtensionArray, np.ndarray, np.ndarray]:
    """Per sorted customer: favourite categories (Arrow list), discounted valid orders, preferred hour (-1: none)."""
    n = len(cust.ids)
    item_customer, item_category, item_spend, categories = _category_spend(order_items, products, ords)
    favourites = _favourites(item_customer, item_category, item_spend, categories, n)
    discounted = np.bincount(ords.customer[ords.valid], weights=ords.discounted[ords.valid], minlength=n)
    zone, zone_names = _zones(customers, cust, markets)
    hour = _preferred_hour(history, zone, zone_names, n)
    return favourites, discounted, hour


def _category_spend(
    order_items: pd.DataFrame, products: pd.DataFrame, orders: Orders
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per order line: customer position, category code (len(names) when uncategorised) and spend
    (quantity x unit price - line discount; 0 for lines of excluded orders); and the sorted category names."""
    require_columns(order_items, "order_items", ["order_item_id", "order_id", "product_id", "quantity", "unit_price"])
    require_columns(products, "products", ["product_id", "category"])
    item_ids = order_items["order_item_id"].to_numpy()
    order_pos = locate(orders.ids, int_keys(order_items, "order_items", "order_id", "order_item_id"))
    if (order_pos < 0).any():
        raise ProfileInputError(f"order_items reference unknown orders; order_item_id: {examples(item_ids[order_pos < 0])}")  # fmt: skip
    product_ids = int_keys(products, "products", "product_id")
    unique_or_fail(product_ids, "products", "product_id")
    is_product = order_items["product_id"].notna().to_numpy(dtype=bool)  # else postage, fees, adjustments
    product_pos = np.full(len(order_items), -1, dtype=np.int64)
    product_pos[is_product] = locate(product_ids, order_items["product_id"][is_product].to_numpy(dtype=np.int64))
    if (is_product & (product_pos < 0)).any():
        raise ProfileInputError(
            f"order_items reference unknown products; order_item_id: {examples(item_ids[is_product & (product_pos < 0)])}"
        )
    counted = orders.valid[order_pos] & is_product
    spend = numbers(order_items, "quantity") * numbers(order_items, "unit_price")
    if "discount_amount" in order_items.columns:
        spend = spend - numbers(order_items, "discount_amount", missing=0.0)
    bad = counted & ~np.isfinite(spend)
    if bad.any():
        raise ProfileInputError(
            f"order_items.quantity or unit_price is null or not finite; order_item_id: {examples(item_ids[bad])}"
        )
    spend = np.where(counted, spend, 0.0)
    category_codes, names = pd.factorize(products["category"], sort=True)
    category_codes = np.where(category_codes < 0, len(names), category_codes)
    keep = counted  # lines of purchases by profiled customers, products only
    return orders.customer[order_pos][keep], category_codes[product_pos[keep]], spend[keep], [str(n) for n in names]


def _favourites(customer: np.ndarray, category: np.ndarray, spend: np.ndarray, names: list[str], n: int):
    """Top three categories by positive spend per customer (ties by name) as an Arrow list column."""
    n_cat = len(names)
    width = n_cat + 1  # the last column collects uncategorised lines and is never chosen
    if n * width <= 1 << 26:
        # Dense (customers x categories) totals, then three argmax passes: argmax takes the first
        # maximum, and categories are numbered in name order, so ties go to the earlier name.
        totals = np.bincount(customer * width + category, weights=spend, minlength=n * width).reshape(n, width)
        totals[:, n_cat] = 0.0  # uncategorised: never a favourite (zeroed, not sliced: argmax is slow on views)
        rows = np.arange(n)
        top = np.full((n, 3), -1, dtype=np.int64)
        for rank in range(min(3, n_cat)):
            best = totals.argmax(axis=1)
            found = totals[rows, best] > 0
            top[found, rank] = best[found]
            totals[rows, best] = 0.0
        counts = (top >= 0).sum(axis=1)
        chosen = top[top >= 0]  # row-major: each customer's picks in rank order
    else:  # many categories: sort the (customer, category) pairs instead
        has = (category < n_cat) & (spend > 0)
        pairs, inverse = np.unique(customer[has] * width + category[has], return_inverse=True)
        pair_spend = np.bincount(inverse.ravel(), weights=spend[has])
        positive = pair_spend > 0
        pair_customer, pair_category, pair_spend = (
            pairs[positive] // width,
            pairs[positive] % width,
            pair_spend[positive],
        )
        order = np.lexsort((pair_category, -pair_spend, pair_customer))
        pair_customer, pair_category = pair_customer[order], pair_category[order]
        starts = np.ones(len(pair_customer), dtype=bool)
        starts[1:] = pair_customer[1:] != pair_customer[:-1]
        group_start = np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))
        keep = (np.arange(len(starts)) - group_start) < 3
        counts = np.bincount(pair_customer[keep], minlength=n)
        chosen = pair_category[keep]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = pa.array(names, pa.string()).take(pa.array(chosen, pa.int64()))
    return pd.arrays.ArrowExtensionArray(pa.ListArray.from_arrays(pa.array(offsets), values))


def _zones(customers: pd.DataFrame, cust: Customers, markets: MarketConfig) -> tuple[np.ndarray, list[str]]:
    """Resolved IANA zone (code, names) per sorted customer; resolution runs once per distinct input combination."""
    from remarketing.timing.send_windows import resolve_time_zones

    columns = {"market": np.asarray(cust.codes, dtype=object)[cust.market]}
    key = cust.market.copy()
    for name in ("time_zone", "country", "region"):
        if name in customers.columns:
            codes, uniques = pd.factorize(customers[name])
            codes = codes[cust.rows]
            key = key * (len(uniques) + 1) + (codes + 1)
            labels = np.asarray([*uniques, None], dtype=object)
            columns[name] = labels[np.where(codes >= 0, codes, len(uniques))]
        else:
            columns[name] = np.full(len(cust.ids), None, dtype=object)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    distinct = pd.DataFrame({name: values[first] for name, values in columns.items()})
    resolved = resolve_time_zones(distinct, markets)["time_zone"].to_numpy(dtype=object)
    zone_codes, zone_names = pd.factorize(resolved)
    return zone_codes[inverse.ravel()], [str(z) for z in zone_names]


def _preferred_hour(history, zone: np.ndarray, zone_names: list[str], n: int) -> np.ndarray:
    """Mode of the local order hour per customer (-1 without orders; ties to the earlier hour)."""
    customer, t = history.order_customer, history.order_time
    hours = np.empty(len(t), dtype=np.int64)
    order_zone = zone[customer]
    for code, name in enumerate(zone_names):
        sel = order_zone == code
        if sel.any():
            local = pd.DatetimeIndex(t[sel].astype("datetime64[us]")).tz_localize(UTC).tz_convert(name)
            hours[sel] = local.hour
    if not len(t):
        return np.full(n, -1, dtype=np.int64)
    counts = np.bincount(customer * 24 + hours, minlength=n * 24).reshape(n, 24)
    best = counts.argmax(axis=1)
    return np.where(history.purchase_days > 0, best, -1)
