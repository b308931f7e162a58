"""RFM: recency, frequency and monetary value per customer, their 1..5 scores and the RFM segment.

Why apart: RFM needs only customers and orders. ``compute_rfm`` computes it alone with the same
code, so the same figures, as the full profiles (remarketing.profiles.lifecycle, where the
definitions are).
"""

from __future__ import annotations

from datetime import datetime
from itertools import combinations_with_replacement

import numpy as np
import pandas as pd

from remarketing.markets import MarketConfig
from remarketing.profiles.clv import DAY_US, PurchaseHistory, purchase_history
from remarketing.profiles.config import LifecycleConfig
from remarketing.profiles.inputs import (
    Customers,
    Orders,
    as_of_micros,
    code_labels,
    profile_errors,
    read_customers,
    read_orders,
)


def scores_within(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """1..5 within each group, higher values scoring higher; ties share a score.

    Sorted within a group, the n values form k blocks of equal values ending at the cumulative
    counts c_1 < ... < c_k = n (c_0 = 0). Four cuts sit at the quintile positions s·n/5 (s = 1..4);
    each is moved to a block edge c_g, and a block's score is 1 + the cuts at or below its lower
    edge. Each cut goes to its nearest edge, ties to the lower one: exactly the former rule
    ``1 + floor(5 (average rank - 1/2) / n)``, so an untied group (and any group where this
    already uses every level) scores as before. When ties would leave a level empty (two cuts
    on one edge, or a cut below the lowest / above the highest value), the cuts are instead put
    on edges between distinct values, each such edge getting one when k <= 5 and no two cuts
    sharing one when k >= 5, with the least total displacement sum |5 c_g - s n| (then the lowest
    edges). So a group with k distinct values uses min(k, 5) levels, placed by quantile position
    (three equal blocks: 1, 3, 5; 80/10/10 %: 3, 4, 5), and scores never decrease with the value.
    Recency is scored on the last order's time, so the most recent buyers score highest.
    Vectorised: one sort; the loop is per group, the placement O(k) numpy.
    """
    if not len(values):
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((values, group))
    v, g = values[order], group[order]
    starts = np.ones(len(v), dtype=bool)
    starts[1:] = (g[1:] != g[:-1]) | (v[1:] != v[:-1])
    block = np.cumsum(starts) - 1
    block_start = np.flatnonzero(starts)
    block_end = np.append(block_start[1:], len(v))
    block_group = g[block_start]
    group_first = np.flatnonzero(np.r_[True, block_group[1:] != block_group[:-1]])
    group_last = np.append(group_first[1:], len(block_start))
    block_score = np.empty(len(block_start), dtype=np.int64)
    for first, last in zip(group_first, group_last, strict=True):
        counts = block_end[first:last] - block_start[first]  # c_1..c_k
        block_score[first:last] = _block_scores(counts)
    scores = np.empty(len(v), dtype=np.int64)
    scores[order] = block_score[block]
    return scores


def _block_scores(counts: np.ndarray) -> np.ndarray:
    """Scores of the k blocks of one group from their cumulative counts c_1..c_k (see ``scores_within``)."""
    k, n = len(counts), int(counts[-1])
    edges5 = 5 * np.r_[0, counts]  # 5 c_g for g = 0..k: integer arithmetic throughout
    targets = np.arange(1, 5, dtype=np.int64) * n  # 5 × (s n / 5)
    above = np.searchsorted(edges5, targets, side="left")  # first edge at or above each cut (1..k)
    cuts = np.where(targets - edges5[above - 1] <= edges5[above] - targets, above - 1, above)
    if len(np.unique(cuts[(cuts >= 1) & (cuts <= k - 1)])) < min(k - 1, 4):
        cuts = _spread_cuts(edges5, targets) if k >= 5 else _cover_cuts(edges5, targets)
    return 1 + np.searchsorted(cuts, np.arange(k), side="right")


def _spread_cuts(edges5: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """k >= 5: four distinct inner edges 1 <= g_1 < ... < g_4 <= k - 1, least total displacement, lowest first."""
    inner = edges5[1:-1]  # edges 1..k-1
    cost = np.abs(inner[None, :] - targets[:, None])  # (4, k - 1)
    # best[s, i]: least cost of cuts s..4 with cut s on inner edge i (later cuts strictly above).
    best = cost.copy()
    for s in (2, 1, 0):
        later = np.minimum.accumulate(best[s + 1, ::-1])[::-1]  # min over edges >= i
        best[s, :-1] += later[1:]
        best[s, -1] = np.iinfo(np.int64).max // 4  # no room above for the later cuts
    cuts = np.empty(4, dtype=np.int64)
    low = 0
    for s in range(4):
        i = low + int(np.argmin(best[s, low:]))  # first minimum: the lowest edge among equals
        cuts[s] = i + 1
        low = i + 1
    return cuts


def _cover_cuts(edges5: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """k < 5: non-decreasing cuts on edges 0..k covering every inner edge, least total displacement, lowest first."""
    k = len(edges5) - 1
    needed = set(range(1, k))
    options = [c for c in combinations_with_replacement(range(k + 1), 4) if needed <= set(c)]
    best = min(options, key=lambda c: int(np.abs(edges5[list(c)] - targets).sum()))  # first: lexicographic
    return np.array(best, dtype=np.int64)


@profile_errors
def compute_rfm(customers: pd.DataFrame, orders: pd.DataFrame, *, markets: MarketConfig, as_of: datetime, fx=None):
    """RFM alone (recency, frequency, monetary, scores) for every customer; the same figures as the profiles.

    ``fx``: FX rates for orders in another currency than their market's (default: the configured ones).
    """
    as_of_us = as_of_micros(as_of)
    cust = read_customers(customers, markets)
    ords = read_orders(orders, cust, as_of_us, fx)
    history = purchase_history(ords.customer[ords.valid], ords.placed[ords.valid], len(cust.ids))
    rfm = rfm_figures(cust, ords, history, as_of_us)
    return pd.DataFrame(
        {
            "customer_id": cust.ids,
            "market": code_labels(cust.codes, cust.market),
            **{k: rfm[k] for k in ("recency_days", "frequency", "monetary")},
            **{k: pd.arrays.IntegerArray(rfm[k], ~rfm["buyer"]) for k in ("r_score", "f_score", "m_score")},
        }
    )


def rfm_figures(cust: Customers, ords: Orders, history: PurchaseHistory, as_of_us: int) -> dict[str, np.ndarray]:
    """Recency, frequency, monetary and their scores per sorted customer; one code for RFM alone and the profiles."""
    n = len(cust.ids)
    valid_customer = ords.customer[ords.valid]
    frequency = np.bincount(valid_customer, minlength=n).astype(np.int64)
    monetary = np.bincount(valid_customer, weights=ords.total[ords.valid], minlength=n)
    if ords.money_back is not None:
        monetary = monetary + ords.money_back  # credit notes matched to no order: net of them
    buyer = frequency > 0
    recency = np.where(buyer, (as_of_us - history.last_at) / DAY_US, np.nan)
    rows = np.flatnonzero(buyer)
    group = cust.market[rows]
    r_score = np.zeros(n, dtype=np.int64)
    f_score = np.zeros(n, dtype=np.int64)
    m_score = np.zeros(n, dtype=np.int64)
    r_score[rows] = scores_within(history.last_at[rows].astype(np.float64), group)
    f_score[rows] = scores_within(frequency[rows].astype(np.float64), group)
    m_score[rows] = scores_within(monetary[rows], group)
    return {
        "buyer": buyer, "recency_days": recency, "frequency": frequency, "monetary": monetary,
        "r_score": r_score, "f_score": f_score, "m_score": m_score,
    }  # fmt: skip


def rfm_segments(rfm: dict[str, np.ndarray], config: LifecycleConfig) -> tuple[np.ndarray, list[str]]:
    """Segment code per customer (-1 for prospects) by R score and the F/M mean rounded up; and the sorted names."""
    fm = (rfm["f_score"] + rfm["m_score"] + 1) // 2
    segment_names = sorted({name for row in config.rfm_segments.values() for name in row})
    grid = np.zeros((6, 6), dtype=np.int64)
    for r, row in config.rfm_segments.items():
        grid[r, 1:] = [segment_names.index(name) for name in row]
    return np.where(rfm["buyer"], grid[rfm["r_score"], fm], -1), segment_names
