"""Real shops' orders in the profiles: guests, out-of-scope customers, other currencies, credit notes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from remarketing.markets import load_markets
from remarketing.profiles.inputs import read_customers, read_orders
from remarketing.profiles.rfm import compute_rfm
from remarketing.store.fx import FxRates

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)
FX = FxRates(pd.DataFrame({"date": [datetime(2026, 1, 1).date()], "currency": ["JPY"], "per_eur": [160.0]}))


def customers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": pd.array([1, 2, 3, 4, 5, 6, 7], dtype="Int64"),
            "email": ["a@example.com", "B@Example.com ", None, "d@example.com", "e@example.com", None, "g@example.com"],
            "market": ["DE", "DE", None, "DE", "DE", "DE", "DE"],  # 3: a country no market serves
        }
    )


def orders(rows: list[tuple]) -> pd.DataFrame:
    """rows: (order_id, customer_id, status, currency, total, days before AS_OF, email, original_order_id)."""
    frame = pd.DataFrame(
        rows,
        columns=["order_id", "customer_id", "status", "currency", "total_amount", "days", "email", "original_order_id"],
    )
    frame["placed_at"] = pd.to_datetime([AS_OF - d * DAY for d in frame.pop("days")], utc=True)
    frame["customer_id"] = pd.array(frame["customer_id"], dtype="Int64")
    frame["original_order_id"] = pd.array(frame["original_order_id"], dtype="Int64")
    frame["discount_amount"] = 0.0
    return frame


SHOP = orders(
    [
        (10, 1, "delivered", "EUR", 100.0, 50, None, None),  # 1: refunded in full by 11 (named)
        (11, 1, "credit_note", "EUR", -100.0, 40, None, 10),
        (12, 1, "delivered", "EUR", 30.0, 20, None, None),
        (20, None, "delivered", "EUR", 45.0, 30, " b@example.COM", None),  # a guest order: customer 2's address
        (21, 2, "delivered", "JPY", 16000.0, 10, None, None),  # 100 EUR at 160 JPY per EUR
        (30, 3, "delivered", "EUR", 80.0, 10, None, None),  # an out-of-scope customer's order
        (40, 4, "delivered", "EUR", 60.0, 30, None, None),  # 4: only order refunded, matched by amount
        (41, 4, "credit_note", "EUR", -60.0, 25, None, None),
        (50, 5, "delivered", "EUR", 90.0, 30, None, None),  # 5: a partial refund nobody names
        (51, 5, "credit_note", "EUR", -25.0, 20, None, None),
        (60, 6, "delivered", "EUR", 0.0, 5, None, None),  # 6: a free order is still a purchase
        (70, None, "delivered", "EUR", 15.0, 5, "nobody@example.com", None),  # a guest we have no customer for
        (71, 7, "delivered", "EUR", 40.0, 15, None, None),  # 7: refunded in two credit notes, neither names it
        (72, 7, "credit_note", "EUR", -40.0, 12, None, None),
    ]
)


@pytest.fixture
def rfm() -> pd.DataFrame:
    return compute_rfm(customers(), SHOP, markets=load_markets(), as_of=AS_OF, fx=FX).set_index("customer_id")


def test_out_of_scope_customers_are_counted_not_profiled_and_not_an_error():
    cust = read_customers(customers(), load_markets())
    assert 3 not in cust.ids and cust.out_of_scope == 1
    ords = read_orders(SHOP, cust, int(AS_OF.timestamp() * 1e6), FX)
    assert ords.excluded["customer_out_of_scope"] == 1  # order 30
    assert not ords.valid[list(ords.ids).index(30)]


def test_guest_orders_join_the_customer_with_their_address(rfm):
    assert rfm.loc[2, "frequency"] == 2, "the guest order 20 (same address, other case and spaces) and order 21"
    cust = read_customers(customers(), load_markets())
    ords = read_orders(SHOP, cust, int(AS_OF.timestamp() * 1e6), FX)
    assert ords.excluded["guest_orders_joined"] == 1 and ords.excluded["guest_orders_without_customer"] == 1


def test_amounts_in_another_currency_are_converted_into_the_market_currency(rfm):
    assert rfm.loc[2, "monetary"] == pytest.approx(45.0 + 16000.0 / 160.0)


def test_a_named_credit_note_nets_its_order_which_no_longer_counts_as_a_purchase(rfm):
    assert rfm.loc[1, "frequency"] == 1 and rfm.loc[1, "monetary"] == pytest.approx(30.0)
    assert rfm.loc[1, "recency_days"] == pytest.approx(20.0), "the refunded order is no purchase, also for recency"


def test_a_customer_whose_only_purchase_came_back_is_no_buyer(rfm):
    for customer in (4, 7):
        row = rfm.loc[customer]
        assert row["frequency"] == 0 and pd.isna(row["r_score"]) and pd.isna(row["m_score"]), customer


def test_a_partial_refund_nobody_names_lowers_monetary_only(rfm):
    assert rfm.loc[5, "frequency"] == 1 and rfm.loc[5, "monetary"] == pytest.approx(65.0)


def test_a_free_order_is_still_a_purchase(rfm):
    assert rfm.loc[6, "frequency"] == 1 and rfm.loc[6, "monetary"] == 0.0


def test_refund_counts_are_reported():
    cust = read_customers(customers(), load_markets())
    ords = read_orders(SHOP, cust, int(AS_OF.timestamp() * 1e6), FX)
    assert ords.excluded["credit_notes"] == 4 and ords.excluded["credit_notes_matched"] == 3
    assert ords.excluded["orders_refunded_in_full"] == 3 and ords.excluded["customers_refunded_in_full"] == 2
    assert np.isclose(ords.money_back[list(cust.ids).index(5)], -25.0)


def test_an_order_without_a_rate_is_counted_not_guessed():
    cust = read_customers(customers(), load_markets())
    shop = SHOP.copy()
    shop.loc[shop["order_id"] == 21, "currency"] = "ISK"
    ords = read_orders(shop, cust, int(AS_OF.timestamp() * 1e6), FX)
    assert ords.excluded["no_fx_rate"] == 1 and not ords.valid[list(ords.ids).index(21)]
