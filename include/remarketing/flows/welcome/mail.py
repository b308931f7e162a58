"""What the welcome mails hold: member benefits, a product grid; the reminder, once, without an order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from remarketing.content.context import base_context, incentive_context, product_grid, utm_tags
from remarketing.content.errors import RenderError
from remarketing.flows.welcome.audience import FLOW
from remarketing.markets import Market


def welcome_context(
    *,
    kind: str = "member",
    market: Market,
    customer: Mapping[str, Any] | None,
    unsubscribe_url: str,
    locale: str,
    products: Sequence[Mapping[str, Any]] = (),
    incentive: Mapping[str, Any] | None = None,
    utm: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Context for ``welcome/member`` (kind="member") and ``welcome/reminder`` (kind="reminder").

    products: optional products rows shown as popular picks (a price shows when in the market's
    currency); incentive: optional welcome code {code, percent, expires_at}; utm: added to every
    shop link (default utm_source=remarketing, utm_medium=email, utm_campaign=welcome,
    utm_content=<kind>).

    Returns the base keys plus kind, start_url, products, incentive.
    """
    from remarketing.content.cart_links import with_query

    template = f"welcome/{kind}"
    if kind not in ("member", "reminder"):
        raise RenderError(template, str(locale), f"unknown welcome mail {kind!r}")
    context = base_context(template, market=market, customer=customer, unsubscribe_url=unsubscribe_url, locale=locale)
    utm = dict(utm) if utm is not None else utm_tags("welcome", kind)
    context.update(
        kind=kind,
        start_url=with_query(market.storefront.shop_url, utm),
        products=product_grid(template, locale, products, context["currency"], utm),
        incentive=incentive_context(template, locale, incentive),
    )
    return context


def welcome_renderer(market, secret: bytes, renderer=None):
    """Shared content per step (member, reminder): welcome_context rendered once per locale."""
    from remarketing.delivery.shared_content import SharedContentRenderer
    from remarketing.flows.welcome.mail import welcome_context

    def content(key: tuple, locale: str):
        (step,) = key
        context = welcome_context(
            kind=step,
            market=market,
            customer=None,
            unsubscribe_url=market.storefront.unsubscribe_url,  # replaced by each recipient's token
            locale=locale,
        )
        return f"welcome/{step}", context

    return SharedContentRenderer(
        flow=FLOW,
        market=market,
        secret=secret,
        group_columns=("step",),
        content=content,
        categories=lambda key: (f"template:welcome-{key[0]}",),
        renderer=renderer,
    )
