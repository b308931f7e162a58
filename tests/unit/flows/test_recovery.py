"""Which cart gets which recovery step: hand-built stores, one rule per test."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import yaml

from remarketing.flows.cart_recovery.audience import attribute_orders, recovery_audience, scan_carts
from remarketing.flows.cart_recovery.config import DEFAULT_FLOWS_FILE, FlowConfigError, load_flows, parse_flows
from remarketing.markets import load_markets

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
CONFIG = load_flows().cart_recovery


def ago(hours: float) -> pd.Timestamp:
    return pd.Timestamp(NOW - timedelta(hours=hours))


def store(carts, items, customers=None, orders=(), order_items=()):
    customers = customers or [
        {
            "customer_id": 1,
            "email": "ana@example.com",
            "first_name": "Ana",
            "locale": "de-DE",
            "country": "DE",
            "region": None,
            "market": "DE",
            "time_zone": "Europe/Berlin",
            "marketing_consent": True,
        },
        {
            "customer_id": 2,
            "email": "bo@example.com",
            "first_name": "Bo",
            "locale": "en-US",
            "country": "US",
            "region": "CA",
            "market": "US",
            "time_zone": None,
            "marketing_consent": True,
        },
    ]
    cart_defaults = {
        "customer_id": None,
        "email": None,
        "market": "DE",
        "currency": "EUR",
        "status": "open",
        "order_id": None,
        "created_at": ago(100),
    }
    item_defaults = {"quantity": 1, "unit_price": 20.0, "currency": "EUR"}
    carts = pd.DataFrame([{**cart_defaults, **c} for c in carts])
    carts["customer_id"] = carts["customer_id"].astype("Int64")
    items = pd.DataFrame([{**item_defaults, "cart_item_id": i + 1, **it} for i, it in enumerate(items)])
    items["added_at"] = items["updated_at"]
    orders = pd.DataFrame(
        list(orders), columns=["order_id", "customer_id", "status", "placed_at", "currency", "total_amount"]
    )
    order_items = pd.DataFrame(list(order_items), columns=["order_id", "product_id"])
    return {
        "carts": carts,
        "cart_items": items,
        "customers": pd.DataFrame(customers),
        "orders": orders,
        "order_items": order_items,
    }


def scan(frames, history=None, now=NOW):
    return scan_carts(frames, now=now, config=CONFIG, history=history)


def test_a_cart_idle_past_step_one_delay_is_due_for_step_one_and_a_fresh_one_is_not():
    frames = store(
        [
            {"cart_id": 10, "customer_id": 1, "updated_at": ago(4)},
            {"cart_id": 11, "customer_id": 2, "updated_at": ago(1), "market": "US", "currency": "USD"},
        ],
        [
            {"cart_id": 10, "product_id": 5, "updated_at": ago(5)},
            {"cart_id": 11, "product_id": 5, "updated_at": ago(1)},
        ],
    )
    result = scan(frames)
    assert result.due["cart_id"].tolist() == [10]
    assert result.due["step"].tolist() == [1]
    assert result.due["earliest_at"].iloc[0] == ago(4) + pd.Timedelta(hours=CONFIG.step(1).delay_hours)
    assert result.reasons[11] == "not_idle_yet"


def test_a_cart_no_market_serves_is_out_of_scope_and_never_due():
    frames = store(
        [{"cart_id": 10, "customer_id": 1, "updated_at": ago(4), "market": None}],
        [{"cart_id": 10, "product_id": 5, "updated_at": ago(5)}],
    )
    result = scan(frames)
    assert result.due.empty and result.reasons[10] == "out_of_scope"


def test_the_last_item_change_counts_as_activity_not_only_the_cart_row():
    frames = store(
        [{"cart_id": 10, "customer_id": 1, "updated_at": ago(10)}],
        [{"cart_id": 10, "product_id": 5, "updated_at": ago(1)}],
    )
    assert scan(frames).reasons[10] == "not_idle_yet"


def test_empty_ordered_unreachable_and_too_old_carts_get_nothing_with_their_reason():
    frames = store(
        [
            {"cart_id": 1, "customer_id": 1, "updated_at": ago(5)},  # no items
            {"cart_id": 2, "customer_id": 2, "updated_at": ago(5), "status": "ordered", "market": "US"},
            {"cart_id": 3, "email": None, "updated_at": ago(5)},  # guest without address
            {"cart_id": 4, "email": "guest@example.org", "updated_at": ago(24 * 8)},  # too old
        ],
        [{"cart_id": c, "product_id": 5, "updated_at": ago(24 * 8 if c == 4 else 5)} for c in (2, 3, 4)],
    )
    reasons = scan(frames).reasons
    assert reasons.to_dict() == {1: "empty", 2: "not_open", 3: "unreachable", 4: "too_old"}


def test_a_guest_who_left_an_address_is_reachable_in_the_market_locale():
    frames = store(
        [{"cart_id": 7, "email": "Guest@Example.org", "updated_at": ago(5)}],
        [{"cart_id": 7, "product_id": 5, "updated_at": ago(5)}],
    )
    result = scan(frames)
    assert result.due["cart_id"].tolist() == [7]
    audience = recovery_audience(result, frames["customers"], load_markets())
    assert pd.isna(audience["customer_id"].iloc[0]) and audience["email"].iloc[0] == "Guest@Example.org"
    assert audience["locale"].iloc[0] == "de-DE"  # the market's locale for a guest
    assert audience["time_zone"].iloc[0] == "Europe/Berlin"


def test_buying_the_same_products_through_another_cart_counts_as_converted():
    frames = store(
        [
            {"cart_id": 10, "customer_id": 1, "updated_at": ago(30)},
            {"cart_id": 20, "customer_id": 2, "updated_at": ago(30), "market": "US", "currency": "USD"},
        ],
        [
            {"cart_id": 10, "product_id": 5, "updated_at": ago(30)},
            {"cart_id": 20, "product_id": 6, "updated_at": ago(30)},
        ],
        orders=[(900, 1, "placed", ago(2), "EUR", 20.0), (901, 2, "placed", ago(2), "USD", 20.0)],
        order_items=[(900, 5), (901, 99)],  # customer 2 bought something else: still abandoned
    )
    reasons = scan(frames).reasons
    assert reasons[10] == "converted"
    assert reasons[20] == "due"


def test_an_order_before_the_cart_changed_or_a_cancelled_one_does_not_count():
    frames = store(
        [{"cart_id": 10, "customer_id": 1, "updated_at": ago(30)}],
        [{"cart_id": 10, "product_id": 5, "updated_at": ago(30)}],
        orders=[(900, 1, "placed", ago(40), "EUR", 20.0), (901, 1, "cancelled", ago(5), "EUR", 20.0)],
        order_items=[(900, 5), (901, 5)],
    )
    assert scan(frames).reasons[10] == "due"


def test_a_guest_cart_converts_when_the_registered_customer_with_that_address_ordered_it():
    frames = store(
        [{"cart_id": 10, "email": "ANA@example.com ", "updated_at": ago(30)}],
        [{"cart_id": 10, "product_id": 5, "updated_at": ago(30)}],
        orders=[(900, 1, "shipped", ago(3), "EUR", 20.0)],
        order_items=[(900, 5)],
    )
    assert scan(frames).reasons[10] == "converted"


def test_only_the_most_recent_open_cart_of_a_person_is_considered():
    frames = store(
        [
            {"cart_id": 10, "customer_id": 1, "updated_at": ago(50)},
            {"cart_id": 11, "customer_id": 1, "updated_at": ago(6)},
        ],
        [
            {"cart_id": 10, "product_id": 5, "updated_at": ago(50)},
            {"cart_id": 11, "product_id": 6, "updated_at": ago(6)},
        ],
    )
    reasons = scan(frames).reasons
    assert reasons.to_dict() == {10: "superseded", 11: "due"}


def history(rows):
    return pd.DataFrame(rows, columns=["cart_id", "step", "status", "sent_at"])


def test_step_two_follows_step_one_after_its_delay_and_gap():
    frames = store(
        [{"cart_id": 10, "customer_id": 1, "updated_at": ago(30)}],
        [{"cart_id": 10, "product_id": 5, "updated_at": ago(30)}],
    )
    sent_recently = history([(10, 1, "accepted", ago(10))])
    assert scan(frames, sent_recently).reasons[10] == "not_idle_yet"  # the gap after step 1 is not over yet
    sent_earlier = history([(10, 1, "accepted", ago(26))])
    result = scan(frames, sent_earlier)
    assert result.due["step"].tolist() == [2]


def test_a_step_that_may_have_gone_out_is_not_repeated_but_a_rejected_one_does_not_advance():
    frames = store(
        [{"cart_id": 10, "customer_id": 1, "updated_at": ago(30)}],
        [{"cart_id": 10, "product_id": 5, "updated_at": ago(30)}],
    )
    unknown = history([(10, 1, "unknown", ago(26))])
    assert scan(frames, unknown).due["step"].tolist() == [2]
    rejected = history([(10, 1, "rejected", ago(26))])
    assert scan(frames, rejected).due["step"].tolist() == [1]


def test_step_three_only_for_carts_above_the_market_threshold_then_the_sequence_ends():
    cheap = store(
        [{"cart_id": 10, "customer_id": 1, "updated_at": ago(80)}],
        [{"cart_id": 10, "product_id": 5, "updated_at": ago(80), "unit_price": 20.0}],
    )
    dear = store(
        [{"cart_id": 10, "customer_id": 1, "updated_at": ago(80)}],
        [{"cart_id": 10, "product_id": 5, "updated_at": ago(80), "unit_price": 80.0, "quantity": 2}],
    )
    two_sent = history([(10, 1, "accepted", ago(76)), (10, 2, "accepted", ago(50))])
    assert scan(cheap, two_sent).reasons[10] == "below_value_threshold"
    assert scan(dear, two_sent).due["step"].tolist() == [3]
    three_sent = history([(10, 1, "accepted", ago(76)), (10, 2, "accepted", ago(50)), (10, 3, "accepted", ago(1))])
    assert scan(dear, three_sent).reasons[10] == "sequence_done"


def test_every_scanned_cart_has_exactly_one_reason_on_the_demo_store():
    from demo_shop.generator import generate_store

    frames = generate_store(400, seed=3, as_of=NOW)
    result = scan(frames)
    assert result.reasons.index.is_unique
    assert len(result.reasons) == len(frames["carts"])
    counts = result.reason_counts()
    assert counts.get("due", 0) == len(result.due) > 0
    assert counts.get("converted", 0) > 0 and counts.get("not_open", 0) > 0
    audience = recovery_audience(result, frames["customers"], load_markets())
    assert len(audience) == len(result.due)
    assert audience["time_zone"].notna().all()


def test_attribution_credits_each_order_once_to_the_latest_mail_within_the_window():
    sends = pd.DataFrame(
        [(1, "DE", 1, 10, ago(100)), (1, "DE", 2, 10, ago(50)), (2, "US", 1, 20, ago(24 * 9))],
        columns=["customer_id", "market", "step", "cart_id", "sent_at"],
    )
    orders = pd.DataFrame(
        [
            (900, 1, "placed", ago(40), "EUR", 99.5),
            (901, 2, "placed", ago(1), "USD", 10.0),
            (902, 1, "refunded", ago(30), "EUR", 50.0),
        ],
        columns=["order_id", "customer_id", "status", "placed_at", "currency", "total_amount"],
    )
    won = attribute_orders(sends, orders, window=timedelta(days=7))
    assert won[["order_id", "step", "revenue"]].values.tolist() == [[900, 2, 99.5]]
    assert attribute_orders(sends, orders, window=timedelta(days=7), already={900}).empty


def test_flow_config_errors_name_the_field():
    raw = yaml.safe_load(DEFAULT_FLOWS_FILE.read_text())
    bad = copy.deepcopy(raw)
    bad["cart_recovery"]["steps"][1]["delay_hours"] = 1
    with pytest.raises(FlowConfigError, match="delays must increase"):
        parse_flows(bad)
    bad = copy.deepcopy(raw)
    bad["cart_recovery"]["steps"][2]["incentive"]["percent"] = 300
    with pytest.raises(FlowConfigError, match=r"cart_recovery\.steps\.2\.incentive\.percent"):
        parse_flows(bad)


@pytest.fixture(scope="module")
def live_store(tmp_path_factory):
    """A demo store in SQLite and the carts due in it."""
    from demo_shop.generator import generate_store, write_store

    frames = generate_store(300, seed=11, as_of=NOW)
    path = tmp_path_factory.mktemp("store") / "store.db"
    write_store(frames, f"sqlite:///{path}")
    return path, frames, scan(frames).due


def test_the_live_recheck_finds_nothing_new_when_the_store_did_not_change(live_store):
    import sqlite3

    from remarketing.flows.cart_recovery.audience import recheck_converted

    path, _frames, due = live_store
    with sqlite3.connect(path) as conn:
        assert recheck_converted(conn, due) == set()


def test_the_live_recheck_sees_an_order_placed_after_the_scan(live_store, tmp_path):
    import shutil
    import sqlite3

    from remarketing.flows.cart_recovery.audience import recheck_converted

    path, frames, due = live_store
    copy_path = tmp_path / "store.db"
    shutil.copy(path, copy_path)
    registered = due[due["owner_id"].notna()]
    bought, closed = int(registered["cart_id"].iloc[0]), int(due["cart_id"].iloc[-1])
    owner = int(registered["owner_id"].iloc[0])
    product = int(frames["cart_items"].query("cart_id == @bought")["product_id"].iloc[0])
    with sqlite3.connect(copy_path) as conn:
        stamp = "2026-11-18 12:30:00.000000"
        conn.execute(
            "INSERT INTO orders (order_id, customer_id, market, currency, status, total_amount, discount_amount,"
            " placed_at, updated_at) VALUES (99999999, ?, 'DE', 'EUR', 'placed', 10, 0, ?, ?)",
            (owner, stamp, stamp),
        )
        conn.execute(
            "INSERT INTO order_items (order_item_id, order_id, product_id, quantity, unit_price, discount_amount,"
            " updated_at) VALUES (99999999, 99999999, ?, 1, 10, 0, ?)",
            (product, stamp),
        )
        conn.execute("UPDATE carts SET status = 'ordered' WHERE cart_id = ?", (closed,))
        conn.commit()
        assert recheck_converted(conn, due) == {bought, closed}
