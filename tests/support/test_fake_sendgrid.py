"""The local SendGrid double, driven by the official ``sendgrid`` library over real HTTP.

The Airflow SendGrid provider (``airflow.providers.sendgrid.utils.emailer``) is not exercised:
it builds ``SendGridAPIClient(api_key=...)`` with SendGrid's fixed host, so it cannot be pointed
at a local server without patching it.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.error
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from fake_sendgrid import STATS_METRICS, SUPPRESSION_FIELDS, FakeSendGrid
from python_http_client import exceptions as http_errors
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Asm,
    BatchId,
    Category,
    Content,
    CustomArg,
    From,
    GroupId,
    Header,
    Mail,
    Personalization,
    SendAt,
    Substitution,
    To,
)

CONNECTION_LOST = (ConnectionError, urllib.error.URLError, http.client.HTTPException)


@pytest.fixture
def fake_sendgrid():
    with FakeSendGrid() as server:
        yield server
    assert server.server_errors == []


@pytest.fixture
def client(fake_sendgrid) -> SendGridAPIClient:
    return SendGridAPIClient(fake_sendgrid.api_key, host=fake_sendgrid.url)


def valid_body(ledger_key: str = "cart:1:1") -> dict:
    return {
        "personalizations": [
            {"to": [{"email": "ana@example.org", "name": "Ana"}], "custom_args": {"ledger_key": ledger_key}}
        ],
        "from": {"email": "shop@example.com", "name": "Shop"},
        "subject": "Your cart is waiting",
        "content": [{"type": "text/plain", "value": "Hello"}, {"type": "text/html", "value": "<p>Hello</p>"}],
    }


def post_mail(client: SendGridAPIClient, body: dict, **kwargs) -> tuple[int, dict | None, object]:
    """(status, JSON body or None, headers), whether SendGrid accepted or refused."""
    try:
        response = client.client.mail.send.post(request_body=body, **kwargs)
    except http_errors.HTTPError as exc:
        return exc.status_code, exc.to_dict, exc.headers
    return response.status_code, response.to_dict, response.headers


# -- accepted mail ------------------------------------------------------------------------------


def test_valid_mail_is_accepted_and_recorded_per_recipient(fake_sendgrid, client):
    batch_id = client.client.mail.batch.post().to_dict["batch_id"]
    send_at = int(time.time()) + 3600
    mail = Mail(from_email=From("shop@example.com", "Shop"), subject="Hi -first-, your cart")
    mail.add_content(Content("text/plain", "Hello"))
    mail.add_content(Content("text/html", "<p>Hello</p>"))
    for email, first, key in (("ana@example.org", "Ana", "cart:1:1"), ("bo@example.org", "Bo", "cart:2:1")):
        person = Personalization()
        person.add_to(To(email, first))
        person.add_substitution(Substitution("-first-", first))
        person.add_custom_arg(CustomArg("ledger_key", key))
        person.add_custom_arg(CustomArg("step", "2"))  # overrides the message-level value
        person.add_header(Header("List-Unsubscribe", f"<https://shop.example/u/{key}>"))
        mail.add_personalization(person)
    mail.custom_arg = [CustomArg("flow", "cart_recovery"), CustomArg("step", "1")]
    mail.header = Header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
    mail.category = [Category("cart_recovery"), Category("DE")]
    mail.send_at = SendAt(send_at)
    mail.batch_id = BatchId(batch_id)
    mail.asm = Asm(GroupId(4242))

    before = datetime.now(UTC)
    response = client.send(mail)

    assert response.status_code == 202
    assert response.body == b""
    message_id = response.headers["X-Message-Id"]
    assert message_id
    [accepted] = fake_sendgrid.accepted
    assert accepted.message_id == message_id
    assert accepted.batch_id == batch_id
    assert accepted.body == mail.get()
    assert accepted.received_at.tzinfo is not None and accepted.received_at >= before - timedelta(seconds=1)
    assert accepted.fault is None
    recipients = fake_sendgrid.accepted_recipients()
    by_email = {r["email"]: r for r in recipients}  # the Mail helper prepends personalizations
    assert len(recipients) == 2 and set(by_email) == {"ana@example.org", "bo@example.org"}
    ana, bo = by_email["ana@example.org"], by_email["bo@example.org"]
    assert ana["name"] == "Ana"
    assert ana["subject"] == "Hi Ana, your cart" and bo["subject"] == "Hi Bo, your cart"
    assert ana["custom_args"] == {"flow": "cart_recovery", "step": "2", "ledger_key": "cart:1:1"}
    assert ana["headers"] == {
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Unsubscribe": "<https://shop.example/u/cart:1:1>",
    }
    assert ana["substitutions"] == {"-first-": "Ana"}
    assert ana["send_at"] == send_at
    assert ana["batch_id"] == batch_id
    assert sorted(ana["categories"]) == ["DE", "cart_recovery"]
    assert ana["asm"] == {"group_id": 4242}
    assert ana["message_id"] == bo["message_id"] == message_id
    assert fake_sendgrid.requests_log[-1] == ("POST", "/v3/mail/send", 202)


def test_ledger_key_counts_count_every_acceptance(fake_sendgrid, client):
    for key in ("cart:1:1", "cart:2:1", "cart:1:1"):
        assert post_mail(client, valid_body(key))[0] == 202
    assert fake_sendgrid.ledger_key_counts() == {"cart:1:1": 2, "cart:2:1": 1}
    assert len({a.message_id for a in fake_sendgrid.accepted}) == 3


def test_sandbox_mode_answers_200_and_delivers_nothing(fake_sendgrid, client):
    body = valid_body() | {"mail_settings": {"sandbox_mode": {"enable": True}}}
    status, _, headers = post_mail(client, body)
    assert status == 200
    assert fake_sendgrid.accepted == []
    assert [s.message_id for s in fake_sendgrid.sandboxed] == [headers["X-Message-Id"]]


def test_normal_answers_carry_rate_limit_headers(fake_sendgrid, client):
    first = client.client.suppression.bounces.get()
    second = client.client.suppression.bounces.get()
    for response in (first, second):
        limit = int(response.headers["X-RateLimit-Limit"])
        remaining = int(response.headers["X-RateLimit-Remaining"])
        assert 0 <= remaining < limit
        assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time()) - 1
    if first.headers["X-RateLimit-Reset"] == second.headers["X-RateLimit-Reset"]:  # same window
        assert int(second.headers["X-RateLimit-Remaining"]) == int(first.headers["X-RateLimit-Remaining"]) - 1
    status, _, headers = post_mail(client, valid_body())
    assert status == 202 and int(headers["X-RateLimit-Limit"]) == 10_000


def test_keep_alive_serves_several_requests_on_one_connection(fake_sendgrid):
    host, port = urlsplit(fake_sendgrid.url).hostname, urlsplit(fake_sendgrid.url).port
    conn = http.client.HTTPConnection(host, port, timeout=5)
    headers = {"Authorization": f"Bearer {fake_sendgrid.api_key}", "Content-Type": "application/json"}
    sockets = []
    for key in ("k1", "k2", "k3"):
        conn.request("POST", "/v3/mail/send", json.dumps(valid_body(key)), headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 202
        assert response.getheader("Connection") == "keep-alive"
        sockets.append(conn.sock)
    conn.close()
    assert sockets[0] is not None and sockets[0] is sockets[1] is sockets[2]
    assert fake_sendgrid.ledger_key_counts() == {"k1": 1, "k2": 1, "k3": 1}


def test_requests_session_and_concurrent_clients(fake_sendgrid):
    headers = {"Authorization": f"Bearer {fake_sendgrid.api_key}"}
    keys = [f"cart:{t}:{i}" for t in range(8) for i in range(25)]
    statuses: list[int] = []

    def worker(chunk: list[str]) -> None:
        with requests.Session() as session:
            for key in chunk:
                r = session.post(f"{fake_sendgrid.url}/v3/mail/send", json=valid_body(key), headers=headers, timeout=10)
                statuses.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(keys[t * 25 : (t + 1) * 25],)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [202] * len(keys)
    assert fake_sendgrid.ledger_key_counts() == dict.fromkeys(keys, 1)


# -- validation ---------------------------------------------------------------------------------


def _set(path: str, value) -> Callable[[dict], None]:
    def apply(body: dict) -> None:
        *parents, last = path.split(".")
        target = body
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        key = int(last) if last.isdigit() else last
        if value is _DELETE:
            del target[key]
        else:
            target[key] = value

    return apply


_DELETE = object()
_FAR = int(time.time()) + 73 * 3600  # beyond the 72 h horizon even if the test runs for an hour
_MANY = [{"to": [{"email": f"p{i}@example.org"}]} for i in range(1001)]

REJECTED = [
    ("no personalizations", _set("personalizations", _DELETE), "personalizations"),
    ("empty personalizations", _set("personalizations", []), "personalizations"),
    ("1001 personalizations", _set("personalizations", _MANY), "personalizations"),
    ("personalization without to", _set("personalizations.0.to", _DELETE), "personalizations.0.to"),
    ("invalid to", _set("personalizations.0.to", [{"email": "not-an-email"}]), "personalizations.0.to.0.email"),
    ("invalid cc", _set("personalizations.0.cc", [{"email": "a@b"}]), "personalizations.0.cc.0.email"),
    ("invalid bcc", _set("personalizations.0.bcc", [{"email": "x@@example.org"}]), "personalizations.0.bcc.0.email"),
    ("invalid from", _set("from", {"email": "shop at example.com"}), "from.email"),
    ("invalid reply_to", _set("reply_to", {"email": "reply@"}), "reply_to.email"),
    (
        "same address in two personalizations, other case",
        _set("personalizations.1", {"to": [{"email": "ANA@Example.ORG"}]}),
        "personalizations.1",
    ),
    (
        "same address in to and bcc",
        _set("personalizations.0.bcc", [{"email": "ana@example.org"}]),
        "personalizations.0",
    ),
    (
        "1001 recipients",
        _set("personalizations.0.bcc", [{"email": f"b{i}@example.org"} for i in range(1000)]),
        "personalizations",
    ),
    ("missing from", _set("from", _DELETE), "from"),
    ("missing subject", _set("subject", _DELETE), "subject"),
    ("empty subject", _set("subject", ""), "subject"),
    ("no content and no template", _set("content", _DELETE), "content"),
    (
        "html before plain text",
        _set("content", [{"type": "text/html", "value": "<p>x</p>"}, {"type": "text/plain", "value": "x"}]),
        "content",
    ),
    ("send_at beyond 72 hours", _set("send_at", _FAR), "send_at"),
    ("personalization send_at beyond 72 hours", _set("personalizations.0.send_at", _FAR), "personalizations.0.send_at"),
    ("send_at not an integer", _set("send_at", "2026-01-01T00:00:00Z"), "send_at"),
    ("unknown batch_id", _set("batch_id", "NotCreatedWithMailBatch"), "batch_id"),
    ("11 categories", _set("categories", [f"c{i}" for i in range(11)]), "categories"),
    ("category of 256 chars", _set("categories", ["c" * 256]), "categories"),
    ("non-ASCII category", _set("categories", ["café"]), "categories"),
    (
        "custom_args value not a string",
        _set("personalizations.0.custom_args", {"ledger_key": 7}),
        "personalizations.0.custom_args",
    ),
    ("asm group_id not an int", _set("asm", {"group_id": "42"}), "asm.group_id"),
    ("reserved header", _set("headers", {"Subject": "x"}), "headers"),
]


def _second_personalization(body: dict) -> dict:
    body["personalizations"].append({"to": [{"email": "bo@example.org"}]})
    return body


@pytest.mark.parametrize(("change", "field"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_invalid_mail_is_refused_with_the_field(fake_sendgrid, client, change, field):
    body = _second_personalization(valid_body())
    change(body)
    status, answer, _ = post_mail(client, body)
    assert status == 400
    fields = [e["field"] for e in answer["errors"]]
    assert field in fields
    error = answer["errors"][fields.index(field)]
    assert error["message"] and error["help"].startswith("http://sendgrid.com/docs/")
    assert fake_sendgrid.accepted == []
    assert fake_sendgrid.requests_log == [("POST", "/v3/mail/send", 400)]


def test_merged_custom_args_over_10000_bytes_are_refused(fake_sendgrid, client):
    body = valid_body()
    body["custom_args"] = {"a": "x" * 6000}
    body["personalizations"][0]["custom_args"] = {"ledger_key": "k", "b": "y" * 6000}
    status, answer, _ = post_mail(client, body)
    assert status == 400
    assert [e["field"] for e in answer["errors"]] == ["personalizations.0.custom_args"]
    body["personalizations"][0]["custom_args"] = {"ledger_key": "k", "b": "y" * 3900}  # 10,000 bytes minus a margin
    assert post_mail(client, body)[0] == 202


ACCEPTED = [
    ("subject in every personalization", [_set("subject", _DELETE), _set("personalizations.0.subject", "Hi")]),
    (
        "template instead of content and subject",
        [_set("content", _DELETE), _set("subject", _DELETE), _set("template_id", "d-1")],
    ),
    ("send_at in the past", [_set("send_at", int(time.time()) - 86_400)]),
    ("send_at 71 hours ahead", [_set("personalizations.0.send_at", int(time.time()) + 71 * 3600)]),
    ("10 categories, one of 255 chars", [_set("categories", ["c" * 255] + [f"c{i}" for i in range(9)])]),
    ("html only", [_set("content", [{"type": "text/html", "value": "<p>x</p>"}])]),
    (
        "1000 personalizations",
        [_set("personalizations", [{"to": [{"email": f"p{i}@example.org"}]} for i in range(1000)])],
    ),
]


@pytest.mark.parametrize("changes", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_boundary_mail_is_accepted(fake_sendgrid, client, changes):
    body = valid_body()
    for change in changes:
        change(body)
    status, answer, _ = post_mail(client, body)
    assert (status, answer) == (202, None)
    assert len(fake_sendgrid.accepted) == 1


def test_body_over_the_size_limit_is_413_and_the_connection_stays_usable():
    with FakeSendGrid(max_body_bytes=2_000) as server:
        client = SendGridAPIClient(server.api_key, host=server.url)
        body = valid_body()
        body["content"][1]["value"] = "<p>" + "x" * 3_000 + "</p>"
        status, answer, _ = post_mail(client, body)
        assert status == 413
        assert answer["errors"][0]["message"]
        assert server.accepted == []
        assert post_mail(client, valid_body())[0] == 202
        assert server.server_errors == []


def test_malformed_bodies_are_refused(fake_sendgrid):
    parts = urlsplit(fake_sendgrid.url)
    headers = {"Authorization": f"Bearer {fake_sendgrid.api_key}", "Content-Type": "application/json"}
    for raw, status in ((b"{not json", 400), (b'{"subject": "\xff"}', 415), (b"[1, 2]", 400)):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        conn.request("POST", "/v3/mail/send", raw, headers)
        response = conn.getresponse()
        assert response.status == status
        assert json.loads(response.read())["errors"][0]["message"]
        conn.close()
    assert fake_sendgrid.accepted == []


# -- auth and routing ---------------------------------------------------------------------------


def test_wrong_or_missing_api_key_is_401(fake_sendgrid):
    wrong = SendGridAPIClient("SG.wrong", host=fake_sendgrid.url)
    with pytest.raises(http_errors.UnauthorizedError) as caught:
        wrong.client.mail.send.post(request_body=valid_body())
    assert caught.value.status_code == 401
    assert caught.value.to_dict == {
        "errors": [{"field": None, "message": "The provided authorization grant is invalid, expired, or revoked"}]
    }
    parts = urlsplit(fake_sendgrid.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    conn.request("GET", "/v3/suppression/bounces")
    assert conn.getresponse().status == 401
    conn.close()
    assert fake_sendgrid.accepted == []


def test_unknown_path_is_404_and_wrong_method_405(client):
    with pytest.raises(http_errors.NotFoundError) as caught:
        client.client.no.such.thing.get()
    assert caught.value.to_dict["errors"][0]["message"]
    with pytest.raises(http_errors.MethodNotAllowedError):
        client.client.mail.send.get()


# -- faults -------------------------------------------------------------------------------------


def test_429_carries_rate_limit_headers_and_accepts_nothing(fake_sendgrid, client):
    fake_sendgrid.inject("429", reset_after=30)
    with pytest.raises(http_errors.TooManyRequestsError) as caught:
        client.send(Mail("shop@example.com", "ana@example.org", "Hi", html_content="<p>x</p>"))
    now = time.time()
    headers = caught.value.headers
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Limit"]) > 0
    assert now + 25 <= int(headers["X-RateLimit-Reset"]) <= now + 31
    assert caught.value.to_dict == {"errors": [{"field": None, "message": "too many requests"}]}
    assert fake_sendgrid.accepted == []
    assert post_mail(client, valid_body())[0] == 202  # only the next request was faulted


@pytest.mark.parametrize(
    ("kind", "error"), [("500", http_errors.InternalServerError), ("503", http_errors.ServiceUnavailableError)]
)
def test_server_errors_accept_nothing(fake_sendgrid, client, kind, error):
    fake_sendgrid.inject(kind)
    with pytest.raises(error) as caught:
        client.client.mail.send.post(request_body=valid_body())
    assert caught.value.status_code == int(kind)
    assert caught.value.to_dict["errors"][0]["field"] is None
    assert fake_sendgrid.accepted == []
    assert fake_sendgrid.requests_log == [("POST", "/v3/mail/send", int(kind))]


def test_timeout_records_the_mail_the_client_never_hears_about(fake_sendgrid, client):
    fake_sendgrid.inject("timeout")  # holds the answer 30 s
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        client.client.mail.send.post(request_body=valid_body("cart:9:1"), timeout=0.5)
    [accepted] = fake_sendgrid.accepted
    assert accepted.fault == "timeout"
    assert fake_sendgrid.ledger_key_counts() == {"cart:9:1": 1}
    assert fake_sendgrid.requests_log == [("POST", "/v3/mail/send", 202)]
    stopper = threading.Thread(target=fake_sendgrid.stop)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "stop() waited for the held answer"


def test_slow_answers_late_but_normally(fake_sendgrid, client):
    fake_sendgrid.inject("slow", delay=0.3)
    started = time.monotonic()
    status, _, _ = post_mail(client, valid_body())
    assert status == 202
    assert time.monotonic() - started >= 0.3
    assert [a.fault for a in fake_sendgrid.accepted] == ["slow"]


def test_drop_records_the_mail_and_hangs_up_without_an_answer(fake_sendgrid, client):
    fake_sendgrid.inject("drop")
    with pytest.raises(CONNECTION_LOST):
        client.client.mail.send.post(request_body=valid_body("cart:5:2"))
    assert fake_sendgrid.ledger_key_counts() == {"cart:5:2": 1}
    assert fake_sendgrid.accepted[0].fault == "drop"
    assert fake_sendgrid.requests_log == [("POST", "/v3/mail/send", 0)]


def test_reset_before_the_body_records_nothing(fake_sendgrid, client):
    fake_sendgrid.inject("reset_before")
    with pytest.raises(CONNECTION_LOST):
        client.client.mail.send.post(request_body=valid_body())
    assert fake_sendgrid.accepted == []
    assert fake_sendgrid.requests_log == [("POST", "/v3/mail/send", 0)]
    assert post_mail(client, valid_body())[0] == 202


def test_injected_faults_apply_in_order_and_only_to_their_path(fake_sendgrid, client):
    fake_sendgrid.inject("429")
    fake_sendgrid.inject("500", times=2)
    fake_sendgrid.inject("503", path="/v3/suppression/bounces")
    statuses = [post_mail(client, valid_body(f"k{i}"))[0] for i in range(4)]
    assert statuses == [429, 500, 500, 202]
    with pytest.raises(http_errors.ServiceUnavailableError):
        client.client.suppression.bounces.get()
    assert client.client.suppression.bounces.get().status_code == 200
    assert fake_sendgrid.ledger_key_counts() == {"k3": 1}


def test_fault_arguments_are_checked(fake_sendgrid):
    with pytest.raises(ValueError, match="nope"):
        fake_sendgrid.inject("nope")
    with pytest.raises(ValueError, match="wait"):
        fake_sendgrid.inject("slow", wait=1)
    with pytest.raises(ValueError, match="times"):
        fake_sendgrid.inject("429", times=0)
    with pytest.raises(ValueError, match="rate"):
        fake_sendgrid.set_fault_rate(1.5)


def _outcomes(seed: int, n: int = 40) -> tuple[list, FakeSendGrid]:
    with FakeSendGrid(seed=seed) as server:
        server.set_fault_rate(0.5, kinds=("429", "500", "503", "drop"))
        client = SendGridAPIClient(server.api_key, host=server.url)
        outcomes: list = []
        for i in range(n):
            try:
                outcomes.append(post_mail(client, valid_body(f"k{i}"))[0])
            except CONNECTION_LOST:
                outcomes.append("dropped")
    assert server.server_errors == []
    return outcomes, server


def test_fault_rate_is_reproducible_with_a_seed():
    first, server = _outcomes(seed=11)
    second, _ = _outcomes(seed=11)
    other, _ = _outcomes(seed=12)
    assert first == second
    assert first != other
    assert {202, "dropped"} <= set(first) and {429, 500, 503} & set(first)
    # accepted = answered 202 + dropped after acceptance; refused ones left no trace
    assert len(server.accepted) == first.count(202) + first.count("dropped")
    assert set(server.ledger_key_counts()) == {f"k{i}" for i, o in enumerate(first) if o in (202, "dropped")}


def test_clear_faults_restores_normal_service(fake_sendgrid, client):
    fake_sendgrid.set_fault_rate(1.0, kinds=("500",))
    assert post_mail(client, valid_body())[0] == 500
    fake_sendgrid.clear_faults()
    assert post_mail(client, valid_body())[0] == 202


# -- batches ------------------------------------------------------------------------------------


def test_batch_creation_validation_and_cancellation(fake_sendgrid, client):
    created = client.client.mail.batch.post()
    assert created.status_code == 201
    batch_id = created.to_dict["batch_id"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", batch_id)
    assert client.client.mail.batch._(batch_id).get().to_dict == {"batch_id": batch_id}
    with pytest.raises(http_errors.BadRequestsError):
        client.client.mail.batch._("unknown").get()

    body = valid_body() | {"batch_id": batch_id, "send_at": int(time.time()) + 7200}
    assert post_mail(client, body)[0] == 202
    assert fake_sendgrid.accepted_recipients()[0]["batch_id"] == batch_id

    cancel = client.client.user.scheduled_sends.post(request_body={"batch_id": batch_id, "status": "cancel"})
    assert cancel.status_code == 201
    assert cancel.to_dict == {"batch_id": batch_id, "status": "cancel"}
    assert fake_sendgrid.cancelled_batches == {batch_id}
    assert client.client.user.scheduled_sends.get().to_dict == [{"batch_id": batch_id, "status": "cancel"}]
    with pytest.raises(http_errors.BadRequestsError):  # already has a status
        client.client.user.scheduled_sends.post(request_body={"batch_id": batch_id, "status": "pause"})
    with pytest.raises(http_errors.BadRequestsError):
        client.client.user.scheduled_sends.post(request_body={"batch_id": "unknown", "status": "cancel"})
    with pytest.raises(http_errors.BadRequestsError):
        client.client.user.scheduled_sends.post(request_body={"batch_id": batch_id, "status": "stop"})
    assert client.client.user.scheduled_sends._(batch_id).delete().status_code == 204
    assert fake_sendgrid.cancelled_batches == set()


# -- suppressions -------------------------------------------------------------------------------


def _all_pages(client: SendGridAPIClient, endpoint, **query) -> list[list]:
    pages = []
    params = {"limit": 500, **query}
    while True:
        response = endpoint.get(query_params=params)
        pages.append(response.to_dict)
        nxt = re.search(r'<([^>]+)>; rel="next"', response.headers.get("Link", ""))
        if nxt is None:
            return pages
        params = dict(parse_qsl(urlsplit(nxt.group(1)).query))


def test_bounces_paginate_newest_first_and_honour_start_time(fake_sendgrid, client):
    base = 1_760_000_000
    for i in range(1234):  # three bounces share each second
        fake_sendgrid.add_suppression(
            "bounces", f"b{i}@example.org", created=base + i // 3, reason="550 5.1.1 unknown", status="5.1.1"
        )
    pages = _all_pages(client, client.client.suppression.bounces)
    assert [len(p) for p in pages] == [500, 500, 234]
    rows = [r for page in pages for r in page]
    assert sorted(r["email"] for r in rows) == sorted(f"b{i}@example.org" for i in range(1234))
    created = [r["created"] for r in rows]
    assert created == sorted(created, reverse=True)
    assert rows[0] == {
        "created": base + 411,
        "email": "b1233@example.org",
        "reason": "550 5.1.1 unknown",
        "status": "5.1.1",
    }

    since = base + 300  # bounces i >= 900
    pages = _all_pages(client, client.client.suppression.bounces, start_time=since)
    assert [len(p) for p in pages] == [334]
    assert {r["email"] for r in pages[0]} == {f"b{i}@example.org" for i in range(900, 1234)}
    window = client.client.suppression.bounces.get(query_params={"start_time": since, "end_time": since}).to_dict
    assert {r["email"] for r in window} == {"b900@example.org", "b901@example.org", "b902@example.org"}


def test_suppression_lists_have_their_documented_shapes(fake_sendgrid, client):
    created = datetime(2026, 3, 1, 12, tzinfo=UTC)
    fake_sendgrid.add_suppression("bounces", "a@example.org", created=created, reason="550", status="5.1.1")
    fake_sendgrid.add_suppression("blocks", "b@example.org", created=created, reason="blocked", status="4.0.0")
    fake_sendgrid.add_suppression("spam_reports", "c@example.org", created=created, ip="10.0.0.1")
    fake_sendgrid.add_suppression("invalid_emails", "not an address", created=created, reason="Mail domain invalid")
    fake_sendgrid.add_suppression("unsubscribes", "d@example.org", created=created)
    for kind, fields in SUPPRESSION_FIELDS.items():
        [row] = getattr(client.client.suppression, kind).get().to_dict
        assert tuple(row) == fields
        assert row["created"] == int(created.timestamp())
    assert client.client.suppression.spam_reports.get().to_dict[0]["ip"] == "10.0.0.1"
    [single] = client.client.suppression.bounces._("A@example.org").get().to_dict
    assert single["email"] == "a@example.org"


def test_asm_suppressions_list_all_groups_and_one_group(fake_sendgrid, client):
    fake_sendgrid.add_suppression("asm", "a@example.org", group_id=7, group_name="DE marketing", created=100)
    fake_sendgrid.add_suppression("asm", "b@example.org", group_id=9, created=200)
    fake_sendgrid.add_suppression("asm", "c@example.org", group_id=7, created=300)
    everything = client.client.asm.suppressions.get().to_dict
    assert everything == [  # newest first; a group's name is the group's, whichever call named it
        {"email": "c@example.org", "group_id": 7, "group_name": "DE marketing", "created_at": 300},
        {"email": "b@example.org", "group_id": 9, "group_name": "Group 9", "created_at": 200},
        {"email": "a@example.org", "group_id": 7, "group_name": "DE marketing", "created_at": 100},
    ]
    assert client.client.asm.groups._(7).suppressions.get().to_dict == ["c@example.org", "a@example.org"]
    assert client.client.asm.groups._(8).suppressions.get().to_dict == []


def test_add_suppression_rejects_bad_input(fake_sendgrid):
    with pytest.raises(ValueError, match="group_id"):
        fake_sendgrid.add_suppression("asm", "a@example.org")
    with pytest.raises(ValueError, match="kind"):
        fake_sendgrid.add_suppression("bouncez", "a@example.org")
    with pytest.raises(ValueError, match="naive"):
        fake_sendgrid.add_suppression("bounces", "a@example.org", created=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="reason"):
        fake_sendgrid.add_suppression("unsubscribes", "a@example.org", reason="why")


def test_bad_paging_parameters_are_400(client):
    for query in ({"limit": "many"}, {"limit": 501}, {"offset": -1}):
        with pytest.raises(http_errors.BadRequestsError) as caught:
            client.client.suppression.blocks.get(query_params=query)
        assert caught.value.to_dict["errors"][0]["field"] == next(iter(query))


# -- stats --------------------------------------------------------------------------------------


def test_global_stats_per_day_with_zero_days_and_per_week(fake_sendgrid, client):
    fake_sendgrid.set_stats(date(2026, 3, 2), {"requests": 100, "delivered": 95, "bounces": 3, "unique_opens": 40})
    fake_sendgrid.set_stats(date(2026, 3, 4), {"requests": 50, "delivered": 49, "spam_reports": 1})
    fake_sendgrid.set_stats(date(2026, 3, 4), {"requests": 10}, category="cart_recovery")  # not global
    days = client.client.stats.get(
        query_params={"start_date": "2026-03-01", "end_date": "2026-03-05", "aggregated_by": "day"}
    ).to_dict
    assert [d["date"] for d in days] == ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05"]
    metrics = [d["stats"][0]["metrics"] for d in days]
    assert all(set(m) == set(STATS_METRICS) for m in metrics)
    assert metrics[0] == dict.fromkeys(STATS_METRICS, 0) == metrics[2] == metrics[4]
    assert (metrics[1]["requests"], metrics[1]["delivered"], metrics[1]["bounces"]) == (100, 95, 3)
    assert (metrics[3]["requests"], metrics[3]["spam_reports"]) == (50, 1)

    # 2026-03-01 is a Sunday: the range splits into that day, the week from Monday 03-02, and 03-09..03-10
    weeks = client.client.stats.get(
        query_params={"start_date": "2026-03-01", "end_date": "2026-03-10", "aggregated_by": "week"}
    ).to_dict
    assert [w["date"] for w in weeks] == ["2026-03-01", "2026-03-02", "2026-03-09"]
    assert weeks[1]["stats"][0]["metrics"]["requests"] == 150
    assert weeks[0]["stats"][0]["metrics"]["requests"] == weeks[2]["stats"][0]["metrics"]["requests"] == 0


def test_category_stats_per_day_and_category(fake_sendgrid, client):
    fake_sendgrid.set_stats(date(2026, 3, 2), {"delivered": 7, "unique_clicks": 2}, category="cart_recovery")
    fake_sendgrid.set_stats(date(2026, 3, 3), {"delivered": 4}, category="welcome")
    days = client.client.categories.stats.get(
        query_params={"categories": ["cart_recovery", "welcome"], "start_date": "2026-03-02", "end_date": "2026-03-03"}
    ).to_dict
    assert [d["date"] for d in days] == ["2026-03-02", "2026-03-03"]
    for day in days:
        assert [(s["name"], s["type"]) for s in day["stats"]] == [
            ("cart_recovery", "category"),
            ("welcome", "category"),
        ]
    assert days[0]["stats"][0]["metrics"]["delivered"] == 7 and days[0]["stats"][0]["metrics"]["unique_clicks"] == 2
    assert days[0]["stats"][1]["metrics"] == dict.fromkeys(STATS_METRICS, 0)
    assert days[1]["stats"][1]["metrics"]["delivered"] == 4
    assert days[1]["stats"][0]["metrics"]["delivered"] == 0


@pytest.mark.parametrize(
    ("endpoint", "query", "field"),
    [
        ("stats", {"start_date": "2026-13-01"}, "start_date"),
        ("stats", {"start_date": "yesterday"}, "start_date"),
        ("stats", {}, "start_date"),
        ("stats", {"start_date": "2026-03-05", "end_date": "2026-03-01"}, "end_date"),
        ("stats", {"start_date": "2026-03-01", "aggregated_by": "hour"}, "aggregated_by"),
        ("categories", {"start_date": "2026-03-01"}, "categories"),
    ],
)
def test_bad_stats_queries_are_400(client, endpoint, query, field):
    target = client.client.stats if endpoint == "stats" else client.client.categories.stats
    with pytest.raises(http_errors.BadRequestsError) as caught:
        target.get(query_params=query)
    assert caught.value.to_dict["errors"][0]["field"] == field


def test_set_stats_rejects_unknown_metrics(fake_sendgrid):
    with pytest.raises(ValueError, match="openz"):
        fake_sendgrid.set_stats(date(2026, 3, 1), {"openz": 1})
    with pytest.raises(ValueError, match="delivered"):
        fake_sendgrid.set_stats(date(2026, 3, 1), {"delivered": -1})
