"""The Remarketing page as HTML: server-rendered, charts as inline SVG, no JavaScript.

Airflow's UI shows plugin views in an iframe sandboxed to ``allow-forms`` (no scripts), so the
page must work without any: the charts are drawn here, the day is picked with a GET form and
plain links. Every number carries ``data-*`` attributes with its raw value for tests and for
anyone scraping the page; ``/remarketing/api/day`` serves the same numbers as JSON.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from functools import cache

from remarketing.dashboard.queries import Dashboard, MarketDay, Rate, TrendDay
from remarketing.platform.settings import INCLUDE

TEMPLATE = "remarketing.html.j2"  # include/ui/, beside the mail templates' folder

# (key, label, what it counts) in funnel order; kinds colour the bars.
STAGES = (
    ("eligible", "Eligible", "audience of the day's send runs", "base"),
    ("suppressed", "Suppressed", "suppression lists, invalid address, no marketing consent", "drop"),
    ("capped", "Capped", "frequency caps, warm-up cap, already sent", "drop"),
    ("gated", "Gated", "market halted by the deliverability gate", "drop"),
    ("not_sendable", "Not sendable", "outside every send window, converted, failed, outcome unknown", "drop"),
    ("scheduled", "Scheduled", "accepted by SendGrid for a later send window", "pass"),
    ("sent", "Sent", "accepted by SendGrid for sending now", "pass"),
    ("delivered", "Delivered", "delivered to the mailbox (SendGrid events)", "engage"),
    ("opened", "Opened", "opened at least once", "engage"),
    ("clicked", "Clicked", "clicked at least once", "engage"),
)
GATE_LABELS = {"open": "open", "warn": "warning", "halted": "halted"}


def _percent(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}%}"


def funnel_bars(market: MarketDay) -> list[dict]:
    """Bars of the funnel chart, widths relative to the eligible audience."""
    funnel = market.funnel
    top = max(funnel["eligible"], funnel["scheduled"] + funnel["sent"], 1)
    return [
        {
            "key": key,
            "label": label,
            "title": title,
            "kind": kind,
            "value": funnel[key],
            "width": round(100 * funnel[key] / top, 2),
        }
        for key, label, title, kind in STAGES
    ]


def rate_gauge(rate: Rate) -> dict:
    """A horizontal gauge: the rate's bar against warn and halt marks on a shared scale."""
    scale = max(rate.halt * 1.5, (rate.value or 0) * 1.1, 1e-9)
    return {
        "name": rate.name,
        "level": rate.level,
        "value": rate.value,
        "text": _percent(rate.value) + ("" if rate.judged or rate.value is None else " (not judged)"),
        "warn": rate.warn,
        "halt": rate.halt,
        "warn_text": _percent(rate.warn),
        "halt_text": _percent(rate.halt),
        "bar": round(100 * min(rate.value or 0, scale) / scale, 2),
        "warn_at": round(100 * rate.warn / scale, 2),
        "halt_at": round(100 * rate.halt / scale, 2),
    }


def trend_chart(trend: list[TrendDay], halt: float, attribute: str, width: int = 200, height: int = 48) -> dict:
    """A sparkline of a daily rate with the halt threshold as a line; days without mail are gaps."""
    values = [getattr(t, attribute) for t in trend]
    scale = max([halt * 1.25, *(v for v in values if v is not None)])
    step = width / max(len(values) - 1, 1)

    def y(value: float) -> float:
        return round(height - height * value / scale, 1)

    segments, current = [], []
    for index, value in enumerate(values):
        if value is None:
            if current:
                segments.append(current)
            current = []
            continue
        current.append(f"{round(index * step, 1)},{y(value)}")
    if current:
        segments.append(current)
    return {
        "width": width,
        "height": height,
        "segments": [" ".join(points) for points in segments],
        "dots": [p for points in segments for p in points if len(points) == 1],
        "halt_y": y(halt),
        "first": trend[0].day.isoformat() if trend else "",
        "last": trend[-1].day.isoformat() if trend else "",
    }


def money(amount: Decimal, currency: str) -> str:
    from babel.numbers import format_currency

    return format_currency(amount, currency, locale="en")


@cache
def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(INCLUDE / "ui"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["count"] = lambda n: f"{int(n):,}"
    env.filters["percent"] = _percent
    env.filters["money"] = money
    return env


def render_page(dashboard: Dashboard, *, base: str = "") -> str:
    """The whole page; ``base`` is the URL prefix the app is mounted under (links are relative to it)."""
    markets = [
        {
            "m": market,
            "bars": funnel_bars(market),
            "gauges": [rate_gauge(rate) for rate in market.rates],
            "trends": [
                trend_chart(market.trend, market.rates[0].halt, "bounce_rate"),
                trend_chart(market.trend, market.rates[1].halt, "complaint_rate"),
            ],
            "gate_label": GATE_LABELS.get(market.gate.status, market.gate.status),
        }
        for market in dashboard.markets
    ]
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            d=dashboard,
            markets=markets,
            totals=dashboard.totals,
            stages=STAGES,
            previous_day=(dashboard.day - timedelta(days=1)).isoformat(),
            next_day=(dashboard.day + timedelta(days=1)).isoformat(),
            base=base.rstrip("/"),
        )
    )
