"""Benchmark: emails per second through SendGridTransport against the local SendGrid server.

The server (tests/support/fake_sendgrid.py, a real HTTP server) runs in its own process on loopback, as
SendGrid would be another machine; messages are built before the clock starts (render excluded).
Every run is checked at the server: each ledger key accepted exactly once, or the bench fails.

Figures:
- per-recipient messages (1 recipient each) through the transport's pool (8 workers, keep-alive);
- shared content packed 1,000 recipients per request;
- the same per-recipient messages posted through the library's own ``SendGridAPIClient`` (urllib,
  a new connection per request), with the same 8 threads: what the keep-alive pool buys;
- the SendGrid provider's ``send_email`` once per recipient. The provider cannot be pointed at
  another host (it builds ``SendGridAPIClient(api_key=...)`` with the library's default host and
  reads only the password of the connection), so the bench substitutes a client bound to the local
  host for that one call; everything else (connection lookup, Mail building, logging) is the
  provider's own code. Also ``SendGridAPIClient.send`` one by one, which is what it does inside.

The slow baselines run on a sample (``BASELINE_SAMPLE``); rates need no extrapolation, and the
"vs" entries compare the time to send ``size`` emails.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.run import entry
from remarketing.delivery.messages import Message, Recipient
from remarketing.delivery.sendgrid_transport import SendGridTransport, build_mail

REPO = Path(__file__).resolve().parents[1]
PER_RECIPIENT_MAX = 20_000
PACKED_MAX = 200_000
BASELINE_SAMPLE = 1_000
WORKERS = 8

SERVER = """
import collections, json, sys
sys.path.insert(0, sys.argv[1])
from fake_sendgrid import FakeSendGrid
sg = FakeSendGrid().start()
print(json.dumps({"url": sg.url, "api_key": sg.api_key}), flush=True)
for line in sys.stdin:
    if line.strip() == "count":
        counts = sg.ledger_key_counts()
        sg.reset()  # before answering: the next run starts as soon as the answer is read
        print(json.dumps({"keys": len(counts), "max": max(counts.values(), default=0),
                          "recipients": sum(counts.values()), "errors": len(sg.server_errors)}), flush=True)
sg.stop()
"""

HTML = "<html><body><h1>Hello -first_name-</h1>" + "<p>Your cart is waiting for you.</p>" * 40 + "</body></html>"
TEXT = "Hello -first_name-\n" + "Your cart is waiting for you.\n" * 40


class FakeServer:
    """tests/support/fake_sendgrid.py in a child process; ``count()`` checks and clears what it accepted."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(REPO / "tests" / "support")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        info = json.loads(self.proc.stdout.readline())
        self.url, self.api_key = info["url"], info["api_key"]

    def count(self) -> dict:
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def recipient(i: int) -> Recipient:
    return Recipient(
        email=f"customer{i}@example.com",
        ledger_key=f"bench:{i}",
        substitutions={"-first_name-": f"Name{i}"},
        headers={"List-Unsubscribe": f"<https://shop.example/unsubscribe/{i}>"},
        custom_args={"customer_id": str(i)},
    )


def message(recipients: tuple[Recipient, ...]) -> Message:
    return Message(
        recipients=recipients,
        from_email="news@shop.example",
        from_name="Shop",
        subject="Hello -first_name-, your cart",
        html=HTML,
        text=TEXT,
        categories=("cart_recovery", "US", "step1"),
        asm_group_id=42,
        custom_args={"market": "US", "flow": "cart_recovery"},
    )


def _check(server: FakeServer, expected: int, what: str) -> None:
    seen = server.count()
    if seen["keys"] != expected or seen["max"] != 1 or seen["errors"]:
        raise AssertionError(f"{what}: the server accepted {seen} for {expected} ledger keys")


def _transport_rate(server: FakeServer, messages: list[Message], recipients: int, what: str) -> float:
    transport = SendGridTransport(server.api_key, host=server.url, max_workers=WORKERS)
    try:
        started = time.perf_counter()
        results = list(transport.send(messages))
        seconds = time.perf_counter() - started
    finally:
        transport.close()
    bad = [r for r in results if r.outcome != "accepted"]
    if bad:
        raise AssertionError(f"{what}: {len(bad)} messages not accepted, e.g. {bad[0]}")
    _check(server, recipients, what)
    return recipients / seconds


def _library_concurrent_rate(server: FakeServer, messages: list[Message]) -> float:
    from sendgrid import SendGridAPIClient

    local = threading.local()

    def post(msg: Message) -> int:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = SendGridAPIClient(server.api_key, host=server.url)
        return client.send(build_mail(msg)).status_code

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(WORKERS) as pool:
        statuses = list(pool.map(post, messages))
    seconds = time.perf_counter() - started
    if set(statuses) != {202}:
        raise AssertionError(f"library client: statuses {set(statuses)}")
    _check(server, len(messages), "library client, 8 threads")
    return len(messages) / seconds


def _library_sequential_rate(server: FakeServer, messages: list[Message]) -> float:
    from sendgrid import SendGridAPIClient

    client = SendGridAPIClient(server.api_key, host=server.url)
    started = time.perf_counter()
    for msg in messages:
        client.send(build_mail(msg))
    seconds = time.perf_counter() - started
    _check(server, len(messages), "library client, one by one")
    return len(messages) / seconds


def _provider_rate(server: FakeServer, recipients: list[Recipient]) -> float:
    """The provider's ``send_email`` once per recipient (custom_args carry the ledger key for the check)."""
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="rmk-bench-airflow-"))  # not ~/airflow
    previous_conn = os.environ.get("AIRFLOW_CONN_SENDGRID_DEFAULT")
    os.environ["AIRFLOW_CONN_SENDGRID_DEFAULT"] = json.dumps({"conn_type": "sendgrid", "password": server.api_key})
    try:
        return _provider_rate_with_conn(server, recipients)
    finally:
        if previous_conn is None:
            os.environ.pop("AIRFLOW_CONN_SENDGRID_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_SENDGRID_DEFAULT"] = previous_conn


def _provider_rate_with_conn(server: FakeServer, recipients: list[Recipient]) -> float:
    import logging

    import sendgrid
    from airflow.providers.sendgrid.utils import emailer

    logging.getLogger(emailer.__name__).setLevel(logging.WARNING)  # it logs every recipient list at INFO
    original = sendgrid.SendGridAPIClient
    sendgrid.SendGridAPIClient = functools.partial(original, host=server.url)  # the one thing it cannot configure
    try:
        emailer.send_email(  # warm: connection lookup, imports
            to="warmup@example.com",
            subject="warm",
            html_content=HTML,
            from_email="news@shop.example",
            personalization_custom_args={"ledger_key": "warmup"},
        )
        server.count()
        started = time.perf_counter()
        for r in recipients:
            emailer.send_email(
                to=r.email,
                subject="Hello, your cart",
                html_content=HTML,
                from_email="news@shop.example",
                from_name="Shop",
                categories=["cart_recovery", "US", "step1"],
                personalization_custom_args={"ledger_key": r.ledger_key, "customer_id": r.custom_args["customer_id"]},
            )
        seconds = time.perf_counter() - started
    finally:
        sendgrid.SendGridAPIClient = original
    _check(server, len(recipients), "provider send_email")
    return len(recipients) / seconds


def run(size: int) -> list[dict]:
    n_single = max(1, min(size, PER_RECIPIENT_MAX))
    n_packed = max(1, min(size, PACKED_MAX))
    n_base = max(1, min(size, BASELINE_SAMPLE))
    singles = [message((recipient(i),)) for i in range(n_single)]
    packed_recipients = [recipient(i) for i in range(n_packed)]
    packed = [message(tuple(packed_recipients[i : i + 1000])) for i in range(0, n_packed, 1000)]
    sample = singles[:n_base]

    server = FakeServer()
    try:
        _transport_rate(server, singles[: min(200, n_single)], min(200, n_single), "warm-up")
        per_recipient = _transport_rate(server, singles, n_single, "per-recipient")
        packed_rate = _transport_rate(server, packed, n_packed, "packed 1000")
        library_pool = _library_concurrent_rate(server, sample)
        library_one = _library_sequential_rate(server, sample)
        provider = _provider_rate(server, [m.recipients[0] for m in sample])
    finally:
        server.close()

    return [
        entry("delivery.per_recipient emails/s (8 workers, keep-alive)", per_recipient, "emails/s", n_single),
        entry("delivery.packed_1000 emails/s", packed_rate, "emails/s", n_packed),
        entry(f"delivery.library_client_8_threads emails/s (sample {n_base})", library_pool, "emails/s", n_base),
        entry(f"delivery.library_client_one_by_one emails/s (sample {n_base})", library_one, "emails/s", n_base),
        entry(f"delivery.provider_send_email emails/s (sample {n_base})", provider, "emails/s", n_base),
        entry(
            "delivery.per_recipient time vs provider send_email per recipient",
            size / per_recipient,
            "s",
            size,
            baseline_value=size / provider,
        ),
        entry(
            "delivery.packed_1000 time vs provider send_email per recipient",
            size / packed_rate,
            "s",
            size,
            baseline_value=size / provider,
        ),
        entry(
            "delivery.per_recipient time vs library client (new connection per request), 8 threads",
            size / per_recipient,
            "s",
            size,
            baseline_value=size / library_pool,
        ),
    ]
