"""Amounts shown in mails: any numeric input as a finite ``Decimal``, rounded to the currency's minor unit.

Prices stay ``Decimal`` from the store row to the template, where the ``money`` filter formats them
for the render's locale (see :mod:`remarketing.content.jinja_environment`).
"""

from __future__ import annotations

import math
import numbers
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from remarketing.content.errors import RenderError


def to_decimal(value: Any, field: str) -> Decimal:
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool) or value is None:
        raise ValueError(f"{field} must be a number, got {type(value).__name__}")
    elif isinstance(value, numbers.Integral):
        result = Decimal(int(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{field} must be a finite number")
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"{field} must be a number") from None
    else:
        try:  # numpy scalars and the like
            return to_decimal(float(value), field)
        except (TypeError, ValueError):
            raise ValueError(f"{field} must be a number, got {type(value).__name__}") from None
    if not result.is_finite():
        raise ValueError(f"{field} must be a finite number")
    return result


def quantize_amount(template: str, locale: str, amount: Decimal, currency: str) -> Decimal:
    """Round to the currency's minor unit (JPY has none), so shown lines add up to the shown total."""
    from babel.numbers import get_currency_precision, list_currencies

    if currency not in list_currencies():
        raise RenderError(template, locale, f"{currency!r} is not an ISO 4217 currency code", variable="currency")
    return amount.quantize(Decimal(1).scaleb(-get_currency_precision(currency)), rounding=ROUND_HALF_UP)
