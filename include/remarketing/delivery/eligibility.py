"""Who in a market's audience may be mailed now: steps 0 to 8 of the send step, in their order.

Each step gives the members it stops their outcome and reason (``Outcomes``), so a member is
stopped by the first step that applies and no member is lost. ``Eligibility`` holds the audience
as the steps see it: its ledger keys, what the ledger already knows of them, the outcomes so far.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from remarketing.delivery import ledger
from remarketing.delivery.caps import FrequencyCaps, capped_reasons, consent_mask
from remarketing.delivery.gate import GateDecision, check_market
from remarketing.delivery.outcomes import SCHEDULED_AFTER, Outcomes, scrub
from remarketing.delivery.suppressions import suppression_reasons, sync_suppressions
from remarketing.markets import Market, MarketConfig
from remarketing.timing.send_windows import compute_send_at, resolve_time_zones

_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def valid_addresses(emails: pd.Series) -> pd.Series:
    """email-validator's syntax verdict per address (no DNS).

    Most audiences share a few domains: a plain ASCII dot-atom local part on a domain that
    email-validator already accepted is valid without asking again; anything else is checked
    whole. That keeps 100k addresses well under a second.
    """
    from email_validator import EmailNotValidError, validate_email

    def check(address: str) -> bool:
        try:
            validate_email(address, check_deliverability=False)
            return True
        except EmailNotValidError:
            return False

    domains: dict[str, bool] = {}
    verdicts: dict[str, bool] = {}
    for email in pd.unique(emails.dropna()):
        if not isinstance(email, str):
            continue
        address = email.strip()
        local, at, domain = address.rpartition("@")
        if at and len(address) <= 254 and len(local) <= 64 and _DOT_ATOM.fullmatch(local):
            if domain not in domains:
                domains[domain] = check(f"a@{domain}")
            verdicts[email] = domains[domain]
        else:
            verdicts[email] = check(address)
    return emails.map(lambda e: verdicts.get(e, False) if isinstance(e, str) else False).astype(bool)


def id_text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def customer_refs(frame: pd.DataFrame, valid: pd.Series) -> pd.Series:
    """customer_ref per row; None for a guest without a usable address (no key can name it)."""
    out = []
    columns = (frame["customer_id"].astype(object).tolist(), frame["email"].tolist(), valid.tolist())
    for cid, email, ok in zip(*columns, strict=True):
        if cid is None or cid is pd.NA or (isinstance(cid, float) and np.isnan(cid)):
            out.append(ledger.guest_ref(email) if ok else None)
        else:
            out.append(ledger.customer_ref(cid))
    return pd.Series(out, index=frame.index, dtype=object)


def check_audience(audience: pd.DataFrame, market: Market) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in audience.columns]
    if missing:
        raise ValueError(f"market {market.code}: the audience lacks columns {missing}")
    wrong = audience["market"].astype(object) != market.code
    if wrong.any():
        row = audience.loc[wrong].iloc[0]
        raise ValueError(
            f"market {market.code}: {int(wrong.sum())} audience rows belong to another market "
            f"(first: customer_id {row['customer_id']}, market {row['market']})"
        )


REQUIRED_COLUMNS = (
    "customer_id",
    "email",
    "market",
    "locale",
    "time_zone",
    "earliest_at",
    "best_hour",
    "marketing_consent",
    "value",
    "subject_kind",
    "subject_id",
    "variant",
)  # and a ``step`` and/or an A/B ``arm`` (ledger.ledger_keys)


SUPPRESSION_SYNC_MAX_AGE = timedelta(minutes=10)


class Eligibility:
    """One market's audience going through the checks; ``out`` holds every member's outcome so far."""

    def __init__(self, *, flow: str, kind: str, market: Market, audience: pd.DataFrame, engine: sa.Engine, now):
        check_audience(audience, market)
        self.flow, self.kind, self.market, self.engine, self.now = flow, kind, market, engine, now
        frame = audience.reset_index(drop=True).copy()
        frame["email"] = frame["email"].map(lambda e: e.strip() if isinstance(e, str) else e)  # as it will be sent
        self.frame = frame
        self.out = Outcomes(len(frame))
        self.notes: list[str] = []
        self.valid = valid_addresses(frame["email"])
        frame["customer_ref"] = customer_refs(frame, self.valid)
        keys = np.full(len(frame), None, dtype=object)
        self.keyed = frame["customer_ref"].notna().to_numpy()
        if self.keyed.any():
            keys[self.keyed] = ledger.ledger_keys(flow, frame.loc[self.keyed])["ledger_key"].to_numpy()
        frame["ledger_key"] = keys
        dupes = frame["ledger_key"].dropna()
        dupes = dupes[dupes.duplicated()]
        if len(dupes):
            raise ValueError(f"market {market.code}: ledger key {dupes.iloc[0]} appears twice in the audience")
        self.value = pd.to_numeric(frame["value"], errors="coerce").fillna(-np.inf)
        self.row_of = pd.Series(np.flatnonzero(self.keyed), index=frame.loc[self.keyed, "ledger_key"].to_numpy())
        self.found = pd.DataFrame()
        self.own = pd.DataFrame()

    def earlier_tries(self, run_id: str) -> None:
        """0. What this run's earlier tries already did, from the ledger."""
        out, now = self.out, self.now
        self.found = ledger.lookup(self.engine, self.frame["ledger_key"].dropna())
        self.own = own = self.found[(self.found["run_id"] == run_id) & (self.found["market"] == self.market.code)]
        for status, group in own.groupby("status"):
            rows = self.row_of.reindex(group.index).to_numpy()
            if status == "accepted":
                later = (group["send_at"] > now + SCHEDULED_AFTER).to_numpy()
                send_at = group["send_at"].to_numpy(dtype=object)
                for flag, outcome in ((later, "scheduled"), (~later, "sent")):
                    out.set(rows[flag], outcome, "sent by an earlier try of this run", send_at=send_at[flag])
            elif status == "unknown":
                out.set(rows, "unknown", scrub(group["error"].iloc[0] or "outcome unknown"))
            elif status == "rejected":
                out.set(
                    rows,
                    "failed",
                    "rejected in an earlier try of this run",
                    http_status=group["http_status"].to_numpy(),
                )

    def gate(self, api, *, sync_max_age: timedelta) -> GateDecision:
        """1. The market's deliverability gate (suppressions and stats refreshed first, with ``api``)."""
        if api is not None:
            synced = sync_suppressions(self.engine, api, now=self.now, max_age=sync_max_age)
            if synced:
                self.notes.append("suppressions synced: " + ", ".join(f"{k} {v}" for k, v in synced.items()))
        decision = check_market(self.engine, self.market, now=self.now, api=api)
        if decision.status == "halted":
            self.out.set(self.out.pending(), "gated", "; ".join(decision.reasons))
        return decision

    def invalid_addresses(self) -> None:
        """2. Address syntax."""
        self.out.set(self.out.pending() & ~self.valid.to_numpy(), "invalid_address", "not a valid email address")

    def suppressed(self) -> None:
        """3. Suppressions (global kinds and this market's unsubscribe group)."""
        pending = self.out.pending()
        if not pending.any():
            return
        group_id = self.market.sendgrid_unsubscribe_group_id
        reasons = suppression_reasons(self.engine, self.frame.loc[pending, "email"], group_id).to_numpy(dtype=object)
        rows = np.flatnonzero(pending)
        hit = pd.notna(reasons)
        for reason in pd.unique(reasons[hit]):
            self.out.set(rows[hit & (reasons == reason)], "suppressed", reason)

    def no_consent(self) -> None:
        """4. Consent, where the market requires it for this kind of mail."""
        allowed = consent_mask(self.frame, self.market, self.kind).to_numpy()
        self.out.set(
            self.out.pending() & ~allowed, "no_consent", f"market {self.market.code} requires marketing consent"
        )

    def sent_elsewhere(self) -> None:
        """5. Sent, in flight or unknown in another run."""
        others = self.found.loc[~self.found.index.isin(self.own.index)]
        blocked = others[~((others["status"] == "rejected") & others["retryable"])]
        if not len(blocked):
            return
        rows = self.row_of.reindex(blocked.index).to_numpy()
        still = self.out.pending()[rows]
        for status in pd.unique(blocked["status"][still]):
            sel = rows[still & (blocked["status"] == status).to_numpy()]
            self.out.set(sel, "already_sent", f"{status} in another run")

    def _by_value(self) -> pd.DataFrame:
        pending = self.out.pending()
        ranked = self.frame.loc[pending].assign(_value=self.value[pending])
        return ranked.sort_values(["_value", "ledger_key"], ascending=[False, True])

    def one_per_person(self) -> None:
        """6a. One mail per person per run: highest value first."""
        order = self._by_value()
        address = order["email"].map(ledger.normalise_email)
        for column, reason in (
            (order["customer_ref"], "another mail to this customer in this run"),
            (address, "another mail to the same address in this run"),
        ):
            dup = column.duplicated().to_numpy() & self.out.pending()[order.index.to_numpy()]
            self.out.set(order.index.to_numpy()[dup], "capped", reason)

    def send_windows(self, horizon: timedelta) -> pd.DataFrame:
        """Each pending member's planned instant (needed by the caps: a cap is judged at that instant)."""
        pending = self.out.pending()
        if not pending.any():
            return pd.DataFrame(index=self.frame.index[pending])
        frame, market = self.frame, self.market
        cfg = MarketConfig(markets={market.code: market})
        zone_input = frame.loc[pending, [c for c in ("market", "time_zone", "country", "region") if c in frame]]
        zones = resolve_time_zones(zone_input, cfg)
        timed = frame.loc[pending, ["earliest_at", "best_hour"]].assign(
            market=market.code, time_zone=zones["time_zone"]
        )
        return compute_send_at(timed, self.now, cfg, horizon=horizon)

    def frequency_capped(self, windows: pd.DataFrame, caps: FrequencyCaps) -> None:
        """6b. Frequency caps at the planned instant (now, for members beyond the window)."""
        pending = self.out.pending()
        if not pending.any():
            return
        at = windows["send_at"].where(windows["send_at"].notna(), pd.Timestamp(self.now))
        candidates = pd.DataFrame(
            {
                "customer_ref": self.frame.loc[pending, "customer_ref"],
                "ledger_key": self.frame.loc[pending, "ledger_key"],
                "at": at,
            }
        )
        reasons = capped_reasons(self.engine, candidates, kind=self.kind, caps=caps, now=self.now)
        for reason in pd.unique(reasons.dropna()):
            self.out.set(reasons.index[reasons == reason].to_numpy(), "capped", reason)

    def outside_window(self, windows: pd.DataFrame) -> None:
        """7. No allowed send instant within the horizon."""
        pending = self.out.pending()
        if not pending.any():
            return
        reason = windows["window_reason"].reindex(self.frame.index[pending])
        for r in pd.unique(reason.dropna()):
            self.out.set(reason.index[reason == r].to_numpy(), "outside_window", r)

    def warmup_capped(self, decision: GateDecision, taken_over: int) -> None:
        """8. Warm-up cap: the day's remaining slots go to the highest value.

        Claims taken over from an earlier try are in today's count and among these members again.
        """
        ranked = self._by_value()
        slots = min(self.market.warmup_daily_cap, decision.warmup_remaining + taken_over)
        excess = ranked.index[slots:].to_numpy()
        self.out.set(excess, "capped", f"warm-up cap: {self.market.warmup_daily_cap} mails per day")
