"""Benchmark: how fast mails render, per recipient and as shared content.

- cart recovery step 1 with a 3-item cart, rendered per customer (subject, preheader, HTML and
  text part), rotating over seven locales so every catalogue and Babel locale is exercised;
- the same with the context built from store rows and the cart link signed, i.e. the whole
  per-mail cost the recovery flow pays;
- a campaign rendered once with placeholders, then one substitution set per recipient;
- the HTML size of a 20-item Japanese cart (Gmail clips above 100 KB).

``size`` is the number of renders (capped at ``MAX_RENDERS``: the rate does not change with more).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from bench.run import entry
from remarketing.content.cart_links import signed_cart_link
from remarketing.content.renderer import SHARED_PLACEHOLDERS, MailRenderer, substitutions_for
from remarketing.flows.campaigns.mail import campaign_context
from remarketing.flows.cart_recovery.mail import cart_recovery_context
from remarketing.markets import load_markets

MAX_RENDERS = 5_000
LOCALES = {"de-DE": "DE", "fr-FR": "FR", "en-GB": "GB", "en-US": "US", "ja-JP": "JP", "zh-CN": "CN", "pt-BR": "BR"}
NAMES = {
    "en": "Terra Hoodie – Terracotta",
    "de": "Terra Kapuzenpullover – Terrakotta",
    "fr": "Terra Sweat à capuche – terracotta",
    "ja": "Terra パーカー（テラコッタ）",
    "zh": "Terra 连帽卫衣（陶土色）",
    "pt": "Terra Moletom com capuz – terracota",
    "es": "Terra Sudadera con capucha – terracota",
}
SECRET = b"bench-secret-bench-secret-bench!"
EXPIRES = datetime(2026, 4, 3, tzinfo=UTC)


def _rows(currency: str, count: int) -> tuple[dict, list[dict]]:
    products = {
        pid: {
            "product_id": pid,
            "names": json.dumps(NAMES, ensure_ascii=False),
            "image_url": f"https://cdn.shop.example.com/img/APP-{pid:06d}.jpg",
            "product_url": f"https://shop.example.com/p/APP-{pid:06d}",
            "price": 59.99,
            "currency": currency,
            "active": True,
        }
        for pid in range(1, count + 1)
    }
    items = [
        {
            "cart_item_id": pid,
            "cart_id": 42,
            "product_id": pid,
            "quantity": 1 + pid % 2,
            "unit_price": 59.99,
            "currency": currency,
        }
        for pid in products
    ]
    return products, items


def _recovery_context(market, locale: str, count: int = 3) -> dict:
    products, items = _rows(market.currency, count)
    link = signed_cart_link(
        market.storefront.cart_url, 42, step=1, market=market.code, secret=SECRET, expires_at=EXPIRES
    )
    return cart_recovery_context(
        step=1,
        market=market,
        customer={"customer_id": 7, "first_name": "Anna", "last_name": "Berg", "time_zone": market.default_time_zone},
        cart={"cart_id": 42, "currency": market.currency},
        items=items,
        products=products,
        cart_link=link,
        unsubscribe_url=market.storefront.unsubscribe_url + "?u=7",
        locale=locale,
    )


def run(size: int) -> list[dict]:
    renders = max(1, min(size, MAX_RENDERS))
    markets = load_markets()
    started = time.perf_counter()
    renderer = MailRenderer()
    startup_s = time.perf_counter() - started
    jobs = [(locale, markets[code]) for locale, code in LOCALES.items()]
    contexts = [(locale, _recovery_context(market, locale)) for locale, market in jobs]
    for locale, ctx in contexts:  # warm: template compilation, Babel locale data
        renderer.render("cart_recovery/step1", locale, ctx)

    started = time.perf_counter()
    for i in range(renders):
        locale, ctx = contexts[i % len(contexts)]
        renderer.render("cart_recovery/step1", locale, ctx)
    render_s = time.perf_counter() - started

    started = time.perf_counter()
    for i in range(renders):
        locale, market = jobs[i % len(jobs)]
        renderer.render("cart_recovery/step1", locale, _recovery_context(market, locale))
    full_s = time.perf_counter() - started

    market = markets["DE"]
    campaign = {
        "campaign_id": "bench",
        "subject": "Der Frühling ist da",
        "preheader": "Neue Farben für sonnige Tage",
        "headline": "Frisch in den Frühling",
        "paragraphs": ["Leichte Stoffe, kräftige Farben.", "Kostenlose Rücksendung wie immer."],
        "cta_url": "https://shop.example.com/de/spring",
    }
    started = time.perf_counter()
    shared_ctx = campaign_context(
        market=market,
        customer=None,
        unsubscribe_url=market.storefront.unsubscribe_url,
        locale="de-DE",
        campaign=campaign,
    )
    renderer.render_shared("campaign/generic", "de-DE", shared_ctx, SHARED_PLACEHOLDERS)
    for i in range(renders):
        substitutions_for(
            SHARED_PLACEHOLDERS,
            {
                "greeting": renderer.greeting("de-DE", "Anna" if i % 3 else None),
                "unsubscribe_url": f"{market.storefront.unsubscribe_url}?u={i}",
            },
        )
    shared_s = time.perf_counter() - started

    big = renderer.render("cart_recovery/step1", "ja-JP", _recovery_context(markets["JP"], "ja-JP", count=20))
    small = renderer.render("cart_recovery/step1", "de-DE", contexts[0][1])
    return [
        entry("render.cart_recovery_step1 3 items, per-recipient renders", renders / render_s, "renders/s", renders),
        entry("render.cart_recovery_step1 3 items incl. context + signed link", renders / full_s, "mails/s", renders),
        entry(
            "render.campaign shared render + per-recipient substitutions", renders / shared_s, "recipients/s", renders
        ),
        entry("render.MailRenderer start (6 catalogues from .po)", startup_s, "s", 1),
        entry("render.html_bytes cart_recovery_step1 3 items (de)", len(small.html.encode()), "bytes", 3),
        entry("render.html_bytes cart_recovery_step1 20 items (ja)", len(big.html.encode()), "bytes", 20),
    ]
