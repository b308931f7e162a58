"""Signed cart links: round trip, every way a token can be broken, expiry, key rotation, links."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remarketing.content import cart_links
from remarketing.content.cart_links import (
    CartToken,
    InvalidCartToken,
    cart_link,
    recovery_utm,
    sign_cart_token,
    signed_cart_link,
    verify_cart_token,
    with_query,
)

SECRET = b"s" * 32
OTHER = b"o" * 32
NOW = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(days=3)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _forge(body: str, secret: bytes = SECRET) -> str:
    """A token with a correct signature over an arbitrary body (as someone holding the key could make)."""
    raw = body.encode()
    mac = hmac.new(secret, b"remarketing-cart-token\x00" + raw, hashlib.sha256).digest()
    return f"{_b64(raw)}.{_b64(mac)}"


def _reason(token, **kwargs) -> str:
    kwargs.setdefault("secrets", SECRET)
    kwargs.setdefault("now", NOW)
    with pytest.raises(InvalidCartToken) as info:
        verify_cart_token(token, **kwargs)
    return info.value.reason


def test_round_trip():
    token = sign_cart_token(123456789, secret=SECRET, expires_at=EXPIRES, market="DE")
    got = verify_cart_token(token, secrets=SECRET, now=NOW)
    assert got == CartToken(cart_id=123456789, market="DE", expires_at=EXPIRES, key_id="k1")
    assert got.expires_at.tzinfo is not None


def test_token_is_url_safe_and_carries_no_personal_data():
    token = sign_cart_token(42, secret=SECRET, expires_at=EXPIRES, market="FR")
    assert set(token) <= set(B64 + ".")
    body = base64.urlsafe_b64decode(token.split(".")[0] + "==").decode()
    assert body == f"1:k1:FR:42:{int(EXPIRES.timestamp())}"  # version, key id, market, cart, expiry: nothing else


def test_every_single_character_change_is_rejected():
    token = sign_cart_token(987, secret=SECRET, expires_at=EXPIRES, market="JP")
    for i, char in enumerate(token):
        neighbour = B64[(B64.index(char) + 1) % 64] if char != "." else "A"
        for replacement in {neighbour, "=", ".", "+", "/"} - {char}:
            _reason(token[:i] + replacement + token[i + 1 :])


def test_every_truncation_and_extension_is_rejected():
    token = sign_cart_token(987, secret=SECRET, expires_at=EXPIRES, market="JP")
    for end in range(len(token)):
        _reason(token[:end])
    for suffix in ("A", "AA", ".", ".AAAA", "=", " ", "\n"):
        _reason(token + suffix)
    _reason(" " + token)


def test_changed_payload_with_the_old_signature_is_a_bad_signature():
    token = sign_cart_token(1000, secret=SECRET, expires_at=EXPIRES, market="DE")
    signature = token.split(".")[1]
    for body in (
        f"1:k1:DE:1001:{int(EXPIRES.timestamp())}",  # someone else's cart
        f"1:k1:FR:1000:{int(EXPIRES.timestamp())}",  # another market
        f"1:k1:DE:1000:{int(EXPIRES.timestamp()) + 86_400}",  # a longer life
    ):
        assert _reason(f"{_b64(body.encode())}.{signature}") == "bad_signature"


def test_wrong_key_unknown_key_and_unknown_version():
    token = sign_cart_token(5, secret=SECRET, expires_at=EXPIRES, market="DE")
    assert _reason(token, secrets=OTHER) == "bad_signature"
    assert _reason(token, secrets={"k1": OTHER}) == "bad_signature"
    assert _reason(token, secrets={"k2": SECRET}) == "unknown_key"
    exp = int(EXPIRES.timestamp())
    assert _reason(_forge(f"2:k1:DE:5:{exp}")) == "unknown_version"
    assert _reason(_forge(f"0:k1:DE:5:{exp}")) == "unknown_version"
    # Correctly signed but malformed payloads are refused too.
    for body in (
        f"1:k1:DE:5:{exp}:extra",
        f"1:k1:de:5:{exp}",
        f"1:k1:DE:-5:{exp}",
        f"1:k1:DE:05:{exp}",
        "1:k1:DE:5:soon",
    ):
        assert _reason(_forge(body)) == "malformed"


def test_expiry_boundary():
    expires = datetime(2026, 3, 30, 0, 0, tzinfo=UTC)
    token = sign_cart_token(7, secret=SECRET, expires_at=expires, market="GB")
    assert verify_cart_token(token, secrets=SECRET, now=expires - timedelta(microseconds=1)).cart_id == 7
    assert _reason(token, now=expires) == "expired"
    assert _reason(token, now=expires + timedelta(days=400)) == "expired"


def test_expiry_is_floored_to_the_second_and_zone_independent():
    from zoneinfo import ZoneInfo

    expires = datetime(2026, 3, 30, 9, 0, 0, 900_000, tzinfo=ZoneInfo("Asia/Tokyo"))
    token = sign_cart_token(7, secret=SECRET, expires_at=expires, market="JP")
    got = verify_cart_token(token, secrets=SECRET, now=NOW)
    assert got.expires_at == datetime(2026, 3, 30, 0, 0, 0, tzinfo=UTC)
    assert _reason(token, now=datetime(2026, 3, 30, 0, 0, 0, 500_000, tzinfo=UTC)) == "expired"


def test_key_rotation():
    old = sign_cart_token(11, secret=SECRET, expires_at=EXPIRES, market="DE", key_id="k1")
    new = sign_cart_token(12, secret=OTHER, expires_at=EXPIRES, market="DE", key_id="k2")
    during = {"k1": SECRET, "k2": OTHER}
    assert verify_cart_token(old, secrets=during, now=NOW).key_id == "k1"
    assert verify_cart_token(new, secrets=during, now=NOW).cart_id == 12
    after = {"k2": OTHER}
    assert verify_cart_token(new, secrets=after, now=NOW).cart_id == 12
    assert _reason(old, secrets=after) == "unknown_key"
    # A token claiming the new key id but signed with the old secret does not pass.
    assert _reason(
        sign_cart_token(13, secret=SECRET, expires_at=EXPIRES, market="DE", key_id="k2"), secrets=during
    ) == ("bad_signature")


def test_signature_comparison_is_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(cart_links.hmac, "compare_digest", spy)
    token = sign_cart_token(1, secret=SECRET, expires_at=EXPIRES, market="DE")
    verify_cart_token(token, secrets=SECRET, now=NOW)
    _reason(token, secrets=OTHER)
    assert calls == [(32, 32), (32, 32)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cart_id": -1}, "cart_id"),
        ({"cart_id": True}, "cart_id"),
        ({"cart_id": "12"}, "cart_id"),
        ({"market": "de"}, "market"),
        ({"market": "DEU"}, "market"),
        ({"key_id": "k:1"}, "key_id"),
        ({"key_id": ""}, "key_id"),
        ({"secret": b"short"}, "at least 16 bytes"),
        ({"secret": "a string secret that is long"}, "at least 16 bytes"),
        ({"expires_at": datetime(2026, 3, 30)}, "timezone-aware"),
    ],
)
def test_signing_refuses_bad_input(kwargs, message):
    args = {"cart_id": 1, "secret": SECRET, "expires_at": EXPIRES, "market": "DE", "key_id": "k1"} | kwargs
    cart_id = args.pop("cart_id")
    with pytest.raises(ValueError, match=message):
        sign_cart_token(cart_id, **args)


def test_verification_refuses_a_naive_now_and_a_short_secret():
    token = sign_cart_token(1, secret=SECRET, expires_at=EXPIRES, market="DE")
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_cart_token(token, secrets=SECRET, now=datetime(2026, 3, 27))
    with pytest.raises(ValueError, match="at least 16 bytes"):
        verify_cart_token(token, secrets={"k1": b"short"}, now=NOW)


def test_numpy_cart_ids_are_accepted():
    np = pytest.importorskip("numpy")
    token = sign_cart_token(np.int64(77), secret=SECRET, expires_at=EXPIRES, market="DE")
    assert verify_cart_token(token, secrets=SECRET, now=NOW).cart_id == 77


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_verify(raw):
    for candidate in (_b64(raw), raw.decode("latin-1"), f"{_b64(raw[:20])}.{_b64(raw[20:])}"):
        with pytest.raises(InvalidCartToken):
            verify_cart_token(candidate, secrets=SECRET, now=NOW)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_verifies(text):
    with pytest.raises(InvalidCartToken):
        verify_cart_token(text, secrets={"k1": SECRET}, now=NOW)


@settings(max_examples=200, deadline=None)
@given(
    cart_id=st.integers(min_value=0, max_value=10**19 - 1),
    market=st.from_regex(r"\A[A-Z]{2}\Z"),
    key_id=st.from_regex(r"\A[A-Za-z0-9_-]{1,16}\Z"),
    lifetime=st.integers(min_value=1, max_value=10**8),
)
def test_round_trip_property(cart_id, market, key_id, lifetime):
    expires = NOW + timedelta(seconds=lifetime)
    token = sign_cart_token(cart_id, secret=SECRET, expires_at=expires, market=market, key_id=key_id)
    got = verify_cart_token(token, secrets={key_id: SECRET}, now=NOW)
    assert (got.cart_id, got.market, got.expires_at, got.key_id) == (cart_id, market, expires, key_id)
    assert urlsplit(cart_link("https://shop.example.com/cart", token, utm={})).query == f"token={token}"


def test_cart_link_adds_token_and_utm_and_keeps_the_rest():
    token = sign_cart_token(31, secret=SECRET, expires_at=EXPIRES, market="DE")
    url = cart_link(
        "https://shop.example.com/de/cart/restore?lang=de&utm_source=old&ref=&token=stale#top",
        token,
        utm=recovery_utm(2),
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == (
        "https",
        "shop.example.com",
        "/de/cart/restore",
        "top",
    )
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    assert pairs == [
        ("lang", "de"),
        ("ref", ""),
        ("token", token),
        ("utm_source", "remarketing"),
        ("utm_medium", "email"),
        ("utm_campaign", "cart_recovery"),
        ("utm_content", "step2"),
    ]
    assert verify_cart_token(parse_qs(parts.query)["token"][0], secrets=SECRET, now=NOW).cart_id == 31


def test_signed_cart_link_in_one_call():
    url = signed_cart_link(
        "https://shop.example.com/fr/cart/restore", 55, step=3, market="FR", secret=SECRET, expires_at=EXPIRES
    )
    query = parse_qs(urlsplit(url).query)
    assert query["utm_content"] == ["step3"]
    assert verify_cart_token(query["token"][0], secrets=SECRET, now=NOW).market == "FR"


@pytest.mark.parametrize("url", ["javascript:alert(1)", "/cart/restore", "ftp://shop.example.com/cart"])
def test_links_must_be_absolute_http(url):
    with pytest.raises(ValueError, match="http"):
        with_query(url, {"a": "b"})


def test_cart_link_refuses_non_utm_keys_and_foreign_tokens():
    token = sign_cart_token(1, secret=SECRET, expires_at=EXPIRES, market="DE")
    with pytest.raises(ValueError, match="utm_"):
        cart_link("https://shop.example.com/cart", token, utm={"token": "x"})
    with pytest.raises(ValueError, match="token"):
        cart_link("https://shop.example.com/cart", "a&b=c", utm={})
