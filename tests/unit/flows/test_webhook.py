"""SendGrid Event Webhook: ECDSA signatures with real keys, and the plugin's FastAPI app end to end.

Keys are generated here (P-256, as SendGrid uses); requests are signed the way SendGrid signs
them: ECDSA/SHA-256 over the timestamp header followed by the raw body.
"""

from __future__ import annotations

import base64
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient

from remarketing.delivery.suppressions import suppression_reasons
from remarketing.flows.feedback.store import email_event_batches, event_json
from remarketing.flows.feedback.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    InvalidPayload,
    InvalidSignature,
    WebhookConfigError,
    load_public_key,
    parse_events,
    verify_signature,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "plugins"))
import sendgrid_webhook  # noqa: E402 - the plugin module, from Airflow's plugins folder

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def public_text(private_key) -> str:
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def sign(private_key, body: bytes, at: datetime = NOW) -> dict[str, str]:
    timestamp = str(int(at.timestamp()))
    signature = private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: timestamp}


def events(n: int = 3, *, prefix: str = "ev", kind: str = "delivered", **extra) -> list[dict]:
    return [
        {
            "email": f"customer{i}@example.com",
            "timestamp": int(NOW.timestamp()) - 60,
            "event": kind,
            "sg_event_id": f"{prefix}-{i}",
            "sg_message_id": f"msg{i}.filter",
            "ledger_key": f"cart_recovery/1/c{i}/cart{i}/v1",
            "market": "DE",
            **extra,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


def stored_batches(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(email_event_batches.c.id, email_event_batches.c.events)).all()


# -- signature verification ------------------------------------------------------------------------


def test_a_request_signed_with_the_accounts_key_verifies(key):
    body = event_json(events())
    headers = sign(key, body)
    signed_at = verify_signature(
        load_public_key(public_text(key)), body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], now=NOW
    )
    assert signed_at == NOW


def test_a_tampered_body_fails(key):
    body = event_json(events())
    headers = sign(key, body)
    tampered = body.replace(b"delivered", b"spamreport", 1)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(
            load_public_key(public_text(key)), tampered, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], now=NOW
        )


def test_a_shifted_timestamp_fails_even_when_fresh(key):
    """The timestamp is signed too: a replay cannot simply refresh it."""
    body = event_json(events())
    headers = sign(key, body)
    later = str(int(headers[TIMESTAMP_HEADER]) + 5)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(load_public_key(public_text(key)), body, headers[SIGNATURE_HEADER], later, now=NOW)


def test_another_key_fails(key):
    other = ec.generate_private_key(ec.SECP256R1())
    body = event_json(events())
    headers = sign(other, body)
    with pytest.raises(InvalidSignature):
        verify_signature(
            load_public_key(public_text(key)), body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], now=NOW
        )


@pytest.mark.parametrize("age", [timedelta(minutes=11), timedelta(hours=5), -timedelta(minutes=11)])
def test_stale_or_future_timestamps_fail(key, age):
    body = event_json(events())
    headers = sign(key, body, at=NOW - age)  # correctly signed, but at the wrong time
    with pytest.raises(InvalidSignature, match="stale"):
        verify_signature(
            load_public_key(public_text(key)), body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], now=NOW
        )
    # Within the allowed age the same request passes.
    verify_signature(
        load_public_key(public_text(key)),
        body,
        headers[SIGNATURE_HEADER],
        headers[TIMESTAMP_HEADER],
        now=NOW,
        max_age=abs(age) + timedelta(seconds=1),
    )


@pytest.mark.parametrize(
    ("signature", "timestamp", "message"),
    [
        (None, "1790000000", "missing"),
        ("abc=", None, "missing"),
        ("not base64!", str(int(NOW.timestamp())), "not base64"),
        ("abc=", "12:00", "epoch seconds"),
    ],
)
def test_malformed_headers_fail(key, signature, timestamp, message):
    with pytest.raises(InvalidSignature, match=message):
        verify_signature(load_public_key(public_text(key)), b"[]", signature, timestamp, now=NOW)


def test_only_a_p256_public_key_is_accepted():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_text = base64.b64encode(
        rsa_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    for text in ("", "not a key", rsa_text, public_text(ec.generate_private_key(ec.SECP384R1()))):
        with pytest.raises(WebhookConfigError):
            load_public_key(text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b'{"event": "open"}', "array"),
        (b"[1]", "#0 is not an object"),
        (b'[{"event": "open", "timestamp": 1}]', "#0: field 'sg_event_id'"),
        (b'[{"event": "open", "sg_event_id": "a", "timestamp": 1}, {"sg_event_id": "b", "timestamp": 1}]', "#1"),
        (b'[{"event": "open", "sg_event_id": "a", "timestamp": "x"}]', "'timestamp'"),
    ],
)
def test_payloads_that_are_not_event_batches_are_refused_by_position(body, message):
    with pytest.raises(InvalidPayload, match=message):
        parse_events(body)


# -- the FastAPI app -------------------------------------------------------------------------------


def client_for(engine, key, **kwargs) -> TestClient:
    app = sendgrid_webhook.create_app(
        engine_factory=lambda: engine, key_loader=lambda: public_text(key), clock=lambda: NOW, **kwargs
    )
    return TestClient(app)


def test_a_signed_batch_is_stored_and_its_bounces_suppressed_at_once(engine, key):
    batch = events(3) + events(1, prefix="bounce", kind="bounce", type="bounce", reason="550 unknown user")
    body = event_json(batch)
    with client_for(engine, key) as client:
        answer = client.post("/events", content=body, headers=sign(key, body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"batch_id": 1, "events": 4, "new": True}
    assert stored_batches(engine) == [(1, 4)]
    import pandas as pd

    reasons = suppression_reasons(engine, pd.Series(["customer0@example.com", "customer1@example.com"]), 1001)
    assert reasons.tolist() == ["manual", None], "the bounced address is blocked before any fold"


@pytest.mark.parametrize("case", ["unsigned", "wrong_key", "tampered", "stale"])
def test_a_request_without_a_valid_signature_gets_403_and_stores_nothing(engine, key, case):
    body = event_json(events(2, prefix="x", kind="spamreport"))
    headers = sign(key, body)
    if case == "unsigned":
        headers = {}
    elif case == "wrong_key":
        headers = sign(ec.generate_private_key(ec.SECP256R1()), body)
    elif case == "tampered":
        body = body.replace(b"customer0", b"customer9")
    elif case == "stale":
        headers = sign(key, body, at=NOW - timedelta(hours=1))
    with client_for(engine, key) as client:
        answer = client.post("/events", content=body, headers=headers)
    assert answer.status_code == 403
    assert "customer" not in answer.text
    assert stored_batches(engine) == []
    import pandas as pd

    assert suppression_reasons(engine, pd.Series(["customer0@example.com", "customer9@example.com"]), None).isna().all()


def test_the_same_batch_delivered_twice_is_stored_once(engine, key):
    """SendGrid retries a batch it thinks failed: same body, new timestamp and signature."""
    body = event_json(events(5))
    with client_for(engine, key) as client:
        first = client.post("/events", content=body, headers=sign(key, body))
        again = client.post("/events", content=body, headers=sign(key, body, at=NOW + timedelta(seconds=30)))
    assert first.status_code == again.status_code == 200
    assert first.json()["new"] is True and again.json() == {**first.json(), "new": False}
    assert stored_batches(engine) == [(1, 5)]


def test_an_oversize_body_is_refused_before_it_is_stored(engine, key):
    body = event_json(events(200))
    with client_for(engine, key, max_body=4096) as client:
        answer = client.post("/events", content=body, headers=sign(key, body))
        # A chunked body (no Content-Length) is cut off while it streams in.
        streamed = client.post("/events", content=iter([body[:3000], body[3000:]]), headers=sign(key, body))
    assert answer.status_code == 413 and streamed.status_code == 413
    assert stored_batches(engine) == []


def test_a_signed_body_that_is_not_an_event_batch_gets_400(engine, key):
    body = b'[{"event": "open", "timestamp": 1}]'
    with client_for(engine, key) as client:
        answer = client.post("/events", content=body, headers=sign(key, body))
    assert answer.status_code == 400 and "sg_event_id" in answer.json()["detail"]
    assert stored_batches(engine) == []


def test_without_a_configured_key_the_endpoint_answers_503(engine, key, monkeypatch):
    monkeypatch.delenv(sendgrid_webhook.KEY_ENV, raising=False)

    def missing() -> str:
        raise WebhookConfigError("no key")

    app = sendgrid_webhook.create_app(engine_factory=lambda: engine, key_loader=missing, clock=lambda: NOW)
    body = event_json(events(1))
    with TestClient(app) as client:
        assert client.post("/events", content=body, headers=sign(key, body)).status_code == 503
    assert stored_batches(engine) == []


def test_the_plugin_mounts_the_app_under_sendgrid_and_reads_the_key_from_the_environment(engine, key, monkeypatch):
    plugin = sendgrid_webhook.SendGridWebhookPlugin
    assert plugin.fastapi_apps == [
        {"app": sendgrid_webhook.app, "url_prefix": "/sendgrid", "name": "SendGrid Event Webhook"}
    ]
    monkeypatch.setenv(sendgrid_webhook.KEY_ENV, public_text(key))
    assert sendgrid_webhook._configured_key() == public_text(key)

    from fastapi import FastAPI

    outer = FastAPI()
    outer.mount("/sendgrid", sendgrid_webhook.create_app(engine_factory=lambda: engine, clock=lambda: NOW))
    body = event_json(events(1))
    with TestClient(outer) as client:
        assert client.get("/sendgrid/health").json() == {"status": "ok"}
        assert client.post("/sendgrid/events", content=body, headers=sign(key, body)).status_code == 200
    assert stored_batches(engine) == [(1, 1)]


def test_a_rotated_key_and_an_edited_connection_take_effect_without_a_restart(tmp_path, key, monkeypatch):
    """The plugin's app lives as long as the API server: it must not keep a key or a database it read once."""
    from conftest import sqlite_conn_env
    from databases import migrated_sqlite_engine

    app = sendgrid_webhook.create_app(clock=lambda: NOW)
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    new_key = ec.generate_private_key(ec.SECP256R1())
    body = event_json(events(1))
    with TestClient(app) as client:
        monkeypatch.setenv(sendgrid_webhook.KEY_ENV, public_text(key))
        monkeypatch.setenv("AIRFLOW_CONN_REMARKETING_DB", sqlite_conn_env(first))
        assert client.post("/events", content=body, headers=sign(key, body)).status_code == 200
        monkeypatch.setenv(sendgrid_webhook.KEY_ENV, public_text(new_key))
        monkeypatch.setenv("AIRFLOW_CONN_REMARKETING_DB", sqlite_conn_env(second))
        assert client.post("/events", content=body, headers=sign(key, body)).status_code == 403, "the old key"
        assert client.post("/events", content=body, headers=sign(new_key, body)).status_code == 200
    for path in (first, second):
        engine = migrated_sqlite_engine(path)
        assert stored_batches(engine) == [(1, 1)], path.name
        engine.dispose()
