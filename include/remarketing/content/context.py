"""What every mail's template context is built from: locale, zone, base fields, products, links.

Flows build their own contexts (``flows/<flow>/mail.py``) from these pieces; a missing or
malformed value raises RenderError naming the template, locale and field. ``MAX_ITEMS_SHOWN`` and
``MAX_GRID_PRODUCTS`` cap how many cart lines and grid products a mail shows.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from remarketing.content.amounts import quantize_amount, to_decimal
from remarketing.content.errors import RenderError
from remarketing.content.locales import SOURCE_LOCALE, normalize_locale
from remarketing.markets import Market

MAX_ITEMS_SHOWN = 20  # a bigger cart shows its first 20 lines and "and N more"
MAX_GRID_PRODUCTS = 12


def mail_locale(customer: Mapping[str, Any] | None, market: Market) -> str:
    """The customer's locale when known, else the market's primary locale."""
    tag = normalize_locale((customer or {}).get("locale") if customer else None)
    return tag or market.primary_locale


def zone_for(customer: Mapping[str, Any] | None, market: Market) -> str:
    zone = (customer or {}).get("time_zone") if customer else None
    if isinstance(zone, str) and zone:
        try:
            ZoneInfo(zone)
            return zone
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return market.default_time_zone


def is_missing(value: Any) -> bool:
    """None, NaN, pandas NA/NaT: what a DataFrame row holds for an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def text_or_none(value: Any) -> str | None:
    if is_missing(value):
        return None
    text = str(value).strip()
    return text or None


def http_url(template: str, locale: str, value: Any, what: str, *, required: bool = True) -> str | None:
    url = text_or_none(value)
    if url is None:
        if required:
            raise RenderError(template, locale, f"{what} is missing")
        return None
    if not re.match(r"^https?://[^\s]+$", url, flags=re.IGNORECASE):
        raise RenderError(template, locale, f"{what} is not an http(s) URL")
    return url


def base_context(
    template: str,
    *,
    market: Market,
    customer: Mapping[str, Any] | None,
    unsubscribe_url: str,
    locale: str,
) -> dict[str, Any]:
    if not isinstance(market, Market):
        raise RenderError(template, locale, f"market must be a Market, got {type(market).__name__}")
    customer = customer or {}
    return {
        "market": market.code,
        "shop_name": market.sender.from_name,
        "shop_url": market.storefront.shop_url,
        "privacy_url": market.storefront.privacy_url,
        "support_email": market.sender.support_email,
        "support_phone": market.sender.support_phone,
        "unsubscribe_url": http_url(template, locale, unsubscribe_url, "unsubscribe_url"),
        "first_name": text_or_none(customer.get("first_name")),
        "last_name": text_or_none(customer.get("last_name")),
        "currency": market.currency,
        "time_zone": zone_for(customer, market),
    }


def product_name(names: Any, locale: str | None) -> str | None:
    """The product's display name for a locale from the products table's ``names`` JSON.

    Exact locale, then its language, then English, then any (alphabetically first key).
    """
    if isinstance(names, str):
        try:
            names = json.loads(names)
        except ValueError:
            return None
    if not isinstance(names, Mapping):
        return None
    by_tag = {normalize_locale(k) or k: v for k, v in names.items() if isinstance(v, str) and v.strip()}
    if not by_tag:
        return None
    tag = normalize_locale(locale) or SOURCE_LOCALE
    language = tag.split("-")[0]
    for key in (tag, language, *sorted(k for k in by_tag if k.split("-")[0] == language), SOURCE_LOCALE):
        if key in by_tag:
            return by_tag[key].strip()
    return by_tag[sorted(by_tag)[0]].strip()


def incentive_context(template: str, locale: str, incentive: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if incentive is None:
        return None
    code = text_or_none(incentive.get("code"))
    if code is None or len(code) > 64:
        raise RenderError(template, locale, "incentive.code is missing or longer than 64 characters")
    percent = incentive.get("percent")
    if isinstance(percent, bool) or not isinstance(percent, numbers.Real | Decimal) or not 0 < percent < 100:
        raise RenderError(template, locale, "incentive.percent must be a number between 0 and 100")
    expires_at = incentive.get("expires_at")
    if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
        raise RenderError(template, locale, "incentive.expires_at must be a timezone-aware datetime")
    return {"code": code, "percent": percent, "expires_at": expires_at}


def product_grid(
    template: str, locale: str, products: Sequence[Mapping[str, Any]], currency: str, utm: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Product cards; a price shows only when the product is priced in the mail's currency."""
    from remarketing.content.cart_links import with_query

    if len(products) > MAX_GRID_PRODUCTS:
        raise RenderError(template, locale, f"{len(products)} grid products, at most {MAX_GRID_PRODUCTS}")
    cards = []
    for row in products:
        pid = row.get("product_id")
        if row.get("active") is False:
            raise RenderError(template, locale, f"product_id {pid} is inactive and cannot be offered")
        name = product_name(row.get("names"), locale)
        if name is None:
            raise RenderError(template, locale, f"product_id {pid} has no usable name in 'names'")
        url = http_url(template, locale, row.get("product_url"), f"product_id {pid} product_url")
        price = None
        if row.get("currency") == currency and row.get("price") is not None:
            try:
                price = quantize_amount(template, locale, to_decimal(row.get("price"), "price"), currency)
            except ValueError:
                raise RenderError(template, locale, f"product_id {pid} price is not a number") from None
        cards.append(
            {
                "product_id": pid,
                "name": name,
                "image_url": http_url(
                    template, locale, row.get("image_url"), f"product_id {pid} image_url", required=False
                ),
                "url": with_query(url, utm),
                "price": price,
            }
        )
    return cards


def utm_tags(campaign: str, content: str) -> dict[str, str]:
    return {"utm_source": "remarketing", "utm_medium": "email", "utm_campaign": campaign, "utm_content": content}


def pick_localized(value: Any, locale: str | None) -> Any:
    """A campaign field given per locale ({"de": ..., "en": ...}) or once for all: the locale's text.

    Falls back like the catalogues: exact, language, a sibling, en, then the first key.
    """
    if not isinstance(value, Mapping):
        return value
    if not value:
        return None
    by_tag = {normalize_locale(k) or k: v for k, v in value.items()}
    tag = normalize_locale(locale) or SOURCE_LOCALE
    language = tag.split("-")[0]
    for key in (tag, language, *sorted(k for k in by_tag if k.split("-")[0] == language), SOURCE_LOCALE):
        if key in by_tag:
            return by_tag[key]
    return by_tag[sorted(by_tag)[0]]
