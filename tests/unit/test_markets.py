"""Market configuration: the shipped file is valid, and a bad one fails naming market and field."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pandas as pd
import pytest
import yaml

from remarketing.markets import DEFAULT_MARKETS_FILE, MarketConfigError, load_markets, parse_markets


@pytest.fixture(scope="module")
def shipped() -> dict:
    return yaml.safe_load(DEFAULT_MARKETS_FILE.read_text(encoding="utf-8"))


def test_the_shipped_markets_load_with_every_required_market():
    config = load_markets()
    assert {"DE", "FR", "GB", "US", "JP", "CN", "BR"} <= set(config.codes)
    assert len(config["US"].time_zones) >= 3
    assert config["JP"].quiet_hours.end.strftime("%H:%M") == "07:30"
    assert config["US"].marketing_consent_required is False


@pytest.mark.parametrize(
    ("market", "field", "value", "expected"),
    [
        ("DE", "currency", "EURO", "markets.DE.currency"),
        ("DE", "currency", "XYZ", "not an ISO 4217 currency code"),
        (
            "FR",
            "default_time_zone",
            "Europe/Pariss",
            "markets.FR.default_time_zone: Value error, 'Europe/Pariss' is not an IANA",
        ),
        ("JP", "quiet_hours", {"start": "25:00", "end": "07:00"}, "markets.JP.quiet_hours.start"),
        ("GB", "send_hours", {"mon": [9, 20]}, "markets.GB.send_hours: Value error, needs exactly the weekdays"),
        ("US", "send_hours", {d: [20, 9] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}, "is not a range"),
        ("GB", "holidays", {"country": "GB", "subdivision": "XXX"}, "holidays has no subdivision 'XXX' for GB"),
        (
            "BR",
            "holidays",
            {"country": "BR", "categories": ["bank-ish"]},
            "holidays has no categories ['bank-ish'] for BR",
        ),
        ("CN", "locales", ["zh_CN"], "markets.CN.locales: Value error, 'zh_CN' is not a BCP 47 locale"),
        ("DE", "warmup_daily_cap", 0, "markets.DE.warmup_daily_cap"),
        ("US", "region_time_zones", {"CA": "Europe/Berlin"}, "region_time_zones uses ['Europe/Berlin']"),
        ("DE", "colour", "blue", "markets.DE.colour: Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_is_refused_naming_market_and_field(shipped, market, field, value, expected):
    raw = copy.deepcopy(shipped)
    raw["markets"][market][field] = value
    with pytest.raises(MarketConfigError) as failure:
        parse_markets(raw, source="markets.yaml")
    assert expected in str(failure.value)


def test_a_bad_sender_address_is_refused(shipped):
    raw = copy.deepcopy(shipped)
    raw["markets"]["FR"]["sender"]["from_email"] = "not-an-address"
    with pytest.raises(MarketConfigError, match=r"markets\.FR\.sender\.from_email"):
        parse_markets(raw)


def test_every_problem_is_reported_at_once(shipped):
    raw = copy.deepcopy(shipped)
    raw["markets"]["DE"]["currency"] = "XYZ"
    raw["markets"]["JP"]["default_time_zone"] = "Mars/Olympus"
    with pytest.raises(MarketConfigError) as failure:
        parse_markets(raw)
    assert "markets.DE.currency" in str(failure.value) and "markets.JP.default_time_zone" in str(failure.value)


def test_a_missing_or_broken_file_is_reported_with_its_path(tmp_path):
    with pytest.raises(MarketConfigError, match="not found"):
        load_markets(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("markets: [unclosed", encoding="utf-8")
    with pytest.raises(MarketConfigError, match="is not valid YAML"):
        load_markets(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("markets: {}\n", encoding="utf-8")
    with pytest.raises(MarketConfigError, match="at least one market"):
        load_markets(empty)


def test_brazil_blocks_carnival_from_the_shipped_config():
    """Carnival is an 'optional' holiday in the calendar; BR's config counts it as blocking."""
    from remarketing.timing.send_windows import compute_send_at

    # Carnival 2027: Mon 8 and Tue 9 February; Ash Wednesday the 10th is optional too.
    audience = pd.DataFrame(
        {"market": ["BR"], "time_zone": ["America/Sao_Paulo"], "earliest_at": [datetime(2027, 2, 8, 13, 0, tzinfo=UTC)]}
    )
    result = compute_send_at(audience, now=datetime(2027, 2, 8, 13, 0, tzinfo=UTC))
    local = result["send_at"].iloc[0].tz_convert("America/Sao_Paulo")
    assert local.date().isoformat() == "2027-02-11" and local.hour == 9
    only_public = compute_send_at(
        audience, now=datetime(2027, 2, 8, 13, 0, tzinfo=UTC), holiday_categories={"BR": ("public",)}
    )
    assert only_public["send_at"].iloc[0].tz_convert("America/Sao_Paulo").date().isoformat() == "2027-02-08"


def test_storefront_links_are_required_and_must_be_urls(shipped):
    raw = copy.deepcopy(shipped)
    del raw["markets"]["DE"]["storefront"]
    with pytest.raises(MarketConfigError, match=r"markets\.DE\.storefront"):
        parse_markets(raw)
    raw = copy.deepcopy(shipped)
    raw["markets"]["JP"]["storefront"]["cart_url"] = "shop.example.com/cart"
    with pytest.raises(MarketConfigError, match=r"markets\.JP\.storefront\.cart_url"):
        parse_markets(raw)


def test_deliverability_thresholds_default_to_mailbox_provider_rules_and_must_be_ordered(shipped):
    markets = parse_markets(copy.deepcopy(shipped))
    assert markets["DE"].deliverability.complaint_halt == 0.003
    assert markets["DE"].deliverability.bounce_warn == 0.02
    raw = copy.deepcopy(shipped)
    raw["markets"]["FR"]["deliverability"] = {"complaint_warn": 0.01, "complaint_halt": 0.003}
    with pytest.raises(MarketConfigError, match=r"markets\.FR.*warn thresholds"):
        parse_markets(raw)
