"""Countries as real exports spell them, resolved to ISO 3166 codes; and the market that serves each.

Shops export a country as a code ("DE", "deu"), an English or local name ("United Kingdom",
"Deutschland", "Japon"), or an old habit ("EIRE", "USA", "RSA"). Names come from Babel's CLDR
territory names in many languages, so no list of our own goes stale. Labels that are no country
("Unspecified", "European Community", "Channel Islands") are recognised as such: a row that
carries one is out of scope (it is not bad data), while text that is neither a country nor a
known non-country is a bad value.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pandas as pd

from remarketing.store.validation.column_checks import iso_countries

# Names CLDR does not give, as exports write them.
ALIASES = {
    "EIRE": "IE",
    "UK": "GB",
    "U.K.": "GB",
    "GREAT BRITAIN": "GB",
    "ENGLAND": "GB",
    "SCOTLAND": "GB",
    "WALES": "GB",
    "NORTHERN IRELAND": "GB",
    "USA": "US",
    "U.S.A.": "US",
    "U.S.": "US",
    "AMERICA": "US",
    "RSA": "ZA",
    "HOLLAND": "NL",
    "THE NETHERLANDS": "NL",
    "CZECH REPUBLIC": "CZ",
    "KOREA": "KR",
    "SOUTH KOREA": "KR",
    "RUSSIA": "RU",
    "UAE": "AE",
    "HONG KONG": "HK",
    "MACAU": "MO",
    "VIETNAM": "VN",
}
# Labels real exports use for "no particular country".
NOT_COUNTRIES = frozenset(
    {
        "UNSPECIFIED",
        "UNKNOWN",
        "OTHER",
        "OTHERS",
        "N/A",
        "NA",
        "NONE",
        "-",
        "EUROPEAN COMMUNITY",
        "EUROPEAN UNION",
        "EU",
        "CHANNEL ISLANDS",
        "WEST INDIES",
        "WORLDWIDE",
        "INTERNATIONAL",
    }
)
_NAME_LOCALES = ("en", "de", "fr", "es", "it", "nl", "pt", "ja", "zh", "da", "sv", "pl")
_SPACES = re.compile(r"\s+")


def _fold(text: str) -> str:
    return _SPACES.sub(" ", text.strip()).upper()


@lru_cache(maxsize=1)
def country_names() -> dict[str, str]:
    """Folded spelling -> ISO code: codes, alpha-3 codes, CLDR names in several languages, aliases."""
    from babel import Locale
    from babel.core import get_global

    codes = iso_countries()
    names: dict[str, str] = {}
    for locale in _NAME_LOCALES:
        for code, name in Locale.parse(locale).territories.items():
            if code in codes:
                names.setdefault(_fold(name), code)
    for alias, targets in get_global("territory_aliases").items():
        if len(alias) == 3 and alias.isalpha() and len(targets) == 1 and targets[0] in codes:
            names.setdefault(alias, targets[0])
    names.update({_fold(alias): code for alias, code in ALIASES.items()})
    names.update({code: code for code in codes})
    return names


def resolve_countries(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(ISO code or None, status) per value: status is ``ok``, ``not_a_country`` or ``unknown``.

    Null or blank values resolve to None with status ``ok`` (no country given). Each distinct
    spelling is looked up once.
    """
    text = values.astype(object)
    codes = np.full(len(text), None, dtype=object)
    status = np.full(len(text), "ok", dtype=object)
    present = text.notna().to_numpy(dtype=bool)
    if not present.any():
        return codes, status
    folded = pd.Series(text[present].map(lambda v: _fold(str(v))).to_numpy(dtype=object))
    names = country_names()
    lookup: dict[str, tuple[str | None, str]] = {}
    for spelling in pd.unique(folded):
        if not spelling:
            lookup[spelling] = (None, "ok")
        elif spelling in names:
            lookup[spelling] = (names[spelling], "ok")
        elif spelling in NOT_COUNTRIES:
            lookup[spelling] = (None, "not_a_country")
        else:
            lookup[spelling] = (None, "unknown")
    resolved = folded.map(lookup)
    codes[present] = [r[0] for r in resolved]
    status[present] = [r[1] for r in resolved]
    return codes, status
