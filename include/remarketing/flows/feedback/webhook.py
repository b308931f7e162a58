"""SendGrid Event Webhook: signature verification and payload checks, before anything is stored.

Why: the webhook endpoint is public (SendGrid cannot log in to Airflow), and what it accepts
suppresses addresses and moves the deliverability gate. So a request counts only when SendGrid
signed it: ECDSA P-256 with SHA-256 over ``timestamp + body`` (the raw bytes as received),
signature (base64 DER) in ``X-Twilio-Email-Event-Webhook-Signature``, epoch seconds in
``X-Twilio-Email-Event-Webhook-Timestamp``. The verification key is the account's public key
as SendGrid shows it (base64 of the DER SubjectPublicKeyInfo). A timestamp older (or further
ahead) than ``max_age`` is refused, so a captured request cannot be replayed later; bodies over
``MAX_BODY_BYTES`` are refused before they are read whole.

Errors never quote the body: it holds addresses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_BODY_BYTES = 4 * 1024 * 1024  # SendGrid batches events; a few MB is far beyond a normal batch
DEFAULT_MAX_AGE = timedelta(minutes=10)
MAX_EVENTS = 20_000
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
    """A signed body that is not a batch of SendGrid events (400); names the event position and field."""


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
    timestamp = timestamp.strip()
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise InvalidSignature("timestamp header is not epoch seconds")
    signed_at = datetime.fromtimestamp(int(timestamp), UTC)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if abs(now - signed_at) > max_age:
        raise InvalidSignature(f"stale timestamp: signed {int((now - signed_at).total_seconds())} s from now")
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSignature("signature header is not base64") from None
    try:
        public_key.verify(raw, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except CryptoInvalidSignature:
        raise InvalidSignature("signature does not match the body") from None
    return signed_at


def digest(body: bytes) -> str:
    """SHA-256 of the raw body: the same batch delivered twice is stored once."""
    return hashlib.sha256(body).hexdigest()


def _field(event: dict, name: str, position: int, types: tuple) -> Any:
    value = event.get(name)
    if not isinstance(value, types) or isinstance(value, bool):
        raise InvalidPayload(f"event #{position}: field {name!r} is missing or not {types[0].__name__}")
    return value


def parse_events(body: bytes, *, max_events: int = MAX_EVENTS) -> list[dict]:
    """The events of a batch: a JSON array of objects, each with ``event``, ``sg_event_id``, ``timestamp``.

    Unknown event types are kept (the fold counts them); a malformed event fails the whole batch,
    naming its position and field, so SendGrid's retry or an operator sees it.
    """
    try:
        events = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidPayload(f"body is not JSON (line {getattr(exc, 'lineno', '?')})") from None
    if not isinstance(events, list):
        raise InvalidPayload("body is not a JSON array of events")
    if len(events) > max_events:
        raise InvalidPayload(f"{len(events)} events in one batch; at most {max_events}")
    for position, event in enumerate(events):
        if not isinstance(event, dict):
            raise InvalidPayload(f"event #{position} is not an object")
        _field(event, "event", position, (str,))
        event_id = _field(event, "sg_event_id", position, (str,))
        if not event_id.strip() or len(event_id) > 128:
            raise InvalidPayload(f"event #{position}: field 'sg_event_id' is empty or longer than 128 characters")
        _field(event, "timestamp", position, (int, float))
    return events
