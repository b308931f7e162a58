"""Abandoned carts: which cart is due for which recovery step, and which orders it won back.

A cart is *abandoned* when it is open, holds items, belongs to someone we can reach (the
customer's address, or the address a guest left at checkout), has been idle past the step's
delay, and no order was placed since its last change. "No order" is matched by customer and
items, not by cart id: a customer who bought the same products through another cart (another
device, a re-created cart) has converted, and is not reminded.

Only a customer's most recent open cart is considered: two reminders for two stale carts of
the same person read like spam. Every cart looked at ends with a reason (`due` or why not),
so a data engineer can see why a cart got nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from remarketing.flows.cart_recovery.config import CartRecoveryConfig

FLOW = "cart_recovery"
SUBJECT_KIND = "cart"
VARIANT = "v1"
# Orders in these states mean the customer bought; a cancelled attempt does not.
BUYING_STATUSES = ("placed", "shipped", "delivered", "refunded")
POSSIBLY_SENT = ("claimed", "sending", "accepted", "unknown")


@dataclass(frozen=True)
class CartScan:
    """The result of one scan: carts due (one row per cart, with its step) and every cart's reason."""

    due: pd.DataFrame
    reasons: pd.Series  # cart_id -> reason, for every cart scanned

    def reason_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.reasons.value_counts().sort_index().items()}


def _utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True)


def cart_values(cart_items: pd.DataFrame) -> pd.DataFrame:
    """Per cart: value (sum of quantity x unit price over lines with a positive quantity), lines, last item change."""
    items = cart_items[cart_items["quantity"].fillna(0) > 0]
    line_value = items["quantity"].astype("float64") * items["unit_price"].astype("float64")
    changed = _utc(items["updated_at"])
    if "added_at" in items:
        changed = changed.where(changed >= _utc(items["added_at"]).fillna(changed), _utc(items["added_at"]))
    grouped = pd.DataFrame({"cart_id": items["cart_id"], "value": line_value, "changed": changed}).groupby(
        "cart_id", sort=False
    )
    return pd.DataFrame(
        {
            "cart_value": grouped["value"].sum().round(2),
            "lines": grouped.size(),
            "items_changed_at": grouped["changed"].max(),
        }
    )


def _converted(
    candidates: pd.DataFrame, cart_items: pd.DataFrame, orders: pd.DataFrame, order_items: pd.DataFrame
) -> pd.Series:
    """True where the cart's owner placed an order since the cart's last change holding one of its products."""
    buying = orders[orders["status"].isin(BUYING_STATUSES) & orders["customer_id"].notna()]
    buying = buying[["order_id", "customer_id", "placed_at"]].assign(placed_at=lambda f: _utc(f["placed_at"]))
    owned = candidates[candidates["owner_id"].notna()][["cart_id", "owner_id", "last_change_at"]]
    if owned.empty or buying.empty:
        return pd.Series(False, index=candidates.index)
    since = owned.merge(buying, left_on="owner_id", right_on="customer_id")
    since = since[since["placed_at"] >= since["last_change_at"]]
    if since.empty:
        return pd.Series(False, index=candidates.index)
    lines_bought = since[["cart_id", "order_id"]].merge(order_items[["order_id", "product_id"]], on="order_id")
    in_cart = cart_items[cart_items["quantity"].fillna(0) > 0][["cart_id", "product_id"]].drop_duplicates()
    matched = lines_bought.merge(in_cart, on=["cart_id", "product_id"])["cart_id"].unique()
    return candidates["cart_id"].isin(matched)


def scan_carts(
    frames: Mapping[str, pd.DataFrame],
    *,
    now: datetime,
    config: CartRecoveryConfig,
    history: pd.DataFrame | None = None,
) -> CartScan:
    """Find the carts due for a recovery step now.

    ``frames``: clean carts, cart_items, customers, orders, order_items. ``history``: this flow's
    ledger rows (cart_id, step, status, sent_at) - a step counts as sent when it may have gone
    out (claimed, sending, accepted or unknown).
    """
    carts = frames["carts"].copy()
    customers = frames["customers"]
    reasons = pd.Series("due", index=carts["cart_id"].to_numpy(), dtype=object, name="reason")

    def mark(mask: pd.Series, reason: str) -> None:
        ids = carts.loc[mask, "cart_id"].to_numpy()
        undecided = reasons.loc[ids] == "due"
        reasons.loc[ids[undecided.to_numpy()]] = reason

    carts = _with_value_and_owner(carts, frames["cart_items"], customers)

    mark(carts["market"].isna(), "out_of_scope")  # no market serves its country: never mailed
    mark(carts["status"] != "open", "not_open")
    mark(carts["lines"] == 0, "empty")
    mark(carts["contact_email"].isna(), "unreachable")
    age = pd.Timestamp(now) - carts["last_change_at"]
    mark(age > pd.Timedelta(days=config.max_cart_age_days), "too_old")
    # Only a person's most recent open cart with items.
    person = carts["owner_id"].astype("string").fillna("email:" + carts["contact_email"].fillna("").str.lower())
    live = carts["status"].eq("open") & carts["lines"].gt(0)
    newest = carts[live].sort_values("last_change_at").groupby(person[live], sort=False)["cart_id"].transform("last")
    mark(live & carts["cart_id"].ne(newest.reindex(carts.index)), "superseded")
    mark(_converted(carts, frames["cart_items"], frames["orders"], frames["order_items"]), "converted")

    _sequence_position(carts, history)
    mark(carts["step"] > len(config.steps), "sequence_done")
    carts["earliest_at"] = _due_times(carts, config, mark)
    mark(carts["earliest_at"] > pd.Timestamp(now), "not_idle_yet")

    due = carts[reasons.loc[carts["cart_id"].to_numpy()].to_numpy() == "due"]
    columns = [
        "cart_id",
        "customer_id",
        "owner_id",
        "contact_email",
        "market",
        "currency",
        "cart_value",
        "lines",
        "last_change_at",
        "step",
        "earliest_at",
    ]
    return CartScan(due=due[columns].reset_index(drop=True), reasons=reasons)


def _with_value_and_owner(carts: pd.DataFrame, cart_items: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    """Value, lines and last change of each cart; who owns it and where to write.

    The owner is the cart's customer, or the registered customer a guest address belongs to.
    """
    carts = carts.join(cart_values(cart_items), on="cart_id")
    carts["cart_value"] = carts["cart_value"].fillna(0.0)
    carts["lines"] = carts["lines"].fillna(0).astype("int64")
    updated = _utc(carts["updated_at"])
    changed = _utc(carts["items_changed_at"])
    carts["last_change_at"] = updated.where(changed.isna() | (updated >= changed), changed)
    by_email = (
        customers[customers["email"].notna()]
        .assign(_email=lambda f: f["email"].str.strip().str.lower())
        .drop_duplicates("_email")
        .set_index("_email")["customer_id"]
    )
    guest_email = carts["email"].where(carts["email"].notna(), None)
    guest_owner = guest_email.str.strip().str.lower().map(by_email)
    carts["owner_id"] = carts["customer_id"].where(carts["customer_id"].notna(), guest_owner)
    customer_email = carts["customer_id"].map(customers.set_index("customer_id")["email"])
    carts["contact_email"] = customer_email.where(customer_email.notna(), guest_email)
    return carts


def _sequence_position(carts: pd.DataFrame, history: pd.DataFrame | None) -> None:
    """Steps already (possibly) sent per cart, from the ledger: sets sent_steps, last_sent_at and the next step."""
    sent = pd.DataFrame(columns=["cart_id", "step", "sent_at"])
    if history is not None and not history.empty:
        sent = history[history["status"].isin(POSSIBLY_SENT)][["cart_id", "step", "sent_at"]]
    last = sent.sort_values("step").groupby("cart_id").last()
    carts["sent_steps"] = carts["cart_id"].map(last["step"]).fillna(0).astype("int64")
    last_sent = pd.to_datetime(last["sent_at"].reindex(carts["cart_id"]).to_numpy(), utc=True)
    carts["last_sent_at"] = pd.Series(last_sent, index=carts.index, dtype="datetime64[ns, UTC]")
    carts["step"] = carts["sent_steps"] + 1


def _due_times(carts: pd.DataFrame, config: CartRecoveryConfig, mark) -> pd.Series:
    """When each cart's next step is due: its delay after the last change, and its gap after the last mail.

    Carts below a step's value threshold in their currency are marked here.
    """
    due_at = pd.Series(pd.NaT, index=carts.index, dtype="datetime64[ns, UTC]")
    for step in config.steps:
        at = carts["step"] == step.step
        earliest = carts["last_change_at"] + pd.Timedelta(hours=step.delay_hours)
        after_gap = carts["last_sent_at"] + pd.Timedelta(hours=step.min_gap_hours)
        earliest = earliest.where(after_gap.isna() | (earliest >= after_gap), after_gap)
        due_at = due_at.where(~at, earliest)
        if step.min_cart_value is not None:
            threshold = carts["currency"].map(step.min_cart_value)
            mark(at & (threshold.isna() | (carts["cart_value"] < threshold)), "below_value_threshold")
    return due_at


def recovery_audience(scan: CartScan, customers: pd.DataFrame, markets, profiles: pd.DataFrame | None = None):
    """The send step's audience for the due carts: one row per cart, keyed for the ledger."""
    from remarketing.timing.send_windows import resolve_time_zones

    due = scan.due
    people = customers.set_index("customer_id")
    owner = due["owner_id"]
    known = owner.notna()

    def pick(column: str, default: Any = None) -> pd.Series:
        values = pd.Series(default, index=due.index, dtype=object)
        if column in people and known.any():
            values[known] = owner[known].map(people[column]).to_numpy(dtype=object)
        return values

    market_locale = due["market"].map({m.code: m.primary_locale for m in markets})
    locale = pick("locale")
    audience = pd.DataFrame(
        {
            "customer_id": owner.astype("Int64"),
            "email": due["contact_email"],
            "first_name": pick("first_name"),
            "market": due["market"],
            "locale": locale.where(locale.notna(), market_locale),
            "country": pick("country"),
            "region": pick("region"),
            "time_zone": pick("time_zone"),
            "marketing_consent": pick("marketing_consent", False).fillna(False).astype(bool),
            "earliest_at": due["earliest_at"],
            "value": due["cart_value"],
            "step": due["step"].astype("int64"),
            "cart_id": due["cart_id"].astype("int64"),
            "currency": due["currency"],
            "cart_value": due["cart_value"],
            "last_change_at": due["last_change_at"],
        }
    )
    audience["subject_kind"] = SUBJECT_KIND
    audience["subject_id"] = audience["cart_id"].astype(str)
    audience["variant"] = VARIANT
    zones = resolve_time_zones(audience[["market", "time_zone", "country", "region"]], markets)
    audience["time_zone"] = zones["time_zone"]
    audience["tz_source"] = zones["tz_source"]
    audience["best_hour"] = pd.array([pd.NA] * len(audience), dtype="Int64")
    if profiles is not None and "best_hour" in profiles and len(audience):
        best = audience["customer_id"].map(profiles.set_index("customer_id")["best_hour"])
        audience["best_hour"] = best.astype("Int64")
    return audience


def attribute_orders(
    sends: pd.DataFrame, orders: pd.DataFrame, *, window: timedelta, already: set[int] | None = None
) -> pd.DataFrame:
    """Orders won back: placed by the mailed customer within ``window`` after a recovery mail.

    ``sends``: accepted recovery mails (customer_id, market, step, cart_id, sent_at). Each order
    is credited once, to the latest mail before it (last touch); refunds and cancellations are
    not revenue. Returns order_id, customer_id, market, step, cart_id, sent_at, placed_at,
    currency, revenue.
    """
    already = already or set()
    cols = ["order_id", "customer_id", "market", "step", "cart_id", "sent_at", "placed_at", "currency", "revenue"]
    sends = sends[sends["customer_id"].notna()]
    buying = orders[orders["status"].isin(("placed", "shipped", "delivered")) & ~orders["order_id"].isin(already)]
    if sends.empty or buying.empty:
        return pd.DataFrame(columns=cols)
    pairs = buying[["order_id", "customer_id", "placed_at", "currency", "total_amount"]].merge(
        sends[["customer_id", "market", "step", "cart_id", "sent_at"]], on="customer_id"
    )
    pairs["placed_at"] = _utc(pairs["placed_at"])
    pairs["sent_at"] = _utc(pairs["sent_at"])
    pairs = pairs[(pairs["placed_at"] >= pairs["sent_at"]) & (pairs["placed_at"] <= pairs["sent_at"] + window)]
    pairs = pairs.sort_values("sent_at").groupby("order_id", sort=False).last().reset_index()
    pairs["revenue"] = pairs["total_amount"].astype("float64")
    return pairs[cols].reset_index(drop=True)


def _store_rows(
    conn, table: str, columns: list[str], key: str, values: list, extra: str = "", params=()
) -> pd.DataFrame:
    """Rows of a canonical table (through the shop's mapping SQL) whose ``key`` is in ``values``."""
    from remarketing.store.extract import dialect_for, mapping_sql

    dialect = dialect_for(conn)
    dialect.prepare(conn)
    sql = mapping_sql(table)
    found = []
    cursor = conn.cursor()
    try:
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            marks = ", ".join([dialect.placeholder] * len(chunk))
            query = (
                f"SELECT {', '.join('src.' + c for c in columns)} FROM ({sql}) src WHERE src.{key} IN ({marks}){extra}"
            )
            extra_params = [dialect.timestamp_param(p) if isinstance(p, datetime) else p for p in params]
            cursor.execute(query, [*chunk, *extra_params])
            found.extend(cursor.fetchall())
    finally:
        cursor.close()
    return pd.DataFrame(found, columns=columns)


def recheck_converted(conn, due: pd.DataFrame) -> set[int]:
    """Carts among ``due`` that converted since the scan, read live from the store right before the send.

    ``due``: cart_id, owner_id, last_change_at. A cart converted when the store no longer has it
    open, or its owner placed an order since its last change holding one of its products.
    """
    if due.empty:
        return set()
    cart_ids = [int(c) for c in due["cart_id"]]
    carts = _store_rows(conn, "carts", ["cart_id", "status"], "cart_id", cart_ids)
    converted = set(carts.loc[carts["status"] != "open", "cart_id"].astype(int))
    converted |= set(cart_ids) - set(carts["cart_id"].astype(int))  # deleted from the store: leave it alone
    owners = sorted({int(o) for o in due["owner_id"].dropna()})
    if owners:
        since = pd.to_datetime(due["last_change_at"], utc=True).min().to_pydatetime()
        orders = _store_rows(
            conn,
            "orders",
            ["order_id", "customer_id", "status", "placed_at"],
            "customer_id",
            owners,
            extra=f" AND src.placed_at >= {_placeholder(conn)}",
            params=(since,),
        )
        orders = orders[orders["status"].isin(BUYING_STATUSES)]
        if not orders.empty:
            lines = _store_rows(
                conn, "order_items", ["order_id", "product_id"], "order_id", [int(o) for o in orders["order_id"]]
            )
            items = _store_rows(conn, "cart_items", ["cart_id", "product_id", "quantity"], "cart_id", cart_ids)
            orders["placed_at"] = pd.to_datetime(orders["placed_at"], utc=True)
            frame = due[["cart_id", "owner_id", "last_change_at"]].copy()
            frame["last_change_at"] = pd.to_datetime(frame["last_change_at"], utc=True)
            frame["owner_id"] = frame["owner_id"].astype("float64")
            orders["customer_id"] = orders["customer_id"].astype("float64")
            matched = _converted(frame, items, orders.assign(customer_id=orders["customer_id"]), lines)
            converted |= set(frame.loc[matched.to_numpy(), "cart_id"].astype(int))
    return converted


def _placeholder(conn) -> str:
    from remarketing.store.extract import dialect_for

    return dialect_for(conn).placeholder
