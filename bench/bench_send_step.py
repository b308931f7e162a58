"""Benchmark: emails per second end to end through the shared send step.

``send_market`` does everything a real run does (gate, address and suppression checks, consent,
caps against the ledger, send windows, ledger claim / sending / confirm in SQLite with WAL,
SendGrid transport) against the local SendGrid server in its own process on loopback.
Three audiences of the same size:
- render excluded: the render callback hands over pre-built personal messages;
- render included: every member's cart-recovery step-1 mail rendered (3-item cart, Jinja2 +
  Babel, signed cart and unsubscribe links);
- shared content: one campaign mail rendered per locale with placeholders, recipients packed
  1,000 per request with their own substitutions (how campaigns go out).
Every run is checked at the server: each ledger key accepted exactly once.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from bench.bench_delivery import FakeServer
from bench.run import entry
from remarketing.delivery.messages import Message, Recipient
from remarketing.delivery.retry import RetryPolicy
from remarketing.delivery.send_step import send_market
from remarketing.delivery.sendgrid_transport import SendGridTransport
from remarketing.platform import state

MAX_SIZE = 20_000
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # market_fixtures
SECRET = b"bench-link-secret-0123456789"


def bench_market():
    """A market that may send at any hour with no warm-up limit, so every member goes now."""
    from market_fixtures import synthetic_market

    return synthetic_market("DE", warmup_daily_cap=10_000_000)


def audience(size: int, now: datetime, offset: int) -> pd.DataFrame:
    ids = np.arange(offset + 1, offset + size + 1)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "email": [f"shopper{i}@example.com" for i in ids],
            "first_name": [f"Kunde{i}" for i in ids],
            "market": "DE",
            "locale": "de-DE",
            "time_zone": "Europe/Berlin",
            "earliest_at": pd.Timestamp(now),
            "best_hour": pd.array([pd.NA] * size, dtype="Int64"),
            "marketing_consent": True,
            "value": np.linspace(1, 500, size),
            "step": 1,
            "subject_kind": "cart",
            "subject_id": [f"{i}" for i in ids],
            "variant": "v1",
        }
    )


def prebuilt(market) -> callable:
    def render(chunk: pd.DataFrame):
        for email, key in zip(chunk["email"].tolist(), chunk["ledger_key"].tolist(), strict=True):
            yield Message(
                recipients=(Recipient(email, key, headers={"List-Unsubscribe": "<https://shop.example.com/u>"}),),
                from_email=market.sender.from_email,
                from_name=market.sender.from_name,
                subject="Ihr Warenkorb wartet",
                html="<html><body>" + "<p>Ihr Warenkorb wartet auf Sie.</p>" * 40 + "</body></html>",
                text="Ihr Warenkorb wartet auf Sie.\n" * 40,
            )

    return render


def rendered(market) -> callable:
    from remarketing.content.cart_links import signed_cart_link
    from remarketing.content.renderer import MailRenderer
    from remarketing.content.unsubscribe_links import sign_unsubscribe_token, unsubscribe_url
    from remarketing.flows.cart_recovery.mail import cart_recovery_context

    renderer = MailRenderer()
    names = '{"de": "Wanderschuh Alpin", "en": "Alpine hiking boot"}'
    products = {
        p: {"product_id": p, "names": names, "image_url": f"https://cdn.example.com/p{p}.jpg", "category": "shoes"}
        for p in (1, 2, 3)
    }
    expires = datetime.now(UTC) + timedelta(days=7)

    def render(chunk: pd.DataFrame):
        for row in chunk.to_dict("records"):
            cart_id = int(row["subject_id"])
            items = [
                {"cart_item_id": cart_id * 10 + p, "cart_id": cart_id, "product_id": p, "quantity": p,
                 "unit_price": 19.95 * p, "currency": "EUR"}
                for p in (1, 2, 3)
            ]  # fmt: skip
            token = sign_unsubscribe_token(row["customer_ref"], market="DE", group_id=1001, secret=SECRET)
            unsubscribe = unsubscribe_url(market.storefront.unsubscribe_url, token)
            context = cart_recovery_context(
                step=1,
                market=market,
                customer={"first_name": row["first_name"], "last_name": None, "time_zone": "Europe/Berlin"},
                cart={"cart_id": cart_id, "currency": "EUR"},
                items=items,
                products=products,
                cart_link=signed_cart_link(
                    market.storefront.cart_url, cart_id, step=1, market="DE", secret=SECRET, expires_at=expires
                ),
                unsubscribe_url=unsubscribe,
                locale="de-DE",
            )
            mail = renderer.render("cart_recovery/step1", "de-DE", context)
            yield Message(
                recipients=(
                    Recipient(row["email"], row["ledger_key"], headers={"List-Unsubscribe": f"<{unsubscribe}>"}),
                ),
                from_email=market.sender.from_email,
                from_name=market.sender.from_name,
                subject=mail.subject,
                html=mail.html,
                text=mail.text,
            )

    return render


def shared(market) -> callable:
    from remarketing.content.renderer import MailRenderer, substitutions_for
    from remarketing.content.unsubscribe_links import sign_unsubscribe_token, unsubscribe_url
    from remarketing.flows.campaigns.mail import campaign_context

    renderer = MailRenderer()
    placeholders = {"greeting": "greeting", "unsubscribe_url": "unsubscribe_url"}
    campaign = {
        "campaign_id": "bench",
        "subject": "Neu im Shop",
        "preheader": "Unsere Herbstauswahl",
        "headline": "Herbstauswahl",
        "paragraphs": ["Entdecken Sie unsere neue Auswahl."] * 3,
        "cta_url": "https://shop.example.com/de/herbst",
    }
    context = campaign_context(
        market=market, customer=None, unsubscribe_url="https://placeholder.invalid/", locale="de-DE", campaign=campaign
    )
    mail = renderer.render_shared("campaign/generic", "de-DE", context, placeholders)

    def render(chunk: pd.DataFrame):
        recipients = []
        for row in chunk.to_dict("records"):
            token = sign_unsubscribe_token(row["customer_ref"], market="DE", group_id=1001, secret=SECRET)
            link = unsubscribe_url(market.storefront.unsubscribe_url, token)
            values = {"greeting": renderer.greeting("de-DE", row["first_name"]), "unsubscribe_url": link}
            recipients.append(
                Recipient(
                    row["email"],
                    row["ledger_key"],
                    substitutions=substitutions_for(placeholders, values),
                    headers={"List-Unsubscribe": f"<{link}>"},
                )
            )
        yield Message(
            recipients=tuple(recipients),
            from_email=market.sender.from_email,
            from_name=market.sender.from_name,
            subject=mail.subject,
            html=mail.html,
            text=mail.text,
        )

    return render


def _rate(server: FakeServer, market, render, size: int, offset: int, flow: str, folder: Path) -> float:
    engine = state.create_state_engine(f"sqlite:///{folder / f'{flow}-{offset}.db'}")
    state.upgrade(engine)
    now = datetime.now(UTC)
    members = audience(size, now, offset)
    transport = SendGridTransport(
        server.api_key, host=server.url, max_workers=8, retry=RetryPolicy(max_attempts=3, base_delay=0.01)
    )
    try:
        started = time.perf_counter()
        summary = send_market(
            flow=flow,
            market=market,
            audience=members,
            render=render,
            transport=transport,
            engine=engine,
            run_id=f"bench-{offset}",
            try_number=1,
            now=now,
        )
        seconds = time.perf_counter() - started
    finally:
        transport.close()
        engine.dispose()
    if summary.counts["sent"] != size:
        raise AssertionError(f"{flow}: expected {size} sent, got {summary.counts}")
    seen = server.count()
    if seen["keys"] != size or seen["max"] != 1 or seen["errors"]:
        raise AssertionError(f"{flow}: the server accepted {seen} for {size} ledger keys")
    return size / seconds


def run(size: int) -> list[dict]:
    n = max(100, min(size, MAX_SIZE))
    market = bench_market()
    server = FakeServer()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-send-step-") as tmp:
            folder = Path(tmp)
            _rate(server, market, prebuilt(market), 200, 10_000_000, "cart_recovery", folder)  # warm-up
            excluded = _rate(server, market, prebuilt(market), n, 0, "cart_recovery", folder)
            included = _rate(server, market, rendered(market), n, 1_000_000, "cart_recovery", folder)
            packed = _rate(server, market, shared(market), n, 2_000_000, "market_campaign", folder)
    finally:
        server.close()
    return [
        entry("send_step.end_to_end emails/s, render excluded (personal mails)", excluded, "emails/s", n),
        entry("send_step.end_to_end emails/s, render included (cart recovery step 1)", included, "emails/s", n),
        entry("send_step.end_to_end emails/s, shared campaign content packed 1,000/request", packed, "emails/s", n),
    ]
