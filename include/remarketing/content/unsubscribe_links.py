"""Signed one-click unsubscribe links (RFC 8058), verified by the shop's unsubscribe endpoint.

Every marketing mail carries ``List-Unsubscribe: <https://shop/.../unsubscribe?token=...>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``: the mailbox provider POSTs to that URL
when the reader clicks "unsubscribe". The token names the person by our ledger reference
(``c<customer_id>``, or ``g<hash>`` for a guest, never the address) and the market's SendGrid
unsubscribe group, signed with HMAC-SHA256. Unlike cart links it does not expire: an
unsubscribe link must keep working for as long as the mail sits in someone's inbox.

    token = b64url(body) "." b64url(HMAC-SHA256(secret, b"remarketing-unsubscribe\\x00" + body))
    body  = "1:<market>:<group_id>:<customer_ref>"
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

_DOMAIN = b"remarketing-unsubscribe\x00"
_REF_RE = re.compile(r"^[cg][A-Za-z0-9_-]{1,64}$")
_MARKET_RE = re.compile(r"^[A-Z]{2}$")


class InvalidUnsubscribeToken(ValueError):
    """Tampered, truncated or malformed; the endpoint answers with a neutral page."""


@dataclass(frozen=True)
class UnsubscribeToken:
    customer_ref: str
    market: str
    group_id: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidUnsubscribeToken("not base64url") from None


def sign_unsubscribe_token(customer_ref: str, *, market: str, group_id: int, secret: bytes) -> str:
    if not _REF_RE.match(customer_ref) or not _MARKET_RE.match(market) or int(group_id) <= 0:
        raise ValueError("customer_ref, market or group_id is malformed")
    if len(secret) < 16:
        raise ValueError("the link secret must be at least 16 bytes")
    body = f"1:{market}:{int(group_id)}:{customer_ref}".encode("ascii")
    return f"{_b64(body)}.{_b64(hmac.new(secret, _DOMAIN + body, hashlib.sha256).digest())}"


def verify_unsubscribe_token(token: str, *, secret: bytes) -> UnsubscribeToken:
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 300:
        raise InvalidUnsubscribeToken("malformed")
    body_text, mac_text = token.split(".")
    body, mac = _unb64(body_text), _unb64(mac_text)
    if not hmac.compare_digest(hmac.new(secret, _DOMAIN + body, hashlib.sha256).digest(), mac):
        raise InvalidUnsubscribeToken("bad signature")
    version, market, group, ref = body.decode("ascii").split(":", 3)
    if version != "1":
        raise InvalidUnsubscribeToken("unknown version")
    return UnsubscribeToken(customer_ref=ref, market=market, group_id=int(group))


def unsubscribe_url(base_url: str, token: str) -> str:
    from remarketing.content.cart_links import with_query

    return with_query(base_url, {"token": token})
