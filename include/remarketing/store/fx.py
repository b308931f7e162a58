"""Foreign-exchange rates: money in any currency, reported in one currency per market.

Why: each market reports (revenue, order values, CLV) in one currency (``currency`` in
include/markets.yaml), but shops invoice in many: a UK customer may pay in EUR, a US order may be
settled in CAD. Before amounts are summed or compared they are converted here, at the rate of the
order's own date, so a figure never mixes currencies and never uses a rate from the future.

Rates are units of a currency per 1 EUR on a date, the way the ECB publishes its reference rates
(EUR itself is always 1 and needs no row). ``X -> Y`` is ``amount / per_eur[X] * per_eur[Y]``,
taken as of the row's UTC calendar date: the latest rate on or before that date. A row whose
currency already is the target converts at 1 without any rate. A row needing a rate that does not
exist on or before its date is flagged ``missing`` (its amount becomes NaN) for the caller to
quarantine with :meth:`FxRates.missing_reason`.

The table is a CSV with the header ``date,currency,per_eur`` (``2024-03-01,GBP,0.8561``), read
from include/fx_rates.csv unless ``REMARKETING_FX_RATES`` names another file
(remarketing.platform.settings). The shipped file holds plausible monthly rates for 2010-2026 (yearly averages before 2023),
not live data: shops replace it with their own rates, e.g. the ECB's daily reference rates
(https://www.ecb.europa.eu/stats/eurofxref/). A bad file fails on load, naming the line and field
of every problem.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from remarketing.platform import settings

BASE = "EUR"
COLUMNS = ("date", "currency", "per_eur")
MAX_LISTED_PROBLEMS = 20
_CODE_RE = re.compile(r"^[A-Z]{3}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EPOCH = date(1970, 1, 1)


class FxRatesError(ValueError):
    """The FX rates table is missing or invalid; the message names the line and field at fault."""


def known_currencies() -> frozenset[str]:
    """Every ISO 4217 code Babel knows (current and historical)."""
    from babel.core import get_global

    return frozenset(get_global("all_currencies"))


@dataclass(frozen=True)
class _Series:
    """One currency's rates: days since 1970-01-01 (ascending) and units per EUR."""

    days: np.ndarray
    per_eur: np.ndarray


class FxRates:
    """Rates per currency and date, with vectorised as-of conversion.

    Built from a frame with columns ``date`` (a calendar date), ``currency`` (ISO 4217 code) and
    ``per_eur`` (positive float). EUR rows are optional and must be 1.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        missing_columns = [column for column in COLUMNS if column not in frame.columns]
        if missing_columns:
            raise FxRatesError(f"FX rates need the columns {', '.join(COLUMNS)}; missing {', '.join(missing_columns)}")
        days = _utc_days(frame["date"].array, len(frame), coerce=True)
        currency = frame["currency"].astype(object).to_numpy()
        per_eur = pd.to_numeric(frame["per_eur"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        labels = [f"row {position}" for position in range(len(frame))]
        _raise_if(_problems(days, currency, per_eur, labels, frame["per_eur"].tolist()), "FX rates")

        table = (
            pd.DataFrame({"day": days, "currency": currency, "per_eur": per_eur})
            .loc[lambda rows: rows["currency"] != BASE]
            .sort_values(["currency", "day"], kind="stable")
        )
        self._series = {
            str(code): _Series(group["day"].to_numpy(dtype="int64"), group["per_eur"].to_numpy(dtype="float64"))
            for code, group in table.groupby("currency", sort=True)
        }

    def __repr__(self) -> str:
        return f"FxRates({len(self._series)} currencies besides {BASE})"

    @property
    def currencies(self) -> frozenset[str]:
        """Every currency a rate can be found for (EUR always)."""
        return frozenset(self._series) | {BASE}

    @property
    def frame(self) -> pd.DataFrame:
        """The rates as a ``date, currency, per_eur`` frame, by currency then date (EUR omitted)."""
        parts = [
            pd.DataFrame(
                {
                    "date": [_day_to_date(int(day)) for day in series.days],
                    "currency": code,
                    "per_eur": series.per_eur,
                }
            )
            for code, series in self._series.items()
        ]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(COLUMNS))

    def convert(
        self, amounts: Any, currencies: Any, dates: Any, to_currency: str | Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Convert ``amounts`` in ``currencies`` into ``to_currency`` as of ``dates``.

        ``to_currency`` is one code or one per row (e.g. each row's market reporting currency).
        ``dates`` are dates or timestamps (naive ones are taken as UTC); the UTC calendar date picks
        the latest rate on or before it. Returns ``(converted, missing)``: float64 amounts, NaN
        where ``missing`` is True because the source or target currency has no rate on or before
        that date (or the currency or date is null). Same-currency rows convert at 1 with no rate.
        """
        amount = _float_array(amounts)
        source_rate, target_rate, same = self._row_rates(currencies, dates, to_currency, len(amount))
        with np.errstate(invalid="ignore"):
            converted = np.where(same, amount, amount / source_rate * target_rate)
        missing = np.isnan(source_rate) | np.isnan(target_rate)
        return converted.astype("float64", copy=False), missing

    def missing_reason(self, currency: str | None, day: Any, to_currency: str | None = None) -> str | None:
        """Why ``currency`` (or, given, ``to_currency``) has no rate on ``day``; None if both have one.

        The reason names only the currency and the UTC calendar date, e.g.
        ``no EUR->GBP rate on or before 2026-03-01``, so it can go into a quarantine record.
        """
        (when,) = _utc_days([day], 1)
        if to_currency is not None and not _is_null(currency) and currency == to_currency:
            return None
        needed = [currency] if to_currency is None else [currency, to_currency]
        for code in needed:
            if _is_null(code):
                return "the currency is missing, so no FX rate applies"
            if code == BASE:
                continue
            reason = self._reason(str(code), int(when))
            if reason:
                return reason
        return None

    def missing_reasons(self, currencies: Any, dates: Any, to_currency: str | Any) -> np.ndarray:
        """:meth:`missing_reason` for every row (object array, None where a rate exists).

        Vectorised like :meth:`convert`; the reason is computed once per distinct
        (currency, target, date) among the missing rows only.
        """
        source = _object_array(currencies)
        n = len(source)
        source_rate, target_rate, _same = self._row_rates(source, dates, to_currency, n)
        reasons = np.full(n, None, dtype=object)
        rows = np.flatnonzero(np.isnan(source_rate) | np.isnan(target_rate))
        if not rows.size:
            return reasons
        target = _object_array(to_currency, n)
        days = _utc_days(dates, n)
        keys = pd.DataFrame({"source": source[rows], "target": target[rows], "day": days[rows]})
        groups = keys.groupby(["source", "target", "day"], dropna=False, sort=False).indices
        for (code, target_code, day), positions in groups.items():
            reasons[rows[positions]] = self._pair_reason(code, target_code, day)
        return reasons

    def _pair_reason(self, code: Any, target_code: Any, day: Any) -> str:
        if _is_null(code) or _is_null(target_code):
            return "the currency is missing, so no FX rate applies"
        for candidate in (code, target_code):
            if candidate != BASE:
                reason = self._reason(str(candidate), int(day))
                if reason:
                    return reason
        return "no FX rate"  # unreachable for rows convert() flags; kept total

    def _reason(self, code: str, day: int) -> str | None:
        if day == _NAT_DAYS:
            return f"no {BASE}->{code} rate: the date is missing"
        series = self._series.get(code)
        when = _day_to_date(day).isoformat()
        if series is None:
            return f"no {BASE}->{code} rate on or before {when} (the FX rates have no {code} rates)"
        if day < series.days[0]:
            first = _day_to_date(int(series.days[0])).isoformat()
            return f"no {BASE}->{code} rate on or before {when} (the first {code} rate is on {first})"
        return None

    def _row_rates(
        self, currencies: Any, dates: Any, to_currency: Any, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: units of the source and of the target currency per EUR (NaN: no rate) and same-currency."""
        source = _object_array(currencies)
        target = _object_array(to_currency, n)
        if len(source) != n or len(target) != n:
            raise ValueError(
                f"amounts, currencies and to_currency differ in length ({n}, {len(source)}, {len(target)})"
            )
        days = _utc_days(dates, n)
        codes, uniques = pd.factorize(np.concatenate([source, target]), use_na_sentinel=True)
        source_codes, target_codes = codes[:n], codes[n:]
        same = (source_codes == target_codes) & (source_codes >= 0)
        return (
            self._lookup(source_codes, uniques, days, same),
            self._lookup(target_codes, uniques, days, same),
            same,
        )

    def _lookup(self, codes: np.ndarray, uniques: Sequence[Any], days: np.ndarray, skip: np.ndarray) -> np.ndarray:
        """The as-of rate per row (a searchsorted per currency, like ``merge_asof(direction='backward')``)."""
        rates = np.ones(len(codes), dtype="float64")
        rates[(codes < 0) & ~skip] = np.nan
        for index, code in enumerate(uniques):
            if code == BASE:
                continue
            rows = np.flatnonzero((codes == index) & ~skip)
            if not rows.size:
                continue
            series = self._series.get(code) if isinstance(code, str) else None
            if series is None:
                rates[rows] = np.nan
                continue
            position = np.searchsorted(series.days, days[rows], side="right") - 1
            found = (position >= 0) & (days[rows] != _NAT_DAYS)
            rates[rows] = np.where(found, series.per_eur[np.maximum(position, 0)], np.nan)
        return rates


_NAT_DAYS = int(np.datetime64("NaT", "D").astype("int64"))


def load_fx_rates(path: str | Path | None = None) -> FxRates:
    """Read and validate the rates CSV (``date,currency,per_eur``); errors name the line and field."""
    path = Path(path) if path is not None else settings.fx_rates_file()
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows, lines, header_problems = _read_rows(csv.reader(handle), path)
    except FileNotFoundError:
        raise FxRatesError(f"FX rates not found: {path}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FxRatesError(f"{path} is not a readable CSV: {exc}") from None
    _raise_if(header_problems, str(path))

    raw_dates = [row["date"] for row in rows]
    raw_codes = [row["currency"] for row in rows]
    raw_rates = [row["per_eur"] for row in rows]
    labels = [f"line {line}" for line in lines]
    problems = []
    shaped = np.array([bool(_DATE_RE.match(value)) for value in raw_dates], dtype=bool)
    parsed = pd.to_datetime(pd.Series(raw_dates, dtype=object).where(shaped), format="%Y-%m-%d", errors="coerce")
    for position in np.flatnonzero(parsed.isna().to_numpy()):
        problems.append(f"{labels[position]}, date: {raw_dates[position]!r} is not a calendar date (YYYY-MM-DD)")
    days = _utc_days(parsed.array, len(rows))
    per_eur = pd.to_numeric(pd.Series(raw_rates, dtype=object), errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan
    )
    problems += _problems(days, np.array(raw_codes, dtype=object), per_eur, labels, raw_rates, check_dates=False)
    _raise_if(problems, str(path))
    return FxRates(pd.DataFrame({"date": parsed.dt.date, "currency": raw_codes, "per_eur": per_eur}))


def _read_rows(reader: Iterable[list[str]], path: Path) -> tuple[list[dict[str, str]], list[int], list[str]]:
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    lines: list[int] = []
    problems: list[str] = []
    for record in reader:
        line = reader.line_num  # type: ignore[attr-defined]
        if not record or all(not field.strip() for field in record):
            continue
        fields = [field.strip() for field in record]
        if header is None:
            header = [field.lower() for field in fields]
            missing = [column for column in COLUMNS if column not in header]
            unknown = [column for column in header if column not in COLUMNS]
            if missing or unknown or len(set(header)) != len(header):
                return [], [], [f"line {line}: the header must be {','.join(COLUMNS)} (got {','.join(fields)})"]
            continue
        if len(fields) != len(header):
            problems.append(f"line {line}: expected {len(header)} fields ({','.join(header)}), got {len(fields)}")
            continue
        rows.append(dict(zip(header, fields, strict=True)))
        lines.append(line)
    if header is None:
        problems.append(f"line 1: the header must be {','.join(COLUMNS)} (the file is empty)")
    return rows, lines, problems


def _problems(
    days: np.ndarray,
    codes: np.ndarray,
    per_eur: np.ndarray,
    labels: list[str],
    raw_rates: list[Any] | None = None,
    *,
    check_dates: bool = True,
) -> list[str]:
    """Row problems: bad date, bad currency, bad rate, EUR not 1, duplicate (date, currency)."""
    problems: list[str] = []
    known = known_currencies()
    if check_dates:
        for position in np.flatnonzero(days == _NAT_DAYS):
            problems.append(f"{labels[position]}, date: not a calendar date")
    for position, code in enumerate(codes):
        if not isinstance(code, str) or not _CODE_RE.match(code):
            problems.append(f"{labels[position]}, currency: {code!r} is not a currency code (3 upper-case letters)")
        elif code not in known:
            problems.append(f"{labels[position]}, currency: {code!r} is not an ISO 4217 currency code")
    shown = raw_rates if raw_rates is not None else per_eur.tolist()
    for position in np.flatnonzero(np.isnan(per_eur)):
        problems.append(f"{labels[position]}, per_eur: {shown[position]!r} is not a number")
    for position in np.flatnonzero(~np.isnan(per_eur) & ~(np.isfinite(per_eur) & (per_eur > 0))):
        problems.append(f"{labels[position]}, per_eur: {shown[position]!r} is not a positive rate")
    for position in np.flatnonzero((codes == BASE) & np.isfinite(per_eur) & (per_eur > 0) & (per_eur != 1.0)):
        problems.append(f"{labels[position]}, per_eur: {BASE} is the base currency, its rate is always 1")

    keyed = pd.DataFrame({"day": days, "currency": codes}).loc[lambda frame: frame["day"] != _NAT_DAYS]
    repeated = keyed[keyed.duplicated(keep=False)]
    for (day, code), positions in repeated.groupby(["day", "currency"], sort=False).indices.items():
        first, *others = repeated.index[positions]
        for position in others:
            problems.append(
                f"{labels[position]}, date+currency: {_day_to_date(int(day)).isoformat()} {code} "
                f"is already on {labels[first]}"
            )
    return problems


def _raise_if(problems: list[str], source: str) -> None:
    if not problems:
        return
    listed = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    tail = f"\n  ... and {more} more" if more else ""
    raise FxRatesError(f"{source} is invalid:\n  " + "\n  ".join(listed) + tail)


def _object_array(values: Any, n: int | None = None) -> np.ndarray:
    """Codes as an object array; a scalar is repeated ``n`` times."""
    if np.ndim(values) == 0:
        if n is None:
            raise ValueError("currencies must be one per row")
        return np.full(n, values, dtype=object)
    if isinstance(values, pd.Series | pd.Index):
        return values.astype(object).to_numpy()
    return np.asarray(values, dtype=object)


def _float_array(values: Any) -> np.ndarray:
    if isinstance(values, pd.Series | pd.Index):
        return values.to_numpy(dtype="float64", na_value=np.nan)
    return np.asarray(values, dtype="float64")


def _utc_days(values: Any, n: int, *, coerce: bool = False) -> np.ndarray:
    """UTC calendar dates as days since 1970-01-01 (int64; NaT as ``_NAT_DAYS``); a scalar is repeated.

    Naive timestamps are taken as UTC; an unparsable value raises, or becomes NaT with ``coerce``.
    """
    if np.ndim(values) == 0:
        values = [values] * n
    if isinstance(values, pd.Series | pd.Index):
        values = values.array
    stamps = pd.to_datetime(values, utc=True, errors="coerce" if coerce else "raise")
    days = stamps.tz_convert(None).to_numpy().astype("datetime64[D]").astype("int64")
    if len(days) != n:
        raise ValueError(f"dates has {len(days)} rows, expected {n}")
    return days


def _day_to_date(day: int) -> date:
    return date.fromordinal(_EPOCH.toordinal() + day)


def _is_null(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))
