"""What a campaign mail holds: localized subject and copy, a hero, products, one call to action, UTM tags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from remarketing.content.context import base_context, http_url, pick_localized, product_grid, text_or_none, utm_tags
from remarketing.content.errors import RenderError
from remarketing.flows.campaigns.model import ARMS, FLOW, Campaign, CampaignError
from remarketing.markets import Market, MarketConfig


def campaign_context(
    *,
    market: Market,
    customer: Mapping[str, Any] | None,
    unsubscribe_url: str,
    locale: str,
    campaign: Mapping[str, Any],
    products: Sequence[Mapping[str, Any]] = (),
    variant: str | None = None,
) -> dict[str, Any]:
    """Context for ``campaign/generic``.

    campaign (from the DAG's Params; text fields either a string or a {locale: string} map):
      campaign_id (required), subject (required), preheader (required), headline (required),
      paragraphs (list of strings, required), cta_url (required, http/https), cta_label
      (optional, default "Shop now" translated), hero_image_url and hero_alt (optional),
      products_heading (optional, default "Selected for you" translated).
    products: optional products rows for the grid. variant: content variant id, for utm_content.
    customer may be None for shared content rendered with placeholders.

    Returns the base keys plus ``campaign`` (the fields above resolved for the locale, cta_url
    with UTM parameters) and ``products``.
    """
    from remarketing.content.cart_links import with_query

    template = "campaign/generic"
    context = base_context(template, market=market, customer=customer, unsubscribe_url=unsubscribe_url, locale=locale)
    campaign_id = text_or_none(campaign.get("campaign_id"))
    if campaign_id is None:
        raise RenderError(template, locale, "campaign.campaign_id is missing", variable="campaign_id")
    fields: dict[str, Any] = {"campaign_id": campaign_id}
    for key in ("subject", "preheader", "headline"):
        text = text_or_none(pick_localized(campaign.get(key), locale))
        if text is None:
            raise RenderError(
                template, locale, f"campaign {campaign_id}: {key} is missing for this locale", variable=key
            )
        fields[key] = text
    paragraphs = pick_localized(campaign.get("paragraphs"), locale)
    if isinstance(paragraphs, str):
        paragraphs = [paragraphs]
    if not isinstance(paragraphs, Sequence) or not paragraphs or not all(isinstance(p, str) for p in paragraphs):
        raise RenderError(
            template, locale, f"campaign {campaign_id}: paragraphs must be a list of strings", variable="paragraphs"
        )
    fields["paragraphs"] = [p.strip() for p in paragraphs if p.strip()]
    for key in ("cta_label", "hero_alt", "products_heading"):
        fields[key] = text_or_none(pick_localized(campaign.get(key), locale))
    fields["hero_image_url"] = http_url(
        template, locale, campaign.get("hero_image_url"), "campaign.hero_image_url", required=False
    )
    utm = utm_tags(campaign_id, variant or "default")
    cta_url = http_url(template, locale, pick_localized(campaign.get("cta_url"), locale), "campaign.cta_url")
    fields["cta_url"] = with_query(cta_url, utm)
    context.update(campaign=fields, products=product_grid(template, locale, products, context["currency"], utm))
    return context


def campaign_renderer(campaign: Campaign, market, secret: bytes, renderer=None):
    """Shared content per (variant, arm): campaign_context with the arm's subject, UTM content = variant."""
    from remarketing.delivery.shared_content import SharedContentRenderer

    def content(key: tuple, locale: str):
        variant, arm = key
        fields = campaign.variant_fields(variant, arm)
        context = campaign_context(
            market=market,
            customer=None,
            unsubscribe_url=market.storefront.unsubscribe_url,  # replaced by each recipient's token
            locale=locale,
            campaign=fields,
            variant=variant,
        )
        return campaign.template, context

    return SharedContentRenderer(
        flow=FLOW,
        market=market,
        secret=secret,
        group_columns=("variant", "arm"),
        content=content,
        categories=lambda key: (f"campaign:{campaign.campaign_id}", f"variant:{key[0]}"),
        custom_args=lambda key: {"campaign": campaign.campaign_id, "variant": key[0]},
        renderer=renderer,
    )


def check_localized(campaign: Campaign, markets: MarketConfig, renderer=None) -> list[str]:
    """Every variant renders in every targeted market's primary locale, in that locale's language.

    Raises CampaignError naming the campaign, variant, market and what is missing (an unknown
    market, a text only in another language, a broken URL). Returns notes on locales that fall
    back to another language's text (a market's secondary locales).
    """
    from remarketing.content.errors import RenderError
    from remarketing.content.renderer import MailRenderer

    renderer = renderer or MailRenderer()
    notes = []
    for code in campaign.markets:
        if code not in markets.markets:
            raise CampaignError(f"campaign {campaign.campaign_id}: unknown market {code!r}")
        market = markets[code]
        for variant in campaign.variants:
            for arm in ARMS if campaign.subject_b else ("a",):
                fields = campaign.variant_fields(variant.id, arm)
                for locale in market.locales:
                    for key in ("subject", "preheader", "headline", "paragraphs"):
                        value = fields.get(key)
                        if isinstance(value, Mapping) and value:
                            picked = _language_of(value, locale)
                            if picked is None:
                                message = (
                                    f"{key} has no text in {locale.split('-')[0]!r} (market {code} locale {locale})"
                                )
                                if locale == market.primary_locale:
                                    raise CampaignError(
                                        f"campaign {campaign.campaign_id} variant {variant.id}: {message}"
                                    )
                                notes.append(f"{code} {locale}: {key} falls back to {_fallback_tag(value, locale)}")
                        elif value is None or value == "" or value == []:
                            raise CampaignError(
                                f"campaign {campaign.campaign_id} variant {variant.id}: {key} is missing"
                            )
                    try:
                        context = campaign_context(
                            market=market,
                            customer=None,
                            unsubscribe_url=market.storefront.unsubscribe_url,
                            locale=locale,
                            campaign=fields,
                            variant=variant.id,
                        )
                        renderer.render_shared(campaign.template, locale, context, _placeholders())
                    except RenderError as exc:
                        raise CampaignError(f"campaign {campaign.campaign_id} variant {variant.id}: {exc}") from None
    return sorted(set(notes))


def _placeholders():
    from remarketing.content.renderer import SHARED_PLACEHOLDERS

    return SHARED_PLACEHOLDERS


def _language_of(value: Mapping[str, Any], locale: str) -> Any:
    from remarketing.content.locales import normalize_locale

    language = locale.split("-")[0]
    for key, text in value.items():
        tag = normalize_locale(key) or key
        if tag.split("-")[0] == language and text:
            return text
    return None


def _fallback_tag(value: Mapping[str, Any], locale: str) -> str:
    from remarketing.content.context import pick_localized

    picked = pick_localized(value, locale)
    return next((k for k, v in value.items() if v == picked), "?")
