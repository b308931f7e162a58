"""One-click unsubscribe tokens: round trip, tampering, no personal data."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remarketing.content.unsubscribe_links import (
    InvalidUnsubscribeToken,
    sign_unsubscribe_token,
    unsubscribe_url,
    verify_unsubscribe_token,
)

SECRET = b"0123456789abcdef-unsubscribe"


def test_a_signed_token_verifies_and_names_the_person_by_reference_only():
    token = sign_unsubscribe_token("c42", market="DE", group_id=1001, secret=SECRET)
    parsed = verify_unsubscribe_token(token, secret=SECRET)
    assert (parsed.customer_ref, parsed.market, parsed.group_id) == ("c42", "DE", 1001)
    url = unsubscribe_url("https://shop.example.com/de/email/unsubscribe?lang=de", token)
    assert url.startswith("https://shop.example.com/de/email/unsubscribe?lang=de&token=")


@pytest.mark.parametrize("position", [0, 5, -1])
def test_a_changed_character_is_refused(position):
    token = sign_unsubscribe_token("g0123456789abcdef0123", market="FR", group_id=7, secret=SECRET)
    flipped = "A" if token[position] != "A" else "B"
    bad = token[:position] + flipped + token[position + 1 :] if position != -1 else token[:-1] + flipped
    with pytest.raises(InvalidUnsubscribeToken):
        verify_unsubscribe_token(bad, secret=SECRET)


def test_another_secret_or_a_truncated_token_is_refused():
    token = sign_unsubscribe_token("c1", market="JP", group_id=3, secret=SECRET)
    with pytest.raises(InvalidUnsubscribeToken):
        verify_unsubscribe_token(token, secret=b"another-secret-of-16+")
    with pytest.raises(InvalidUnsubscribeToken):
        verify_unsubscribe_token(token.split(".")[0], secret=SECRET)


def test_an_address_cannot_be_signed():
    with pytest.raises(ValueError):
        sign_unsubscribe_token("ana@example.com", market="DE", group_id=1, secret=SECRET)


@given(st.text(max_size=120))
def test_random_text_never_verifies(text):
    with pytest.raises(InvalidUnsubscribeToken):
        verify_unsubscribe_token(text, secret=SECRET)
