"""Lifecycle profiles: hand-computed RFM, scores, stages and tags; config; bad input; storage on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from databases import fresh_postgres_database

from demo_shop.generator import generate_store
from remarketing.markets import load_markets
from remarketing.platform import state
from remarketing.profiles.clv import BgNbdParams, ModelFit, p_alive
from remarketing.profiles.config import (
    DEFAULT_LIFECYCLE_FILE,
    STAGES,
    LifecycleConfigError,
    describe_config,
    load_lifecycle_config,
    parse_lifecycle_config,
)
from remarketing.profiles.inputs import ProfileInputError
from remarketing.profiles.lifecycle import PROFILE_COLUMNS, compute_profiles, stage_transitions
from remarketing.profiles.rfm import compute_rfm
from remarketing.profiles.store import load_profiles, segment_history, transitions_since, write_profiles

AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
MARKETS = load_markets()


def raw_config() -> dict:
    """Thresholds chosen for hand computation: a fixed 60-day at-risk interval, no model unless given."""
    return {
        "stages": {
            "new_days": 30,
            "at_risk": {
                "interval_quantile": 0.8,
                "interval_factor": 1.0,
                "min_interval_days": 7,
                "max_interval_days": 400,
                "min_gaps": 1_000_000,  # never enough gaps: the default interval applies
                "default_interval_days": 60,
            },
            "dormant": {"p_alive_below": 0.3, "recency_days": 365},
            "vip": {"min_orders": 3, "monetary_quantile": 0.8},
        },
        "model": {"min_repeat_buyers": 1_000_000, "fit_sample": 1000},
        "engagement": {"high_click_days": 30, "medium_days": 90},
        "rfm_segments": yaml.safe_load(DEFAULT_LIFECYCLE_FILE.read_text())["rfm_segments"],
    }


CONFIG = parse_lifecycle_config(raw_config())


class Shop:
    """Builds canonical frames order by order, so each test states only what matters."""

    def __init__(self):
        self.customers: list[dict] = []
        self.orders: list[dict] = []
        self.items: list[dict] = []
        self.products = pd.DataFrame(
            {
                "product_id": [1, 2, 3, 4, 5],
                "category": pd.array(["apparel", "shoes", "home", "books", None], dtype="str"),
            }
        )

    def customer(self, customer_id: int, market: str = "DE", time_zone: str | None = "Europe/Berlin") -> int:
        self.customers.append(
            {"customer_id": customer_id, "market": market, "time_zone": time_zone, "country": market, "region": None}
        )
        return customer_id

    def order(self, customer_id, at, lines, *, status="delivered", discount=0.0, coupon=None, currency=None):
        """``lines``: [(product_id, quantity, unit_price)]; total = sum of lines - discount."""
        order_id = len(self.orders) + 1
        market = next(c["market"] for c in self.customers if c["customer_id"] == customer_id)
        subtotal = sum(q * p for _, q, p in lines)
        self.orders.append(
            {
                "order_id": order_id,
                "customer_id": customer_id,
                "market": market,
                "currency": currency or MARKETS[market].currency,
                "status": status,
                "total_amount": subtotal - discount,
                "discount_amount": discount,
                "coupon_code": coupon,
                "placed_at": at,
            }
        )
        for product_id, quantity, price in lines:
            self.items.append(
                {
                    "order_item_id": len(self.items) + 1,
                    "order_id": order_id,
                    "product_id": product_id,
                    "quantity": quantity,
                    "unit_price": float(price),
                    "discount_amount": 0.0,
                }
            )
        return order_id

    def frames(self) -> dict[str, pd.DataFrame]:
        customers = pd.DataFrame(self.customers)
        for column in ("market", "time_zone", "country", "region"):
            customers[column] = customers[column].astype("str")
        orders = pd.DataFrame(self.orders, columns=ORDER_COLUMNS)
        orders["placed_at"] = pd.to_datetime(orders["placed_at"], utc=True).dt.as_unit("us")
        for column in ("market", "currency", "status", "coupon_code"):
            orders[column] = orders[column].astype("str")
        orders["total_amount"] = orders["total_amount"].astype(float)
        orders["discount_amount"] = orders["discount_amount"].astype(float)
        items = pd.DataFrame(self.items, columns=ITEM_COLUMNS)
        return {"customers": customers, "orders": orders, "order_items": items, "products": self.products}

    def profiles(self, config=CONFIG, **kwargs):
        f = self.frames()
        result = compute_profiles(
            f["customers"], f["orders"], f["order_items"], f["products"], markets=MARKETS, as_of=AS_OF,
            config=config, **kwargs,
        )  # fmt: skip
        return result


ORDER_COLUMNS = ["order_id", "customer_id", "market", "currency", "status", "total_amount", "discount_amount",
                 "coupon_code", "placed_at"]  # fmt: skip
ITEM_COLUMNS = ["order_item_id", "order_id", "product_id", "quantity", "unit_price", "discount_amount"]


def hand_shop() -> Shop:
    """Eight DE customers and two JP customers; the expected figures below are worked out by hand."""
    s = Shop()
    s.customer(1)  # never ordered
    s.customer(2)
    s.order(2, AS_OF - 20 * DAY, [(1, 1, 100)], status="cancelled")
    s.order(2, AS_OF - 40 * DAY, [(1, 1, 50)], status="refunded")
    s.customer(3)
    s.order(3, AS_OF - 30 * DAY, [(1, 1, 40)])  # first order exactly 30 days ago: still new
    s.customer(4)
    s.order(4, AS_OF - 30 * DAY - timedelta(seconds=1), [(4, 1, 60)])  # one second too old for new
    s.order(4, AS_OF + DAY, [(4, 1, 999)])  # after as_of: not counted
    s.customer(5)
    s.order(5, AS_OF - 200 * DAY, [(1, 2, 30), (2, 1, 40)])  # 02:00 Berlin (summer time)
    s.order(5, AS_OF - 100 * DAY, [(2, 1, 110)], discount=10.0)  # 01:00 Berlin
    s.order(5, AS_OF - 60 * DAY, [(3, 1, 100)])  # recency exactly the 60-day interval: not at risk
    s.customer(6)
    s.order(6, AS_OF - 300 * DAY, [(1, 1, 50)])
    s.order(6, AS_OF - 61 * DAY, [(4, 1, 50), (5, 1, 7)], discount=7.0)  # 61 days: at risk
    s.order(6, AS_OF - 1 * DAY, [(1, 1, 999)], status="refunded")  # must not make 6 recent
    s.customer(7)
    s.order(7, AS_OF - 366 * DAY, [(3, 1, 500)])  # more than 365 days: dormant
    s.customer(8, time_zone="America/New_York")  # a DE customer living in New York
    s.order(8, AS_OF - 10 * DAY, [(4, 1, 20)], coupon="WELCOME10")  # 19:00 New York
    s.order(8, AS_OF - 5 * DAY, [(4, 1, 20)])
    s.customer(11, market="JP", time_zone=None)
    s.order(11, AS_OF - 3 * DAY, [(1, 1, 1000)])
    s.customer(12, market="JP", time_zone=None)
    s.order(12, AS_OF - 100 * DAY, [(1, 1, 2000)])
    s.order(12, AS_OF - 50 * DAY, [(3, 1, 3000)])
    return s


def by_id(result) -> pd.DataFrame:
    return result.profiles.set_index("customer_id")


def test_hand_computed_rfm_scores_stages_and_tags():
    result = hand_shop().profiles()
    p = by_id(result)
    assert list(p.index) == [1, 2, 3, 4, 5, 6, 7, 8, 11, 12]
    assert list(result.profiles.columns) == list(PROFILE_COLUMNS)

    assert p["frequency"].to_dict() == {1: 0, 2: 0, 3: 1, 4: 1, 5: 3, 6: 2, 7: 1, 8: 2, 11: 1, 12: 2}
    assert p["monetary"].to_dict() == {1: 0, 2: 0, 3: 40, 4: 60, 5: 300, 6: 100, 7: 500, 8: 40, 11: 1000, 12: 5000}
    recency = p["recency_days"]
    assert recency[[1, 2]].isna().all()
    assert recency[3] == 30 and recency[5] == 60 and recency[6] == 61 and recency[7] == 366 and recency[8] == 5
    assert recency[4] == pytest.approx(30 + 1 / 86_400, abs=1e-9)

    # DE buyers 3,4,5,6,7,8: score = 1 + floor(5 (average rank - 1/2) / 6) where that uses every level the
    # values support; JP is scored on its own. Monetary 40, 40, 60, 100, 300, 500 has five distinct values
    # but the formula gives 1, 1, 3, 3, 4, 5: the tie-aware rule moves 60 to the empty level 2.
    assert p.loc[[3, 4, 5, 6, 7, 8], "r_score"].tolist() == [4, 3, 3, 2, 1, 5]
    assert p.loc[[3, 4, 5, 6, 7, 8], "f_score"].tolist() == [2, 2, 5, 4, 2, 4]
    assert p.loc[[3, 4, 5, 6, 7, 8], "m_score"].tolist() == [1, 2, 4, 3, 5, 1]
    assert p.loc[[11, 12], "m_score"].tolist() == [2, 4]  # 1000 and 5000 yen: n = 2
    assert p.loc[[1, 2], ["r_score", "f_score", "m_score", "rfm_segment"]].isna().all().all()
    assert p.loc[[3, 4, 5, 6, 7, 8], "rfm_segment"].tolist() == [
        "Potential loyalists",  # R4 FM2
        "About to sleep",  # R3 FM2
        "Loyal customers",  # R3 FM5
        "At risk",  # R2 FM4
        "At risk",  # R1 FM4
        "Potential loyalists",  # R5 FM3
    ]

    assert p["stage"].to_dict() == {
        1: "prospect", 2: "prospect", 3: "new", 4: "active", 5: "vip", 6: "at_risk", 7: "dormant", 8: "new",
        11: "new", 12: "active",
    }  # fmt: skip
    de = result.market_stats.set_index("market").loc["DE"]
    assert de["vip_monetary_threshold"] == 300  # 80th percentile of 40, 40, 60, 100, 300, 500
    assert de["repurchase_interval_days"] == 60 and de["interval_source"] == "default"

    assert p.loc[5, "favourite_categories"] == ["shoes", "home", "apparel"]  # 150, 100, 60
    assert p.loc[6, "favourite_categories"] == ["apparel", "books"]  # 50 each: by name; uncategorised ignored
    assert p.loc[1, "favourite_categories"] == []
    assert p.loc[5, "price_sensitivity"] == pytest.approx(1 / 3)
    assert p.loc[8, "price_sensitivity"] == 0.5  # a coupon code counts as a discount
    assert p.loc[5, "avg_order_value"] == 100
    assert pd.isna(p.loc[1, "avg_order_value"])
    assert p.loc[5, "preferred_purchase_hour"] == 1  # 02:00, 01:00, 01:00 in Berlin
    assert p.loc[8, "preferred_purchase_hour"] == 19  # New York, not Berlin
    assert p.loc[11, "preferred_purchase_hour"] == 9  # no zone on file: the market's (Asia/Tokyo)
    assert pd.isna(p.loc[1, "preferred_purchase_hour"])
    assert p.loc[5, "first_order_at"] == AS_OF - 200 * DAY and p.loc[5, "last_order_at"] == AS_OF - 60 * DAY
    assert (p["computed_at"] == AS_OF).all()
    assert p["currency"].to_dict()[11] == "JPY" and p["currency"].to_dict()[3] == "EUR"
    assert result.excluded_orders == {
        "cancelled": 1, "refunded": 2, "placed_after_as_of": 1, "engagement_rows_without_customer": 0,
        "customer_out_of_scope": 0, "guest_orders_joined": 0, "guest_orders_without_customer": 0, "no_fx_rate": 0,
        "customers_out_of_scope": 0, "credit_notes": 0, "credit_notes_matched": 0, "orders_refunded_in_full": 0, "customers_refunded_in_full": 0,
    }  # fmt: skip


def test_no_model_means_null_predictions_and_a_recorded_reason():
    result = hand_shop().profiles()
    assert result.profiles["p_alive"].isna().all()
    assert result.profiles["expected_purchases_90d"].isna().all()
    fit = result.model_fits["DE"]
    assert fit.source == "none" and "repeat buyers" in fit.reason


def test_dormant_at_exactly_the_recency_threshold_and_by_p_alive():
    s = Shop()
    s.customer(1)
    s.order(1, AS_OF - 365 * DAY, [(1, 1, 10)])  # exactly 365 days: not dormant yet (at risk)
    s.customer(2)
    s.order(2, AS_OF - 365 * DAY - timedelta(seconds=1), [(1, 1, 10)])
    s.customer(3)  # ten purchase days five days apart, then 255 days of silence
    for k in range(10):
        s.order(3, AS_OF - (300 - 5 * k) * DAY, [(1, 1, 10)])
    s.customer(4)  # a steady buyer: every 20 days, last 20 days ago
    for k in range(8):
        s.order(4, AS_OF - (160 - 20 * k) * DAY, [(1, 1, 10)])
    params = BgNbdParams(r=1.0, alpha=20.0, a=1.0, b=3.0)
    given = {"DE": ModelFit("DE", "market", params, 4, 2, 4, -1.0, True, 1, None)}
    p = by_id(s.profiles(model_fits=given))
    assert p["stage"].to_dict() == {1: "at_risk", 2: "dormant", 3: "dormant", 4: "active"}
    expected = p_alive(params, [9, 7], [45, 140], [300, 160])
    assert p.loc[[3, 4], "p_alive"].tolist() == pytest.approx(expected.tolist())
    assert p.loc[3, "p_alive"] < 0.3 <= p.loc[4, "p_alive"]
    assert p.loc[1, "p_alive"] == 1.0  # no repeat purchase: alive by the model's assumption
    assert p.loc[4, "expected_purchases_90d"] > p.loc[3, "expected_purchases_90d"] > 0


def test_repurchase_interval_comes_from_the_markets_gaps():
    raw = raw_config()
    raw["stages"]["at_risk"].update(min_gaps=4, interval_quantile=0.5)
    s = Shop()
    for cid, gap in ((1, 10), (2, 20), (3, 30), (4, 40)):
        s.customer(cid)
        s.order(cid, AS_OF - (200 + gap) * DAY, [(1, 1, 10)])
        s.order(cid, AS_OF - 200 * DAY, [(1, 1, 10)])
    s.customer(5)
    s.order(5, AS_OF - 26 * DAY, [(1, 1, 10)], status="delivered")
    s.order(5, AS_OF - 25 * DAY, [(1, 1, 10)])  # gap 1 day: fifth gap; median of 1,10,20,30,40 = 20
    s.customer(6)
    s.order(6, AS_OF - 40 * DAY, [(1, 1, 10)])
    s.order(6, AS_OF - 21 * DAY - timedelta(hours=1), [(1, 1, 10)])  # gap 18.96 days; now 21.04 days ago
    result = s.profiles(config=parse_lifecycle_config(raw))
    stats = result.market_stats.set_index("market").loc["DE"]
    assert stats["interval_source"] == "market"
    assert stats["repurchase_interval_days"] == pytest.approx(np.median([1, 10, 20, 30, 40, 18 + 23 / 24]))
    p = by_id(result)
    assert p.loc[6, "stage"] == "at_risk"  # 21.04 days > the 20-day interval
    assert p.loc[5, "stage"] == "new"  # new wins over at_risk (first order 26 days ago)


def test_same_day_orders_are_one_purchase_day_for_the_model_but_two_orders_for_rfm():
    s = Shop()
    s.customer(1)
    s.order(1, AS_OF - 50 * DAY, [(1, 1, 10)])
    s.order(1, AS_OF - 50 * DAY + timedelta(hours=2), [(1, 1, 10)])
    params = BgNbdParams(r=1.0, alpha=20.0, a=1.0, b=3.0)
    p = by_id(s.profiles(model_fits={"DE": ModelFit("DE", "market", params, 1, 0, 1, -1.0, True, 1, None)}))
    assert p.loc[1, "frequency"] == 2
    assert p.loc[1, "p_alive"] == 1.0  # x = 0 repeat purchase days


def test_engagement_absent_then_present():
    s = hand_shop()
    without = by_id(s.profiles())
    assert without["engagement_level"].isna().all()
    assert without[["last_open_at", "last_click_at"]].isna().all().all()

    engagement = pd.DataFrame(
        {
            "customer_id": [1, 3, 4, 5, 6, 999],
            "last_open_at": [AS_OF - 5 * DAY, None, AS_OF - 60 * DAY, AS_OF - 200 * DAY, None, AS_OF],
            "last_click_at": [None, AS_OF - 10 * DAY, None, AS_OF - 200 * DAY, None, None],
        }
    )
    for column in ("last_open_at", "last_click_at"):
        engagement[column] = pd.to_datetime(engagement[column], utc=True)
    result = s.profiles(engagement=engagement)
    with_engagement = by_id(result)
    assert with_engagement["engagement_level"].to_dict() == {
        1: "medium", 2: "none", 3: "high", 4: "medium", 5: "low", 6: "none", 7: "none", 8: "none", 11: "none",
        12: "none",
    }  # fmt: skip
    assert with_engagement.loc[3, "last_click_at"] == AS_OF - 10 * DAY
    assert result.excluded_orders["engagement_rows_without_customer"] == 1
    # Engagement changes tags only, never RFM or stages.
    pd.testing.assert_series_equal(without["stage"], with_engagement["stage"])


def frames_with(change) -> dict[str, pd.DataFrame]:
    f = hand_shop().frames()
    change(f)
    return f


def _set(frame: pd.DataFrame, row: int, column: str, value) -> None:
    frame.loc[row, column] = value


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda f: f.update(customers=pd.concat([f["customers"], f["customers"].iloc[[2]]])), "duplicated: 3"),
        (lambda f: _set(f["customers"], 1, "market", "XX"), "customer_id: 2"),
        (lambda f: _set(f["orders"], 2, "status", "lost"), "status is missing or not one of"),
        (lambda f: _set(f["orders"], 2, "total_amount", -5.0), "order_id: 3"),
        (lambda f: _set(f["order_items"], 0, "product_id", 404), "unknown products; order_item_id: 1"),
        (lambda f: _set(f["order_items"], 1, "order_id", 404), "unknown orders; order_item_id: 2"),
        (lambda f: f.update(orders=f["orders"].drop(columns=["placed_at"])), "orders: missing column(s) placed_at"),
        (
            lambda f: f["orders"].__setitem__("placed_at", f["orders"]["placed_at"].dt.tz_localize(None)),
            "timezone-aware",
        ),
    ],
)
def test_bad_input_is_a_clear_error_naming_the_row(change, fragment):
    f = frames_with(change)
    with pytest.raises(ProfileInputError) as caught:
        compute_profiles(
            f["customers"], f["orders"], f["order_items"], f["products"], markets=MARKETS, as_of=AS_OF, config=CONFIG
        )
    assert fragment in str(caught.value)


def test_naive_as_of_and_unknown_override_market_are_rejected():
    f = hand_shop().frames()
    args = (f["customers"], f["orders"], f["order_items"], f["products"])
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_profiles(*args, markets=MARKETS, as_of=AS_OF.replace(tzinfo=None), config=CONFIG)
    raw = raw_config()
    raw["markets"] = {"ZZ": {"new_days": 10}}
    with pytest.raises(LifecycleConfigError, match="ZZ"):
        compute_profiles(*args, markets=MARKETS, as_of=AS_OF, config=parse_lifecycle_config(raw))


# ---------------------------------------------------------------------------------------------
# configuration


def test_shipped_config_loads_documents_itself_and_overrides_per_market():
    config = load_lifecycle_config()
    assert config.for_market("JP").vip.monetary_quantile != config.stages.vip.monetary_quantile
    assert config.for_market("JP").new_days == config.stages.new_days  # merged over the defaults
    assert config.for_market("DE") == config.stages
    text = describe_config(config)
    for stage in STAGES:
        assert f"| {stage} |" in text
    assert f"at most {config.stages.new_days:g} days ago" in text
    assert "JP: `vip.monetary_quantile`" in text
    assert "| 5 | New customers |" in text


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda r: r["stages"]["vip"].update(monetary_quantile=1.5), "stages.vip.monetary_quantile"),
        (lambda r: r["stages"].update(new_dayz=3), "stages.new_dayz"),
        (lambda r: r.update(markets={"JP": {"vip": {"min_orders": 0}}}), "markets.JP.vip.min_orders"),
        (lambda r: r.update(markets={"jp": {"new_days": 3}}), "markets.jp"),
        (lambda r: r["stages"]["at_risk"].update(min_interval_days=500), "min_interval_days <= default"),
        (lambda r: r["rfm_segments"].pop(3), "R scores 1..5"),
        (lambda r: r.pop("model"), "model"),
    ],
)
def test_invalid_config_names_the_field(mutate, fragment):
    raw = copy.deepcopy(raw_config())
    mutate(raw)
    with pytest.raises(LifecycleConfigError) as caught:
        parse_lifecycle_config(raw, source="test.yaml")
    assert fragment in str(caught.value) and "test.yaml" in str(caught.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(LifecycleConfigError, match="not found"):
        load_lifecycle_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [unclosed\n")
    with pytest.raises(LifecycleConfigError, match="not valid YAML"):
        load_lifecycle_config(broken)


# ---------------------------------------------------------------------------------------------
# the demo shop


@pytest.fixture(scope="module")
def demo():
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    frames = generate_store(6000, seed=7, as_of=as_of)
    config = load_lifecycle_config()
    result = compute_profiles(
        frames["customers"], frames["orders"], frames["order_items"], frames["products"], markets=MARKETS,
        as_of=as_of, config=config,
    )  # fmt: skip
    return frames, result, as_of, config


def test_every_stage_has_members_on_the_demo_shop(demo):
    frames, result, _, _ = demo
    counts = result.profiles["stage"].value_counts()
    assert set(counts.index) == set(STAGES), counts.to_dict()
    assert len(result.profiles) == len(frames["customers"])
    assert {fit.source for fit in result.model_fits.values()} <= {"market", "pooled"}
    assert result.profiles.loc[result.profiles["stage"] != "prospect", "p_alive"].between(0, 1).all()
    assert result.summary_table().splitlines()[0].split()[:3] == ["market", "prospect", "new"]
    xcom = result.to_xcom()
    assert xcom["customers"] == len(frames["customers"])
    assert sum(sum(stages.values()) for stages in xcom["stages"].values()) == len(frames["customers"])
    import json

    json.dumps(xcom)  # serialisable, counts and parameters only


def test_compute_rfm_matches_the_profiles(demo):
    frames, result, as_of, _ = demo
    rfm = compute_rfm(frames["customers"], frames["orders"], markets=MARKETS, as_of=as_of)
    columns = ["customer_id", "market", "recency_days", "frequency", "monetary", "r_score", "f_score", "m_score"]
    pd.testing.assert_frame_equal(rfm[columns], result.profiles[columns])


def test_reusing_model_fits_gives_the_same_predictions(demo):
    frames, result, as_of, config = demo
    again = compute_profiles(
        frames["customers"], frames["orders"], frames["order_items"], frames["products"], markets=MARKETS,
        as_of=as_of, config=config, model_fits={k: v.to_dict() for k, v in result.model_fits.items()},
    )  # fmt: skip
    assert all(fit.reason == "given" for fit in again.model_fits.values())
    pd.testing.assert_frame_equal(again.profiles, result.profiles)


@pytest.mark.parametrize("kind", ["pathlib", "str", "object_storage"])
def test_parquet_snapshot_round_trips(demo, tmp_path, kind):
    _, result, _, _ = demo
    path = tmp_path / "profiles.parquet"
    if kind == "str":
        result.write_parquet(str(path))
    elif kind == "object_storage":
        from airflow.sdk import ObjectStoragePath

        result.write_parquet(ObjectStoragePath(f"file://{path}"))
    else:
        result.write_parquet(path)
    back = pd.read_parquet(path)
    assert len(back) == len(result.profiles)
    assert list(back["customer_id"]) == list(result.profiles["customer_id"])
    assert [list(v) for v in back["favourite_categories"]] == result.profiles["favourite_categories"].tolist()


# ---------------------------------------------------------------------------------------------
# transitions


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with None for nulls (pandas' string dtype holds NaN)."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def test_stage_transitions():
    previous = pd.DataFrame(
        {"customer_id": [1, 2, 3, 4], "market": ["DE"] * 4, "stage": ["active", "new", "vip", "dormant"]}
    )
    current = pd.DataFrame(
        {"customer_id": [1, 2, 3, 5], "market": ["DE"] * 4, "stage": ["at_risk", "new", "active", "prospect"]}
    )
    out = stage_transitions(previous, current, as_of=AS_OF + timedelta(hours=23))
    assert records(out) == [
        {
            "customer_id": 1,
            "market": "DE",
            "from_stage": "active",
            "to_stage": "at_risk",
            "changed_on": date(2026, 3, 1),
        },
        {"customer_id": 3, "market": "DE", "from_stage": "vip", "to_stage": "active", "changed_on": date(2026, 3, 1)},
        {"customer_id": 5, "market": "DE", "from_stage": None, "to_stage": "prospect", "changed_on": date(2026, 3, 1)},
    ]  # customer 4 left the store: no transition
    assert stage_transitions(None, current, as_of=AS_OF).empty  # history starts at the first run
    assert stage_transitions(previous.iloc[:0], current, as_of=AS_OF).empty
    assert stage_transitions(current, current, as_of=AS_OF).empty
    with pytest.raises(ProfileInputError, match="customer_id: 2"):
        stage_transitions(previous, current.assign(stage=["active", "gold", "vip", "new"]), as_of=AS_OF)


# ---------------------------------------------------------------------------------------------
# storage (SQLite and PostgreSQL)


@contextmanager
def sqlite_url(tmp_path):
    yield f"sqlite:///{tmp_path / 'remarketing.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    factory = sqlite_url(tmp_path) if request.param == "sqlite" else fresh_postgres_database("rmk_profiles")
    with factory as url:
        engine = state.create_state_engine(url)
        state.upgrade(engine)
        yield engine
        engine.dispose()


def history_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                segment_history.c.customer_id,
                segment_history.c.from_stage,
                segment_history.c.to_stage,
                segment_history.c.changed_on,
                segment_history.c.run_id,
            ).order_by(segment_history.c.customer_id, segment_history.c.changed_on)
        ).all()
    return [tuple(r) for r in rows]


def test_write_is_idempotent_and_round_trips(engine):
    shop = hand_shop()
    result = shop.profiles()
    empty = load_profiles(engine)  # the first run: no profiles yet, so no transitions either
    assert empty.empty and list(empty.columns) == [*PROFILE_COLUMNS, "run_id"]
    assert stage_transitions(empty, result.profiles, as_of=AS_OF).empty
    first = write_profiles(
        engine, result, stage_transitions(None, result.profiles, as_of=AS_OF), run_id="d1", as_of=AS_OF
    )
    assert first == {"profiles_written": 10, "profiles_deleted": 0, "transitions_appended": 0,
                     "transitions_already_recorded": 0}  # fmt: skip
    stored = load_profiles(engine)
    pd.testing.assert_frame_equal(stored[list(PROFILE_COLUMNS)], result.profiles)
    assert (stored["run_id"] == "d1").all()

    again = write_profiles(engine, result, None, run_id="d1", as_of=AS_OF)
    assert again["profiles_written"] == 10 and again["profiles_deleted"] == 0
    pd.testing.assert_frame_equal(load_profiles(engine), stored)
    assert list(load_profiles(engine, markets=["JP"])["customer_id"]) == [11, 12]
    slim = load_profiles(engine, columns=["market", "stage"])
    assert list(slim.columns) == ["customer_id", "market", "stage"]
    pd.testing.assert_frame_equal(slim, result.profiles[["customer_id", "market", "stage"]])
    with pytest.raises(ValueError, match="no column"):
        load_profiles(engine, columns=["email"])


def test_transitions_are_appended_once_per_day(engine):
    shop = hand_shop()
    day1 = shop.profiles()
    write_profiles(engine, day1, stage_transitions(None, day1.profiles, as_of=AS_OF), run_id="d1", as_of=AS_OF)

    # Next day: customer 3 passes 30 days (new -> active), customer 5 passes the 60-day interval
    # (vip -> at_risk), customer 13 registers; customer 4's order placed at day 2's as-of now counts
    # (still active: two orders are not VIP).
    shop.customer(13)
    day2_at = AS_OF + DAY
    f = shop.frames()
    day2 = compute_profiles(
        f["customers"], f["orders"], f["order_items"], f["products"], markets=MARKETS, as_of=day2_at, config=CONFIG
    )
    previous = load_profiles(engine)
    transitions = stage_transitions(previous, day2.profiles, as_of=day2_at)
    counts = write_profiles(engine, day2, transitions, run_id="d2", as_of=day2_at)
    assert counts["transitions_appended"] == len(transitions) == 3
    expected = [
        (3, "new", "active", date(2026, 3, 2), "d2"),
        (5, "vip", "at_risk", date(2026, 3, 2), "d2"),
        (13, None, "prospect", date(2026, 3, 2), "d2"),
    ]
    assert history_rows(engine) == expected

    # A re-run of day 2: from stored profiles nothing changed; from day 1's profiles the same rows again.
    rerun = write_profiles(engine, day2, stage_transitions(load_profiles(engine), day2.profiles, as_of=day2_at),
                           run_id="d2", as_of=day2_at)  # fmt: skip
    assert rerun["transitions_appended"] == 0
    rerun = write_profiles(engine, day2, transitions, run_id="d2-retry", as_of=day2_at)
    assert rerun == {**rerun, "transitions_appended": 0, "transitions_already_recorded": 3}
    assert history_rows(engine) == expected

    became = transitions_since(engine, to_stage="at_risk", since=date(2026, 2, 24))
    assert records(became) == [
        {"customer_id": 5, "market": "DE", "from_stage": "vip", "to_stage": "at_risk", "changed_on": date(2026, 3, 2)}
    ]
    assert transitions_since(engine, to_stage="at_risk", since=datetime(2026, 3, 3, tzinfo=UTC)).empty
    assert transitions_since(engine, to_stage="at_risk", since=date(2026, 3, 1), markets=["JP"]).empty
    assert len(transitions_since(engine, to_stage="active", since=date(2026, 3, 1), current_only=True)) == 1
    with pytest.raises(ValueError, match="unknown stage"):
        transitions_since(engine, to_stage="gold", since=date(2026, 3, 1))


def test_customers_gone_from_the_store_lose_their_profile_in_covered_markets_only(engine):
    shop = hand_shop()
    full = shop.profiles()
    write_profiles(engine, full, None, run_id="d1", as_of=AS_OF)
    f = shop.frames()
    de_only = f["customers"][(f["customers"]["market"] == "DE") & (f["customers"]["customer_id"] != 1)]
    orders = f["orders"][f["orders"]["customer_id"].isin(de_only["customer_id"])]
    items = f["order_items"][f["order_items"]["order_id"].isin(orders["order_id"])]
    partial = compute_profiles(de_only, orders, items, f["products"], markets=MARKETS, as_of=AS_OF, config=CONFIG)
    counts = write_profiles(engine, partial, None, run_id="d1b", as_of=AS_OF)
    assert counts["profiles_deleted"] == 1  # customer 1 (DE); JP was not in this result and is kept
    assert list(load_profiles(engine)["customer_id"]) == [2, 3, 4, 5, 6, 7, 8, 11, 12]


def test_write_refuses_a_result_of_another_day(engine):
    result = hand_shop().profiles()
    with pytest.raises(ValueError, match="computed as of"):
        write_profiles(engine, result, None, run_id="x", as_of=AS_OF + DAY)


def test_migration_downgrades_and_upgrades_again(engine):
    from alembic import command

    with engine.begin() as connection:
        command.downgrade(state._alembic_config(connection), "0003")
    assert "customer_profiles" not in sa.inspect(engine).get_table_names()
    state.upgrade(engine)
    assert {"customer_profiles", "segment_history"} <= set(sa.inspect(engine).get_table_names())


def test_a_runs_as_of_is_the_param_else_its_data_interval_end_else_its_run_after():
    """lifecycle_segments is Asset-triggered: such a run has no data interval, only run_after."""
    import pendulum

    from remarketing.profiles.tasks import resolve_as_of

    end = pendulum.datetime(2026, 11, 22, tz="UTC")
    after = datetime(2026, 11, 22, 0, 31, 5, tzinfo=UTC)
    assert resolve_as_of("2026-11-20T06:00:00+01:00", data_interval_end=end, run_after=after) == datetime(
        2026, 11, 20, 5, tzinfo=UTC
    )
    assert resolve_as_of("2026-11-20T06:00:00", data_interval_end=None, run_after=after) == datetime(
        2026, 11, 20, 6, tzinfo=UTC
    ), "no offset: UTC"
    assert resolve_as_of(None, data_interval_end=end, run_after=after) == datetime(2026, 11, 22, tzinfo=UTC)
    chosen = resolve_as_of(None, data_interval_end=None, run_after=after)  # Asset-triggered
    assert chosen == after and type(chosen) is datetime and chosen.tzinfo is UTC
    assert resolve_as_of("", data_interval_end=None, run_after=pendulum.instance(after)) == after
    before = datetime.now(UTC)
    assert before <= resolve_as_of(None, data_interval_end=None, run_after=None) <= datetime.now(UTC)
