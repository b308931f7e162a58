"""Building blocks for synthetic markets in tests (parse_markets needs a full, valid entry)."""

TEST_SENDER = {
    "from_email": "shop@mail.example.com",
    "from_name": "Shop",
    "reply_to": "help@example.com",
    "support_email": "help@example.com",
    "support_phone": "+1 000",
    "authenticated_domain": "mail.example.com",
    "authenticated": True,
}

TEST_STOREFRONT = {
    "shop_url": "https://shop.example.com",
    "cart_url": "https://shop.example.com/cart/restore",
    "unsubscribe_url": "https://shop.example.com/email/unsubscribe",
}

ALWAYS_OPEN = {day: [0, 24] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def synthetic_market(code: str = "DE", **overrides):
    """A valid German-style market that may send at any hour; override any field.

    For delivery tests and benches: with no send-hour or quiet-hour limits every eligible member
    is sent at once, so what is measured is the send path itself.
    """
    from remarketing.markets import parse_markets

    body = {
        "name": code,
        "locales": ["de-DE"],
        "currency": "EUR",
        "default_time_zone": "Europe/Berlin",
        "time_zones": ["Europe/Berlin"],
        "send_hours": ALWAYS_OPEN,
        "quiet_hours": {"start": "00:00", "end": "00:00"},
        "holidays": {"country": "DE", "policy": "target"},
        "marketing_consent_required": True,
        "sender": TEST_SENDER,
        "sendgrid_unsubscribe_group_id": 1001,
        "warmup_daily_cap": 1000,
        "storefront": TEST_STOREFRONT,
    }
    body.update(overrides)
    return parse_markets({"markets": {code: body}})[code]


def open_markets_config() -> dict:
    """The shipped markets.yaml with every hour open and holidays not blocking: what a run sends then
    does not depend on the hour or the day the tests run (send_windows has its own tests)."""
    import yaml

    from remarketing.markets import DEFAULT_MARKETS_FILE

    raw = yaml.safe_load(DEFAULT_MARKETS_FILE.read_text())
    for market in raw["markets"].values():
        market["send_hours"] = dict(ALWAYS_OPEN)
        market["quiet_hours"] = {"start": "00:00", "end": "00:00"}
        market["holidays"]["policy"] = "target"
    return raw


def write_open_markets(path) -> str:
    """``open_markets_config()`` written to ``path``; returns the path for REMARKETING_MARKETS_FILE."""
    import yaml

    path.write_text(yaml.safe_dump(open_markets_config()))
    return str(path)
