"""Tie-aware RFM scores: ties share a score, scores are monotone, every level the data supports is used.

The former rule, ``1 + floor(5 (average rank - 1/2) / n)``, is recomputed here independently
(``quintiles``, from a plain sort) to check that untied groups, and any group where it already uses
every level the values support, score exactly as before.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from remarketing.markets import load_markets
from remarketing.profiles.config import describe_config, load_lifecycle_config
from remarketing.profiles.rfm import compute_rfm, scores_within

AS_OF = datetime(2026, 5, 1, 12, tzinfo=UTC)
MARKETS = load_markets()


def quintiles(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The former rule, group by group in plain Python: 1 + floor(5 (average rank - 1/2) / n)."""
    out = np.zeros(len(values), dtype=np.int64)
    for g in set(group.tolist()):
        rows = [i for i in range(len(values)) if group[i] == g]
        ordered = sorted(values[i] for i in rows)
        n = len(rows)
        for i in rows:
            first = ordered.index(values[i]) + 1  # ranks first..last hold this value
            last = first + ordered.count(values[i]) - 1
            out[i] = 1 + (5 * (first + last - 1)) // (2 * n)  # average rank - 1/2 = (first + last - 1) / 2
    return out


def levels_by_value(values: np.ndarray, scores: np.ndarray) -> dict[float, int]:
    """value -> its score, asserting that equal values share one score."""
    mapping: dict[float, int] = {}
    for value, score in zip(values.tolist(), scores.tolist(), strict=True):
        assert mapping.setdefault(value, score) == score, f"tied value {value} got scores {mapping[value]} and {score}"
    return mapping


def assert_tie_aware(values: np.ndarray, group: np.ndarray, scores: np.ndarray) -> None:
    assert ((scores >= 1) & (scores <= 5)).all()
    for g in np.unique(group):
        rows = group == g
        mapping = levels_by_value(values[rows], scores[rows])
        ordered = [mapping[v] for v in sorted(mapping)]
        assert ordered == sorted(ordered), f"group {g}: scores by increasing value {ordered}"
        assert len(set(ordered)) == min(len(ordered), 5), f"group {g}: {len(mapping)} values, levels {ordered}"


def test_a_heavily_tied_frequency_uses_every_level():
    # 40 % bought once, 25 % twice, 15 % three times, the rest 4..13 orders.
    values = np.array([1.0] * 400 + [2.0] * 250 + [3.0] * 150 + [4.0 + i % 10 for i in range(200)])
    group = np.zeros(len(values), dtype=np.int64)
    old = quintiles(values, group)
    assert 1 not in set(old.tolist())  # the former rule leaves level 1 empty: once-buyers score 2
    scores = scores_within(values, group)
    assert_tie_aware(values, group, scores)
    mapping = levels_by_value(values, scores)
    assert (mapping[1.0], mapping[2.0], mapping[3.0]) == (1, 2, 3)
    assert {mapping[v] for v in mapping if v >= 4} == {4, 5}


def test_few_distinct_values_are_spread_by_quantile_position():
    # Three equally common values: 1, 3, 5. One value held by 80 % and two by 10 % each: 3, 4, 5 (the
    # former rule: 3, 5, 5). Two values, one value: as the former rule (2, 4 and 3).
    cases = [
        ([10.0] * 30 + [20.0] * 30 + [30.0] * 30, {10.0: 1, 20.0: 3, 30.0: 5}),
        ([10.0] * 80 + [20.0] * 10 + [30.0] * 10, {10.0: 3, 20.0: 4, 30.0: 5}),
        ([5.0] * 50 + [7.0] * 50, {5.0: 2, 7.0: 4}),
        ([5.0] * 12, {5.0: 3}),
    ]
    for values, expected in cases:
        values = np.array(values)
        group = np.zeros(len(values), dtype=np.int64)
        scores = scores_within(values, group)
        assert levels_by_value(values, scores) == expected, values
        assert_tie_aware(values, group, scores)
    assert levels_by_value(np.array([10.0] * 80 + [20.0] * 10 + [30.0] * 10), quintiles(
        np.array([10.0] * 80 + [20.0] * 10 + [30.0] * 10), np.zeros(100, dtype=np.int64)
    )) == {10.0: 3, 20.0: 5, 30.0: 5}  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([0, 3, 7]), st.integers(-4, 4)), min_size=1, max_size=120),
    st.sampled_from([1.0, -1.0]),
)
def test_random_ties_are_monotone_share_scores_and_use_every_supported_level(pairs, sign):
    group = np.array([g for g, _ in pairs])
    values = np.array([sign * v for _, v in pairs], dtype=np.float64)
    scores = scores_within(values, group)
    assert_tie_aware(values, group, scores)
    # Where the former rule already uses every level the values support, nothing changes.
    old = quintiles(values, group)
    for g in np.unique(group):
        rows = group == g
        if len(set(old[rows].tolist())) == min(len(set(values[rows].tolist())), 5):
            assert (scores[rows] == old[rows]).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 150), st.lists(st.integers(0, 2), min_size=150, max_size=150), st.randoms(use_true_random=False))
def test_an_untied_group_gets_the_former_quintile_scores(n, groups, random):
    values = np.array(random.sample(range(-10_000, 10_000), n), dtype=np.float64) / 7
    group = np.array(groups[:n])
    assert (scores_within(values, group) == quintiles(values, group)).all()


def test_groups_are_scored_independently_of_each_other_and_of_row_order():
    rng = np.random.default_rng(11)
    a = rng.choice([1.0, 1.0, 1.0, 2.0, 3.0, 5.0, 8.0], size=300)
    b = rng.integers(0, 3, size=200).astype(np.float64)
    alone = scores_within(a, np.full(len(a), 4))
    values = np.concatenate([a, b])
    group = np.concatenate([np.full(len(a), 4), np.full(len(b), 1)])
    together = scores_within(values, group)
    assert (together[: len(a)] == alone).all()
    assert (together[len(a) :] == scores_within(b, np.zeros(len(b), dtype=np.int64))).all()
    changed = scores_within(np.concatenate([a, b * 100 + 7]), group)  # another market's values do not matter
    assert (changed[: len(a)] == alone).all()
    shuffle = rng.permutation(len(values))
    assert (scores_within(values[shuffle], group[shuffle]) == together[shuffle]).all()


def test_empty_input_gives_no_scores():
    assert scores_within(np.empty(0), np.empty(0, dtype=np.int64)).shape == (0,)


def test_recency_scores_the_most_recent_highest_with_ties():
    # Six DE buyers last ordered 100 days ago, four others 4, 3, 2 and 1 day ago. The former rule gives
    # 2, 4, 4, 5, 5; five distinct recencies use all five levels, most recent highest.
    days = [100] * 6 + [4, 3, 2, 1]
    customers = pd.DataFrame(
        {
            "customer_id": range(1, len(days) + 1),
            "market": pd.array(["DE"] * len(days), dtype="str"),
            "time_zone": pd.array(["Europe/Berlin"] * len(days), dtype="str"),
            "country": pd.array(["DE"] * len(days), dtype="str"),
        }
    )
    orders = pd.DataFrame(
        {
            "order_id": range(1, len(days) + 1),
            "customer_id": range(1, len(days) + 1),
            "market": pd.array(["DE"] * len(days), dtype="str"),
            "currency": pd.array([MARKETS["DE"].currency] * len(days), dtype="str"),
            "status": pd.array(["delivered"] * len(days), dtype="str"),
            "total_amount": [10.0] * len(days),
            "discount_amount": [0.0] * len(days),
            "coupon_code": pd.array([None] * len(days), dtype="str"),
            "placed_at": pd.to_datetime([AS_OF - timedelta(days=d) for d in days], utc=True).as_unit("us"),
        }
    )
    rfm = compute_rfm(customers, orders, markets=MARKETS, as_of=AS_OF).set_index("customer_id")
    assert rfm["r_score"].tolist() == [1] * 6 + [2, 3, 4, 5]
    assert rfm["f_score"].tolist() == [3] * 10  # everyone bought once: one value, the middle score
    assert rfm["m_score"].tolist() == [3] * 10


def test_describe_config_explains_the_tie_aware_scores():
    text = describe_config(load_lifecycle_config())
    assert "**How RFM scores are given.**" in text
    for fragment in ("Equal values always share a score", "min(k, 5)", "a higher value never scores lower",
                     "oldest to most recent last order"):  # fmt: skip
        assert fragment in text, fragment
