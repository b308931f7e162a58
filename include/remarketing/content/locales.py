"""Locales of the mails: tag normalization, Babel locales and the gettext catalogues.

Text comes from gettext catalogues (include/locale/<lang>/LC_MESSAGES/messages.po), read at
start with Babel and turned into ``babel.support.Translations`` in memory: no compile step.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

SOURCE_LOCALE = "en"  # msgids are English; en needs no catalogue

_LOCALE_RE = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|\d{3}))?$")


def normalize_locale(tag: str | None) -> str | None:
    """'de_at', 'DE-AT' -> 'de-AT'; 'zh-hant-tw' -> 'zh-Hant-TW'; None for empty or malformed tags."""
    if not tag or not isinstance(tag, str):
        return None
    match = _LOCALE_RE.match(tag.strip())
    if not match:
        return None
    lang, script, region = match.groups()
    parts = [lang.lower()]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)


def _babel_tag(locale: str) -> str:
    return locale.replace("-", "_")


@lru_cache(maxsize=256)
def babel_locale(tag: str):
    """The Babel locale for a normalized tag, None when Babel does not know it (cached)."""
    from babel import Locale, UnknownLocaleError

    try:
        return Locale.parse(_babel_tag(tag))
    except (UnknownLocaleError, ValueError):
        return None


def load_catalogues(locale_dir: Path) -> dict[str, Any]:
    """Read every include/locale/<lang>/LC_MESSAGES/messages.po into Babel Translations (in memory)."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    from babel.support import Translations

    catalogues: dict[str, Any] = {}
    if not locale_dir.is_dir():
        return catalogues
    for po_path in sorted(locale_dir.glob("*/LC_MESSAGES/messages.po")):
        locale = normalize_locale(po_path.parents[1].name)
        if locale is None:
            raise ValueError(f"{po_path}: the folder name is not a locale such as 'de' or 'pt_BR'")
        try:
            with po_path.open("rb") as fh:
                catalog = read_po(fh, locale=_babel_tag(locale), abort_invalid=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a broken catalogue
            raise ValueError(f"{po_path} is not a valid PO file: {exc}") from exc
        buffer = io.BytesIO()
        write_mo(buffer, catalog)  # fuzzy entries are left out, as msgfmt does
        buffer.seek(0)
        catalogues[locale] = Translations(fp=buffer)
    return catalogues
