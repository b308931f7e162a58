"""RFM: recency, frequency and monetary value per customer, their 1..5 scores and the RFM segment.

Why apart: RFM needs only customers and orders. ``compute_rfm`` computes it alone with the same
code, so the same figures, as the full profiles (remarketing.profiles.lifecycle, where the
definitions are).
"""

from __future__ import annotations

from datetime import datetime

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


def _scores(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """1..5 within each group: 1 + floor(5 (rank - 1/2) / n) with the average rank; ties share a score."""
    if not len(values):
        return np.empty(0, dtype=np.int64)
    rank = pd.Series(values).groupby(group).rank(method="average").to_numpy()
    twice = np.rint(rank * 2).astype(np.int64)  # average ranks are multiples of 1/2: exact integers
    n = np.bincount(group)[group]
    return 1 + (5 * (twice - 1)) // (2 * n)


@profile_errors
def compute_rfm(customers: pd.DataFrame, orders: pd.DataFrame, *, markets: MarketConfig, as_of: datetime):
    """RFM alone (recency, frequency, monetary, scores) for every customer; the same figures as the profiles."""
    as_of_us = as_of_micros(as_of)
    cust = read_customers(customers, markets)
    ords = read_orders(orders, cust, as_of_us)
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
    buyer = frequency > 0
    recency = np.where(buyer, (as_of_us - history.last_at) / DAY_US, np.nan)
    rows = np.flatnonzero(buyer)
    group = cust.market[rows]
    r_score = np.zeros(n, dtype=np.int64)
    f_score = np.zeros(n, dtype=np.int64)
    m_score = np.zeros(n, dtype=np.int64)
    r_score[rows] = _scores(history.last_at[rows].astype(np.float64), group)
    f_score[rows] = _scores(frequency[rows].astype(np.float64), group)
    m_score[rows] = _scores(monetary[rows], group)
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
