"""SendGridTransport, SendGridApi and the HTTP layer, against the local SendGrid server (a real
HTTP server on loopback, tests/support/fake_sendgrid.py) and, for framing edge cases, a raw socket peer."""

from __future__ import annotations

import json
import random
import socket
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from fake_sendgrid import FakeSendGrid

from remarketing.delivery.messages import Message, Recipient
from remarketing.delivery.retry import HttpClient, MaybeSent, NotSent, Reply, RetryPolicy
from remarketing.delivery.sendgrid_api import SendGridApi
from remarketing.delivery.sendgrid_client import SendGridError, host_from_connection
from remarketing.delivery.sendgrid_transport import SendGridTransport, build_mail, pack_message, validate_message

NOW = datetime(2026, 3, 27, 8, 0, tzinfo=UTC)


class Sleeps(list):
    """An injectable sleep that records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def policy(max_attempts: int = 4, max_delay: float = 30.0, sleeps: Sleeps | None = None, **kw) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts,
        base_delay=0.05,
        max_delay=max_delay,
        rng=random.Random(3),
        sleep=sleeps if sleeps is not None else Sleeps(),
        **kw,
    )


def person(i: int, *, email: str | None = None, key_prefix: str = "cart") -> Recipient:
    return Recipient(
        email=email or f"customer{i}@example.com",
        ledger_key=f"{key_prefix}:{i}:step1",
        name=f"Name {i}",
        substitutions={"-first_name-": f"First{i}", "-cart_url-": f"https://shop.example/cart/{i}"},
        headers={"List-Unsubscribe": f"<https://shop.example/unsubscribe/{i}>"},
        custom_args={"customer_id": str(i)},
    )


def mail(recipients, **overrides) -> Message:
    fields = dict(
        recipients=tuple(recipients),
        from_email="news@shop.example",
        from_name="Shop",
        subject="Hello -first_name-",
        html="<p>Hello -first_name-, <a href='-cart_url-'>your cart</a></p>",
        text="Hello -first_name-, your cart: -cart_url-",
        reply_to="help@shop.example",
        categories=("cart_recovery", "US", "step1"),
        asm_group_id=4242,
        custom_args={"flow": "cart_recovery", "market": "US", "run": "r1"},
    )
    fields.update(overrides)
    return Message(**fields)


@pytest.fixture
def sg():
    with FakeSendGrid() as server:
        yield server
        assert not server.server_errors, server.server_errors


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def transport(sg, sleeps):
    t = SendGridTransport(sg.api_key, host=sg.url, timeout=2, max_workers=4, retry=policy(sleeps=sleeps))
    yield t
    t.close()


def only(results):
    results = list(results)
    assert len(results) == 1, results
    return results[0]


# --- request body ---------------------------------------------------------------------------------


def test_body_shape_matches_sendgrid_v3(sg, transport):
    batch_id = transport.create_batch_id()
    assert batch_id in sg.batches
    send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=5)
    message = mail([person(1), person(2), person(3)], send_at=send_at, batch_id=batch_id)

    result = only(transport.send([message]))

    assert result.outcome == "accepted" and result.status == 202 and result.attempts == 1
    assert result.ledger_keys == ("cart:1:step1", "cart:2:step1", "cart:3:step1")
    assert len(sg.accepted) == 1
    assert result.message_id == sg.accepted[0].message_id
    body = sg.accepted[0].body
    assert body["from"] == {"email": "news@shop.example", "name": "Shop"}
    assert body["reply_to"] == {"email": "help@shop.example"}
    assert body["subject"] == "Hello -first_name-"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["send_at"] == int(send_at.timestamp()) and isinstance(body["send_at"], int)
    assert body["batch_id"] == batch_id
    assert body["categories"] == ["cart_recovery", "US", "step1"]
    assert body["asm"] == {"group_id": 4242}
    assert body["custom_args"] == {"flow": "cart_recovery", "market": "US", "run": "r1"}
    assert body["headers"] == {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert len(body["personalizations"]) == 3
    for i, p in zip((1, 2, 3), body["personalizations"], strict=True):
        assert p["to"] == [{"email": f"customer{i}@example.com", "name": f"Name {i}"}]
        assert p["substitutions"] == {"-first_name-": f"First{i}", "-cart_url-": f"https://shop.example/cart/{i}"}
        assert p["custom_args"] == {"customer_id": str(i), "ledger_key": f"cart:{i}:step1"}
        assert p["headers"] == {"List-Unsubscribe": f"<https://shop.example/unsubscribe/{i}>"}
    # what each recipient gets, as SendGrid merges it
    merged = {r["custom_args"]["ledger_key"]: r for r in sg.accepted_recipients()}
    assert merged["cart:2:step1"]["subject"] == "Hello First2"
    assert merged["cart:2:step1"]["headers"] == {
        "List-Unsubscribe": "<https://shop.example/unsubscribe/2>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def test_transactional_mail_has_no_one_click_header(sg, transport):
    plain = Recipient(email="buyer@example.com", ledger_key="receipt:9")
    result = only(transport.send([mail([plain], marketing=False, asm_group_id=None, categories=("receipt",))]))
    assert result.outcome == "accepted"
    body = sg.accepted[0].body
    assert "headers" not in body and "asm" not in body
    assert "headers" not in body["personalizations"][0]


def test_packing_1000_recipients_is_one_request(sg, transport):
    message = mail([person(i) for i in range(1000)])
    result = only(transport.send([message]))
    assert result.outcome == "accepted" and len(result.ledger_keys) == 1000
    assert len(sg.accepted) == 1 and len(sg.accepted[0].body["personalizations"]) == 1000
    counts = sg.ledger_key_counts()
    assert len(counts) == 1000 and set(counts.values()) == {1}


def test_pack_message_splits_at_1000_and_keeps_addresses_unique_per_request(sg, transport):
    recipients = [person(i) for i in range(2300)]
    # the same address under other keys (shared mailbox): never twice in one request
    recipients += [person(10_000 + i, email=f"CUSTOMER{i}@Example.com") for i in range(5)]
    recipients += [person(20_000, email="customer1@example.com")]
    packs = pack_message(mail(recipients))

    # customer1's third key meets its second (CUSTOMER1@...) in the last open request: a fourth one
    assert [len(p.recipients) for p in packs] == [1000, 1000, 305, 1]
    for p in packs:
        addresses = [r.email.lower() for r in p.recipients]
        assert len(addresses) == len(set(addresses))
    assert sorted(r.ledger_key for p in packs for r in p.recipients) == sorted(r.ledger_key for r in recipients)

    results = list(transport.send(packs))
    assert {r.outcome for r in results} == {"accepted"}
    counts = sg.ledger_key_counts()
    assert len(counts) == len(recipients) and set(counts.values()) == {1}


# --- local validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: mail([person(i) for i in range(1001)]), "1001 recipients"),
        (
            lambda: mail([person(1), person(2, email="Customer1@EXAMPLE.com")]),
            "'cart:1:step1' and 'cart:2:step1' have the same address",
        ),
        (lambda: mail([person(1)], send_at=datetime.now(UTC) + timedelta(hours=73)), "more than 72 h ahead"),
        (lambda: mail([person(1)], send_at=datetime(2030, 1, 1)), "timezone-aware"),
        (
            lambda: mail([Recipient(email="a@example.com", ledger_key="k:1")]),
            "'k:1': marketing mail without a List-Unsubscribe",
        ),
        (lambda: mail([person(1), person(1, email="other@example.com")]), "'cart:1:step1' appears twice"),
        (lambda: mail([]), "no recipients"),
        (lambda: mail([person(1)], text=""), "'cart:1:step1': text must be a non-empty string"),
    ],
)
def test_invalid_messages_raise_before_any_request(sg, transport, make, expected):
    message = make()
    with pytest.raises(ValueError, match=expected) as caught:
        list(transport.send([message]))
    assert "@" not in str(caught.value)  # names ledger keys, never addresses
    assert sg.requests_log == []


def test_send_at_72h_is_the_limit():
    ok = mail([person(1)], send_at=NOW + timedelta(hours=72))
    validate_message(ok, NOW)
    with pytest.raises(ValueError, match="cart:1:step1"):
        validate_message(mail([person(1)], send_at=NOW + timedelta(hours=72, seconds=1)), NOW)


def test_a_bad_message_in_a_stream_stops_it_after_the_good_ones_are_reported(sg, transport):
    def stream():
        yield mail([person(1)])
        yield mail([person(2)])
        yield mail([person(3)], send_at=datetime.now(UTC) + timedelta(days=4))
        yield mail([person(4)])

    seen = []
    with pytest.raises(ValueError, match="cart:3:step1"):
        for result in transport.send(stream()):
            seen.append(result)
    assert sorted(k for r in seen for k in r.ledger_keys) == ["cart:1:step1", "cart:2:step1"]
    assert sorted(sg.ledger_key_counts()) == ["cart:1:step1", "cart:2:step1"]


# --- retries and outcomes -----------------------------------------------------------------------------


def test_429_waits_until_rate_limit_reset(sg, transport, sleeps):
    sg.inject("429", reset_after=4)
    result = only(transport.send([mail([person(1)])]))
    assert result.outcome == "accepted" and result.attempts == 2
    assert len(sleeps) == 1 and 3.0 < sleeps[0] <= 4.0  # until X-RateLimit-Reset, far above the backoff (<= 0.05)
    assert sg.ledger_key_counts() == {"cart:1:step1": 1}


def test_429_wait_is_capped_by_max_delay(sg, sleeps):
    sg.inject("429", reset_after=60)
    with SendGridTransport(sg.api_key, host=sg.url, retry=policy(max_delay=1.5, sleeps=sleeps)) as t:
        result = only(t.send([mail([person(1)])]))
    assert result.outcome == "accepted" and sleeps == [1.5]


def test_5xx_is_retried_with_backoff_then_accepted(sg, transport, sleeps):
    sg.inject("500")
    sg.inject("503")
    result = only(transport.send([mail([person(1)])]))
    assert result.outcome == "accepted" and result.attempts == 3 and result.status == 202
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.05 and 0 <= sleeps[1] <= 0.1
    assert sg.ledger_key_counts() == {"cart:1:step1": 1}


def test_retries_exhausted_is_rejected_with_the_last_error(sg, transport, sleeps):
    sg.inject("503", times=4)
    result = only(transport.send([mail([person(1)])]))
    assert (result.outcome, result.status, result.attempts) == ("rejected", 503, 4)
    assert result.error == "service unavailable"
    assert len(sleeps) == 3 and sg.ledger_key_counts() == {}


def test_4xx_is_not_retried_and_keeps_sendgrids_message(sg, transport, sleeps):
    bad = mail([person(1)], categories=("cart_recovery", "cart_recovery"))  # SendGrid wants unique categories
    result = only(transport.send([bad]))
    assert (result.outcome, result.status, result.attempts) == ("rejected", 400, 1)
    assert "categories: The categories must be a unique list" in result.error
    assert sleeps == [] and len(sg.requests_log) == 1


def test_wrong_api_key_is_rejected_once(sg, sleeps):
    with SendGridTransport("SG.wrong", host=sg.url, retry=policy(sleeps=sleeps)) as t:
        result = only(t.send([mail([person(1)])]))
    assert (result.outcome, result.status, result.attempts) == ("rejected", 401, 1)
    assert "authorization grant is invalid" in result.error


def test_error_text_never_carries_addresses():
    body = {
        "errors": [
            {"field": "personalizations.0", "message": "We found the first duplicate instance of [x.y+z@ex.co.uk] in"}
        ]
    }
    text = Reply(400, {}, json.dumps(body).encode()).error_text()
    assert "@" not in text and "[<address>]" in text and text.startswith("personalizations.0: ")
    assert Reply(502, {}, b"<html>bad gateway</html>").error_text() == "HTTP 502"


def test_drop_after_acceptance_is_unknown_after_one_attempt(sg, transport, sleeps):
    sg.inject("drop")
    result = only(transport.send([mail([person(1)])]))
    assert (result.outcome, result.status, result.attempts) == ("unknown", None, 1)
    assert "RemoteDisconnected" in result.error
    assert sleeps == [] and sg.ledger_key_counts() == {"cart:1:step1": 1}


def test_read_timeout_after_sending_is_unknown_after_one_attempt(sg, sleeps):
    sg.inject("timeout", delay=3)
    with SendGridTransport(sg.api_key, host=sg.url, timeout=0.4, retry=policy(sleeps=sleeps)) as t:
        result = only(t.send([mail([person(1)])]))
        assert (result.outcome, result.attempts) == ("unknown", 1)
        assert "timed out" in result.error
        assert sleeps == [] and sg.ledger_key_counts() == {"cart:1:step1": 1}
        # the pool dropped the timed-out connection: the next send is clean
        assert only(t.send([mail([person(2)])])).outcome == "accepted"


def test_slow_answer_within_the_timeout_is_accepted(sg, transport):
    sg.inject("slow", delay=0.3)
    result = only(transport.send([mail([person(1)])]))
    assert (result.outcome, result.attempts) == ("accepted", 1)


def _socket_buffers_bytes() -> int:
    """How much a client can write that the server never reads: send buffer max + receive window."""
    try:
        wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 8 * 1024 * 1024
    return wmem + 2 * rmem


def test_reset_before_the_body_was_written_is_retried_and_sent_once(sg, transport, sleeps):
    """The server resets after the headers while the client is still writing the body: provably not sent."""
    size = _socket_buffers_bytes() + 2 * 1024 * 1024
    if size > 25 * 1024 * 1024:
        pytest.skip(f"socket buffers here hold {size} bytes: no request stays unwritten long enough")
    big = mail([person(1)], html="<p>" + "x" * size + "</p>")
    sg.inject("reset_before")
    result = only(transport.send([big]))
    assert (result.outcome, result.attempts) == ("accepted", 2)
    assert len(sleeps) == 1
    assert [status for _, _, status in sg.requests_log] == [0, 202]
    assert sg.ledger_key_counts() == {"cart:1:step1": 1}


def test_reset_after_a_small_request_was_written_is_unknown(sg, transport, sleeps):
    """A reset that comes once the whole request was written looks exactly like one after SendGrid
    acted on it, so it is not retried: the ledger reconciles it (here the server had not accepted it)."""
    sg.inject("reset_before")
    result = only(transport.send([mail([person(1)])]))
    assert (result.outcome, result.attempts) == ("unknown", 1)
    assert sleeps == [] and sg.ledger_key_counts() == {}


def test_connection_refused_is_retried_then_rejected(sleeps):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    with SendGridTransport("SG.x", host=f"http://127.0.0.1:{port}", retry=policy(max_attempts=3, sleeps=sleeps)) as t:
        result = only(t.send([mail([person(1)])]))
    assert (result.outcome, result.status, result.attempts) == ("rejected", None, 3)
    assert "could not connect" in result.error and "ConnectionRefusedError" in result.error
    assert len(sleeps) == 2


def test_many_messages_concurrently_under_faults_never_duplicate(sg, sleeps):
    sg.set_fault_rate(0.3, kinds=("429", "500", "503", "drop", "timeout"), delay=1.0, reset_after=0)
    messages = [mail([person(i)]) for i in range(150)]
    retry = policy(max_attempts=8, sleeps=sleeps)
    with SendGridTransport(sg.api_key, host=sg.url, timeout=0.3, max_workers=8, retry=retry) as t:
        results = list(t.send(messages))
    assert sorted(k for r in results for k in r.ledger_keys) == sorted(f"cart:{i}:step1" for i in range(150))
    counts = sg.ledger_key_counts()
    assert max(counts.values()) == 1
    outcomes = {r.ledger_keys[0]: r.outcome for r in results}
    assert {k for k, o in outcomes.items() if o == "accepted"} <= set(counts)
    assert not {k for k, o in outcomes.items() if o == "rejected"} & set(counts)
    assert {k for k, o in outcomes.items() if o == "unknown"} <= set(counts)  # drop/timeout: accepted, answer lost
    assert "unknown" in outcomes.values() and "accepted" in outcomes.values()
    assert any(r.attempts > 1 for r in results)


def test_results_stream_while_later_messages_are_still_in_flight(sg):
    sg.inject("slow", times=1, delay=1.0)  # the first request is slow; the others overtake it
    with SendGridTransport(sg.api_key, host=sg.url, max_workers=4) as t:
        order = [r.ledger_keys[0] for r in t.send([mail([person(i)]) for i in range(6)])]
    assert sorted(order) == sorted(f"cart:{i}:step1" for i in range(6))
    # Whichever request reached the server first was held; its result comes last, the others did not wait.
    (slow,) = [a for a in sg.accepted if a.fault == "slow"]
    personalization = slow.body["personalizations"][0]
    slow_key = {**slow.body.get("custom_args", {}), **personalization.get("custom_args", {})}["ledger_key"]
    assert order[-1] == slow_key


# --- batches and configuration --------------------------------------------------------------------------


def test_cancel_batch_is_idempotent(sg, transport):
    batch_id = transport.create_batch_id()
    transport.cancel_batch(batch_id)
    transport.cancel_batch(batch_id)  # e.g. a retried task
    assert sg.cancelled_batches == {batch_id}
    with pytest.raises(SendGridError, match="400"):
        transport.cancel_batch("not-a-batch")


def test_from_connection_reads_key_from_password_and_host_from_extra(sg, monkeypatch):
    conn = {"conn_type": "sendgrid", "password": sg.api_key, "extra": {"host": sg.url, "timeout": 3}}
    monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_TEST", json.dumps(conn))
    with SendGridTransport.from_connection("sendgrid_test", max_workers=2) as t:
        assert t.host == sg.url and t.http.timeout == 3.0
        assert only(t.send([mail([person(1)])])).outcome == "accepted"
    with SendGridApi.from_connection("sendgrid_test") as api:
        assert list(api.iter_suppressions("bounces")) == []


def test_host_from_connection_fields():
    from types import SimpleNamespace

    def conn(host=None, port=None, extra=None):
        return SimpleNamespace(host=host, port=port, extra_dejson=extra or {})

    assert host_from_connection(conn()) == "https://api.sendgrid.com"
    assert host_from_connection(conn("api.eu.sendgrid.com")) == "https://api.eu.sendgrid.com"
    assert host_from_connection(conn("http://127.0.0.1", 8025)) == "http://127.0.0.1:8025"
    assert host_from_connection(conn("127.0.0.1", 8025)) == "https://127.0.0.1:8025"
    assert host_from_connection(conn("ignored", 1, {"host": "http://localhost:9/"})) == "http://localhost:9"


def test_from_connection_without_password_fails_clearly(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_EMPTY", json.dumps({"conn_type": "sendgrid", "host": "127.0.0.1"}))
    with pytest.raises(ValueError, match="'sendgrid_empty' has no API key"):
        SendGridTransport.from_connection("sendgrid_empty")


def test_build_mail_is_what_the_library_would_build_by_hand():
    body = build_mail(mail([person(1)], marketing=False, reply_to=None, asm_group_id=None, custom_args={}))
    assert body == {
        "from": {"email": "news@shop.example", "name": "Shop"},
        "subject": "Hello -first_name-",
        "personalizations": [
            {
                "to": [{"email": "customer1@example.com", "name": "Name 1"}],
                "headers": {"List-Unsubscribe": "<https://shop.example/unsubscribe/1>"},
                "substitutions": {"-first_name-": "First1", "-cart_url-": "https://shop.example/cart/1"},
                "custom_args": {"customer_id": "1", "ledger_key": "cart:1:step1"},
            }
        ],
        "content": [
            {"type": "text/plain", "value": "Hello -first_name-, your cart: -cart_url-"},
            {"type": "text/html", "value": "<p>Hello -first_name-, <a href='-cart_url-'>your cart</a></p>"},
        ],
        "categories": ["cart_recovery", "US", "step1"],
    }


# --- retry policy ---------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    p = RetryPolicy(base_delay=0.5, max_delay=4, rng=random.Random(1))
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 4.0)]:
        waits = [p.backoff(attempt) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > 0.8 * ceiling  # spread over the whole range, not a constant
    same = [RetryPolicy(rng=random.Random(9)).backoff(3) for _ in range(2)]
    assert same[0] == same[1]
    assert RetryPolicy(base_delay=0.5, jitter=False).backoff(3) == 2.0


def test_rate_limit_reset_in_the_past_falls_back_to_backoff():
    p = RetryPolicy(base_delay=0.5, max_delay=10, rng=random.Random(1), clock=lambda: 1_000.0)
    assert p.delay(1, 429, {"x-ratelimit-reset": "1007"}) == 7.0
    assert p.delay(1, 429, {"X-RateLimit-Reset": "990"}) <= 0.5
    assert p.delay(1, 429, {"X-RateLimit-Reset": "soon"}) <= 0.5
    assert p.delay(1, 503, {"X-RateLimit-Reset": "1007"}) <= 0.5
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


# --- the read API -------------------------------------------------------------------------------------------


def test_suppressions_are_paged_until_a_short_page(sg):
    base = datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(5):
        sg.add_suppression("bounces", f"b{i}@example.com", created=base + timedelta(hours=i), reason="550")
    sg.add_suppression("unsubscribes", "u@example.com", created=base)
    with SendGridApi(sg.api_key, sg.url, retry=policy(), page_size=2) as api:
        rows = list(api.iter_suppressions("bounces"))
        assert sorted(r["email"] for r in rows) == [f"b{i}@example.com" for i in range(5)]
        assert rows[0]["created"] == int((base + timedelta(hours=4)).timestamp())  # newest first
        gets = [p for m, p, _ in sg.requests_log if p == "/v3/suppression/bounces"]
        assert len(gets) == 3
        recent = list(api.iter_suppressions("bounces", start_time=base + timedelta(hours=3)))
        assert sorted(r["email"] for r in recent) == ["b3@example.com", "b4@example.com"]
        assert [r["email"] for r in api.iter_suppressions("unsubscribes")] == ["u@example.com"]
        with pytest.raises(ValueError, match="unknown suppression kind 'bounce'"):
            list(api.iter_suppressions("bounce"))
        with pytest.raises(ValueError, match="timezone-aware"):
            list(api.iter_suppressions("bounces", start_time=datetime(2026, 1, 1)))


def test_group_suppressions(sg):
    sg.add_suppression("asm", "a@example.com", group_id=7, created=datetime(2026, 3, 1, tzinfo=UTC))
    sg.add_suppression("asm", "b@example.com", group_id=8, created=datetime(2026, 3, 2, tzinfo=UTC))
    with SendGridApi(sg.api_key, sg.url, retry=policy(), page_size=1) as api:
        rows = list(api.iter_group_suppressions())
    assert {(r["email"], r["group_id"]) for r in rows} == {("a@example.com", 7), ("b@example.com", 8)}


def test_reads_are_retried_even_after_a_timeout(sg, sleeps):
    sg.add_suppression("blocks", "x@example.com")
    sg.inject("timeout", path="/v3/suppression/blocks", delay=2)
    sg.inject("500", path="/v3/suppression/blocks")
    with SendGridApi(sg.api_key, sg.url, timeout=0.3, retry=policy(sleeps=sleeps)) as api:
        assert [r["email"] for r in api.iter_suppressions("blocks")] == ["x@example.com"]
    assert len(sleeps) == 2


def test_read_failure_raises_with_endpoint_and_status(sg):
    sg.inject("503", times=10, path="/v3/stats")
    with SendGridApi(sg.api_key, sg.url, retry=policy(max_attempts=2)) as api:
        with pytest.raises(SendGridError, match=r"GET /v3/stats: HTTP 503 after 2 attempt\(s\): service unavailable"):
            api.global_stats(date(2026, 3, 1), date(2026, 3, 2))


def test_category_stats_by_day_and_category(sg):
    sg.set_stats(date(2026, 3, 1), {"requests": 100, "delivered": 95, "bounces": 3}, category="market:US")
    sg.set_stats(date(2026, 3, 2), {"requests": 50, "spam_reports": 1}, category="market:US")
    sg.set_stats(date(2026, 3, 2), {"requests": 7}, category="market:DE")
    names = ["market:US", "market:DE"] + [f"market:X{i}" for i in range(10)]  # 12: two calls of at most 10
    with SendGridApi(sg.api_key, sg.url, retry=policy()) as api:
        rows = api.category_stats(names, date(2026, 3, 1), date(2026, 3, 2))
        by_key = {(r["date"], r["category"]): r for r in rows}
        assert len(rows) == 24
        assert by_key[(date(2026, 3, 1), "market:US")]["bounces"] == 3
        assert by_key[(date(2026, 3, 2), "market:US")]["spam_reports"] == 1
        assert by_key[(date(2026, 3, 2), "market:DE")]["requests"] == 7
        assert by_key[(date(2026, 3, 1), "market:X3")]["requests"] == 0
        assert len([p for _, p, _ in sg.requests_log if p == "/v3/categories/stats"]) == 2

        sg.set_stats(date(2026, 3, 1), {"requests": 10, "delivered": 9})
        days = api.global_stats(date(2026, 3, 1), date(2026, 3, 2))
        assert days[0]["date"] == date(2026, 3, 1) and days[0]["delivered"] == 9 and days[1]["requests"] == 0
        with pytest.raises(ValueError, match="before start"):
            api.global_stats(date(2026, 3, 2), date(2026, 3, 1))
        with pytest.raises(TypeError):
            api.category_stats("market:US", date(2026, 3, 1), date(2026, 3, 1))


# --- HTTP framing, against a raw socket peer ---------------------------------------------------------------


class RawPeer:
    """Accepts connections; for each request answers the next scripted bytes; ``close`` hangs up after."""

    def __init__(self, script: list[tuple[bytes, bool]]):
        self.script = list(script)
        self.connections = 0
        self.hung_up = threading.Semaphore(0)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.script:
            conn, _ = self.listener.accept()
            self.connections += 1
            self._one_connection(conn)
            self.hung_up.release()

    def _one_connection(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as rfile:
            while self.script:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = rfile.readline()
                    if not line:
                        return
                    head += line
                lengths = [
                    int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
                ]
                rfile.read(lengths[0] if lengths else 0)
                answer, hang_up = self.script.pop(0)
                conn.sendall(answer)
                if hang_up:
                    return

    def close(self) -> None:
        self.listener.close()


def test_http_framing_chunked_interim_and_closing_answers():
    peer = RawPeer(
        [
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}", False),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1, \r\n2\r\n2]\r\n0\r\n\r\n", False),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[3]", True),
            (b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", True),  # closes without saying so
            (b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nX-Message-Id: m5\r\n\r\n", False),
        ]
    )
    client = HttpClient(peer.url, headers={"Authorization": "Bearer x"}, timeout=2)
    try:
        first = client.request("POST", "/v3/mail/batch", body=b"{}")
        assert (first.status, first.json()) == (201, {})
        assert client.request("GET", "/v3/x").json() == [1, 2]
        assert client.request("GET", "/v3/y").json() == [3]
        assert client.request("POST", "/v3/mail/send", body=b"{}").status == 202
        assert peer.hung_up.acquire(timeout=5) and peer.hung_up.acquire(timeout=5)
        # the idle connection was closed by the peer: detected before reuse, not a lost request
        last = client.request("POST", "/v3/mail/send", body=b"{}")
        assert last.status == 202 and last.headers["X-Message-Id"] == "m5"
        assert peer.connections == 3
    finally:
        client.close()
        peer.close()


def test_garbage_answer_after_sending_is_maybe_sent_and_refusal_is_not_sent():
    peer = RawPeer([(b"SMTP ready\r\n\r\n", True)])
    client = HttpClient(peer.url, headers={}, timeout=2)
    try:
        with pytest.raises(MaybeSent, match="BadStatusLine"):
            client.request("POST", "/v3/mail/send", body=b"{}")
    finally:
        client.close()
        peer.close()
    with pytest.raises(NotSent, match="could not connect"):
        HttpClient(peer.url, headers={}, timeout=1).request("GET", "/v3/stats")
    with pytest.raises(ValueError, match="line break"):
        HttpClient("http://127.0.0.1:1", headers={"Authorization": "Bearer a\r\nX-Evil: 1"})
