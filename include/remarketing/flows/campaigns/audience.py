"""Marketing campaigns: who gets a campaign, which content, which subject, who is held out, and when.

Plain Python (pandas), testable without Airflow; ``campaign_run`` is the Airflow glue and the
per-market send goes through the shared send step like every flow. What this module decides:

* **Targeting** (``select_targets``): stored profiles (``profiles_store.load_profiles``) by
  lifecycle stage and/or RFM segment, and/or customers who *became* a stage recently
  (``transitions_since``). Criteria combine with AND, values within one criterion with OR.
* **Holdout** (``holdout_mask``): a deterministic share of the eligible audience per campaign,
  by a hash of (campaign, customer): the same customer is held out in every round, so the
  holdout is a stable control group. Held-out members are recorded, never mailed.
* **A/B subject split** (``subject_arms``): another independent hash puts ``ab_share`` of the
  mailed members on subject B. The arm is the ledger's ``arm``, and SendGrid's ``arm:a`` /
  ``arm:b`` categories give the comparison.
* **Content rotation** (``pick_variants``): the ledger's ``variant``.
  A customer gets the first variant (in the campaign's order) they have not had yet; one who
  had every variant is skipped with outcome ``already_sent`` and reason "had every variant".
  Two rounds can therefore never give a customer the same content twice, and the ledger key
  (flow, arm, customer, campaign, variant) makes a retry or an overlapping run harmless.
* **Calendar** (include/campaigns.yaml, ``load_calendar``/``due_campaigns``): campaigns on a
  fixed local date or on a market's public holiday (``days_before`` for markets whose policy
  blocks sends on holidays); the daily run picks those whose local date is today or tomorrow,
  and the send windows decide the hour.

Tables (DDL in migrations/versions/0006_campaigns.py): ``campaign_variants`` pins each variant's
content by hash, so a variant id cannot silently change content between rounds;
``campaign_members`` holds every selected member's outcome per run (held out, skipped, sent...).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from remarketing.flows.campaigns.model import (
    HOLDOUT,
    PRESEND_OUTCOMES,
    REASON_EXHAUSTED,
    REASON_THIS_DATE,
    SUBJECT_KIND,
    Campaign,
    CampaignError,
)
from remarketing.markets import Market, MarketConfig

# Outcomes decided here, before the send step (which decides the rest, send_step.OUTCOMES).


# --- hashing: holdout and A/B arms ---------------------------------------------------------------


def _seed(campaign_id: str, salt: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.sha256(f"{campaign_id}|{salt}".encode()).digest()[:8], "little"))


def unit_hash(campaign_id: str, salt: str, customer_ids: Iterable[int]) -> np.ndarray:
    """A uniform number in [0, 1) per customer, fixed for (campaign, salt, customer): splitmix64."""
    x = np.asarray(pd.array(customer_ids, dtype="Int64").to_numpy(dtype="int64", na_value=-1)).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ _seed(campaign_id, salt)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def holdout_mask(campaign_id: str, customer_ids: Iterable[int], share: float) -> np.ndarray:
    """True for the customers held out of this campaign (about ``share`` of them, the same every round)."""
    if not 0 <= share <= 1:
        raise CampaignError(f"campaign {campaign_id}: holdout share {share} is not between 0 and 1")
    return unit_hash(campaign_id, "holdout", customer_ids) < share


def subject_arms(campaign_id: str, customer_ids: Iterable[int], ab_share: float | None) -> np.ndarray:
    """'b' for about ``ab_share`` of the customers (independent of the holdout), else 'a'."""
    ids = list(customer_ids) if not isinstance(customer_ids, pd.Series | np.ndarray) else customer_ids
    if not ab_share:
        return np.full(len(ids), "a", dtype=object)
    return np.where(unit_hash(campaign_id, "subject-ab", ids) < ab_share, "b", "a").astype(object)


# --- targeting -----------------------------------------------------------------------------------

TARGET_COLUMNS = ("customer_id", "market", "stage", "rfm_segment", "preferred_purchase_hour", "monetary")


def select_targets(profiles: pd.DataFrame, campaign: Campaign, transitions: pd.DataFrame | None = None) -> pd.DataFrame:
    """Profiles of the campaign's markets matching every criterion given (stage, RFM, transition).

    ``profiles``: load_profiles rows; ``transitions``: transitions_since(to_stage=campaign.became)
    rows, required when the campaign targets a transition. One row per customer.
    """
    missing = [c for c in TARGET_COLUMNS if c not in profiles.columns]
    if missing:
        raise CampaignError(f"campaign {campaign.campaign_id}: profiles lack column(s) {missing}")
    keep = profiles["market"].isin(campaign.markets).to_numpy(copy=True)
    if campaign.stages:
        keep &= profiles["stage"].isin(campaign.stages).to_numpy()
    if campaign.rfm_segments:
        keep &= profiles["rfm_segment"].isin(campaign.rfm_segments).to_numpy()
    if campaign.became:
        if transitions is None:
            raise CampaignError(
                f"campaign {campaign.campaign_id}: targets 'became {campaign.became}' but got no transitions"
            )
        wrong = transitions["to_stage"] != campaign.became
        if wrong.any():
            raise CampaignError(
                f"campaign {campaign.campaign_id}: transitions to another stage given "
                f"(customer_id {int(transitions.loc[wrong, 'customer_id'].iloc[0])})"
            )
        keep &= profiles["customer_id"].isin(transitions["customer_id"]).to_numpy()
    targets = profiles.loc[keep, list(TARGET_COLUMNS)]
    dupes = targets["customer_id"].duplicated()
    if dupes.any():
        raise CampaignError(f"profiles hold customer_id {int(targets.loc[dupes, 'customer_id'].iloc[0])} twice")
    return targets.reset_index(drop=True)


# --- rotation ------------------------------------------------------------------------------------


def pick_variants(customer_ids: pd.Series, had: pd.DataFrame, variants: Iterable[str]) -> pd.Series:
    """The first variant (in order) each customer has not had; None when they had every one.

    ``had``: customer_id, variant rows from the ledger (``variant_history``).
    """
    order = list(variants)
    ids = pd.Series(customer_ids).astype("int64")
    if had is None or had.empty:
        return pd.Series(order[0], index=ids.index, dtype=object)
    out = np.full(len(ids), None, dtype=object)
    values = ids.to_numpy()
    for variant in order:
        seen = had.loc[had["variant"] == variant, "customer_id"].to_numpy(dtype="int64")
        free = pd.isna(out) & ~np.isin(values, seen)
        out[free] = variant
    return pd.Series(out, index=ids.index, dtype=object)


# --- the send step's audience --------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignAudience:
    """One market's members: ``audience`` for the send step, ``skipped`` with their pre-send outcome."""

    audience: pd.DataFrame
    skipped: pd.DataFrame  # customer_id, market, outcome, reason, variant, arm

    def counts(self) -> dict[str, int]:
        return {o: int((self.skipped["outcome"] == o).sum()) for o in PRESEND_OUTCOMES}


def local_day_start(send_date: date, zones: pd.Series) -> pd.Series:
    """Midnight of ``send_date`` in each row's zone, as UTC instants."""
    out = pd.Series(pd.NaT, index=zones.index, dtype="datetime64[ns, UTC]")
    for zone in pd.unique(zones.dropna()):
        start = datetime(send_date.year, send_date.month, send_date.day, tzinfo=ZoneInfo(zone))
        out[zones == zone] = pd.Timestamp(start).tz_convert(UTC)
    return out


def campaign_audience(
    *,
    campaign: Campaign,
    market: Market,
    targets: pd.DataFrame,
    customers: pd.DataFrame,
    had: pd.DataFrame | None,
    send_date: date,
    now: datetime,
    had_this_date: Iterable[int] = (),
) -> CampaignAudience:
    """Targets of one market -> holdout, rotation, arms, and the send step's audience columns.

    ``customers``: the clean store customers (email, names, locale, zone, consent); ``had``:
    ledger history of this campaign (customer_id, variant). ``had_this_date``:
    customers an earlier run already mailed for this calendar date (``had_calendar_date``):
    skipped as ``already_sent``, not given the next variant, because one calendar date is one
    round. Members whose day starts before ``now`` get ``now`` as their earliest instant.
    """
    from remarketing.timing.send_windows import resolve_time_zones

    mine = targets[targets["market"] == market.code]
    people = customers.drop_duplicates("customer_id").set_index("customer_id")
    skipped: list[pd.DataFrame] = []
    mine = _skip(mine, ~mine["customer_id"].isin(people.index), skipped, "invalid_address",
                 "no customer row in the store mirror")  # fmt: skip
    held = holdout_mask(campaign.campaign_id, mine["customer_id"], campaign.holdout_share)
    mine = _skip(mine, held, skipped, HOLDOUT, f"holdout ({campaign.holdout_share:.0%} control group)")
    mine = _skip(mine, mine["customer_id"].isin(set(had_this_date)), skipped, "already_sent", REASON_THIS_DATE)
    variant = pick_variants(mine["customer_id"], had, [v.id for v in campaign.variants])
    mine = _skip(mine, variant.isna(), skipped, "already_sent", REASON_EXHAUSTED)
    variant = variant[variant.notna().to_numpy()]
    arms = subject_arms(campaign.campaign_id, mine["customer_id"], campaign.ab_share if campaign.subject_b else None)
    audience = _send_columns(mine, people.loc[mine["customer_id"].to_numpy()], market, campaign)
    audience["arm"] = arms
    audience["variant"] = variant.to_numpy(dtype=object)
    cfg = MarketConfig(markets={market.code: market})
    zones = resolve_time_zones(audience[["market", "time_zone", "country", "region"]], cfg)
    audience["time_zone"] = zones["time_zone"].to_numpy(dtype=object)
    start = local_day_start(send_date, audience["time_zone"])
    audience["earliest_at"] = start.where(start > pd.Timestamp(now), pd.Timestamp(now).tz_convert(UTC))
    skipped_frame = (
        pd.concat(skipped, ignore_index=True)
        if skipped
        else pd.DataFrame(columns=["customer_id", "outcome", "reason", "variant", "arm"])
    )
    skipped_frame["market"] = market.code
    return CampaignAudience(audience=audience, skipped=skipped_frame.reset_index(drop=True))


def _skip(mine: pd.DataFrame, mask, skipped: list[pd.DataFrame], outcome: str, reason: str) -> pd.DataFrame:
    """Members under ``mask`` leave the audience with their outcome (appended to ``skipped``); the rest stay."""
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        skipped.append(mine.loc[mask, ["customer_id"]].assign(outcome=outcome, reason=reason, variant=None, arm=None))
    return mine.loc[~mask]


def _send_columns(mine: pd.DataFrame, rows: pd.DataFrame, market: Market, campaign: Campaign) -> pd.DataFrame:
    """The send step's columns for the mailed members: address, names, locale, zone, consent, value."""
    from remarketing.content.locales import normalize_locale

    locale = rows["locale"].map(normalize_locale) if "locale" in rows else pd.Series(None, index=rows.index)
    return pd.DataFrame(
        {
            "customer_id": mine["customer_id"].astype("int64").to_numpy(),
            "email": rows["email"].to_numpy(dtype=object),
            "first_name": rows["first_name"].to_numpy(dtype=object),
            "last_name": rows["last_name"].to_numpy(dtype=object),
            "market": market.code,
            "locale": locale.where(locale.notna(), market.primary_locale).to_numpy(dtype=object),
            "country": rows["country"].to_numpy(dtype=object),
            "region": rows["region"].to_numpy(dtype=object),
            "time_zone": rows["time_zone"].to_numpy(dtype=object),
            "marketing_consent": rows["marketing_consent"]
            .astype(object)
            .map(lambda v: v is True or v == 1)
            .astype(bool)
            .to_numpy(),
            "value": pd.to_numeric(mine["monetary"], errors="coerce").to_numpy(dtype="float64"),
            "best_hour": pd.array(mine["preferred_purchase_hour"], dtype="Int64"),
            "subject_kind": SUBJECT_KIND,
            "subject_id": campaign.subject_id,
        }
    )


def send_horizon(send_date: date, market: Market, now: datetime, zones: Iterable[str] = ()) -> timedelta:
    """How far ahead this run may schedule: to the end of the send date in the market's latest zone, at most 72 h.

    Raises CampaignError when the send date is over for the whole market, or more than 72 h
    ahead (SendGrid cannot schedule that far: trigger it again later, or use the calendar).
    """
    from remarketing.timing.send_windows import SEND_AT_HORIZON

    names = set(zones) | set(market.time_zones) | {market.default_time_zone}
    next_day = send_date + timedelta(days=1)
    ends = [datetime(next_day.year, next_day.month, next_day.day, tzinfo=ZoneInfo(z)) for z in names]
    starts = [datetime(send_date.year, send_date.month, send_date.day, tzinfo=ZoneInfo(z)) for z in names]
    end = max(ends)
    if end <= now:
        raise CampaignError(f"market {market.code}: send date {send_date.isoformat()} is over")
    if min(starts) - now > SEND_AT_HORIZON:
        raise CampaignError(
            f"market {market.code}: send date {send_date.isoformat()} starts more than 72 h ahead; "
            "SendGrid schedules at most 72 h ahead (trigger it later, or put it in the campaign calendar)"
        )
    return min(end - now, SEND_AT_HORIZON)
