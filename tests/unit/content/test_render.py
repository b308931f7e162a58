"""Mail rendering: every mail in every locale, Babel formats, escaping, size, fallbacks, shared content."""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from babel.messages.pofile import read_po
from markupsafe import escape

from remarketing.content.cart_links import recovery_utm, sign_cart_token, signed_cart_link, verify_cart_token
from remarketing.content.catalogues import extract_messages
from remarketing.content.context import mail_locale, product_name
from remarketing.content.errors import RenderError
from remarketing.content.paths import LOCALE_DIR
from remarketing.content.renderer import MAX_HTML_BYTES, SHARED_PLACEHOLDERS, MailRenderer, substitutions_for
from remarketing.flows.campaigns.mail import campaign_context
from remarketing.flows.cart_recovery.mail import cart_recovery_context
from remarketing.flows.welcome.mail import welcome_context
from remarketing.markets import load_markets

MAILS = (
    "cart_recovery/step1",
    "cart_recovery/step2",
    "cart_recovery/step3",
    "welcome/member",
    "welcome/reminder",
    "campaign/generic",
)
# customer locale -> market it is typical for
LOCALES = {
    "en-GB": "GB",
    "en-US": "US",
    "de-DE": "DE",
    "fr-FR": "FR",
    "ja-JP": "JP",
    "zh-CN": "CN",
    "pt-BR": "BR",
    "es-US": "US",
}
UNSUBSCRIBE = {
    "en": "Unsubscribe",
    "de": "Abmelden",
    "fr": "Se désabonner",
    "ja": "配信停止",
    "zh": "退订",
    "pt-BR": "Cancelar inscrição",
    "es": "Cancelar suscripción",
}
# A word each mail of a flow must contain in that language (subject or body).
FLOW_WORDS = {
    "cart_recovery": {
        "en": "cart",
        "de": "Warenkorb",
        "fr": "panier",
        "ja": "カート",
        "zh": "购物车",
        "pt-BR": "carrinho",
        "es": "carrito",
    },
    "welcome": {
        "en": "account",
        "de": "Kundenkonto",
        "fr": "compte",
        "ja": "会員登録",
        "zh": "注册",
        "pt-BR": "conta",
        "es": "cuenta",
    },
    "campaign": {
        "en": "customer",
        "de": "Kunde",
        "fr": "client",
        "ja": "お客様",
        "zh": "顾客",
        "pt-BR": "cliente",
        "es": "cliente",
    },
}
NAMES = {
    "en": "Linen Shirt – White",
    "de": "Leinenhemd – Weiß",
    "fr": "Chemise en lin – blanc",
    "ja": "リネンシャツ（ホワイト）",
    "zh": "亚麻衬衫（白色）",
    "pt": "Camisa de linho – branco",
    "es": "Camisa de lino – blanco",
}
EXPIRES = datetime(2026, 3, 30, 21, 59, tzinfo=UTC)
UNSUB = "https://shop.example.com/email/unsubscribe?u=abc&sig=def"


@pytest.fixture(scope="module")
def renderer() -> MailRenderer:
    return MailRenderer()


@pytest.fixture(scope="module")
def markets():
    return load_markets()


def _product(pid: int, currency: str, names: dict | None = None, **extra) -> dict:
    return {
        "product_id": pid,
        "names": json.dumps(names or NAMES, ensure_ascii=False),
        "image_url": f"https://cdn.shop.example.com/img/P-{pid:06d}.jpg",
        "product_url": f"https://shop.example.com/p/P-{pid:06d}",
        "price": 49.99,
        "currency": currency,
        "active": True,
        **extra,
    }


def _cart_parts(currency: str, count: int = 3, names: dict | None = None, price: float = 24.5):
    products = {pid: _product(pid, currency, names) for pid in range(1, count + 1)}
    items = [
        {
            "cart_item_id": 100 + pid,
            "cart_id": 9,
            "product_id": pid,
            "quantity": 1 + pid % 2,
            "unit_price": price,
            "currency": currency,
        }
        for pid in products
    ]
    return products, items


def _customer(market, **overrides) -> dict:
    return {
        "customer_id": 5,
        "first_name": "Anna",
        "last_name": "Berg",
        "time_zone": market.default_time_zone,
    } | overrides


def _context(template: str, market, locale: str, *, customer=None, **overrides) -> dict:
    customer = _customer(market) if customer is None else customer
    flow = template.split("/")[0]
    if flow == "cart_recovery":
        step = int(template[-1])
        products, items = _cart_parts(market.currency)
        args = {
            "step": step,
            "market": market,
            "customer": customer,
            "cart": {"cart_id": 9, "currency": market.currency},
            "items": items,
            "products": products,
            "cart_link": f"{market.storefront.cart_url}?token=abc.def&utm_content=step{step}",
            "unsubscribe_url": UNSUB,
            "incentive": {"code": "COMEBACK10", "percent": 10, "expires_at": EXPIRES} if step == 3 else None,
            "locale": locale,
            "feedback_url": "https://shop.example.com/feedback",
        } | overrides
        return cart_recovery_context(**args)
    if flow == "welcome":
        args = {
            "kind": template.split("/")[1],
            "market": market,
            "customer": customer,
            "unsubscribe_url": UNSUB,
            "locale": locale,
            "products": [_product(1, market.currency), _product(2, market.currency), _product(3, "EUR")],
            "incentive": {"code": "WELCOME5", "percent": 5, "expires_at": EXPIRES},
        } | overrides
        return welcome_context(**args)
    args = {
        "market": market,
        "customer": customer,
        "unsubscribe_url": UNSUB,
        "locale": locale,
        "campaign": {
            "campaign_id": "spring26",
            "subject": {"en": "Spring has arrived", "de": "Der Frühling ist da", "ja": "春の新作が届きました"},
            "preheader": {"en": "New colours for sunny days", "de": "Neue Farben für sonnige Tage"},
            "headline": {"en": "Fresh for spring", "de": "Frisch in den Frühling"},
            "paragraphs": {
                "en": ["Light fabrics, bright colours.", "Free returns as always."],
                "de": ["Leichte Stoffe."],
            },
            "cta_url": "https://shop.example.com/spring?src=mail",
            "hero_image_url": "https://cdn.shop.example.com/hero/spring.jpg",
            "hero_alt": "Spring collection",
        },
        "products": [_product(1, market.currency), _product(2, market.currency)],
        "variant": "b",
    } | overrides
    return campaign_context(**args)


def _lang(resolved: str) -> str:
    return resolved if resolved == "pt-BR" else resolved.split("-")[0]


# --- every mail in every locale ---------------------------------------------------------------------


@pytest.mark.parametrize("locale", sorted(LOCALES))
@pytest.mark.parametrize("template", MAILS)
def test_every_mail_renders_in_every_locale(renderer, markets, template, locale):
    market = markets[LOCALES[locale]]
    mail = renderer.render(template, locale, _context(template, market, locale))
    lang = _lang(mail.locale)
    assert lang == {"en-GB": "en", "en-US": "en"}.get(locale, _lang(locale))
    for part in (mail.subject, mail.preheader, mail.html, mail.text):
        assert part.strip()
    assert "\n" not in mail.subject and "\n" not in mail.preheader
    assert mail.html.startswith("<!DOCTYPE html>") and f'<html lang="{mail.locale}">' in mail.html
    assert UNSUBSCRIBE[lang] in mail.html and UNSUBSCRIBE[lang] in mail.text
    if lang != "en":  # the catalogue was used, not the English source
        assert "Unsubscribe" not in mail.html and "Questions?" not in mail.text
    word = FLOW_WORDS[template.split("/")[0]][lang]
    assert word in mail.text and word in mail.html
    assert mail.subject in mail.html  # <title>
    assert str(escape(mail.preheader)) in mail.html  # hidden preview text
    # support contacts, privacy and unsubscribe links in the footer
    for value in (market.sender.support_email, market.sender.support_phone, market.storefront.privacy_url):
        assert value in mail.html and value in mail.text
    assert f'href="{escape(UNSUB)}"' in mail.html and UNSUB in mail.text
    # text is a real text part: no markup, no entities
    assert not re.search(r"<(a|p|td|table|br|div)\b", mail.text) and "&amp;" not in mail.text
    # images carry width and alt
    for img in re.findall(r"<img [^>]*>", mail.html):
        assert 'width="' in img and 'alt="' in img
    assert len(mail.html.encode()) < MAX_HTML_BYTES


@pytest.mark.parametrize("locale", sorted(LOCALES))
def test_cart_mails_show_products_in_the_customers_language(renderer, markets, locale):
    market = markets[LOCALES[locale]]
    mail = renderer.render("cart_recovery/step1", locale, _context("cart_recovery/step1", market, locale))
    name = NAMES[locale.split("-")[0]]
    assert str(escape(name)) in mail.html and name in mail.text
    assert 'src="https://cdn.shop.example.com/img/P-000001.jpg"' in mail.html
    assert f'alt="{escape(name)}"' in mail.html


# --- Babel formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "locale, market, expected",
    [
        ("de-DE", "DE", "1.234,50\xa0€"),
        ("de-AT", "DE", "€\xa01.234,50"),  # Austrian format, German text
        ("fr-FR", "FR", "1\u202f234,50\xa0€"),
        ("en-GB", "GB", "£1,234.50"),
        ("en-US", "US", "$1,234.50"),
        ("ja-JP", "JP", "￥1,235"),  # no minor unit: 1234.5 rounds half up
        ("zh-CN", "CN", "¥1,234.50"),
        ("pt-BR", "BR", "R$\xa01.234,50"),
    ],
)
def test_prices_are_formatted_for_the_locale_and_currency(renderer, markets, locale, market, expected):
    m = markets[market]
    products = {1: _product(1, m.currency)}
    items = [
        {"cart_item_id": 1, "cart_id": 9, "product_id": 1, "quantity": 1, "unit_price": 1234.5, "currency": m.currency}
    ]
    ctx = _context("cart_recovery/step2", m, locale, items=items, products=products)
    mail = renderer.render("cart_recovery/step2", locale, ctx)
    assert mail.html.count(expected) == 2 and mail.text.count(expected) == 2  # the line and the total


def test_line_totals_add_up_after_rounding(renderer, markets):
    market = markets["JP"]
    products = {1: _product(1, "JPY"), 2: _product(2, "JPY")}
    items = [
        {"cart_item_id": 1, "cart_id": 9, "product_id": 1, "quantity": 3, "unit_price": 999.5, "currency": "JPY"},
        {"cart_item_id": 2, "cart_id": 9, "product_id": 2, "quantity": 1, "unit_price": "1500", "currency": "JPY"},
    ]
    ctx = _context("cart_recovery/step2", market, "ja-JP", items=items, products=products)
    assert ctx["cart_total"] == Decimal(3 * 1000 + 1500)
    mail = renderer.render("cart_recovery/step2", "ja-JP", ctx)
    assert "￥3,000" in mail.text and "￥4,500" in mail.text and "3 × ￥1,000" in mail.text


def test_incentive_expiry_is_shown_in_the_customers_zone(renderer, markets):
    jp = markets["JP"]
    mail = renderer.render("cart_recovery/step3", "ja-JP", _context("cart_recovery/step3", jp, "ja-JP"))
    assert "2026年3月31日 6:59" in mail.text and "2026年3月31日 6:59" in mail.preheader
    assert "10%オフ" in mail.subject and "COMEBACK10" in mail.html
    de = markets["DE"]
    lost = _customer(de, time_zone="Mars/Olympus")  # not a zone: the market's zone is used
    mail = renderer.render("cart_recovery/step3", "de-DE", _context("cart_recovery/step3", de, "de-DE", customer=lost))
    assert "30. März 2026, 23:59" in mail.text and mail.subject.startswith("10\xa0% Rabatt")


# --- StrictUndefined and errors ---------------------------------------------------------------------

REQUIRED_STEP1 = (
    "cart_link",
    "items",
    "items_hidden",
    "cart_total",
    "currency",
    "unsubscribe_url",
    "support_email",
    "support_phone",
    "shop_name",
    "shop_url",
    "privacy_url",
    "first_name",
    "feedback_url",
    "incentive",
)


@pytest.mark.parametrize("variable", REQUIRED_STEP1)
def test_a_missing_variable_fails_that_mail_naming_it(renderer, markets, variable):
    market = markets["DE"]
    ctx = _context("cart_recovery/step1", market, "de-DE", customer=_customer(market, first_name="Zoë Geheimnis"))
    del ctx[variable]
    with pytest.raises(RenderError) as info:
        renderer.render("cart_recovery/step1", "de-DE", ctx)
    err = info.value
    assert err.variable == variable and f"'{variable}'" in str(err)
    assert str(err).startswith("cart_recovery/step1 [de]: ")
    assert "Zoë" not in str(err) and "Geheimnis" not in str(err)


def test_a_missing_nested_variable_and_the_time_zone_are_named(renderer, markets):
    market = markets["FR"]
    ctx = _context("cart_recovery/step1", market, "fr-FR")
    del ctx["items"][1]["name"]
    with pytest.raises(RenderError, match="'name'") as info:
        renderer.render("cart_recovery/step1", "fr-FR", ctx)
    assert info.value.variable == "name" and "line" in str(info.value)  # points at the template line
    ctx = _context("cart_recovery/step3", market, "fr-FR")
    del ctx["time_zone"]
    with pytest.raises(RenderError, match="'time_zone'"):
        renderer.render("cart_recovery/step3", "fr-FR", ctx)


def test_unknown_template_and_reserved_variables_are_refused(renderer, markets):
    ctx = _context("cart_recovery/step1", markets["GB"], "en-GB")
    with pytest.raises(RenderError, match="not found"):
        renderer.render("cart_recovery/step9", "en-GB", ctx)
    with pytest.raises(RenderError, match="reserved"):
        renderer.render("cart_recovery/step1", "en-GB", ctx | {"greeting": "Hi"})


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["items"].append(
                {"cart_item_id": 7, "cart_id": 9, "product_id": 999, "quantity": 1, "unit_price": 1}
            ),
            "product_id 999 not found",
        ),
        (lambda c: c["items"][0].update(currency="USD"), "cart_item_id 101 is in USD"),
        (lambda c: c["items"][0].update(quantity=-1), "cart_item_id 101 has an invalid quantity"),
        (lambda c: c["items"][0].update(quantity=1.5), "cart_item_id 101 has an invalid quantity"),
        (lambda c: c["items"][0].update(unit_price=None), "cart_item_id 101 has no valid unit_price"),
        (lambda c: c["items"][0].update(unit_price=float("nan")), "cart_item_id 101 has no valid unit_price"),
        (lambda c: c["items"][0].update(cart_id=8), "cart_item_id 101 belongs to another cart"),
        (lambda c: c["products"][1].update(names="{}"), "product_id 1 has no usable name"),
        (lambda c: c["products"][1].update(names="not json"), "product_id 1 has no usable name"),
        (lambda c: c["products"][1].update(image_url="javascript:alert(1)"), "product_id 1 image_url is not an http"),
        (lambda c: c.update(cart_link="javascript:alert(1)"), "cart_link is not an http"),
        (lambda c: c.update(unsubscribe_url=None), "unsubscribe_url is missing"),
        (lambda c: c.update(incentive=None), "step 3 needs an incentive"),
        (lambda c: c.update(incentive={"code": "X", "percent": 150, "expires_at": EXPIRES}), "percent"),
        (
            lambda c: c.update(incentive={"code": "X", "percent": 10, "expires_at": datetime(2026, 4, 1)}),
            "timezone-aware",
        ),
        (lambda c: [i.update(quantity=0) for i in c["items"]], "cart_id 9 has no items"),
        (
            lambda c: (
                c.update(cart={"cart_id": 9, "currency": "ZZZ"}) or [i.update(currency="ZZZ") for i in c["items"]]
            ),
            "ISO 4217",
        ),
    ],
)
def test_bad_cart_data_is_a_clear_error_naming_the_row(markets, change, message):
    market = markets["DE"]
    products, items = _cart_parts("EUR")
    args = {
        "step": 3,
        "market": market,
        "customer": _customer(market),
        "cart": {"cart_id": 9, "currency": "EUR"},
        "items": items,
        "products": products,
        "cart_link": "https://shop.example.com/cart?token=t",
        "unsubscribe_url": UNSUB,
        "incentive": {"code": "COMEBACK10", "percent": 10, "expires_at": EXPIRES},
        "locale": "de-DE",
    }
    change(args)
    with pytest.raises(RenderError, match=re.escape(message)) as info:
        cart_recovery_context(**args)
    assert info.value.template == "cart_recovery/step3"


def test_removed_lines_are_not_shown_but_the_rest_is(renderer, markets):
    market = markets["DE"]
    ctx = _context("cart_recovery/step1", market, "de-DE")
    products, items = _cart_parts("EUR", count=2)
    items[0]["quantity"] = 0
    ctx = _context("cart_recovery/step1", market, "de-DE", items=items, products=products)
    assert [line["product_id"] for line in ctx["items"]] == [2]
    assert ctx["cart_total"] == Decimal("24.50")


# --- escaping -----------------------------------------------------------------------------------------


def test_script_in_product_name_and_first_name_is_escaped_in_html(renderer, markets):
    market = markets["DE"]
    evil = {"de": "<script>alert('x')</script> Pulli", "en": '" onmouseover="steal()'}
    products, items = _cart_parts("EUR", count=1, names=evil)
    customer = _customer(market, first_name="<img src=x onerror=alert(1)>")
    for locale, name in (("de-DE", evil["de"]), ("en-GB", evil["en"])):
        ctx = _context("cart_recovery/step1", market, locale, customer=customer, items=items, products=products)
        mail = renderer.render("cart_recovery/step1", locale, ctx)
        assert "<script>" not in mail.html and "<img src=x" not in mail.html
        assert '" onmouseover="' not in mail.html
        assert str(escape(name)) in mail.html and "&lt;img src=x onerror=alert(1)&gt;" in mail.html
        assert name in mail.text and "<img src=x onerror=alert(1)>" in mail.text  # raw in the text part


def test_campaign_texts_from_params_are_escaped(renderer, markets):
    market = markets["GB"]
    campaign = {
        "campaign_id": "c1",
        "subject": "Deals <b>now</b> & more",
        "preheader": "a < b",
        "headline": "<h1>Big</h1>",
        "paragraphs": ["<script>x()</script>"],
        "cta_url": "https://shop.example.com/deals",
    }
    mail = renderer.render(
        "campaign/generic", "en-GB", _context("campaign/generic", market, "en-GB", campaign=campaign)
    )
    assert mail.subject == "Deals <b>now</b> & more"  # the subject is plain text
    assert "<title>Deals &lt;b&gt;now&lt;/b&gt; &amp; more</title>" in mail.html
    assert "<script>" not in mail.html and "&lt;script&gt;x()&lt;/script&gt;" in mail.html
    assert "&lt;h1&gt;Big&lt;/h1&gt;" in mail.html and "a &lt; b" in mail.html


# --- size and the text part -------------------------------------------------------------------------


def test_html_stays_under_100kb_with_a_20_item_cart(renderer, markets):
    market = markets["JP"]
    long_names = {lang: (name + " ") * 6 for lang, name in NAMES.items()}  # ~70 CJK characters each
    products, items = _cart_parts("JPY", count=20, names=long_names)
    link = signed_cart_link(
        market.storefront.cart_url, 123456789012, step=1, market="JP", secret=b"k" * 32, expires_at=EXPIRES
    )
    ctx = _context("cart_recovery/step1", market, "ja-JP", items=items, products=products, cart_link=link)
    mail = renderer.render("cart_recovery/step1", "ja-JP", ctx)
    size = len(mail.html.encode())
    assert size < MAX_HTML_BYTES, size
    assert mail.html.count('<img src="https://cdn.shop.example.com/img/') == 20
    assert "ほか" not in mail.html  # all 20 shown


def test_a_huge_cart_shows_20_lines_and_the_rest_as_a_count(renderer, markets):
    market = markets["DE"]
    products, items = _cart_parts("EUR", count=60)
    ctx = _context("cart_recovery/step2", market, "de-DE", items=items, products=products)
    mail = renderer.render("cart_recovery/step2", "de-DE", ctx)
    assert mail.html.count("<img ") == 20 and len(ctx["items"]) == 20
    assert "und 40 weitere Artikel" in mail.html and "und 40 weitere Artikel" in mail.text
    assert ctx["cart_total"] == sum(Decimal("24.5") * (1 + pid % 2) for pid in range(1, 61))
    assert len(mail.html.encode()) < MAX_HTML_BYTES


def test_a_mail_over_the_size_limit_fails(markets):
    small = MailRenderer(max_html_bytes=4_000)
    with pytest.raises(RenderError, match=r"rendered HTML is \d+ bytes, over the 4000 byte limit"):
        small.render("cart_recovery/step1", "en-GB", _context("cart_recovery/step1", markets["GB"], "en-GB"))


def test_text_part_has_the_cart_link_and_the_unsubscribe_url(renderer, markets):
    market = markets["FR"]
    secret = b"f" * 32
    link = signed_cart_link(market.storefront.cart_url, 4242, step=2, market="FR", secret=secret, expires_at=EXPIRES)
    mail = renderer.render(
        "cart_recovery/step2", "fr-FR", _context("cart_recovery/step2", market, "fr-FR", cart_link=link)
    )
    assert link in mail.text and UNSUB in mail.text
    assert f'href="{escape(link)}"' in mail.html and "&amp;utm_medium=email" in mail.html
    token = re.search(r"token=([A-Za-z0-9_.-]+)", mail.text)[1]
    assert verify_cart_token(token, secrets=secret, now=EXPIRES - timedelta(days=1)).cart_id == 4242
    assert "utm_content=step2" in link and recovery_utm(2)["utm_campaign"] == "cart_recovery"


# --- greetings and locale fallback ------------------------------------------------------------------


@pytest.mark.parametrize(
    "locale, first, last, expected",
    [
        ("en-GB", "Anna", "Berg", "Hello Anna,"),
        ("en-US", None, None, "Hello,"),
        ("de-DE", "Anna", "Berg", "Hallo Anna,"),
        ("de-CH", "  ", None, "Guten Tag,"),
        ("fr-FR", "Zoé", None, "Bonjour Zoé,"),
        ("fr-BE", None, None, "Bonjour,"),
        ("ja-JP", "葵", "松本", "松本 葵 様"),
        ("ja-JP", "葵", None, "葵 様"),
        ("ja-JP", None, None, "お客様"),
        ("zh-CN", "超", "何", "何超，您好！"),
        ("zh-CN", None, None, "您好！"),
        ("pt-BR", "Ana", "Souza", "Olá, Ana!"),
        ("pt-BR", float("nan"), None, "Olá!"),
        ("es-US", "Lucía", None, "Hola, Lucía:"),
    ],
)
def test_greeting(renderer, locale, first, last, expected):
    first = None if isinstance(first, float) else first
    assert renderer.greeting(locale, first, last) == expected


def test_guest_without_a_name_gets_a_neutral_greeting(renderer, markets):
    market = markets["BR"]
    mail = renderer.render(
        "cart_recovery/step1", "pt-BR", _context("cart_recovery/step1", market, "pt-BR", customer={})
    )
    assert '<p style="margin:0 0 16px;">Olá!</p>' in mail.html and mail.text.splitlines()[2] == "Olá!"


@pytest.mark.parametrize(
    "asked, resolved",
    [
        ("de-DE", "de"),
        ("de-AT", "de"),
        ("de-CH", "de"),
        ("de_at", "de"),
        ("fr-FR", "fr"),
        ("fr-BE", "fr"),
        ("en-GB", "en"),
        ("en-US", "en"),
        ("zh-CN", "zh"),
        ("zh-Hant-TW", "zh"),
        ("ja-JP", "ja"),
        ("pt-BR", "pt-BR"),
        ("PT-br", "pt-BR"),
        ("pt-PT", "pt-BR"),
        ("pt", "pt-BR"),
        ("es-US", "es"),
        ("it-IT", "en"),
        ("", "en"),
        (None, "en"),
        ("not a locale", "en"),
    ],
)
def test_locale_fallback(renderer, asked, resolved):
    assert renderer.resolve_locale(asked) == resolved


def test_pt_pt_prefers_a_pt_catalogue_when_there_is_one(tmp_path):
    for name in ("pt_BR", "pt", "de"):
        (tmp_path / name / "LC_MESSAGES").mkdir(parents=True)
        shutil.copy(
            LOCALE_DIR / ("de" if name == "de" else "pt_BR") / "LC_MESSAGES" / "messages.po",
            tmp_path / name / "LC_MESSAGES",
        )
    renderer = MailRenderer(locale_dir=tmp_path)
    assert renderer.locales == ("de", "en", "pt", "pt-BR")
    assert [renderer.resolve_locale(x) for x in ("pt-PT", "pt-BR", "pt-AO", "fr-FR", "de-LU")] == [
        "pt",
        "pt-BR",
        "pt",
        "en",
        "de",
    ]
    assert MailRenderer(locale_dir=tmp_path / "none").locales == ("en",)


def test_mail_locale_prefers_the_customer(markets):
    assert mail_locale({"locale": "de_AT"}, markets["DE"]) == "de-AT"
    assert mail_locale({"locale": None}, markets["JP"]) == "ja-JP"
    assert mail_locale(None, markets["BR"]) == "pt-BR"


@pytest.mark.parametrize(
    "names, locale, expected",
    [
        ({"en": "Shirt", "de": "Hemd"}, "de-AT", "Hemd"),
        ({"en": "Shirt", "pt": "Camisa"}, "pt-BR", "Camisa"),
        ({"en": "Shirt", "pt-BR": "Camisa BR", "pt": "Camisa"}, "pt-BR", "Camisa BR"),
        ({"en": "Shirt", "de": "Hemd"}, "ja-JP", "Shirt"),
        ({"fr": "Chemise", "de": "Hemd"}, "ja-JP", "Hemd"),  # any: alphabetically first
        ({"en": "  ", "de": "Hemd"}, "en-GB", "Hemd"),
        ('{"ja": "シャツ"}', "ja", "シャツ"),
        ({}, "en", None),
        ("[]", "en", None),
    ],
)
def test_product_name_fallback(names, locale, expected):
    assert product_name(names, locale) == expected


# --- welcome and campaign specifics -------------------------------------------------------------------


def test_welcome_member_lists_benefits_and_the_code(renderer, markets):
    market = markets["DE"]
    mail = renderer.render("welcome/member", "de-DE", _context("welcome/member", market, "de-DE"))
    assert mail.subject == "Willkommen bei Beispiel Shop!"
    assert "Ihre Vorteile als Mitglied:" in mail.text and mail.html.count("<li ") == 4
    assert "WELCOME5" in mail.html and "5\xa0% Rabatt auf Ihre erste Bestellung" in mail.text
    # the grid shows a price only for products priced in the mail's currency
    assert "49,99\xa0€" in mail.text
    jp = markets["JP"]
    ja = renderer.render("welcome/member", "ja-JP", _context("welcome/member", jp, "ja-JP"))
    assert ja.text.count("￥50") == 2 and "€" not in ja.text


def test_welcome_reminder_without_products_or_code(renderer, markets):
    market = markets["FR"]
    ctx = _context("welcome/reminder", market, "fr-FR", products=[], incentive=None)
    mail = renderer.render("welcome/reminder", "fr-FR", ctx)
    assert "Nos articles populaires" not in mail.html and "Votre code" not in mail.text
    assert "utm_campaign=welcome&utm_content=reminder" in mail.text


def test_campaign_fields_per_locale_with_fallback(renderer, markets):
    de = renderer.render("campaign/generic", "de-AT", _context("campaign/generic", markets["DE"], "de-AT"))
    assert (de.subject, de.preheader) == ("Der Frühling ist da", "Neue Farben für sonnige Tage")
    assert "Leichte Stoffe." in de.text and "Jetzt einkaufen" in de.html
    ja = renderer.render("campaign/generic", "ja-JP", _context("campaign/generic", markets["JP"], "ja-JP"))
    assert ja.subject == "春の新作が届きました" and ja.preheader == "New colours for sunny days"  # en fallback
    assert "商品を見る" in ja.html and "おすすめの商品" in ja.html
    cta = "https://shop.example.com/spring?src=mail&utm_source=remarketing&utm_medium=email&utm_campaign=spring26&utm_content=b"
    assert cta in ja.text and f'href="{escape(cta)}"' in ja.html


def test_campaign_with_missing_fields_or_bad_products_is_refused(markets):
    market = markets["GB"]
    base = _context("campaign/generic", market, "en-GB")["campaign"]
    with pytest.raises(RenderError, match="headline is missing") as info:
        _context("campaign/generic", market, "en-GB", campaign={**base, "headline": {"de": ""}})
    assert info.value.variable == "headline"
    with pytest.raises(RenderError, match="paragraphs must be a list"):
        _context("campaign/generic", market, "en-GB", campaign={**base, "paragraphs": [1, 2]})
    with pytest.raises(RenderError, match="product_id 3 is inactive"):
        _context("campaign/generic", market, "en-GB", products=[_product(3, "GBP", active=False)])


# --- shared content ----------------------------------------------------------------------------------


def test_shared_render_with_substitutions_equals_the_personal_render(renderer, markets):
    market = markets["DE"]
    unsub = 'https://shop.example.com/de/email/unsubscribe?u=7&sig=a"b'
    shared_ctx = _context(
        "campaign/generic", market, "de-DE", customer=None, unsubscribe_url="https://placeholder.invalid/"
    )
    shared = renderer.render_shared("campaign/generic", "de-DE", shared_ctx, SHARED_PLACEHOLDERS)
    assert "-greeting_html-" in shared.html and "-greeting_text-" not in shared.html
    assert "-greeting_text-" in shared.text and "-greeting_html-" not in shared.text
    assert 'href="-unsubscribe_url_html-"' in shared.html and "-unsubscribe_url_text-" in shared.text
    assert "placeholder.invalid" not in shared.html + shared.text

    for first_name in ("<b>&", "Anna", None):
        subs = substitutions_for(
            SHARED_PLACEHOLDERS, {"greeting": renderer.greeting("de-DE", first_name), "unsubscribe_url": unsub}
        )
        html, text = shared.html, shared.text
        for token, value in subs.items():
            html, text = html.replace(token, value), text.replace(token, value)
        personal_ctx = _context(
            "campaign/generic",
            market,
            "de-DE",
            customer={"first_name": first_name, "time_zone": "Europe/Berlin"},
            unsubscribe_url=unsub,
        )
        personal = renderer.render("campaign/generic", "de-DE", personal_ctx)
        assert (html, text, shared.subject) == (personal.html, personal.text, personal.subject)
    assert (
        "Hallo &lt;b&gt;&amp;,"
        in renderer.render(
            "campaign/generic", "de-DE", _context("campaign/generic", market, "de-DE", customer={"first_name": "<b>&"})
        ).html
    )


def test_substitutions_escape_for_html_and_keep_text_raw():
    subs = substitutions_for(
        {"first_name": "first_name", "unsubscribe_url": "unsub"}, {"first_name": "<b>&", "unsubscribe_url": None}
    )
    assert subs == {
        "-first_name_html-": "&lt;b&gt;&amp;",
        "-first_name_text-": "<b>&",
        "-unsub_html-": "",
        "-unsub_text-": "",
    }
    with pytest.raises(ValueError, match="'first_name'"):
        substitutions_for({"first_name": "first_name"}, {})


def test_shared_render_placeholder_checks(renderer, markets):
    ctx = _context("campaign/generic", markets["GB"], "en-GB")
    with pytest.raises(RenderError, match="not a context variable"):
        renderer.render_shared("campaign/generic", "en-GB", ctx, {"nickname": "nick"})
    with pytest.raises(RenderError, match="must match"):
        renderer.render_shared("campaign/generic", "en-GB", ctx, {"greeting": "Greeting!"})
    with pytest.raises(RenderError, match="distinct"):
        renderer.render_shared("campaign/generic", "en-GB", ctx, {"greeting": "x", "unsubscribe_url": "x"})


# --- catalogues ---------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def test_catalogues_are_complete_and_consistent():
    expected = {(m.id, m.context) for m in extract_messages() if m.id}
    found = sorted(p.parents[1].name for p in LOCALE_DIR.glob("*/LC_MESSAGES/messages.po"))
    assert {"de", "fr", "ja", "zh", "pt_BR"} <= set(found)
    for name in found:
        with (LOCALE_DIR / name / "LC_MESSAGES" / "messages.po").open("rb") as fh:
            catalog = read_po(fh)
        got = {(m.id, m.context) for m in catalog if m.id}
        assert got == expected, f"{name}: missing {expected - got}, stale {got - expected}"
        assert not [problem for message in catalog for problem in message.check(catalog)], name
        for message in catalog:
            if not message.id:
                continue
            ids = message.id if isinstance(message.id, tuple) else (message.id,)
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            assert not message.fuzzy and all(s.strip() for s in strings), (name, message.id)
            wanted = set(_PLACEHOLDER.findall(ids[-1]))
            for string in strings:
                assert set(_PLACEHOLDER.findall(string)) == wanted, (name, message.id, string)
                # newstyle gettext always %-formats: a literal percent sign would break the render
                assert "%" not in _PLACEHOLDER.sub("", string), (name, message.id, string)


# --- the demo shop, and threads ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_store(instant):
    from demo_shop.generator import generate_store

    return generate_store(400, seed=7, as_of=instant)


def test_recovery_mails_for_demo_carts_in_every_market(renderer, markets, demo_store):
    carts, cart_items, customers = demo_store["carts"], demo_store["cart_items"], demo_store["customers"]
    products = {row["product_id"]: row for row in demo_store["products"].to_dict("records")}
    by_id = customers.set_index("customer_id", drop=False)
    open_carts = carts[
        (carts["status"] == "open") & carts["cart_id"].isin(cart_items.loc[cart_items["quantity"] > 0, "cart_id"])
    ]
    secret = b"d" * 32
    seen_locales = set()
    for code in markets.codes:
        sample = open_carts[open_carts["market"] == code].head(4)
        assert len(sample), code
        for cart in sample.to_dict("records"):
            customer = (
                by_id.loc[cart["customer_id"]].to_dict()
                if cart["customer_id"] is not None and cart["customer_id"] in by_id.index
                else {}
            )
            market = markets[code]
            locale = mail_locale(customer, market)
            items = cart_items[cart_items["cart_id"] == cart["cart_id"]].to_dict("records")
            link = signed_cart_link(
                market.storefront.cart_url, cart["cart_id"], step=1, market=code, secret=secret, expires_at=EXPIRES
            )
            ctx = cart_recovery_context(
                step=1, market=market, customer=customer, cart=cart, items=items, products=products,
                cart_link=link, unsubscribe_url=market.storefront.unsubscribe_url, locale=locale,
            )  # fmt: skip
            mail = renderer.render("cart_recovery/step1", locale, ctx)
            seen_locales.add(mail.locale)
            for line in ctx["items"]:
                assert str(escape(line["name"])) in mail.html
            assert product_name(products[ctx["items"][0]["product_id"]]["names"], locale) == ctx["items"][0]["name"]
            assert link in mail.text
    assert {"de", "fr", "en", "ja", "zh", "pt-BR"} <= seen_locales


def test_renders_in_parallel_threads_do_not_mix_locales(renderer, markets):
    jobs = [(locale, LOCALES[locale]) for locale in ("de-DE", "ja-JP", "fr-FR", "zh-CN")] * 10
    contexts = [_context("cart_recovery/step3", markets[code], locale) for locale, code in jobs]

    def render(i):
        return renderer.render("cart_recovery/step3", jobs[i][0], contexts[i])

    sequential = [render(i) for i in range(len(jobs))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(render, range(len(jobs))))
    assert parallel == sequential
    assert len({mail.subject for mail in sequential}) == 4


def test_signing_and_rendering_round_trip_for_a_guest(renderer, markets):
    market = markets["US"]
    token = sign_cart_token(77, secret=b"u" * 32, expires_at=EXPIRES, market="US")
    ctx = _context("cart_recovery/step2", market, "en-US", customer=None)
    ctx_guest = _context(
        "cart_recovery/step2", market, "en-US", customer={}, cart_link=f"{market.storefront.cart_url}?token={token}"
    )
    assert ctx["first_name"] == "Anna" and ctx_guest["first_name"] is None
    mail = renderer.render("cart_recovery/step2", "en-US", ctx_guest)
    assert mail.text.splitlines()[2] == "Hello," and token in mail.text
