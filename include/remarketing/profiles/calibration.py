"""Held-out check of the purchase model (remarketing.profiles.clv), per market and by decile.

Why: a BG/NBD fit can converge and still predict badly for a market. ``calibration_report`` fits
on the history before a split date and compares predicted with actual purchase days in the
held-out horizon, per market and by decile of prediction, beside a naive forecast (the customer's
past repeat rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from remarketing.profiles.clv import DAY_US, ModelFit, expected_purchases, fit_market_models, purchase_history
from remarketing.profiles.frames import customer_orders


@dataclass
class CalibrationReport:
    """Held-out check of the purchase model; ``markets`` has one row per market plus ``ALL``."""

    split_at: datetime
    horizon_days: int
    markets: pd.DataFrame
    deciles: pd.DataFrame
    fits: dict[str, ModelFit]

    def to_markdown(self) -> str:
        lines = [
            f"Fitted on orders before {self.split_at:%Y-%m-%d}, predicting purchase days in the next "
            f"{self.horizon_days} days (customers with a purchase before the split).",
            "",
            "| market | customers | model | predicted | actual | predicted/actual | MAE | MAE naive |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in self.markets.itertuples():
            lines.append(
                f"| {row.market} | {row.customers} | {row.model} | {row.predicted:.0f} | {row.actual:.0f} | "
                f"{row.ratio:.3f} | {row.mae:.3f} | {row.mae_naive:.3f} |"
            )
        lines += ["", "Calibration by decile of prediction (all markets):", ""]
        lines += ["| decile | customers | mean predicted | mean actual | share who bought |", "| ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for row in self.deciles[self.deciles["market"] == "ALL"].itertuples():
            lines.append(
                f"| {row.decile} | {row.customers} | {row.mean_predicted:.3f} | {row.mean_actual:.3f} | "
                f"{row.share_bought:.3f} |"
            )
        return "\n".join(lines)


def _decile_table(market: str, predicted: np.ndarray, actual: np.ndarray, deciles: int) -> pd.DataFrame:
    # Rank first so that ties (many identical predictions) still split into equal-sized bins.
    rank = pd.Series(predicted).rank(method="first").to_numpy()
    decile = np.minimum((rank - 1) * deciles // max(len(predicted), 1), deciles - 1).astype(np.int64) + 1
    frame = pd.DataFrame({"decile": decile, "predicted": predicted, "actual": actual, "bought": actual > 0})
    table = frame.groupby("decile").agg(
        customers=("predicted", "size"),
        mean_predicted=("predicted", "mean"),
        mean_actual=("actual", "mean"),
        share_bought=("bought", "mean"),
    )
    return table.reset_index().assign(market=market)[
        ["market", "decile", "customers", "mean_predicted", "mean_actual", "share_bought"]
    ]


def calibration_report(
    orders: pd.DataFrame,
    customers: pd.DataFrame,
    *,
    split_at: datetime,
    horizon_days: int = 90,
    min_repeat_buyers: int = 50,
    fit_sample: int = 100_000,
    deciles: int = 10,
) -> CalibrationReport:
    """Fit per market on orders before ``split_at``; compare predictions with the next ``horizon_days``.

    Customers are those with a valid order before ``split_at``. Reported per market: predicted and
    actual purchase days in the horizon, their ratio, mean absolute error per customer, and the
    MAE of a naive forecast (the customer's past repeat rate x horizon) for comparison.
    """
    if split_at.tzinfo is None:
        raise ValueError("split_at must be timezone-aware (UTC)")
    if horizon_days <= 0:
        raise ValueError("horizon_days must be positive")
    ids, pos, placed, valid = customer_orders(customers, orders)
    split_us = (split_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    before = valid & (placed < split_us)
    history = purchase_history(pos[before], placed[before], len(ids))
    x, t_x, T = history.model_inputs(split_us)
    buyers = np.flatnonzero(history.purchase_days > 0)
    markets = customers["market"].astype(object).to_numpy()
    actual_all = _actual_purchase_days(pos, placed, valid, split_us, horizon_days, len(ids))

    fits = fit_market_models(
        markets[buyers], ids[buyers], x[buyers], t_x[buyers], T[buyers],
        min_repeat_buyers=min_repeat_buyers, fit_sample=fit_sample,
    )  # fmt: skip
    predicted = _predictions(fits, markets[buyers], buyers, horizon_days, x, t_x, T)
    actual = actual_all[buyers].astype(np.float64)
    naive = x[buyers] / np.maximum(T[buyers], 1.0) * horizon_days

    rows_out, tables = _market_rows(fits, markets[buyers], predicted, actual, naive, deciles)
    return CalibrationReport(
        split_at=split_at.astimezone(UTC),
        horizon_days=horizon_days,
        markets=pd.DataFrame(rows_out),
        deciles=pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(),
        fits=fits,
    )


def _actual_purchase_days(
    pos: np.ndarray, placed: np.ndarray, valid: np.ndarray, split_us: int, horizon_days: int, n: int
) -> np.ndarray:
    """Actual purchase days per customer in [split, split + horizon): what the predictions are held against."""
    end_us = split_us + horizon_days * DAY_US
    after = valid & (placed >= split_us) & (placed < end_us)
    future_key = np.unique(pos[after] * (1 << 24) + np.floor_divide(placed[after] - split_us, DAY_US))
    return np.bincount((future_key >> 24).astype(np.int64), minlength=n)


def _predictions(
    fits: dict[str, ModelFit], buyer_markets: np.ndarray, buyers: np.ndarray, horizon_days: int, x, t_x, T
) -> np.ndarray:
    """Expected purchase days in the horizon per buyer; NaN in a market without a usable model."""
    predicted = np.full(len(buyers), np.nan)
    for code, fit in fits.items():
        rows = np.flatnonzero(buyer_markets == code)
        if fit.params is not None:
            b = buyers[rows]
            predicted[rows] = expected_purchases(fit.params, horizon_days, x[b], t_x[b], T[b])
    return predicted


def _market_rows(
    fits: dict[str, ModelFit],
    buyer_markets: np.ndarray,
    predicted: np.ndarray,
    actual: np.ndarray,
    naive: np.ndarray,
    deciles: int,
) -> tuple[list[dict], list[pd.DataFrame]]:
    """One summary row per market plus ALL, and the decile tables of the markets with a model."""
    rows_out, tables = [], []
    for code in [*sorted(fits), "ALL"]:
        # ALL covers the markets that have a model; a market without one is listed with no prediction.
        sel = ~np.isnan(predicted) if code == "ALL" else buyer_markets == code
        if not sel.any():
            continue
        modelled = not np.isnan(predicted[sel]).any()
        rows_out.append(
            {
                "market": code,
                "customers": int(sel.sum()),
                "model": "per market" if code == "ALL" else fits[code].source,
                "predicted": float(predicted[sel].sum()) if modelled else np.nan,
                "actual": float(actual[sel].sum()),
                "ratio": float(predicted[sel].sum() / max(actual[sel].sum(), 1e-9)) if modelled else np.nan,
                "mae": float(np.mean(np.abs(predicted[sel] - actual[sel]))) if modelled else np.nan,
                "mae_naive": float(np.mean(np.abs(naive[sel] - actual[sel]))),
            }
        )
        if modelled:
            tables.append(_decile_table(code, predicted[sel], actual[sel], deciles))
    return rows_out, tables
