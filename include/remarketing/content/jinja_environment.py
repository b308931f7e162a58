"""The Jinja2 environment every mail renders in, with its gettext callables and Babel filters.

One environment (autoescape for ``*.html.j2``, StrictUndefined) renders every mail. The locale of
one render travels in the template context (``_locale``, ``_translations``, ``time_zone``,
``currency``), not in the environment, so renders in different locales can run side by side in
one process. Filters: ``money`` (a ``Decimal`` price for the render's locale), ``percent``,
``local_datetime`` (in the customer's zone) and ``number``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from remarketing.content.amounts import to_decimal

# --- template filters (the render's locale and zone come from the template context) ---------------


def _ctx_locale(ctx):
    return ctx["_locale"]


@lru_cache(maxsize=8192)
def _format_currency(amount: Decimal, currency: str, locale) -> str:
    """Cached: a shop has few distinct prices, and Babel's formatting is most of a render's cost."""
    from babel.numbers import format_currency

    return format_currency(amount, currency, locale=locale)


def _money(ctx, amount: Any, currency: str | None = None) -> str:
    return _format_currency(to_decimal(amount, "amount"), currency or ctx["currency"], _ctx_locale(ctx))


def _percent(ctx, value: Any) -> str:
    """10 -> '10 %' (de), '10%' (en, ja)."""
    from babel.numbers import format_percent

    return format_percent(to_decimal(value, "percent") / 100, locale=_ctx_locale(ctx))


def _local_datetime(ctx, value: datetime) -> str:
    """Long date and short time in the customer's zone: '27. März 2026, 23:59'."""
    from babel.dates import format_datetime, get_date_format, get_datetime_format, get_time_format

    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError("dates shown in mails must be timezone-aware datetimes")
    locale = _ctx_locale(ctx)
    zone = ZoneInfo(ctx["time_zone"])
    pattern = (
        get_datetime_format("long", locale=locale)
        .replace("{1}", get_date_format("long", locale=locale).pattern)
        .replace("{0}", get_time_format("short", locale=locale).pattern)
    )
    return format_datetime(value.astimezone(zone), pattern, locale=locale)


@lru_cache(maxsize=1024)
def _format_number(value: Any, locale) -> str:
    from babel.numbers import format_decimal

    return format_decimal(value, locale=locale)


def _number(ctx, value: Any) -> str:
    return _format_number(value, _ctx_locale(ctx))


def _gettext(ctx, message: str) -> str:
    return ctx["_translations"].gettext(message)


def _ngettext(ctx, singular: str, plural: str, n: int) -> str:
    return ctx["_translations"].ngettext(singular, plural, n)


def _pgettext(ctx, context: str, message: str) -> str:
    return ctx["_translations"].pgettext(context, message)


def _npgettext(ctx, context: str, singular: str, plural: str, n: int) -> str:
    return ctx["_translations"].npgettext(context, singular, plural, n)


def build_environment(templates_dir: Path):
    """The environment for the templates in ``templates_dir``; one per renderer, shared by its threads."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(templates_dir)),
        autoescape=select_autoescape(enabled_extensions=("html.j2", "html"), default_for_string=False),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.install_gettext_callables(  # type: ignore[attr-defined]
        pass_context(_gettext),
        pass_context(_ngettext),
        newstyle=True,
        pgettext=pass_context(_pgettext),
        npgettext=pass_context(_npgettext),
    )
    env.filters.update(
        money=pass_context(_money),
        percent=pass_context(_percent),
        local_datetime=pass_context(_local_datetime),
        number=pass_context(_number),
    )
    return env
