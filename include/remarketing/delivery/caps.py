"""Frequency caps and consent: how often one person may hear from us, and whether at all.

Flows are of two kinds (``FLOW_KINDS``):

* ``marketing`` (campaigns, welcome series): at most one mail per 16 hours and three per
  rolling 7 days per customer, across flows;
* ``recovery`` (cart recovery): its own cap, at most one recovery mail per 20 hours and three
  per 7 days (a three-step sequence fits, a second abandoned cart the same day does not).

Decision: recovery mails DO count towards the marketing caps, but marketing mails do not count
towards the recovery cap (``recovery_counts_as_marketing``). What tires a reader is the total
volume in the inbox, so a campaign waits when a reminder went out this morning; but a reminder
answers the customer's own action minutes or hours ago, so yesterday's newsletter must not
silence it. A recovery mail still always keeps its own 20 h spacing.

Every mail counts at the instant it reaches the inbox: a scheduled mail at its ``send_at``,
so mails already scheduled by an earlier run (up to 72 h ahead) count too, before and after
the planned instant. "Three per 7 days" holds in every 7-day window containing the new mail,
not only the one ending at it. Mails whose outcome is ``unknown`` or still in flight count as
sent: the cap errs towards sending less.

Consent: where ``market.marketing_consent_required``, nothing of kind marketing or recovery
goes to a customer without ``marketing_consent``. Cart recovery is treated as marketing because
in the EU (ePrivacy Directive art. 13, GDPR) a reminder that promotes completing a purchase is
direct marketing, not a transactional message; the "soft opt-in" for existing customers does
not cover guests who never bought, and an unknown consent counts as no consent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from remarketing.delivery.ledger import customer_history
from remarketing.markets import Market

FLOW_KINDS = {
    "cart_recovery": "recovery",
    "welcome_series": "marketing",
    "welcome": "marketing",
    "market_campaign": "marketing",
    "campaign": "marketing",
}
KINDS = ("marketing", "recovery")


def flow_kind(flow: str) -> str:
    """``marketing`` or ``recovery``; an unknown flow is an error (its caps would be a guess)."""
    try:
        return FLOW_KINDS[flow]
    except KeyError:
        raise ValueError(f"flow {flow!r} has no cap kind; known flows: {', '.join(FLOW_KINDS)}") from None


@dataclass(frozen=True)
class FrequencyCaps:
    marketing_min_gap: timedelta = timedelta(hours=16)
    marketing_max: int = 3
    marketing_window: timedelta = timedelta(days=7)
    recovery_min_gap: timedelta = timedelta(hours=20)
    recovery_max: int = 3
    recovery_window: timedelta = timedelta(days=7)
    recovery_counts_as_marketing: bool = True

    def __post_init__(self) -> None:
        for kind in KINDS:
            if getattr(self, f"{kind}_max") < 1:
                raise ValueError(f"FrequencyCaps.{kind}_max must be at least 1")
            if getattr(self, f"{kind}_min_gap") < timedelta(0) or getattr(self, f"{kind}_window") <= timedelta(0):
                raise ValueError(f"FrequencyCaps.{kind}: gap must be >= 0 and window > 0")

    def rules(self, kind: str) -> tuple[timedelta, int, timedelta, tuple[str, ...]]:
        """(min gap, max count, window, history kinds that count) for a new mail of ``kind``."""
        if kind == "recovery":
            return self.recovery_min_gap, self.recovery_max, self.recovery_window, ("recovery",)
        if kind == "marketing":
            counted = ("marketing", "recovery") if self.recovery_counts_as_marketing else ("marketing",)
            return self.marketing_min_gap, self.marketing_max, self.marketing_window, counted
        raise ValueError(f"unknown cap kind {kind!r}; expected one of {', '.join(KINDS)}")

    @property
    def lookback(self) -> timedelta:
        return max(self.marketing_window, self.recovery_window, self.marketing_min_gap, self.recovery_min_gap)


def consent_mask(audience: pd.DataFrame, market: Market, kind: str) -> pd.Series:
    """True where the member may be mailed as far as consent goes (same index)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cap kind {kind!r}")
    if not market.marketing_consent_required:
        return pd.Series(True, index=audience.index)
    if "marketing_consent" not in audience:
        raise ValueError(f"market {market.code} requires consent: the audience needs a marketing_consent column")
    consent = audience["marketing_consent"].astype(object)
    return consent.map(lambda v: v is True or (isinstance(v, (bool, np.bool_)) and bool(v))).astype(bool)


def cap_reasons(
    history: pd.DataFrame,
    candidates: pd.DataFrame,
    *,
    kind: str,
    caps: FrequencyCaps,
) -> pd.Series:
    """Per candidate, why the cap forbids the mail (None when allowed); same index as ``candidates``.

    ``history``: customer_ref, kind, at (UTC) and optionally ledger_key of mails that may have
    reached the customer (``ledger.customer_history``). ``candidates``: customer_ref, ``at``
    (the planned instant) and optionally ledger_key: a candidate's own ledger row (claimed by an
    earlier try of the same run) does not count against it.
    """
    gap, limit, window, counted = caps.rules(kind)
    reasons = pd.Series(None, index=candidates.index, dtype=object)
    if candidates.empty or history.empty:
        return reasons
    hist = history.loc[history["kind"].isin(counted)]
    no_key = pd.Series(None, index=candidates.index, dtype=object)
    cand = pd.DataFrame(
        {
            "row": np.arange(len(candidates)),
            "customer_ref": candidates["customer_ref"].to_numpy(dtype=object),
            "t": pd.to_datetime(candidates["at"], utc=True).to_numpy(dtype="datetime64[ns]").view("int64"),
            "key": candidates.get("ledger_key", no_key).to_numpy(dtype=object),
        }
    )
    h = pd.DataFrame(
        {
            "customer_ref": hist["customer_ref"].to_numpy(dtype=object),
            "h": pd.to_datetime(hist["at"], utc=True).to_numpy(dtype="datetime64[ns]").view("int64"),
            "h_key": hist["ledger_key"].to_numpy(dtype=object) if "ledger_key" in hist else None,
        }
    )
    pairs = cand.merge(h, on="customer_ref", how="inner")
    pairs = pairs[pairs["key"].isna() | (pairs["key"] != pairs["h_key"])]  # a mail never caps itself (a retry)
    w_ns, gap_ns = int(window.total_seconds() * 1e9), int(gap.total_seconds() * 1e9)
    pairs = pairs[(pairs["h"] - pairs["t"]).abs() < w_ns]
    if pairs.empty:
        return reasons
    out = np.full(len(candidates), None, dtype=object)

    # Rolling count: the busiest window [s, s + W) that contains t, anchored at a history mail
    # in (t - W, t] or at t itself; with this new mail it must stay within the limit.
    anchors = pairs.loc[(pairs["h"] > pairs["t"] - w_ns) & (pairs["h"] <= pairs["t"]), ["row", "h"]]
    anchors = pd.concat(
        [
            anchors.rename(columns={"h": "s"}),
            cand.loc[cand["row"].isin(pairs["row"]), ["row", "t"]].rename(columns={"t": "s"}),
        ]
    )
    joined = anchors.merge(pairs[["row", "h"]], on="row")
    inside = joined[(joined["h"] >= joined["s"]) & (joined["h"] < joined["s"] + w_ns)]
    busiest = inside.groupby(["row", "s"]).size().groupby(level="row").max()
    full = busiest[busiest + 1 > limit].index.to_numpy()
    days = window.total_seconds() / 86_400
    out[full] = f"{kind} cap: {limit} mails per {days:g} days reached"

    if gap_ns > 0:
        close = pairs.loc[(pairs["h"] - pairs["t"]).abs() < gap_ns, "row"].unique()
        out[close] = f"{kind} cap: another mail within {gap.total_seconds() / 3600:g} h"
    reasons[:] = out
    return reasons


def capped_reasons(
    engine: sa.Engine, candidates: pd.DataFrame, *, kind: str, caps: FrequencyCaps, now: datetime
) -> pd.Series:
    """``cap_reasons`` with the history read from the ledger around the candidates' instants."""
    if candidates.empty:
        return pd.Series(None, index=candidates.index, dtype=object)
    at = pd.to_datetime(candidates["at"], utc=True)
    since = min(at.min(), pd.Timestamp(now)) - caps.lookback
    until = max(at.max(), pd.Timestamp(now)) + caps.lookback
    history = customer_history(
        engine, candidates["customer_ref"], since=since.to_pydatetime(), until=until.to_pydatetime()
    )
    return cap_reasons(history, candidates, kind=kind, caps=caps)
