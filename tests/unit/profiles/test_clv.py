"""BG/NBD purchase model: likelihood by hand, gradient, parameter recovery, predictions, fallbacks, calibration."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from demo_shop.generator import generate_store
from remarketing.profiles.calibration import calibration_report
from remarketing.profiles.clv import (
    BgNbdParams,
    ModelFit,
    _Objective,
    expected_purchases,
    expected_purchases_closed_form,
    fit_bgnbd,
    fit_market_models,
    log_likelihood,
    p_alive,
    simulate_bgnbd,
)
from remarketing.profiles.frames import ModelInputError

ONES = BgNbdParams(1.0, 1.0, 1.0, 1.0)
TRUE = BgNbdParams(r=0.8, alpha=40.0, a=0.7, b=2.5)


def test_likelihood_of_hand_computable_cases():
    # x = 0, T = 1: B(1,1)/B(1,1) * G(1) 1^1 / (G(1) (1+1)^1) = 1/2
    # x = 1, t_x = 1, T = 2: B(1,2)/B(1,1) * 1/3^2 + B(2,1)/B(1,1) * 1/2^2 = 1/18 + 1/8 = 13/72
    assert np.exp(log_likelihood(ONES, [0, 1], [0, 1], [1, 2])) == pytest.approx([1 / 2, 13 / 72], rel=1e-12)
    # r=2, alpha=3, a=2, b=4, x=2, t_x=1, T=5, written out with Gamma and Beta functions directly.
    from scipy.special import beta, gamma

    r, alpha, a, b, x, tx, T = 2.0, 3.0, 2.0, 4.0, 2, 1.0, 5.0
    common = gamma(r + x) * alpha**r / gamma(r)
    direct = beta(a, b + x) / beta(a, b) * common / (alpha + T) ** (r + x)
    direct += beta(a + 1, b + x - 1) / beta(a, b) * common / (alpha + tx) ** (r + x)
    got = np.exp(log_likelihood(BgNbdParams(r, alpha, a, b), [x], [tx], [T]))[0]
    assert got == pytest.approx(direct, rel=1e-12)


def test_p_alive_by_hand():
    # x = 1, t_x = 1, T = 2, all ones: 1 / (1 + 1/1 * (3/2)^2) = 1 / 3.25
    assert p_alive(ONES, [0, 1], [0, 1], [5, 2]).tolist() == pytest.approx([1.0, 1 / 3.25])


def test_analytic_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    T = rng.uniform(50, 700, 2000)
    x, t_x, _, _ = simulate_bgnbd(TRUE, T, rng)
    objective = _Objective(x.astype(float), t_x, T)
    theta = np.log([0.6, 25.0, 1.3, 3.1])
    _, grad = objective(theta)
    step = 1e-6
    numeric = [(objective(theta + step * e)[0] - objective(theta - step * e)[0]) / (2 * step) for e in np.eye(4)]
    assert grad == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_fit_recovers_known_parameters_from_simulated_customers():
    rng = np.random.default_rng(11)
    T = rng.uniform(100, 730, 40_000)
    x, t_x, _, _ = simulate_bgnbd(TRUE, T, rng)
    outcome = fit_bgnbd(x, t_x, T)
    assert outcome.converged, outcome.message
    got = outcome.params
    assert got.r == pytest.approx(TRUE.r, rel=0.1)
    assert got.alpha == pytest.approx(TRUE.alpha, rel=0.1)
    assert got.a == pytest.approx(TRUE.a, rel=0.2)
    assert got.b == pytest.approx(TRUE.b, rel=0.2)
    # The optimum beats the true parameters on this sample (it is the maximum).
    assert outcome.log_likelihood >= np.mean(log_likelihood(TRUE, x, t_x, T))


def test_quadrature_matches_the_hypergeometric_closed_form():
    x = np.array([0, 1, 3, 10, 25])
    t_x = np.array([0.0, 30.0, 100.0, 200.0, 300.0])
    T = np.array([50.0, 120.0, 400.0, 250.0, 310.0])
    for params in (TRUE, BgNbdParams(2.0, 60.0, 3.0, 9.0), BgNbdParams(0.3, 10.0, 0.4, 1.2)):
        quad = expected_purchases(params, 90, x, t_x, T)
        closed = expected_purchases_closed_form(params, 90, x, t_x, T)
        assert quad == pytest.approx(closed, rel=1e-7)


def test_quadrature_stays_finite_where_the_closed_form_breaks():
    params = BgNbdParams(0.5, 20.0, 1.0, 3.0)  # a = 1: the closed form divides by a - 1
    x, t_x, T = np.array([0, 5, 200]), np.array([0.0, 50.0, 600.0]), np.array([10.0, 60.0, 610.0])
    with np.errstate(all="ignore"):
        closed = expected_purchases_closed_form(params, 90, x, t_x, T)
    assert not np.isfinite(closed).all()
    quad = expected_purchases(params, 90, x, t_x, T)
    assert np.isfinite(quad).all() and (quad > 0).all()
    # Continuous in a around 1: agrees with the closed form just off the singular point.
    near = expected_purchases_closed_form(BgNbdParams(0.5, 20.0, 1.0 + 1e-4, 3.0), 90, x, t_x, T)
    assert quad == pytest.approx(near, rel=1e-3)


def test_predictions_match_simulated_futures_on_average():
    """Law of total expectation: mean E[Y | history] equals the mean simulated future; mean P(alive) the share alive."""
    rng = np.random.default_rng(5)
    T = rng.uniform(30, 700, 60_000)
    x, t_x, alive, future = simulate_bgnbd(TRUE, T, rng, extra_days=90)
    predicted = expected_purchases(TRUE, 90, x, t_x, T)
    assert predicted.sum() == pytest.approx(future.sum(), rel=0.04)
    assert p_alive(TRUE, x, t_x, T).mean() == pytest.approx(alive.mean(), abs=0.01)
    # And by decile of prediction (calibration, not just the total).
    order = np.argsort(predicted)
    for chunk in np.array_split(order, 5):
        assert predicted[chunk].mean() == pytest.approx(future[chunk].mean(), rel=0.12, abs=0.01)


def test_small_markets_fall_back_to_the_pooled_fit_with_a_reason():
    rng = np.random.default_rng(2)
    T = rng.uniform(100, 700, 6000)
    x, t_x, _, _ = simulate_bgnbd(TRUE, T, rng)
    market = np.array(["US"] * 5990 + ["BR"] * 10, dtype=object)
    ids = np.arange(1, 6001)
    fits = fit_market_models(market, ids, x.astype(float), t_x, T, min_repeat_buyers=50, fit_sample=100_000)
    assert fits["US"].source == "market" and fits["US"].reason is None
    assert fits["BR"].source == "pooled" and "repeat buyers (< 50)" in fits["BR"].reason
    assert fits["BR"].params is not None and fits["BR"].customers == 10
    nobody = fit_market_models(market, ids, np.zeros(6000), np.zeros(6000), T, min_repeat_buyers=50, fit_sample=1000)
    assert {f.source for f in nobody.values()} == {"none"}
    assert "all markets together have 0 repeat buyers" in nobody["US"].reason

    given = {"BR": fits["US"].to_dict()}
    reused = fit_market_models(market, ids, x.astype(float), t_x, T, min_repeat_buyers=50, fit_sample=1000, given=given)
    assert reused["BR"].params == fits["US"].params and reused["BR"].reason == "given"
    assert ModelFit.from_dict(json.loads(json.dumps(fits["US"].to_dict()))) == fits["US"]


def test_sampled_fit_does_not_depend_on_row_order():
    rng = np.random.default_rng(8)
    T = rng.uniform(100, 700, 5000)
    x, t_x, _, _ = simulate_bgnbd(TRUE, T, rng)
    ids = rng.permutation(np.arange(10_000, 15_000))
    market = np.array(["DE"] * 5000, dtype=object)
    a = fit_market_models(market, ids, x.astype(float), t_x, T, min_repeat_buyers=10, fit_sample=2000)["DE"]
    p = rng.permutation(5000)
    b = fit_market_models(market, ids[p], x[p].astype(float), t_x[p], T[p], min_repeat_buyers=10, fit_sample=2000)
    assert a.fitted_on == 2000
    assert b["DE"].params.r == pytest.approx(a.params.r, rel=1e-6)
    assert b["DE"].params.b == pytest.approx(a.params.b, rel=1e-6)


def test_parameters_must_be_positive_and_inputs_consistent():
    with pytest.raises(ValueError, match="parameter a"):
        BgNbdParams(1.0, 1.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="t_x <= T"):
        p_alive(ONES, [1], [5], [3])


@pytest.fixture(scope="module")
def demo_calibration():
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    frames = generate_store(12_000, seed=7, as_of=as_of)
    report = calibration_report(frames["orders"], frames["customers"], split_at=as_of - timedelta(days=90))
    return frames, report


def test_calibration_on_the_demo_shop(demo_calibration):
    frames, report = demo_calibration
    markets = report.markets.set_index("market")
    assert set(markets.index) == set(frames["customers"]["market"]) | {"ALL"}
    overall = markets.loc["ALL"]
    assert 0.8 <= overall["ratio"] <= 1.2, report.to_markdown()
    assert overall["mae"] < overall["mae_naive"], report.to_markdown()
    deciles = report.deciles[report.deciles["market"] == "ALL"].set_index("decile")
    assert len(deciles) == 10 and deciles["customers"].sum() == overall["customers"]
    # The top decile buys far more than the bottom one, and close to what was predicted for it.
    assert deciles.loc[10, "mean_actual"] > 5 * deciles.loc[1, "mean_actual"]
    assert deciles.loc[10, "mean_predicted"] == pytest.approx(deciles.loc[10, "mean_actual"], rel=0.3)
    text = report.to_markdown()
    assert "| ALL |" in text and "| decile |" in text


def test_calibration_counts_actual_purchase_days_in_the_horizon():
    split = datetime(2026, 1, 1, tzinfo=UTC)
    day = timedelta(days=1)
    customers = pd.DataFrame({"customer_id": [1, 2], "market": ["DE", "DE"]})
    times = [split - 100 * day, split - 50 * day, split + day, split + day + timedelta(hours=3), split + 10 * day,
             split + 40 * day, split - 20 * day, split + 5 * day]  # fmt: skip
    orders = pd.DataFrame(
        {
            "order_id": range(1, 9),
            "customer_id": [1, 1, 1, 1, 1, 1, 2, 2],
            "status": ["delivered"] * 4 + ["refunded", "delivered", "delivered", "cancelled"],
            "placed_at": pd.to_datetime(times, utc=True),
        }
    )
    report = calibration_report(orders, customers, split_at=split, horizon_days=30, min_repeat_buyers=1)
    row = report.markets.set_index("market").loc["DE"]
    assert row["customers"] == 2
    assert row["actual"] == 1  # one purchase day (two orders) on day 1; refunded, cancelled and day 40 do not count
    with pytest.raises(ModelInputError, match="order_id: 9"):
        calibration_report(
            pd.concat([orders, orders.iloc[[0]].assign(order_id=9, customer_id=3)]), customers, split_at=split
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        calibration_report(orders, customers, split_at=split.replace(tzinfo=None))


@pytest.mark.parametrize(("a", "b"), [(0.7, 2.5), (1.0, 1.0), (0.5, 0.5), (0.2, 0.8), (5.0, 400.0), (0.7, 2e5)])
def test_beta_quadrature_integrates_beta_moments(a, b):
    from remarketing.profiles.clv import _beta_nodes

    p, w = _beta_nodes(a, b, 32)
    assert np.isfinite(p).all() and np.isfinite(w).all() and w.sum() == pytest.approx(1.0)
    assert (p * w).sum() == pytest.approx(a / (a + b), rel=1e-9)
    assert (p**2 * w).sum() == pytest.approx(a * (a + 1) / ((a + b) * (a + b + 1)), rel=1e-9)
    if b < 1000:  # scipy's roots_jacobi agrees where its total mass does not overflow
        from scipy.special import roots_jacobi

        with np.errstate(invalid="ignore"):  # scipy's own 0/0 at a + b = 1, which it then repairs
            u, weights = roots_jacobi(32, b - 1, a - 1)
        assert p == pytest.approx((1 + u) / 2, abs=1e-12)
        assert w == pytest.approx(weights / weights.sum(), abs=1e-10)


def test_predictions_stay_finite_for_extreme_parameters():
    params = BgNbdParams(0.05, 3.0, 0.3, 150_000.0)  # almost no dropout
    x, t_x, T = np.array([0, 40, 400]), np.array([0.0, 300.0, 700.0]), np.array([10.0, 320.0, 701.0])
    predicted = expected_purchases(params, 90, x, t_x, T)
    assert np.isfinite(predicted).all() and (predicted >= 0).all()
