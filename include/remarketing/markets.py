"""Market configuration: one YAML file (include/markets.yaml), validated on load.

Every market-specific rule (locales, currency, time zones, send and quiet hours, holidays,
sender identity, unsubscribe group, warm-up cap) lives in that file, so a shop adds a market
by editing config, not code. A bad file fails loudly with the market and field at fault.
"""

from __future__ import annotations

import re
from datetime import time
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, available_timezones

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from remarketing.platform import settings

DEFAULT_MARKETS_FILE = settings.DEFAULT_MARKETS_FILE
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LOCALE_RE = re.compile(r"^[a-z]{2,3}(-[A-Z][a-z]{3})?(-[A-Z]{2})?$")


class MarketConfigError(ValueError):
    """The market configuration file is missing or invalid."""


def _valid_zone(name: str) -> str:
    if name not in _iana_zones():
        raise ValueError(f"{name!r} is not an IANA time zone name")
    return name


@lru_cache(maxsize=1)
def _iana_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _parse_hhmm(value: str) -> time:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", str(value))
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"{value!r} is not a time of day in HH:MM form")
    return time(int(match[1]), int(match[2]))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuietHours(_Strict):
    """No send lands in [start, end) local time; the range may cross midnight."""

    start: time
    end: time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _hhmm(cls, value: object) -> time:
        return value if isinstance(value, time) else _parse_hhmm(str(value))


class HolidayRule(_Strict):
    country: str = Field(pattern=r"^[A-Z]{2}$")
    subdivision: str | None = None
    policy: Literal["block", "target"] = "block"
    # `holidays` categories that count: "public" by default; BR adds "optional" for Carnival.
    categories: tuple[str, ...] = ("public",)

    @model_validator(mode="after")
    def _known_to_holidays(self) -> HolidayRule:
        import holidays

        supported = holidays.list_supported_countries()
        if self.country not in supported:
            raise ValueError(f"holidays has no calendar for country {self.country!r}")
        if self.subdivision is not None and self.subdivision not in supported[self.country]:
            raise ValueError(f"holidays has no subdivision {self.subdivision!r} for {self.country}")
        known = holidays.country_holidays(self.country).supported_categories
        unknown = [c for c in self.categories if c not in known]
        if unknown:
            raise ValueError(f"holidays has no categories {unknown} for {self.country}; it has {sorted(known)}")
        return self


class Sender(_Strict):
    from_email: str
    from_name: str
    reply_to: str
    support_email: str
    support_phone: str
    authenticated_domain: str
    authenticated: bool

    @field_validator("from_email", "reply_to", "support_email")
    @classmethod
    def _email(cls, value: str) -> str:
        from email_validator import EmailNotValidError, validate_email

        try:
            validate_email(value, check_deliverability=False)
        except EmailNotValidError as exc:
            raise ValueError(f"{value!r} is not a valid address: {exc}") from None
        return value


class Storefront(_Strict):
    """The shop's pages that mails link to, per market."""

    shop_url: str = Field(pattern=r"^https?://")
    cart_url: str = Field(pattern=r"^https?://")  # restores a cart; the signed token is appended as ?token=
    unsubscribe_url: str = Field(pattern=r"^https?://")  # one-click unsubscribe endpoint (RFC 8058)
    privacy_url: str | None = Field(default=None, pattern=r"^https?://")


class Deliverability(_Strict):
    """Gate thresholds over a trailing window; defaults follow Gmail's and Yahoo's sender rules."""

    window_days: int = Field(default=7, ge=1, le=90)
    bounce_warn: float = Field(default=0.02, ge=0, le=1)
    bounce_halt: float = Field(default=0.05, ge=0, le=1)
    complaint_warn: float = Field(default=0.001, ge=0, le=1)
    complaint_halt: float = Field(default=0.003, ge=0, le=1)
    min_delivered: int = Field(default=100, ge=0)  # rates over fewer delivered mails are not judged

    @model_validator(mode="after")
    def _warn_below_halt(self) -> Deliverability:
        if self.bounce_warn > self.bounce_halt or self.complaint_warn > self.complaint_halt:
            raise ValueError("warn thresholds must not exceed halt thresholds")
        return self


class Market(_Strict):
    code: str = Field(pattern=r"^[A-Z]{2}$")
    name: str
    countries: tuple[str, ...] = ()  # ISO 3166 codes served; empty: just the market's own code
    locales: tuple[str, ...] = Field(min_length=1)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    default_time_zone: str
    time_zones: tuple[str, ...] = Field(min_length=1)
    region_time_zones: dict[str, str] = Field(default_factory=dict)
    send_hours: dict[str, tuple[int, int]]
    quiet_hours: QuietHours
    holidays: HolidayRule
    marketing_consent_required: bool
    sender: Sender
    sendgrid_unsubscribe_group_id: int = Field(gt=0)
    warmup_daily_cap: int = Field(gt=0)
    storefront: Storefront
    deliverability: Deliverability = Field(default_factory=Deliverability)

    @property
    def primary_locale(self) -> str:
        return self.locales[0]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.default_time_zone)

    @field_validator("locales")
    @classmethod
    def _locales(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for locale in value:
            if not _LOCALE_RE.match(locale):
                raise ValueError(f"{locale!r} is not a BCP 47 locale such as 'de-DE'")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        from babel.numbers import list_currencies

        if value not in list_currencies():
            raise ValueError(f"{value!r} is not an ISO 4217 currency code")
        return value

    @field_validator("default_time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _valid_zone(value)

    @field_validator("time_zones")
    @classmethod
    def _zones(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_valid_zone(zone) for zone in value)

    @field_validator("region_time_zones")
    @classmethod
    def _region_zones(cls, value: dict[str, str]) -> dict[str, str]:
        return {region: _valid_zone(zone) for region, zone in value.items()}

    @field_validator("send_hours")
    @classmethod
    def _send_hours(cls, value: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        missing = [day for day in WEEKDAYS if day not in value]
        unknown = [day for day in value if day not in WEEKDAYS]
        if missing or unknown:
            raise ValueError(f"needs exactly the weekdays {', '.join(WEEKDAYS)} (missing {missing}, unknown {unknown})")
        for day, (first, end) in value.items():
            if not 0 <= first < end <= 24:
                raise ValueError(f"{day}: [{first}, {end}) is not a range of hours within 0..24")
        return value

    @field_validator("countries")
    @classmethod
    def _countries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from babel.core import get_global

        known = set(get_global("territory_currencies"))
        for code in value:
            if not re.fullmatch(r"[A-Z]{2}", code) or code not in known:
                raise ValueError(f"{code!r} is not an ISO 3166 country code")
        return value

    @model_validator(mode="after")
    def _own_country(self) -> Market:
        if not self.countries:
            object.__setattr__(self, "countries", (self.code,))
        return self

    @model_validator(mode="after")
    def _zones_listed(self) -> Market:
        if self.default_time_zone not in self.time_zones:
            raise ValueError(f"default_time_zone {self.default_time_zone} is not among time_zones")
        stray = sorted({zone for zone in self.region_time_zones.values() if zone not in self.time_zones})
        if stray:
            raise ValueError(f"region_time_zones uses {stray}, which are not among time_zones")
        return self


class MarketConfig(_Strict):
    markets: dict[str, Market]

    def __getitem__(self, code: str) -> Market:
        try:
            return self.markets[code]
        except KeyError:
            raise KeyError(f"unknown market {code!r}; configured: {', '.join(self.markets)}") from None

    def __iter__(self):
        return iter(self.markets.values())

    def __len__(self) -> int:
        return len(self.markets)

    @property
    def codes(self) -> list[str]:
        return list(self.markets)

    @model_validator(mode="after")
    def _one_market_per_country(self) -> MarketConfig:
        seen: dict[str, str] = {}
        for market in self.markets.values():
            for country in market.countries:
                if country in seen:
                    raise ValueError(f"country {country} is served by both {seen[country]} and {market.code}")
                seen[country] = market.code
        return self

    def market_of_country(self) -> dict[str, str]:
        """ISO country code -> the code of the market that serves it."""
        return {country: market.code for market in self.markets.values() for country in market.countries}


def markets_file() -> Path:
    return settings.markets_file()


def parse_markets(raw: object, source: str = "<markets>") -> MarketConfig:
    """Validate an already-parsed YAML document; errors name the market and field."""
    if not isinstance(raw, dict) or not isinstance(raw.get("markets"), dict) or not raw["markets"]:
        raise MarketConfigError(f"{source}: expected a top-level 'markets:' mapping with at least one market")
    markets = {}
    problems = []
    for code, body in raw["markets"].items():
        if not isinstance(body, dict):
            problems.append(f"markets.{code}: expected a mapping, got {type(body).__name__}")
            continue
        try:
            markets[code] = Market(code=code, **body)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(part) for part in err["loc"])
                problems.append(f"markets.{code}.{field}: {err['msg']}")
        except TypeError as exc:
            problems.append(f"markets.{code}: {exc}")
    if problems:
        raise MarketConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems))
    return MarketConfig(markets=markets)


def load_markets(path: str | Path | None = None) -> MarketConfig:
    """Load and validate the market configuration (cached until the file changes)."""
    return settings.load_config(
        path or markets_file(), what="market configuration", parse=parse_markets, error=MarketConfigError
    )
