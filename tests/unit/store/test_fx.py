"""FX rates: as-of conversion into a reporting currency, missing rates flagged, a bad table fails on load."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from remarketing.markets import load_markets
from remarketing.platform import settings
from remarketing.store.fx import FxRates, FxRatesError, load_fx_rates

HEADER = "date,currency,per_eur\n"


@pytest.fixture(scope="module")
def rates() -> FxRates:
    return FxRates(
        pd.DataFrame(
            {
                "date": [date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1), date(2024, 1, 1), date(2024, 2, 1)],
                "currency": ["GBP", "GBP", "GBP", "USD", "JPY"],
                "per_eur": [0.80, 0.85, 0.90, 1.10, 160.0],
            }
        )
    )


def _write(tmp_path, body: str):
    path = tmp_path / "fx.csv"
    path.write_text(body, encoding="utf-8")
    return path


def test_as_of_join_takes_the_latest_rate_on_or_before_the_date(rates):
    days = [
        date(2024, 1, 15),  # between Jan and Feb: Jan's rate
        date(2024, 2, 1),  # on Feb 1: Feb's rate
        date(2024, 2, 29),  # just before Mar 1: Feb's rate
        date(2024, 3, 1),  # on Mar 1: Mar's rate
        date(2030, 1, 1),  # long after the last rate: the last one
        date(2023, 12, 31),  # before the first rate: missing
    ]
    converted, missing = rates.convert([80.0, 85.0, 85.0, 90.0, 90.0, 1.0], ["GBP"] * 6, days, "EUR")
    np.testing.assert_allclose(converted[:5], [100.0, 100.0, 100.0, 100.0, 100.0])
    assert missing.tolist() == [False, False, False, False, False, True]
    assert np.isnan(converted[5])
    assert converted.dtype == np.float64 and missing.dtype == np.bool_


def test_cross_rates_go_through_eur(rates):
    # 100 USD -> EUR -> GBP on 2024-02-10: 100 / 1.10 * 0.85
    converted, missing = rates.convert([100.0], ["USD"], [date(2024, 2, 10)], "GBP")
    assert not missing[0]
    assert converted[0] == pytest.approx(100 / 1.10 * 0.85)


def test_timestamps_use_the_utc_calendar_date(rates):
    # 23:30 in New York on Jan 31 is Feb 1 in UTC: February's rate, not January's.
    new_york = pd.Timestamp("2024-01-31 23:30", tz="America/New_York")
    # 00:30 in Berlin on Feb 1 is still Jan 31 in UTC: January's rate.
    berlin = pd.Timestamp("2024-02-01 00:30", tz="Europe/Berlin")
    naive = datetime(2024, 2, 1, 0, 0)  # naive: taken as UTC
    aware = datetime(2024, 1, 31, 23, 59, tzinfo=UTC)
    converted, missing = rates.convert([1.0] * 4, ["EUR"] * 4, [new_york, berlin, naive, aware], "GBP")
    assert not missing.any()
    np.testing.assert_allclose(converted, [0.85, 0.80, 0.85, 0.80])

    series = pd.Series(pd.to_datetime(["2024-01-31 23:30", "2024-02-01 00:30"]).tz_localize("America/New_York"))
    converted, _ = rates.convert(pd.Series([1.0, 1.0]), pd.Series(["EUR", "EUR"]), series, "GBP")
    np.testing.assert_allclose(converted, [0.85, 0.85])


def test_eur_and_same_currency_need_no_rate(rates):
    long_ago = date(1999, 1, 1)
    converted, missing = rates.convert(
        [12.5, 7.0, 3.0, 4.0],
        ["EUR", "GBP", "CHF", "XXX"],  # no CHF rates at all; XXX is not in the table either
        [long_ago, long_ago, long_ago, long_ago],
        ["EUR", "GBP", "CHF", "XXX"],
    )
    assert not missing.any()
    assert converted.tolist() == [12.5, 7.0, 3.0, 4.0]
    # EUR on one side needs only the other side's rate, and EUR itself is never looked up.
    converted, missing = rates.convert([100.0, 80.0], ["EUR", "GBP"], [date(2024, 1, 2)] * 2, ["GBP", "EUR"])
    assert not missing.any()
    np.testing.assert_allclose(converted, [80.0, 100.0])


def test_per_row_targets(rates):
    converted, missing = rates.convert(
        np.array([100.0, 100.0, 100.0, 100.0]),
        np.array(["EUR", "EUR", "USD", "GBP"]),
        np.array(["2024-02-15"] * 4, dtype="datetime64[D]"),
        np.array(["GBP", "JPY", "USD", "JPY"]),
    )
    assert not missing.any()
    np.testing.assert_allclose(converted, [85.0, 16000.0, 100.0, 100 / 0.85 * 160.0])


def test_missing_rates_are_flagged_with_a_reason_naming_currency_and_date(rates):
    currencies = ["GBP", "EUR", "CHF", "USD", "GBP", None]
    targets = ["EUR", "JPY", "EUR", "USD", "EUR", "EUR"]
    days = [date(2023, 6, 1), date(2024, 1, 20), date(2024, 5, 1), date(2020, 1, 1), None, date(2024, 5, 1)]
    converted, missing = rates.convert([1.0] * 6, currencies, days, targets)
    assert missing.tolist() == [True, True, True, False, True, True]
    assert np.isnan(converted[missing]).all()

    assert rates.missing_reason("GBP", date(2023, 6, 1)).startswith("no EUR->GBP rate on or before 2023-06-01")
    # the target's rate is the one missing (JPY starts 2024-02-01)
    reason = rates.missing_reason("EUR", date(2024, 1, 20), "JPY")
    assert "EUR->JPY" in reason and "2024-01-20" in reason
    assert "CHF" in rates.missing_reason("CHF", pd.Timestamp("2024-05-01 22:00", tz="UTC"))
    assert rates.missing_reason("GBP", date(2024, 5, 1)) is None
    assert rates.missing_reason("GBP", date(1990, 1, 1), "GBP") is None

    reasons = rates.missing_reasons(currencies, days, targets)
    assert reasons[0] == "no EUR->GBP rate on or before 2023-06-01 (the first GBP rate is on 2024-01-01)"
    assert reasons[1] == "no EUR->JPY rate on or before 2024-01-20 (the first JPY rate is on 2024-02-01)"
    assert reasons[2].startswith("no EUR->CHF rate on or before 2024-05-01")
    assert reasons[3] is None
    assert reasons[4] == "no EUR->GBP rate: the date is missing"
    assert "currency is missing" in reasons[5]


def test_a_million_rows_convert_vectorised(rates):
    n = 1_000_000
    rng = np.random.default_rng(7)
    currencies = rng.choice(np.array(["EUR", "GBP", "USD", "JPY", "CHF"], dtype=object), n)
    targets = rng.choice(np.array(["EUR", "GBP", "USD"], dtype=object), n)
    days = np.datetime64("2023-12-01") + rng.integers(0, 120, n).astype("timedelta64[D]")
    amounts = rng.random(n) * 100

    converted, missing = rates.convert(amounts, currencies, days, targets)

    assert converted.shape == missing.shape == (n,)
    same = currencies == targets
    np.testing.assert_array_equal(converted[same], amounts[same])
    chf = (currencies == "CHF") & ~same
    assert missing[chf].all()
    before_first = days < np.datetime64("2024-01-01")
    assert missing[before_first & ~same].all()
    # spot-check one converted row against the formula
    row = int(np.flatnonzero((currencies == "USD") & (targets == "GBP") & (days >= np.datetime64("2024-03-01")))[0])
    assert converted[row] == pytest.approx(amounts[row] / 1.10 * 0.90)
    assert np.isnan(converted[missing]).all() and not np.isnan(converted[~missing]).any()


def test_the_shipped_rates_load_and_cover_every_market_currency():
    assert settings.fx_rates_file() == settings.DEFAULT_FX_RATES_FILE
    shipped = load_fx_rates()
    market_currencies = {market.currency for market in load_markets()}
    assert market_currencies <= shipped.currencies
    assert {"GBP", "CHF", "SEK", "DKK", "PLN", "NOK", "CZK", "AUD", "CAD"} <= shipped.currencies
    frame = shipped.frame
    for currency in market_currencies - {"EUR"}:
        dates = frame.loc[frame["currency"] == currency, "date"]
        assert dates.min() == date(2010, 1, 1) and dates.max() == date(2026, 12, 1), currency
        assert len(dates) == 17 * 12, currency  # monthly, 2010 to 2026
    days = [date(2010, 12, 1), date(2025, 6, 17), date(2026, 12, 31)]
    for currency in market_currencies:
        _, missing = shipped.convert([1.0] * 3, [currency] * 3, days, "EUR")
        assert not missing.any(), currency


def test_the_rates_file_comes_from_the_environment(tmp_path, monkeypatch):
    path = _write(tmp_path, HEADER + "2024-01-01,GBP,0.5\n")
    monkeypatch.setenv(settings.FX_RATES_FILE_ENV, str(path))
    converted, _ = load_fx_rates().convert([1.0], ["EUR"], [date(2024, 6, 1)], "GBP")
    assert converted[0] == 0.5


def test_a_valid_file_may_have_columns_in_any_order_and_blank_lines(tmp_path):
    path = _write(tmp_path, "currency, per_eur ,date\n\nGBP,0.85,2024-01-01\nEUR,1,2024-01-01\n")
    rates = load_fx_rates(path)
    assert rates.currencies == {"EUR", "GBP"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (HEADER + "2024-01-01,GBP,0.85\n2024-13-01,GBP,0.86\n", "line 3, date: '2024-13-01' is not a calendar date"),
        (HEADER + "01/02/2024,GBP,0.85\n", "line 2, date: '01/02/2024' is not a calendar date"),
        (HEADER + "\n2024-01-01,gbp,0.85\n", "line 3, currency: 'gbp' is not a currency code (3 upper-case letters)"),
        (HEADER + "2024-01-01,XYZ,0.85\n", "line 2, currency: 'XYZ' is not an ISO 4217 currency code"),
        (HEADER + "2024-01-01,GBP,0\n", "line 2, per_eur: '0' is not a positive rate"),
        (HEADER + "2024-01-01,GBP,-0.85\n", "line 2, per_eur: '-0.85' is not a positive rate"),
        (HEADER + "2024-01-01,GBP,inf\n", "line 2, per_eur: 'inf' is not a positive rate"),
        (HEADER + "2024-01-01,GBP,abc\n", "line 2, per_eur: 'abc' is not a number"),
        (HEADER + "2024-01-01,GBP,\n", "line 2, per_eur: '' is not a number"),
        (HEADER + "2024-01-01,EUR,1.1\n", "line 2, per_eur: EUR is the base currency"),
        (
            HEADER + "2024-01-01,GBP,0.85\n2024-02-01,GBP,0.86\n2024-01-01,GBP,0.87\n",
            "line 4, date+currency: 2024-01-01 GBP is already on line 2",
        ),
        (HEADER + "2024-01-01,GBP\n", "line 2: expected 3 fields"),
        ("day,currency,rate\n2024-01-01,GBP,0.85\n", "line 1: the header must be date,currency,per_eur"),
        ("", "the header must be date,currency,per_eur (the file is empty)"),
    ],
)
def test_a_bad_file_fails_naming_the_line_and_field(tmp_path, body, expected):
    path = _write(tmp_path, body)
    with pytest.raises(FxRatesError) as error:
        load_fx_rates(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)


def test_every_problem_is_listed_at_once(tmp_path):
    path = _write(tmp_path, HEADER + "2024-02-30,GBP,0.85\n2024-01-01,EURO,0.85\n2024-01-01,USD,-1\n")
    with pytest.raises(FxRatesError) as error:
        load_fx_rates(path)
    message = str(error.value)
    assert "line 2, date" in message and "line 3, currency" in message and "line 4, per_eur" in message


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(FxRatesError, match="FX rates not found: .*nowhere.csv"):
        load_fx_rates(tmp_path / "nowhere.csv")


def test_a_frame_is_validated_too():
    with pytest.raises(FxRatesError, match="missing per_eur"):
        FxRates(pd.DataFrame({"date": [date(2024, 1, 1)], "currency": ["GBP"]}))
    with pytest.raises(FxRatesError, match="row 1, per_eur: -1.0 is not a positive rate"):
        FxRates(pd.DataFrame({"date": [date(2024, 1, 1)] * 2, "currency": ["GBP", "USD"], "per_eur": [0.8, -1.0]}))
