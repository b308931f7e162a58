"""Property tests for compute_profiles on random small shops, against a naive per-customer reference.

The reference recomputes, customer by customer in plain Python, what the vectorized code derives
(valid orders, recency, frequency, monetary, discount share, first/last order) and then re-applies
the stage rules in their documented order, using the per-market thresholds the result reports.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remarketing.markets import load_markets
from remarketing.profiles.config import DEFAULT_LIFECYCLE_FILE, STAGES, parse_lifecycle_config
from remarketing.profiles.lifecycle import compute_profiles
from remarketing.profiles.rfm import scores_within

AS_OF = datetime(2026, 5, 1, 12, tzinfo=UTC)
MARKETS = load_markets()
MARKET_CODES = ("DE", "JP", "US")
STATUSES = ("placed", "shipped", "delivered", "delivered", "cancelled", "refunded")
ZONES = (None, "Europe/Berlin", "Asia/Tokyo", "America/Los_Angeles", "Not/AZone")
_raw = yaml.safe_load(DEFAULT_LIFECYCLE_FILE.read_text())
_raw["stages"]["at_risk"]["min_gaps"] = 3  # small shops still reach market and pooled intervals
_raw["model"]["min_repeat_buyers"] = 3
CONFIG = parse_lifecycle_config(_raw)
PRODUCTS = pd.DataFrame(
    {"product_id": [1, 2, 3, 4, 5, 6], "category": pd.array(["a", "b", "c", "d", "e", None], dtype="str")}
)

order_strategy = st.tuples(
    st.integers(0, 29),  # customer index (modulo the number of customers)
    st.integers(-800, 3),  # day relative to as_of
    st.integers(0, 86_399),  # second of the day
    st.sampled_from(STATUSES),
    st.integers(0, 50_000),  # total in minor units
    st.sampled_from([0, 0, 0, 500]),  # discount
    st.sampled_from([None, None, "SAVE"]),
    st.lists(st.tuples(st.integers(1, 6), st.integers(1, 3), st.integers(0, 20_000)), min_size=1, max_size=3),
)


@st.composite
def shops(draw):
    n = draw(st.integers(1, 30))
    ids = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    markets = draw(st.lists(st.sampled_from(MARKET_CODES), min_size=n, max_size=n))
    zones = draw(st.lists(st.sampled_from(ZONES), min_size=n, max_size=n))
    raw_orders = draw(st.lists(order_strategy, max_size=80))
    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "market": pd.array(markets, dtype="str"),
            "time_zone": pd.array(zones, dtype="str"),
            "country": pd.array(markets, dtype="str"),
        }
    )
    orders, items = [], []
    for k, (who, day, second, status, total, discount, coupon, lines) in enumerate(raw_orders, start=1):
        cid = ids[who % n]
        market = markets[who % n]
        orders.append(
            {
                "order_id": k,
                "customer_id": cid,
                "market": market,
                "currency": MARKETS[market].currency,
                "status": status,
                "total_amount": total / 100,
                "discount_amount": discount / 100,
                "coupon_code": coupon,
                "placed_at": AS_OF.replace(hour=0) + timedelta(days=day, seconds=second),
            }
        )
        for product, quantity, price in lines:
            items.append((len(items) + 1, k, product, quantity, price / 100, 0.0))
    orders = pd.DataFrame(
        orders,
        columns=["order_id", "customer_id", "market", "currency", "status", "total_amount", "discount_amount",
                 "coupon_code", "placed_at"],
    )  # fmt: skip
    orders["placed_at"] = pd.to_datetime(orders["placed_at"], utc=True)
    for column in ("market", "currency", "status", "coupon_code"):
        orders[column] = orders[column].astype("str")
    orders["total_amount"] = orders["total_amount"].astype(float)
    orders["discount_amount"] = orders["discount_amount"].astype(float)
    items = pd.DataFrame(
        items, columns=["order_item_id", "order_id", "product_id", "quantity", "unit_price", "discount_amount"]
    )
    return customers, orders, items


def compute(customers, orders, items):
    return compute_profiles(customers, orders, items, PRODUCTS, markets=MARKETS, as_of=AS_OF, config=CONFIG)


def reference(customers: pd.DataFrame, orders: pd.DataFrame) -> dict[int, dict]:
    out = {}
    for cid in customers["customer_id"]:
        mine = orders[(orders["customer_id"] == cid)]
        valid = mine[~mine["status"].isin(["cancelled", "refunded"]) & (mine["placed_at"] <= AS_OF)]
        row = {"frequency": len(valid), "monetary": float(valid["total_amount"].sum())}
        if len(valid):
            last, first = valid["placed_at"].max(), valid["placed_at"].min()
            row["recency_days"] = (AS_OF - last) / timedelta(days=1)
            row["since_first"] = (AS_OF - first) / timedelta(days=1)
            discounted = (valid["discount_amount"] > 0) | valid["coupon_code"].notna()
            row["price_sensitivity"] = float(discounted.mean())
        out[int(cid)] = row
    return out


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(shops())
def test_one_profile_per_customer_with_one_stage_and_reference_figures(shop):
    customers, orders, items = shop
    result = compute(customers, orders, items)
    p = result.profiles
    # No customer lost or duplicated, exactly one valid stage each.
    assert sorted(p["customer_id"]) == sorted(customers["customer_id"])
    assert p["customer_id"].is_unique and len(p) == len(customers)
    assert p["stage"].notna().all() and p["stage"].isin(STAGES).all()
    assert dict(zip(p["customer_id"], p["market"], strict=True)) == dict(
        zip(customers["customer_id"], customers["market"], strict=True)
    )

    ref = reference(customers, orders)
    stats = result.market_stats.set_index("market")
    for row in p.itertuples():
        expected = ref[row.customer_id]
        assert row.frequency == expected["frequency"]
        assert math.isclose(row.monetary, expected["monetary"], rel_tol=1e-9, abs_tol=1e-9)
        buyer = expected["frequency"] > 0
        scores = (row.r_score, row.f_score, row.m_score)
        if not buyer:
            assert row.stage == "prospect"
            assert all(pd.isna(s) for s in scores) and pd.isna(row.recency_days) and pd.isna(row.p_alive)
            continue
        assert all(1 <= s <= 5 for s in scores)
        assert math.isclose(row.recency_days, expected["recency_days"], abs_tol=1e-6)
        assert math.isclose(row.price_sensitivity, expected["price_sensitivity"])
        assert 0 <= row.preferred_purchase_hour <= 23
        assert len(row.favourite_categories) <= 3

        # The stage rules, in order, with the market's reported thresholds.
        t = CONFIG.for_market(row.market)
        market = stats.loc[row.market]
        if expected["since_first"] <= t.new_days:
            stage = "new"
        elif (not pd.isna(row.p_alive) and row.p_alive < t.dormant.p_alive_below) or (
            expected["recency_days"] > t.dormant.recency_days
        ):
            stage = "dormant"
        elif expected["recency_days"] > market["repurchase_interval_days"]:
            stage = "at_risk"
        elif expected["frequency"] >= t.vip.min_orders and row.monetary >= market["vip_monetary_threshold"]:
            stage = "vip"
        else:
            stage = "active"
        assert row.stage == stage, (row.customer_id, row.stage, stage)
    assert sum(result.excluded_orders[k] for k in ("cancelled", "refunded", "placed_after_as_of")) == int(
        (orders["status"].isin(["cancelled", "refunded"]) | (orders["placed_at"] > AS_OF)).sum()
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(shops(), st.randoms(use_true_random=False))
def test_row_order_does_not_change_profiles(shop, random):
    customers, orders, items = shop
    first = compute(customers, orders, items).profiles
    shuffle = lambda frame: frame.iloc[random.sample(range(len(frame)), len(frame))]  # noqa: E731
    second = compute(shuffle(customers), shuffle(orders), shuffle(items)).profiles
    pd.testing.assert_frame_equal(first, second, check_exact=False, rtol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(-5, 5)), min_size=1, max_size=60),
)
def test_scores_are_1_to_5_monotone_and_ties_share_a_score(pairs):
    group = np.array([g for g, _ in pairs])
    values = np.array([float(v) for _, v in pairs])
    scores = scores_within(values, group)
    assert ((scores >= 1) & (scores <= 5)).all()
    for i in range(len(values)):
        for j in range(len(values)):
            if group[i] == group[j] and values[i] < values[j]:
                assert scores[i] <= scores[j]
            if group[i] == group[j] and values[i] == values[j]:
                assert scores[i] == scores[j]
    # A market of distinct values uses the whole scale when it has at least five buyers.
    for g in np.unique(group):
        distinct = np.unique(values[group == g])
        if len(distinct) == (group == g).sum() >= 5:
            assert set(scores[group == g]) == {1, 2, 3, 4, 5}
