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
  mailed members on subject B. The arm is the ledger key's ``step``, so SendGrid's ``step:a`` /
  ``step:b`` categories give the comparison.
* **Content rotation** (``pick_variants``): the ledger's ``content_version`` is the variant.
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
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from remarketing.flows.campaigns.params import CAMPAIGN_ID_PATTERN, VARIANT_ID_PATTERN
from remarketing.markets import Market, MarketConfig
from remarketing.platform import settings

FLOW = "market_campaign"
TEMPLATES = ("campaign/generic",)
STAGES = ("prospect", "new", "active", "vip", "at_risk", "dormant")  # segments.STAGES (tested equal)
ARMS = ("a", "b")
# Outcomes decided here, before the send step (which decides the rest, send_step.OUTCOMES).
HOLDOUT = "holdout"
PRESEND_OUTCOMES = (HOLDOUT, "already_sent", "invalid_address")
REASON_EXHAUSTED = "had every variant"
REASON_THIS_DATE = "had this calendar date's mail already (an earlier run scheduled it)"
DEFAULT_CALENDAR_FILE = settings.DEFAULT_CAMPAIGNS_FILE
_HOLIDAY_LANGUAGE = "en_US"  # holiday names are matched in English, whatever the market's language


class CampaignError(ValueError):
    """A campaign definition or calendar entry that cannot run; the message names the campaign and field."""


LocalText = str | dict[str, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Content(_Strict):
    """What campaign/generic shows; each text once for all locales or per locale ({"de": ...})."""

    subject: LocalText | None = None
    preheader: LocalText | None = None
    headline: LocalText | None = None
    paragraphs: list[str] | dict[str, list[str]] | None = None
    cta_url: LocalText | None = None
    cta_label: LocalText | None = None
    hero_image_url: str | None = None
    hero_alt: LocalText | None = None
    products_heading: LocalText | None = None


class Variant(Content):
    """A content variant: overrides the campaign's content where it says something."""

    id: str = Field(pattern=VARIANT_ID_PATTERN)


class Campaign(_Strict):
    campaign_id: str = Field(pattern=CAMPAIGN_ID_PATTERN)
    markets: tuple[str, ...] = Field(min_length=1)
    stages: tuple[str, ...] = ()
    rfm_segments: tuple[str, ...] = ()
    became: str | None = None  # lifecycle stage entered ...
    within_days: int = Field(default=7, ge=1, le=365)  # ... within this many days
    template: str = TEMPLATES[0]
    content: Content = Field(default_factory=Content)
    subject_b: LocalText | None = None
    ab_share: float = Field(default=0.5, ge=0, le=1)
    variants: tuple[Variant, ...] = (Variant(id="v1"),)
    holdout_share: float = Field(default=0.0, ge=0, le=0.5)

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
        return value

    @field_validator("became")
    @classmethod
    def _became(cls, value: str | None) -> str | None:
        if value is not None and value not in STAGES:
            raise ValueError(f"unknown stage {value!r}; stages: {', '.join(STAGES)}")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        if value not in TEMPLATES:
            raise ValueError(f"unknown campaign template {value!r}; templates: {', '.join(TEMPLATES)}")
        return value

    @model_validator(mode="after")
    def _whole(self) -> Campaign:
        if not (self.stages or self.rfm_segments or self.became):
            raise ValueError("no audience: give stages, rfm_segments or became (a lifecycle transition)")
        ids = [v.id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError(f"variant ids must be distinct, got {ids}")
        if len(set(self.markets)) != len(self.markets):
            raise ValueError(f"markets must be distinct, got {list(self.markets)}")
        return self

    @property
    def subject_id(self) -> str:
        """The ledger key's subject: the campaign id (no '/' or spaces by its pattern)."""
        return self.campaign_id

    def variant_fields(self, variant_id: str, arm: str = "a") -> dict[str, Any]:
        """The ``campaign`` mapping for render.campaign_context: content, the variant's overrides, the arm's subject."""
        variant = next((v for v in self.variants if v.id == variant_id), None)
        if variant is None:
            raise CampaignError(f"campaign {self.campaign_id}: no variant {variant_id!r}")
        fields = self.content.model_dump(exclude_none=True)
        fields.update(variant.model_dump(exclude_none=True, exclude={"id"}))
        if arm == "b":
            if self.subject_b is None:
                raise CampaignError(f"campaign {self.campaign_id}: arm b without subject_b")
            fields["subject"] = self.subject_b
        fields["campaign_id"] = self.campaign_id
        return fields

    def content_hash(self, variant_id: str) -> str:
        """What the customer reads in this variant (both subjects included), as a short hash."""
        fields = self.variant_fields(variant_id)
        fields["subject_b"] = self.subject_b
        text = json.dumps(fields, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _problems(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        parts.append(f"{prefix}{('.' + field) if field else ''}: {err['msg']}")
    return "; ".join(parts)


def parse_campaign(raw: Mapping[str, Any], source: str = "params") -> Campaign:
    """A Campaign from Params or a calendar entry; CampaignError naming the campaign and field."""
    name = raw.get("campaign_id") if isinstance(raw, Mapping) else None
    try:
        return Campaign(**dict(raw))
    except ValidationError as exc:
        raise CampaignError(_problems(exc, f"{source} campaign {name or '?'}")) from None
    except TypeError as exc:
        raise CampaignError(f"{source} campaign {name or '?'}: {exc}") from None


def campaign_from_params(params: Mapping[str, Any]) -> Campaign:
    """The trigger form's Params (market_campaign DAG) as a Campaign."""
    content = dict(params.get("content") or {})
    for key in ("subject", "preheader"):
        if params.get(key):
            content[key] = params[key]
    raw = {
        "campaign_id": params.get("campaign_id"),
        "markets": tuple(params.get("markets") or ()),
        "stages": tuple(params.get("stages") or ()),
        "rfm_segments": tuple(params.get("rfm_segments") or ()),
        "became": params.get("became") or None,
        "within_days": params.get("within_days", 7),
        "template": params.get("template") or TEMPLATES[0],
        "content": content,
        "subject_b": params.get("subject_b") or None,
        "ab_share": params.get("ab_share", 0.5),
        "variants": tuple(params.get("variants") or ({"id": "v1"},)),
        "holdout_share": params.get("holdout_share", 0.0),
    }
    return parse_campaign(raw)


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

    ``had``: customer_id, content_version rows from the ledger (``variant_history``).
    """
    order = list(variants)
    ids = pd.Series(customer_ids).astype("int64")
    if had is None or had.empty:
        return pd.Series(order[0], index=ids.index, dtype=object)
    out = np.full(len(ids), None, dtype=object)
    values = ids.to_numpy()
    for variant in order:
        seen = had.loc[had["content_version"] == variant, "customer_id"].to_numpy(dtype="int64")
        free = pd.isna(out) & ~np.isin(values, seen)
        out[free] = variant
    return pd.Series(out, index=ids.index, dtype=object)


# --- the send step's audience --------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignAudience:
    """One market's members: ``audience`` for the send step, ``skipped`` with their pre-send outcome."""

    audience: pd.DataFrame
    skipped: pd.DataFrame  # customer_id, market, outcome, reason, content_version, step

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
    ledger history of this campaign (customer_id, content_version). ``had_this_date``:
    customers an earlier run already mailed for this calendar date (``had_calendar_date``):
    skipped as ``already_sent``, not given the next variant, because one calendar date is one
    round. Members whose day starts before ``now`` get ``now`` as their earliest instant.
    """
    from remarketing.markets import MarketConfig
    from remarketing.timing.send_windows import resolve_time_zones

    mine = targets[targets["market"] == market.code]
    people = customers.drop_duplicates("customer_id").set_index("customer_id")
    known = mine["customer_id"].isin(people.index).to_numpy()
    skipped = []
    if (~known).any():
        gone = mine.loc[~known, ["customer_id"]].assign(
            outcome="invalid_address", reason="no customer row in the store mirror", content_version=None, step=None
        )
        skipped.append(gone)
    mine = mine.loc[known]
    held = holdout_mask(campaign.campaign_id, mine["customer_id"], campaign.holdout_share)
    if held.any():
        skipped.append(
            mine.loc[held, ["customer_id"]].assign(
                outcome=HOLDOUT,
                reason=f"holdout ({campaign.holdout_share:.0%} control group)",
                content_version=None,
                step=None,
            )
        )
    mine = mine.loc[~held]
    this_date = mine["customer_id"].isin(set(had_this_date)).to_numpy()
    if this_date.any():
        skipped.append(
            mine.loc[this_date, ["customer_id"]].assign(
                outcome="already_sent", reason=REASON_THIS_DATE, content_version=None, step=None
            )
        )
        mine = mine.loc[~this_date]
    variant = pick_variants(mine["customer_id"], had, [v.id for v in campaign.variants])
    exhausted = variant.isna().to_numpy()
    if exhausted.any():
        skipped.append(
            mine.loc[exhausted, ["customer_id"]].assign(
                outcome="already_sent", reason=REASON_EXHAUSTED, content_version=None, step=None
            )
        )
    mine = mine.loc[~exhausted]
    variant = variant[~exhausted]
    arms = subject_arms(campaign.campaign_id, mine["customer_id"], campaign.ab_share if campaign.subject_b else None)
    rows = people.loc[mine["customer_id"].to_numpy()]
    from remarketing.content.engine import normalize_locale

    locale = rows["locale"].map(normalize_locale) if "locale" in rows else pd.Series(None, index=rows.index)
    audience = pd.DataFrame(
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
            "step": arms,
            "subject_id": campaign.subject_id,
            "content_version": variant.to_numpy(dtype=object),
        }
    )
    cfg = MarketConfig(markets={market.code: market})
    zones = resolve_time_zones(audience[["market", "time_zone", "country", "region"]], cfg)
    audience["time_zone"] = zones["time_zone"].to_numpy(dtype=object)
    start = local_day_start(send_date, audience["time_zone"])
    audience["earliest_at"] = start.where(start > pd.Timestamp(now), pd.Timestamp(now).tz_convert(UTC))
    skipped_frame = (
        pd.concat(skipped, ignore_index=True)
        if skipped
        else pd.DataFrame(columns=["customer_id", "outcome", "reason", "content_version", "step"])
    )
    skipped_frame["market"] = market.code
    return CampaignAudience(audience=audience, skipped=skipped_frame.reset_index(drop=True))


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


def local_today(market: Market, now: datetime) -> date:
    return now.astimezone(market.zone).date()


# --- calendar ------------------------------------------------------------------------------------


class CalendarEntry(_Strict):
    """A campaign in include/campaigns.yaml: on a fixed local date, or on (days before) a public holiday."""

    on: date | None = Field(default=None, alias="date")  # YAML 1.1 reads a bare `on:` key as True
    holiday: str | None = None  # an English holiday name as the `holidays` package spells it
    days_before: int = Field(default=0, ge=0, le=30)
    campaign: Campaign

    @model_validator(mode="after")
    def _when(self) -> CalendarEntry:
        if (self.on is None) == (self.holiday is None):
            raise ValueError("give exactly one of 'date' (YYYY-MM-DD) or 'holiday' (a holiday name)")
        return self

    def send_dates(self, market: Market, years: Iterable[int]) -> list[date]:
        """This entry's local send dates in ``market`` for the given years."""
        if self.on is not None:
            return [self.on]
        return [d - timedelta(days=self.days_before) for d in holiday_dates(market, self.holiday or "", years)]


def holiday_dates(market: Market, name: str, years: Iterable[int]) -> list[date]:
    """Dates of the market's holidays whose English name contains ``name`` (case-insensitive)."""
    import holidays

    rule = market.holidays
    calendar = holidays.country_holidays(rule.country, subdiv=rule.subdivision, categories=rule.categories)
    language = _HOLIDAY_LANGUAGE if _HOLIDAY_LANGUAGE in calendar.supported_languages else None
    found = holidays.country_holidays(
        rule.country, subdiv=rule.subdivision, years=sorted(set(years)), categories=rule.categories, language=language
    )
    wanted = name.strip().lower()
    return sorted(d for d, label in found.items() if any(wanted == part.strip().lower() for part in label.split(";")))


def calendar_file() -> Path:
    return settings.campaigns_file()


def parse_calendar(raw: object, markets: MarketConfig, source: str = "<campaigns>") -> list[CalendarEntry]:
    """Validate the calendar: every entry's campaign, date rule and markets; errors name the campaign."""
    if raw is None:
        return []
    if not isinstance(raw, dict) or not isinstance(raw.get("campaigns", []), list):
        raise CampaignError(f"{source}: expected a top-level 'campaigns:' list")
    entries, problems, seen = [], [], set()
    for i, body in enumerate(raw.get("campaigns") or []):
        name = body.get("campaign", {}).get("campaign_id") if isinstance(body, dict) else None
        where = f"{source} campaigns[{i}] ({name or '?'})"
        try:
            entry = CalendarEntry(**body) if isinstance(body, dict) else None
        except ValidationError as exc:
            problems.append(_problems(exc, where))
            continue
        if entry is None:
            problems.append(f"{where}: expected a mapping")
            continue
        campaign = entry.campaign
        if campaign.campaign_id in seen:
            problems.append(f"{where}: campaign_id {campaign.campaign_id} appears twice")
        seen.add(campaign.campaign_id)
        for code in campaign.markets:
            if code not in markets.markets:
                problems.append(f"{where}: unknown market {code!r}")
                continue
            market = markets[code]
            if entry.holiday is not None:
                years = range(date.today().year, date.today().year + 2)
                if not holiday_dates(market, entry.holiday, years):
                    problems.append(f"{where}: market {code} has no holiday named {entry.holiday!r}")
                elif entry.days_before == 0 and market.holidays.policy == "block":
                    problems.append(
                        f"{where}: market {code} blocks sends on its holidays; set days_before (1 or more) "
                        "or target markets whose holiday policy is 'target'"
                    )
        entries.append(entry)
    if problems:
        raise CampaignError(f"{source} is invalid:\n  " + "\n  ".join(problems))
    return entries


def load_calendar(path: str | Path | None = None, markets: MarketConfig | None = None) -> list[CalendarEntry]:
    from remarketing.markets import load_markets

    path = Path(path) if path is not None else calendar_file()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CampaignError(f"campaign calendar not found: {path}") from None
    except yaml.YAMLError as exc:
        raise CampaignError(f"{path} is not valid YAML: {exc}") from None
    return parse_calendar(raw, markets or load_markets(), source=str(path))


@dataclass(frozen=True)
class DueCampaign:
    campaign: Campaign
    market: str
    send_date: date


def due_campaigns(
    entries: Iterable[CalendarEntry], markets: MarketConfig, now: datetime, only: Iterable[str] | None = None
) -> list[DueCampaign]:
    """(campaign, market, local send date) pairs whose date is the market's today or tomorrow.

    Tomorrow too, so that a daily run at any hour schedules the whole send day (send_at is at
    most 72 h ahead); a customer already mailed is skipped by the rotation on the next run.
    """
    only = set(only) if only is not None else None
    due = []
    for entry in entries:
        for code in entry.campaign.markets:
            if only is not None and code not in only:
                continue
            market = markets[code]
            today = local_today(market, now)
            for day in entry.send_dates(market, (today.year, today.year + 1)):
                if day in (today, today + timedelta(days=1)):
                    due.append(DueCampaign(entry.campaign, code, day))
    return sorted(due, key=lambda d: (d.market, d.send_date, d.campaign.campaign_id))


# --- remarketing DB ------------------------------------------------------------------------------

campaigns_metadata = sa.MetaData()
campaign_variants = sa.Table(
    "campaign_variants",
    campaigns_metadata,
    sa.Column("campaign_id", sa.String(64), primary_key=True),
    sa.Column("variant_id", sa.String(32), primary_key=True),
    sa.Column("content_hash", sa.String(32), nullable=False),
    sa.Column("first_run_id", sa.String(250), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)
campaign_members = sa.Table(
    "campaign_members",
    campaigns_metadata,
    sa.Column("campaign_id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("market", sa.String(8), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("variant_id", sa.String(32)),
    sa.Column("arm", sa.String(8)),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)
MEMBER_COLUMNS = ("customer_id", "outcome", "reason", "variant_id", "arm")


def pin_variants(engine: sa.Engine, campaign: Campaign, *, run_id: str, now: datetime) -> None:
    """Record each variant's content hash; a variant id whose content changed since an earlier run is refused.

    Rotation trusts the variant id: if "v1" could change its text, "never the same content
    twice" would quietly become "never the same id twice".
    """
    t = campaign_variants.c
    with engine.begin() as conn:
        known = dict(
            conn.execute(sa.select(t.variant_id, t.content_hash).where(t.campaign_id == campaign.campaign_id)).all()
        )
        for variant in campaign.variants:
            digest = campaign.content_hash(variant.id)
            if variant.id in known and known[variant.id] != digest:
                raise CampaignError(
                    f"campaign {campaign.campaign_id}: variant {variant.id} was sent with other content before; "
                    "give changed content a new variant id"
                )
            if variant.id not in known:
                conn.execute(
                    campaign_variants.insert().values(
                        campaign_id=campaign.campaign_id,
                        variant_id=variant.id,
                        content_hash=digest,
                        first_run_id=run_id,
                        recorded_at=now,
                    )
                )


def variant_history(engine: sa.Engine, campaign_id: str, customer_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """(customer_id, content_version) of this campaign's ledger rows that count as had.

    Every row except a retryable rejection (which a later run may send again): accepted,
    scheduled, unknown, in flight, or refused for good.
    """
    from remarketing.delivery.ledger import send_ledger

    t = send_ledger.c
    query = sa.select(t.customer_id, t.content_version).where(
        t.flow == FLOW,
        t.subject_id == campaign_id,
        t.customer_id.is_not(None),
        ~sa.and_(t.status == "rejected", t.retryable.is_(True)),
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["customer_id", "content_version"])
    frame["customer_id"] = pd.to_numeric(frame["customer_id"], errors="coerce")
    frame = frame.dropna(subset=["customer_id"]).astype({"customer_id": "int64"})
    if customer_ids is not None:
        frame = frame[frame["customer_id"].isin(set(customer_ids))]
    return frame.drop_duplicates().reset_index(drop=True)


def had_calendar_date(engine: sa.Engine, campaign_id: str, market: Market, send_date: date) -> set[int]:
    """Customers of ``market`` with a mail of this campaign claimed by a run that could target ``send_date``.

    The calendar takes a date on the market's local day before and on the day itself, so two
    runs see each date; the first schedules it. Rows claimed since local midnight of the day
    before count (a retryable rejection does not: a later run may send it again).
    """
    from remarketing.delivery.ledger import send_ledger

    since = datetime.combine(send_date - timedelta(days=1), datetime.min.time(), tzinfo=market.zone).astimezone(UTC)
    t = send_ledger.c
    query = sa.select(t.customer_id).where(
        t.flow == FLOW,
        t.subject_id == campaign_id,
        t.market == market.code,
        t.customer_id.is_not(None),
        t.claimed_at >= since,
        ~sa.and_(t.status == "rejected", t.retryable.is_(True)),
    )
    with engine.connect() as conn:
        ids = pd.to_numeric(pd.Series(conn.execute(query).scalars().all(), dtype=object), errors="coerce")
    return set(ids.dropna().astype("int64").tolist())


def record_members(
    engine: sa.Engine, campaign_id: str, market: str, run_id: str, members: pd.DataFrame, *, now: datetime
) -> int:
    """Replace this (campaign, run, market)'s member rows with ``members`` (MEMBER_COLUMNS); a retry rewrites them."""
    missing = [c for c in MEMBER_COLUMNS if c not in members.columns]
    if missing:
        raise ValueError(f"campaign {campaign_id} market {market}: members lack {missing}")
    frame = members[list(MEMBER_COLUMNS)].copy()
    dupes = frame["customer_id"].duplicated()
    if dupes.any():
        raise ValueError(f"campaign {campaign_id}: customer_id {frame.loc[dupes, 'customer_id'].iloc[0]} listed twice")
    frame["customer_id"] = frame["customer_id"].astype("int64")
    records = [
        {
            "campaign_id": campaign_id,
            "run_id": run_id,
            "market": market,
            "recorded_at": now,
            **{k: (None if (v is None or (isinstance(v, float) and np.isnan(v))) else v) for k, v in row.items()},
        }
        for row in frame.astype(object).to_dict("records")
    ]
    for record in records:
        record["customer_id"] = int(record["customer_id"])
    t = campaign_members.c
    with engine.begin() as conn:
        conn.execute(
            sa.delete(campaign_members).where(t.campaign_id == campaign_id, t.run_id == run_id, t.market == market)
        )
        for start in range(0, len(records), 5000):
            conn.execute(campaign_members.insert(), records[start : start + 5000])
    return len(records)


def load_members(engine: sa.Engine, campaign_id: str) -> pd.DataFrame:
    """Every recorded member row of a campaign (all runs)."""
    from remarketing.platform.state import utc

    with engine.connect() as conn:
        rows = conn.execute(sa.select(campaign_members).where(campaign_members.c.campaign_id == campaign_id)).all()
    frame = pd.DataFrame(rows, columns=[c.name for c in campaign_members.columns])
    frame["recorded_at"] = frame["recorded_at"].map(utc)
    return frame


def utcnow() -> datetime:
    return datetime.now(UTC)
