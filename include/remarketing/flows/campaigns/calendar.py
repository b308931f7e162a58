"""The campaign calendar (include/campaigns.yaml): dated campaigns and local-holiday campaigns per market."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from remarketing.flows.campaigns.model import (
    Campaign,
    CampaignError,
    StrictModel,
    local_today,
    validation_problems,
)
from remarketing.markets import Market, MarketConfig
from remarketing.platform import settings

DEFAULT_CALENDAR_FILE = settings.DEFAULT_CAMPAIGNS_FILE
_HOLIDAY_LANGUAGE = "en_US"  # holiday names are matched in English, whatever the market's language


class CalendarEntry(StrictModel):
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
            problems.append(validation_problems(exc, where))
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
