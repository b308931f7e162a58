"""Column checks: what a row's own values must be, as derived ``__check__*`` columns.

Each check yields a status per row, ``ok`` or a reason: timestamps parseable, aware, not in the
future and not before the lower bound; money a number (not NaN); text within the store schema's
lengths; product image and page URLs https; known country and currency codes; valid emails
(normalised as email-validator does); IANA time zones (invalid ones nulled, with a note); product
names a JSON object of locale to text (HTML in them noted, kept); NUL bytes removed (noted). The code lists (IANA zones, ISO 4217 currencies, ISO 3166 countries) come from zoneinfo
and Babel, loaded once per process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from remarketing.store.schema import CANONICAL_TABLES, metadata
from remarketing.store.validation.conform import Prepared
from remarketing.store.validation.rules import CURRENCY_TABLES, EMAILS, MIN_TIMESTAMP, MONEY, OK, URLS

NOT_COUNTRIES = frozenset({"EU", "EZ", "UN", "ZZ", "QO"})  # CLDR groupings, not ISO 3166 countries

_MARKUP_RE = re.compile(r"<\s*/?\s*[a-z!?]|javascript\s*:", re.IGNORECASE)
_URL_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


# --------------------------------------------------------------------------- reference data


@lru_cache(maxsize=1)
def iana_zones() -> frozenset[str]:
    from zoneinfo import available_timezones

    return frozenset(available_timezones())


@lru_cache(maxsize=1)
def iso_currencies() -> frozenset[str]:
    from babel.numbers import list_currencies

    return frozenset(list_currencies())


@lru_cache(maxsize=1)
def iso_countries() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes as CLDR knows them (territories with a currency)."""
    from babel.core import get_global

    return frozenset(code for code in get_global("territory_currencies") if len(code) == 2) - NOT_COUNTRIES


def max_lengths(table: str, text_max_length: int) -> dict[str, int]:
    """Character limits of the text columns: the store schema's String(n), ``text_max_length`` for Text."""
    return {
        column.name: column.type.length or text_max_length
        for column in metadata.tables[table].columns
        if isinstance(column.type, sa.String)
    }


# --------------------------------------------------------------------------- the checks, in derived order


def timestamp_checks(
    prepared: Prepared,
    table: str,
    *,
    now: datetime,
    future_skew: timedelta,
    min_timestamp: datetime = MIN_TIMESTAMP,
) -> dict[str, Any]:
    """One status column per timestamp: unparseable or naive (found by conformance), in the future,
    or before ``min_timestamp`` (a placeholder such as 1970-01-01 or year 1, not an event)."""
    frame = prepared.frame
    assert frame is not None
    size = len(frame)
    derived: dict[str, Any] = {}
    limit = pd.Timestamp(now) + future_skew
    lowest = pd.Timestamp(min_timestamp).tz_convert("UTC")
    for name, kind in CANONICAL_TABLES[table].columns.items():
        if kind != "timestamp":
            continue
        status = prepared.timestamp_status.get(name)
        status = all_ok(size) if status is None else np.where(pd.isna(status), OK, status).astype(object)
        future = (frame[name] > limit).fillna(False).to_numpy(dtype=bool) & (status == OK)
        status[future] = f"{name} is more than {_duration(future_skew)} in the future"
        early = (frame[name] < lowest).fillna(False).to_numpy(dtype=bool) & (status == OK)
        status[early] = f"{name} is before {_instant(lowest)}"
        derived[f"__check__timestamp_{name}"] = status
    return derived


def number_checks(prepared: Prepared, table: str) -> dict[str, Any]:
    """Money columns: a float NaN is no amount, and not a missing one either (pandas would read it as null)."""
    assert prepared.frame is not None
    derived: dict[str, Any] = {}
    for name in MONEY.get(table, ()):
        status = all_ok(len(prepared.frame))
        status[prepared.nan_rows.get(name, np.empty(0, dtype=np.int64))] = f"{name} is not a number"
        derived[f"__check__number_{name}"] = status
    return derived


def format_checks(frame: pd.DataFrame, table: str, *, text_max_length: int) -> dict[str, Any]:
    """Text within the store schema's lengths; country and currency codes that exist; https URLs."""
    derived: dict[str, Any] = {}
    derived["__check__length"] = _lengths(frame, max_lengths(table, text_max_length))
    if table in CURRENCY_TABLES:
        derived["__check__currency"] = _coded(frame["currency"], iso_currencies(), "currency is not an ISO 4217 code")
    for name in URLS.get(table, ()):
        derived[f"__check__{name}"] = _https_urls(frame[name], f"{name} is not an https URL")
    return derived


def contact_checks(frame: pd.DataFrame, table: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Emails and customer time zones; normalises them in ``frame``, returns (derived, normalised counts)."""
    size = len(frame)
    derived: dict[str, Any] = {}
    normalised: dict[str, int] = {}
    if table in EMAILS:
        column = EMAILS[table]
        status, normal, changed = _emails(frame, column)
        derived[f"__check__{column}"] = status
        frame[column] = normal
        if changed:
            normalised[column] = changed

    if table == "customers":
        zone = frame["time_zone"]
        bad = (zone.notna() & ~zone.isin(iana_zones())).to_numpy(dtype=bool)
        status = all_ok(size)
        status[bad] = "time_zone is not an IANA zone name (nulled)"
        derived["__check__time_zone"] = status
        if bad.any():
            frame["time_zone"] = zone.mask(pd.Series(bad, index=zone.index))
            normalised["time_zone"] = int(bad.sum())
    return derived, normalised


def name_checks(frame: pd.DataFrame, table: str) -> dict[str, Any]:
    """Product names: a JSON object of locale to text (quarantine); HTML markup in them (note)."""
    derived: dict[str, Any] = {}
    if table == "products":
        status, markup = _names(frame["names"])
        derived["__check__names"] = status
        derived["__check__names_markup"] = markup
    return derived


def nul_notes(prepared: Prepared) -> np.ndarray:
    """Per row, the columns conformance removed NUL bytes from (a note: the row is kept)."""
    assert prepared.frame is not None
    size = len(prepared.frame)
    nul = all_ok(size)
    if prepared.nul_columns is not None:
        rows = pd.notna(prepared.nul_columns)
        nul[rows] = [f"NUL bytes removed from {names}" for names in prepared.nul_columns[rows]]
    return nul


# --------------------------------------------------------------------------- helpers


def all_ok(size: int) -> np.ndarray:
    """A status column with every row ok, for a check to write its reasons into."""
    return np.full(size, OK, dtype=object)


def normalise_email(value: str) -> str | None:
    """The address as email-validator normalises it (surrounding whitespace removed), or None."""
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def _emails(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, pd.Series, int]:
    """(status per row, normalised column, values changed). Each distinct address is validated once."""
    values = frame[column]
    present = values.notna().to_numpy()
    normal = {value: normalise_email(value) for value in pd.unique(values[present])}
    mapped = values.map(normal).to_numpy(dtype=object, na_value=None)
    valid = present & pd.notna(mapped)
    status = all_ok(len(frame))
    status[present & ~valid] = f"{column} is not a valid address"
    original = values.to_numpy(dtype=object, na_value=None)
    out = original.copy()
    out[valid] = mapped[valid]
    changed = int((out[valid] != original[valid]).sum())
    return status, pd.Series(out, index=values.index).astype(values.dtype), changed


def _names(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Product names must be a JSON object locale -> text; returns (status, markup note) per row."""
    verdicts: dict[str, tuple[bool, bool]] = {}
    for text in pd.unique(values.dropna()):
        try:
            parsed = json.loads(text)
        except ValueError:
            verdicts[text] = (False, False)
            continue
        good = (
            isinstance(parsed, dict)
            and bool(parsed)
            and all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in parsed.items())
        )
        markup = good and any(_MARKUP_RE.search(v) for v in parsed.values())
        verdicts[text] = (good, markup)
    status, note = all_ok(len(values)), all_ok(len(values))
    for i, text in enumerate(values.to_numpy(dtype=object, na_value=None)):
        if text is None:
            continue
        good, markup = verdicts[text]
        if not good:
            status[i] = "names is not a JSON object of locale to text"
        elif markup:
            note[i] = "names contains HTML markup (kept; escaped at render)"
    return status, note


def _lengths(frame: pd.DataFrame, limits: Mapping[str, int]) -> np.ndarray:
    """Text longer than the store schema allows (String(n)); every offending column is named."""
    status = all_ok(len(frame))
    for name, limit in limits.items():
        long = (frame[name].str.len() > limit).fillna(False).to_numpy(dtype=bool)
        for i in np.flatnonzero(long):
            reason = f"{name} longer than {limit} characters"
            status[i] = reason if status[i] == OK else f"{status[i]}; {reason}"
    return status


def _coded(values: pd.Series, known: frozenset[str], reason: str) -> np.ndarray:
    """A code column (country, currency) must hold a known code when present."""
    status = all_ok(len(values))
    status[(values.notna() & ~values.isin(known)).to_numpy(dtype=bool)] = reason
    return status


def is_https_url(value: str) -> bool:
    """An absolute https URL with a host, as a mail may link to: no whitespace or control characters
    inside (surrounding whitespace is ignored, as the renderer strips it)."""
    from urllib.parse import urlsplit

    text = value.strip()
    if not text or _URL_BAD_CHARS.search(text):
        return False
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:  # a malformed port or IPv6 literal
        return False
    return parts.scheme.lower() == "https" and bool(host)


def _https_urls(values: pd.Series, reason: str) -> np.ndarray:
    """A URL column must hold an https URL when present; blank text counts as no URL (the renderer's reading)."""
    status = all_ok(len(values))
    for i, text in enumerate(values.to_numpy(dtype=object, na_value=None)):
        if text is not None and text.strip() and not is_https_url(text):
            status[i] = reason
    return status


def _instant(at: pd.Timestamp) -> str:
    return f"{at:%Y-%m-%d}" if at == at.normalize() else f"{at:%Y-%m-%d %H:%M} UTC"


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:g} h"


def valid_currency(values: pd.Series | np.ndarray) -> np.ndarray:
    """Per value, whether it is an ISO 4217 code (currency comparisons skip the invalid ones)."""
    return pd.Series(values, dtype=object).isin(iso_currencies()).to_numpy(dtype=bool)
