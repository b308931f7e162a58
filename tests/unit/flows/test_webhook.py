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
from remarketing.flows.feedback.store import check_event, email_event_batches, event_json
from remarketing.flows.feedback.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    InvalidPayload,
    InvalidSignature,
    WebhookConfigError,
    load_public_key,
    parse_batch,
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
        (b"[" * 100_000, "nested too deeply"),
        (b"\xff[]", "not UTF-8"),
    ],
)
def test_bodies_that_are_not_event_batches_are_refused(body, message):
    with pytest.raises(InvalidPayload, match=message):
        parse_batch(body)
    assert parse_batch(b"[1]") == [1], "the body is checked as a whole; each event on its own"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (1, "not an object"),
        ({"sg_event_id": "b", "timestamp": 1790000000}, "field 'event'"),
        ({"event": "\x00\ud800", "sg_event_id": "b", "timestamp": 1790000000}, "field 'event'"),
        ({"event": "open", "timestamp": 1790000000}, "field 'sg_event_id' is missing"),
        ({"event": "open", "sg_event_id": " ", "timestamp": 1790000000}, "field 'sg_event_id' is empty"),
        ({"event": "open", "sg_event_id": "a", "timestamp": "x"}, "field 'timestamp' is missing or not a number"),
        ({"event": "open", "sg_event_id": "a", "timestamp": True}, "field 'timestamp' is missing or not a number"),
        ({"event": "open", "sg_event_id": "a", "timestamp": float("nan")}, "between 2000 and 2100"),
        ({"event": "open", "sg_event_id": "a", "timestamp": 1e300}, "between 2000 and 2100"),
        ({"event": "open", "sg_event_id": "a", "timestamp": 10**400}, "between 2000 and 2100"),
        ({"event": "open", "sg_event_id": "a", "timestamp": 1}, "between 2000 and 2100"),
        ({"event": "unsubscribe", "sg_event_id": "a", "timestamp": 1790000000}, "usable address"),
        ({"event": "bounce", "sg_event_id": "a", "timestamp": 1790000000, "email": "x @y.z"}, "usable address"),
        ({"event": "open", "sg_event_id": "a", "timestamp": 1790000000.5}, None),
        ({"event": "bounce", "type": "blocked", "sg_event_id": "a", "timestamp": 1790000000}, None),  # soft
    ],
)
def test_each_event_is_checked_on_its_own_and_the_reason_names_the_field(event, reason):
    if reason is None:
        assert check_event(event) is None
    else:
        assert reason in check_event(event)


# -- the FastAPI app -------------------------------------------------------------------------------


def app_for(engine, key, **kwargs):
    return sendgrid_webhook.create_app(
        engine_factory=lambda: engine, key_loader=lambda: public_text(key), clock=lambda: NOW, **kwargs
    )


def client_for(engine, key, **kwargs) -> TestClient:
    # A crash must show as the status SendGrid would see, not as an exception in the test.
    return TestClient(app_for(engine, key, **kwargs), raise_server_exceptions=False)


def test_a_signed_batch_is_stored_and_its_bounces_suppressed_at_once(engine, key):
    batch = events(3) + events(1, prefix="bounce", kind="bounce", type="bounce", reason="550 unknown user")
    body = event_json(batch)
    with client_for(engine, key) as client:
        answer = client.post("/events", content=body, headers=sign(key, body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"batch_id": 1, "events": 4, "new": True, "rejected": 0}
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
    body = b'{"event": "open", "sg_event_id": "a", "timestamp": 1790000000}'
    with client_for(engine, key) as client:
        answer = client.post("/events", content=body, headers=sign(key, body))
    assert answer.status_code == 400 and "array" in answer.json()["detail"]
    assert stored_batches(engine) == []


def test_a_signed_batch_of_only_bad_events_is_stored_and_quarantined_not_refused(engine, key):
    """Refusing it would only make SendGrid retry the same events for 24 hours."""
    body = b'[{"event": "open", "timestamp": 1}]'
    with client_for(engine, key) as client:
        answer = client.post("/events", content=body, headers=sign(key, body))
    assert answer.status_code == 200 and answer.json()["rejected"] == 1
    assert stored_batches(engine) == [(1, 1)]
    assert rejects(engine) == [(1, 0, None, "field 'sg_event_id' is missing or not a string")]


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


# -- what no request may crash (attacker-style review) ---------------------------------------------


def raw_post(app, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """POST /events straight through ASGI with raw header bytes (decoded as latin-1, as servers do)."""
    import anyio

    sent: list[dict] = []

    async def call():
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/events",
            "raw_path": b"/events",
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("testserver", 80),
        }
        try:
            await app(scope, receive, send)
        except Exception:  # noqa: BLE001 - the status sent before the crash is what SendGrid sees
            pass

    anyio.run(call)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def arabic_digits(text: str) -> str:
    return text.translate(str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"))


@pytest.mark.parametrize(
    "timestamp",
    [
        "999999999999",  # twelve digits: year 33658, beyond datetime
        "9" * 5000,
        "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
        "\u00b9\u00b2\u00b3",
        arabic_digits(str(int(NOW.timestamp()))),  # fresh, but not ASCII: the signed bytes cannot be built
        "+1795600000",
        "1.5e9",
    ],
)
def test_timestamps_beyond_range_or_not_ascii_digits_are_invalid_signatures(key, timestamp):
    with pytest.raises(InvalidSignature):
        verify_signature(load_public_key(public_text(key)), b"[]", "abc=", timestamp, now=NOW)


@pytest.mark.parametrize(
    "header",
    [b"999999999999", b"9" * 5000, b"\xb2", b"\xb9\xb2\xb3", b"0x1f", b"-5", b"   ", b"1795600000\x00"],
)
def test_a_bad_timestamp_header_gets_403_never_500_and_stores_nothing(engine, key, header):
    body = event_json(events(1, kind="spamreport"))
    good = sign(key, body)
    headers = [
        (b"content-length", str(len(body)).encode()),
        (SIGNATURE_HEADER.lower().encode(), good[SIGNATURE_HEADER].encode()),
        (TIMESTAMP_HEADER.lower().encode(), header),
    ]
    assert raw_post(app_for(engine, key), body, headers) == 403
    assert stored_batches(engine) == []


@pytest.mark.parametrize("length", [b"\xb2", b"12\xb3", b"-1", b"1e3"])
def test_a_bad_content_length_gets_a_4xx_never_500(engine, key, length):
    body = event_json(events(1))
    signed = sign(key, body)
    headers = [(b"content-length", length), *((k.lower().encode(), v.encode()) for k, v in signed.items())]
    assert raw_post(app_for(engine, key), body, headers) in (400, 413)
    assert stored_batches(engine) == []


@pytest.mark.parametrize(
    "body",
    [
        '[{"event": "open", "sg_event_id": "a", "timestamp": 1790000000}]'.encode("utf-16"),
        '[{"event": "open", "sg_event_id": "a", "timestamp": 1790000000}]'.encode("utf-32"),
        b'[{"event": "open", "sg_event_id": "a", "timestamp": 1790000000, "reason": "j\xf6rg"}]',  # latin-1
        b'[{"event": "open", "sg_event_id": "a", "timestamp": 1790000000, "reason": "\xed\xa0\x80"}]',  # surrogate
    ],
    ids=["utf16", "utf32", "latin1", "raw-surrogate"],
)
def test_a_signed_body_that_is_not_utf8_gets_400_and_stores_nothing(engine, key, body):
    with client_for(engine, key) as client:
        answer = client.post("/events", content=body, headers=sign(key, body))
    assert answer.status_code == 400, answer.text
    assert "UTF-8" in answer.json()["detail"]
    assert stored_batches(engine) == []


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # nesting deeper than the parser's recursion
        b"[" + b"9" * 5000 + b"]",  # an integer beyond Python's digit limit
        b'[{"event": "open", "sg_event_id": "a", "timestamp": 1e999}]',
        b'[{"event": "open", "sg_event_id": "a", "timestamp": -Infinity}]',
        b'[{"event": "open", "sg_event_id": "a", "timestamp": 1' + b"0" * 400 + b"}]",
        b'[{"event": "open", "sg_event_id": "\\ud800", "timestamp": 1790000000}]',
        b'[{"event": "open", "sg_event_id": "a\\u0000b", "timestamp": 1790000000}]',
        b'[{"event": "group_unsubscribe", "sg_event_id": "g", "timestamp": 1790000000, "email": "a@b.c",'
        b' "asm_group_id": 99999999999999999999}]',
        b'[{"event": "unsubscribe", "sg_event_id": "u", "timestamp": 1790000000, "email": "\\ud800@x.y"}]',
        b'[{"event": "unsubscribe", "sg_event_id": "u", "timestamp": 1790000000, "email": "' + b"a" * 400 + b'@x.y"}]',
        b'[{"event": "bounce", "sg_event_id": "b", "timestamp": 1790000000, "email": ["a@b.c"]}]',
        b'[{"event": "open", "sg_event_id": "o", "timestamp": 1790000000, "custom_args": {"flow": "'
        + b"f" * 300
        + b'", "ledger_key": "k\\u0000"}, "reason": "\\udfff\\u0000", "type": {"x": 1}}]',
        b'[{"event": "\\u0000", "sg_event_id": "z", "timestamp": 1790000000}]',
        b"[]",
        b'[null, 1, "x", [], {}]',
        b"{}",
        b"",
    ],
)
def test_no_signed_body_gets_500(engine, key, body):
    with client_for(engine, key) as client:
        answer = client.post("/events", content=body, headers=sign(key, body))
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 200:
        from remarketing.flows.feedback.fold import fold_pending

        fold_pending(engine, now=NOW)  # what the webhook took, the fold takes too


def rejects(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text("SELECT batch_id, position, sg_event_id, reason FROM email_event_rejects ORDER BY position")
            )
        ]


def test_an_unsubscribe_without_an_address_is_quarantined_and_the_rest_suppressed(engine, key):
    batch = events(2, kind="unsubscribe")
    batch.append({**events(1, prefix="noaddr", kind="unsubscribe")[0], "email": None})
    batch.append({**events(1, prefix="nan", kind="spamreport")[0], "timestamp": float("nan")})
    batch.append({**events(1, prefix="huge", kind="bounce", type="bounce")[0], "timestamp": 1e300})
    batch += events(1, prefix="late", kind="unsubscribe", email="late@example.com")
    body = event_json(batch)
    with client_for(engine, key) as client:
        answer = client.post("/events", content=body, headers=sign(key, body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"batch_id": 1, "events": 6, "new": True, "rejected": 3}
    assert stored_batches(engine) == [(1, 6)]
    import pandas as pd

    emails = pd.Series(["customer0@example.com", "customer1@example.com", "late@example.com"])
    assert suppression_reasons(engine, emails, None).tolist() == ["unsubscribes"] * 3
    assert suppression_reasons(engine, pd.Series(["customer0@example.com"]), None).tolist() == ["unsubscribes"]
    found = rejects(engine)
    assert [(r[0], r[1], r[2]) for r in found] == [(1, 2, "noaddr-0"), (1, 3, "nan-0"), (1, 4, "huge-0")]
    assert "address" in found[0][3] and "timestamp" in found[1][3] and "timestamp" in found[2][3]
    assert not any("@" in r[3] or "example" in r[3] for r in found), "no address in a stored reason"


def test_a_batch_is_acknowledged_only_once_its_suppressions_are_stored(engine, key, caplog):
    """A suppression write that fails must fail the request and leave nothing behind, so the retry redoes all."""
    failures = {"left": 1}

    @sa.event.listens_for(engine, "before_cursor_execute")
    def fail_once(conn, cursor, statement, parameters, context, executemany):
        if failures["left"] and "INTO suppressions" in statement:
            failures["left"] -= 1
            raise sa.exc.OperationalError(statement, parameters, Exception("disk I/O error"))

    body = event_json(events(3, kind="unsubscribe"))
    with client_for(engine, key) as client:
        first = client.post("/events", content=body, headers=sign(key, body))
        assert first.status_code == 503, first.text
        assert stored_batches(engine) == [], "nothing acknowledged, nothing kept: SendGrid retries the batch"
        retry = client.post("/events", content=body, headers=sign(key, body, at=NOW + timedelta(seconds=30)))
    assert retry.status_code == 200 and retry.json()["new"] is True
    import pandas as pd

    emails = pd.Series([f"customer{i}@example.com" for i in range(3)])
    assert suppression_reasons(engine, emails, None).tolist() == ["unsubscribes"] * 3
    assert "example.com" not in caplog.text and "example.com" not in first.text, "no address in logs or answers"
