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
