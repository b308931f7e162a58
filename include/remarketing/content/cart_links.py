"""Signed links back to an abandoned cart: the mail carries a token, the shop verifies it.

A recovery mail links to the market's cart-restore page with ``?token=...`` (plus UTM
parameters). The token says which cart to restore, for which market, until when, and is signed
with HMAC-SHA256 so nobody can forge a link to someone else's cart or keep an old one alive. It
holds no personal data: a cart id, a market code, an expiry and the id of the signing key.

Token format (version 1), for shops that verify in another language::

    token = b64url(body) "." b64url(HMAC-SHA256(secret, b"remarketing-cart-token\\x00" + body))
    body  = "1:<key_id>:<market>:<cart_id>:<expires_unix_seconds>"   (ASCII)

b64url is URL-safe base64 without padding. The key id lets secrets rotate: sign with the new key,
keep the old one in the verifier's map until its last links have expired.

Verifying in the shop's cart-restore endpoint::

    from datetime import UTC, datetime
    from remarketing.content.cart_links import InvalidCartToken, verify_cart_token

    SECRETS = {"k2": b"...32 random bytes...", "k1": b"...the previous key..."}

    def restore_cart(request):
        try:
            token = verify_cart_token(request.args["token"], secrets=SECRETS, now=datetime.now(UTC))
        except InvalidCartToken as exc:   # tampered, truncated, unknown key or version, expired
            log.info("cart link refused: %s", exc.reason)
            return redirect("/cart")       # an empty cart page, never an error page with details
        if token.market != CURRENT_MARKET:
            return redirect("/cart")
        return show_restored_cart(token.cart_id)

Verification is constant-time in the signature (``hmac.compare_digest``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TOKEN_VERSION = "1"
MAX_TOKEN_LENGTH = 256
MIN_SECRET_BYTES = 16
_DOMAIN = b"remarketing-cart-token\x00"
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_MARKET_RE = re.compile(r"^[A-Z]{2}$")
_UINT_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_B64_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class InvalidCartToken(ValueError):
    """The token must not restore a cart; ``reason`` says why (malformed, unknown_version,
    unknown_key, bad_signature, expired)."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"invalid cart token ({reason}): {detail}")


@dataclass(frozen=True)
class CartToken:
    cart_id: int
    market: str
    expires_at: datetime  # UTC
    key_id: str


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict URL-safe base64: only the alphabet, no padding, canonical (re-encodes to itself)."""
    if not _B64_RE.match(text) or len(text) % 4 == 1:
        raise InvalidCartToken("malformed", "not URL-safe base64")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidCartToken("malformed", "not URL-safe base64") from None
    if _b64encode(raw) != text:
        raise InvalidCartToken("malformed", "not canonical base64")
    return raw


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, _DOMAIN + body, hashlib.sha256).digest()


def _check_secret(secret: object, key_id: str) -> bytes:
    if not isinstance(secret, bytes | bytearray) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"cart link secret {key_id!r} must be at least {MIN_SECRET_BYTES} bytes")
    return bytes(secret)


def _epoch(value: datetime, what: str) -> int:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return int(value.timestamp() // 1)


def sign_cart_token(cart_id: int, *, secret: bytes, expires_at: datetime, market: str, key_id: str = "k1") -> str:
    """A URL-safe token for one cart, valid strictly before ``expires_at`` (whole seconds, floored)."""
    if isinstance(cart_id, bool) or not isinstance(cart_id, numbers.Integral) or not 0 <= cart_id < 10**19:
        raise ValueError("cart_id must be a non-negative integer")
    cart_id = int(cart_id)  # numpy integers from DataFrames
    if not isinstance(market, str) or not _MARKET_RE.match(market):
        raise ValueError("market must be a two-letter market code such as 'DE'")
    if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
        raise ValueError("key_id must be 1-16 characters of A-Z a-z 0-9 _ -")
    secret = _check_secret(secret, key_id)
    exp = _epoch(expires_at, "expires_at")
    if exp < 0:
        raise ValueError("expires_at must be after 1970")
    body = f"{TOKEN_VERSION}:{key_id}:{market}:{cart_id}:{exp}".encode("ascii")
    return f"{_b64encode(body)}.{_b64encode(_mac(secret, body))}"


def verify_cart_token(token: str, *, secrets: Mapping[str, bytes] | bytes, now: datetime | None = None) -> CartToken:
    """The cart a link may restore, or InvalidCartToken.

    ``secrets`` maps key id -> secret (old and new during a rotation), or is one secret used for
    any key id. Rejects malformed or truncated tokens, unknown versions and key ids, a signature
    that does not match (constant-time comparison), and tokens at or past their expiry.
    """
    now_s = _epoch(now if now is not None else datetime.now(UTC), "now")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidCartToken("malformed", "empty, too long or not a string")
    parts = token.split(".")
    if len(parts) != 2:
        raise InvalidCartToken("malformed", "expected two dot-separated parts")
    body, signature = _b64decode(parts[0]), _b64decode(parts[1])
    if len(signature) != hashlib.sha256().digest_size:
        raise InvalidCartToken("malformed", "signature has the wrong length")
    try:
        fields = body.decode("ascii").split(":")
    except UnicodeDecodeError:
        raise InvalidCartToken("malformed", "payload is not ASCII") from None
    if fields[0] != TOKEN_VERSION:
        raise InvalidCartToken("unknown_version", "token version is not supported")
    if len(fields) != 5:
        raise InvalidCartToken("malformed", "payload does not have five fields")
    _, key_id, market, cart_text, exp_text = fields
    if isinstance(secrets, bytes | bytearray):
        secret = _check_secret(secrets, key_id)
    elif isinstance(secrets, Mapping):
        if key_id not in secrets:
            raise InvalidCartToken("unknown_key", "signed with a key id that is not configured")
        secret = _check_secret(secrets[key_id], key_id)
    else:
        raise TypeError("secrets must be bytes or a mapping of key id to bytes")
    if not hmac.compare_digest(_mac(secret, body), signature):
        raise InvalidCartToken("bad_signature", "signature does not match")
    # Signed by us, so these hold unless a key leaked; checked anyway.
    if not (
        _KEY_ID_RE.match(key_id) and _MARKET_RE.match(market) and _UINT_RE.match(cart_text) and _UINT_RE.match(exp_text)
    ):
        raise InvalidCartToken("malformed", "payload fields are malformed")
    exp = int(exp_text)
    if now_s >= exp:
        raise InvalidCartToken("expired", f"cart_id {int(cart_text)} link expired")
    return CartToken(cart_id=int(cart_text), market=market, expires_at=datetime.fromtimestamp(exp, UTC), key_id=key_id)


def recovery_utm(step: int) -> dict[str, str]:
    """The UTM parameters of a recovery mail's links."""
    return {
        "utm_source": "remarketing",
        "utm_medium": "email",
        "utm_campaign": "cart_recovery",
        "utm_content": f"step{step}",
    }


def with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` set (replacing same-named ones); other parameters and the fragment stay."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("links in mails must be absolute http(s) URLs")
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query = urlencode(kept + [(k, str(v)) for k, v in params.items()])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def cart_link(cart_url: str, token: str, *, utm: Mapping[str, str]) -> str:
    """The cart-restore URL with ``token=`` and the UTM parameters; existing query parameters stay."""
    if not isinstance(token, str) or not re.match(r"^[A-Za-z0-9_.-]+$", token):
        raise ValueError("token must be a token from sign_cart_token")
    unknown = [k for k in utm if not k.startswith("utm_")]
    if unknown:
        raise ValueError(f"utm keys must start with 'utm_': {unknown}")
    return with_query(cart_url, {"token": token, **utm})


def signed_cart_link(
    cart_url: str, cart_id: int, *, step: int, market: str, secret: bytes, expires_at: datetime, key_id: str = "k1"
) -> str:
    """sign_cart_token + cart_link with the recovery UTM parameters, in one call for the flows."""
    token = sign_cart_token(cart_id, secret=secret, expires_at=expires_at, market=market, key_id=key_id)
    return cart_link(cart_url, token, utm=recovery_utm(step))
