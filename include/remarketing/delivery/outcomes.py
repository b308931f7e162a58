"""Every audience member ends with exactly one outcome and its reason; what they are, and how they are kept."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from remarketing.delivery.messages import SendResult

OUTCOMES = (
    "sent",
    "scheduled",
    "suppressed",
    "capped",
    "gated",
    "no_consent",
    "invalid_address",
    "outside_window",
    "already_sent",
    "converted",
    "failed",
    "unknown",
)
SCHEDULED_AFTER = timedelta(minutes=1)  # accepted with a send_at later than this: "scheduled"
_EMAIL = re.compile(r"[^\s@<>()\"',;:]+@[^\s@<>()\"',;:]+")


@dataclass(frozen=True)
class RenderFailure:
    """A member the render callback could not (or should not) mail; ``outcome`` failed or converted."""

    ledger_keys: tuple[str, ...]
    error: str
    outcome: str = "failed"


def scrub(text: object) -> str:
    """No addresses in reasons: they end up in logs and Parquet."""
    return _EMAIL.sub("<address>", str(text))[:1000]


class Outcomes:
    """Outcome, reason and send_at per audience row (positional), set once each."""

    def __init__(self, n: int):
        self.outcome = np.full(n, None, dtype=object)
        self.reason = np.full(n, None, dtype=object)
        self.send_at = np.full(n, None, dtype=object)
        self.http_status = np.full(n, None, dtype=object)

    def pending(self) -> np.ndarray:
        return pd.isna(self.outcome)

    def set(self, rows, outcome: str, reason=None, send_at=None, http_status=None) -> None:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if len(rows) == 0:
            return
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        already = rows[~pd.isna(self.outcome[rows])]
        if len(already):
            raise AssertionError(f"rows {already[:3].tolist()} got a second outcome {outcome!r}")
        self.outcome[rows] = outcome
        self.reason[rows] = reason
        if send_at is not None:
            if isinstance(send_at, list):
                values = np.empty(len(send_at), dtype=object)
                values[:] = send_at  # Timestamps stay whole (numpy would otherwise try to unpack them)
                send_at = values
            self.send_at[rows] = send_at
        if http_status is not None:
            self.http_status[rows] = http_status


def outcome_of_result(result: SendResult, scheduled: bool) -> tuple[str, str | None]:
    if result.outcome == "accepted":
        return ("scheduled" if scheduled else "sent"), None
    if result.outcome == "unknown":
        return "unknown", scrub(result.error or "no answer after the request was sent")
    status = f"HTTP {result.status}: " if result.status else ""
    return "failed", scrub(f"{status}{result.error or 'rejected'}")
