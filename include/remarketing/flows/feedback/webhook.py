"""SendGrid Event Webhook: signature verification and payload checks, before anything is stored.

Why: the webhook endpoint is public (SendGrid cannot log in to Airflow), and what it accepts
suppresses addresses and moves the deliverability gate. So a request counts only when SendGrid
signed it: ECDSA P-256 with SHA-256 over ``timestamp + body`` (the raw bytes as received),
signature (base64 DER) in ``X-Twilio-Email-Event-Webhook-Signature``, epoch seconds in
``X-Twilio-Email-Event-Webhook-Timestamp``. The verification key is the account's public key
as SendGrid shows it (base64 of the DER SubjectPublicKeyInfo). A timestamp older (or further
ahead) than ``max_age`` is refused, so a captured request cannot be replayed later; bodies over
``MAX_BODY_BYTES`` are refused before they are read whole.

No header or body makes these checks raise anything but ``InvalidSignature`` (403) or
``InvalidPayload`` (400): the timestamp must be at most twelve ASCII digits and is compared with
the clock as an integer, so no value overflows a datetime; the body must be UTF-8 JSON (no
UTF-16/32 guessing: the batch is stored as UTF-8 text) nested no deeper than the parser goes.
``parse_batch`` checks the body as a whole; each event is then checked on its own
(``store.check_event``) and a bad one is quarantined, not the batch.

Errors never quote the body: it holds addresses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime, timedelta

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_BODY_BYTES = 4 * 1024 * 1024  # SendGrid batches events; a few MB is far beyond a normal batch
DEFAULT_MAX_AGE = timedelta(minutes=10)
MAX_EVENTS = 20_000
MAX_TIMESTAMP_DIGITS = 12
EVENT_TYPES = (
    "processed",
    "delivered",
    "deferred",
    "bounce",
    "dropped",
    "open",
    "click",
    "spamreport",
    "unsubscribe",
    "group_unsubscribe",
    "group_resubscribe",
)


class WebhookConfigError(RuntimeError):
    """The webhook's verification key is missing or unusable."""


class InvalidSignature(ValueError):
    """A request we must not trust (403): unsigned, badly signed, stale."""


class InvalidPayload(ValueError):
    """A signed body that is not a batch of SendGrid events (400): not UTF-8, not a JSON array, too many."""


def load_public_key(encoded: str):
    """The ECDSA P-256 public key from SendGrid's base64 DER text."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    if not isinstance(encoded, str) or not encoded.strip():
        raise WebhookConfigError("the SendGrid webhook verification key is empty")
    try:
        key = load_der_public_key(base64.b64decode("".join(encoded.split()), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise WebhookConfigError(f"the SendGrid webhook verification key is not base64 DER: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise WebhookConfigError("the SendGrid webhook verification key is not an ECDSA P-256 public key")
    return key


def verify_signature(
    public_key,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: datetime | None = None,
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> datetime:
    """Check SendGrid's signature of ``timestamp + body``; returns the signed instant, raises InvalidSignature."""
    from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not signature or not timestamp:
        raise InvalidSignature("missing signature or timestamp header")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    timestamp = timestamp.strip()
    signed_at = _signed_at(timestamp, now, max_age)
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSignature("signature header is not base64") from None
    try:
        public_key.verify(raw, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except CryptoInvalidSignature:
        raise InvalidSignature("signature does not match the body") from None
    return signed_at


def _signed_at(timestamp: str, now: datetime, max_age: timedelta) -> datetime:
    """The signed instant of a fresh timestamp header; InvalidSignature for anything else.

    ``str.isdigit`` alone lets through superscripts (``"²"``) and other scripts' digits, which
    ``int`` refuses or which cannot be signed as ASCII; twelve digits reach past the year 9999.
    So: ASCII digits only, compared with the clock as integers, converted only once fresh.
    """
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= MAX_TIMESTAMP_DIGITS):
        raise InvalidSignature("timestamp header is not epoch seconds")
    age = int(now.timestamp()) - int(timestamp)
    if abs(age) > max_age.total_seconds():
        raise InvalidSignature(f"stale timestamp: signed {age} s from now")
    return datetime.fromtimestamp(int(timestamp), UTC)


def digest(body: bytes) -> str:
    """SHA-256 of the raw body: the same batch delivered twice is stored once."""
    return hashlib.sha256(body).hexdigest()


def parse_batch(body: bytes | str, *, max_events: int = MAX_EVENTS) -> list:
    """The items of a batch: a UTF-8 JSON array of at most ``max_events``; InvalidPayload otherwise.

    Only the body as a whole is checked here: each item is checked on its own
    (``store.check_event``), so one bad event is quarantined and the others are kept.
    """
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPayload("body is not UTF-8") from None
    try:
        events = json.loads(body)
    except RecursionError:
        raise InvalidPayload("body is not JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, and an integer beyond Python's digit limit
        raise InvalidPayload(f"body is not JSON (line {getattr(exc, 'lineno', '?')})") from None
    if not isinstance(events, list):
        raise InvalidPayload("body is not a JSON array of events")
    if len(events) > max_events:
        raise InvalidPayload(f"{len(events)} events in one batch; at most {max_events}")
    return events
