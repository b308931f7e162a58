"""Benchmark: seconds for the SendGrid webhook to take one batch of 20,000 unsubscribes.

The whole request, as SendGrid makes it: a batch signed with a P-256 key (SendGrid's scheme)
POSTed to the plugin's app (``plugins/sendgrid_webhook.py``), which verifies it, checks each
event, stores the batch and suppresses all 20,000 addresses in one transaction before it
answers. The events are SendGrid-shaped and the body stays under the endpoint's 4 MB limit, so
the production app takes it as is (custom args, no categories: 20,000 fuller events would pass
4 MB; SendGrid itself posts far smaller batches). Run on the remarketing DB's two backends:
SQLite (WAL, a file in a temporary folder, the embedded default) and PostgreSQL (a fresh
database; skipped, with a note, when the service is unreachable). The hourly fold of the same
batch is timed too.

Baseline: the previous way, one upsert transaction per address (``add_local_suppression``),
timed on ``BASELINE_SAMPLE`` addresses and extrapolated linearly; the entry name says so.

Every run is checked: each address ends up suppressed. Usage: ``python -m bench.bench_webhook``
(prints the figures) or ``python -m bench.run --only webhook`` (also writes bench/results.json).
"""

from __future__ import annotations

import base64
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.run import entry, print_table
from remarketing.delivery.suppressions import add_local_suppression, suppression_reasons
from remarketing.flows.feedback.fold import fold_pending
from remarketing.flows.feedback.store import event_json
from remarketing.flows.feedback.webhook import MAX_BODY_BYTES, MAX_EVENTS, SIGNATURE_HEADER, TIMESTAMP_HEADER
from remarketing.platform import state

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))  # the webhook plugin, as Airflow loads it
sys.path.insert(0, str(REPO / "tests" / "support"))  # databases: a fresh PostgreSQL database
BATCH = MAX_EVENTS  # 20,000: the most one batch may hold
BASELINE_SAMPLE = 500
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def unsubscribes(n: int, offset: int = 0) -> list[dict]:
    """SendGrid-shaped unsubscribe events of mails we sent (custom args repeated at the top level)."""
    at = int((NOW - timedelta(minutes=1)).timestamp())
    return [
        {
            "email": f"shopper{i}@example.com",
            "timestamp": at,
            "event": "unsubscribe",
            "sg_event_id": f"unsub-{i:09d}",
            "sg_message_id": f"m{i:09d}.f",
            "ledger_key": f"cart_recovery/1/c{i}/{i}/v1",
            "market": "DE",
        }
        for i in range(offset, offset + n)
    ]


def _signed(key, body: bytes) -> dict[str, str]:
    timestamp = str(int(NOW.timestamp()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: timestamp}


def _public_text(key) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def _all_suppressed(engine, batch: list[dict]) -> None:
    reasons = suppression_reasons(engine, pd.Series([e["email"] for e in batch]), None)
    if not (reasons == "unsubscribes").all():
        raise AssertionError(f"{int((reasons != 'unsubscribes').sum())} addresses were not suppressed")


def webhook_seconds(engine, n: int) -> tuple[float, float]:
    """(seconds for the webhook to take one signed batch of ``n`` unsubscribes, seconds to fold it)."""
    import sendgrid_webhook
    from fastapi.testclient import TestClient

    key = ec.generate_private_key(ec.SECP256R1())
    app = sendgrid_webhook.create_app(
        engine_factory=lambda: engine, key_loader=lambda: _public_text(key), clock=lambda: NOW
    )
    batch = unsubscribes(n)
    body = event_json(batch)
    if len(body) > MAX_BODY_BYTES:
        raise AssertionError(f"a {len(body):,}-byte body: over the endpoint's {MAX_BODY_BYTES:,}-byte limit")
    headers = _signed(key, body)
    with TestClient(app) as client:
        warm = event_json(unsubscribes(10, offset=10 * n))  # a first request: imports, key, connection
        client.post("/events", content=warm, headers=_signed(key, warm))
        started = time.perf_counter()
        answer = client.post("/events", content=body, headers=headers)
        seconds = time.perf_counter() - started
    if answer.status_code != 200 or answer.json()["rejected"]:
        raise AssertionError(f"the webhook answered {answer.status_code}: {answer.text[:200]}")
    _all_suppressed(engine, batch)
    started = time.perf_counter()
    folded = fold_pending(engine, now=NOW)
    fold = time.perf_counter() - started
    if folded.new_events != n + 10:
        raise AssertionError(f"the fold took {folded.new_events} events, not {n + 10}")
    print(f"   {engine.dialect.name}: {len(body) / 1e6:.1f} MB body, answered 200", file=sys.stderr)
    return seconds, fold


def baseline_seconds(engine, n: int) -> float:
    """One transaction per address, as before: timed on a sample, extrapolated to ``n``."""
    batch = unsubscribes(BASELINE_SAMPLE, offset=100 * n)
    started = time.perf_counter()
    for event in batch:
        add_local_suppression(engine, event["email"], reason="unsubscribe (event webhook)", now=NOW)
    return (time.perf_counter() - started) / BASELINE_SAMPLE * n


@contextmanager
def _sqlite():
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'remarketing.db'}"


@contextmanager
def _postgres():
    """A fresh PostgreSQL database's URL, or None when the service is unreachable."""
    from databases import fresh_postgres_database

    try:
        with fresh_postgres_database("rmk_bench_webhook") as url:
            yield url
            return
    except BaseException as exc:  # noqa: BLE001 - pytest.skip's exception when PostgreSQL is down
        if type(exc).__name__ != "Skipped":
            raise
        print(f"   PostgreSQL skipped: {exc}", file=sys.stderr)
    yield None


def run(size: int) -> list[dict]:
    n = max(100, min(size, BATCH))
    entries = []
    for backend, database in (("sqlite", _sqlite), ("postgresql", _postgres)):
        with database() as url:
            if url is None:
                continue
            engine = state.create_state_engine(url)
            try:
                state.upgrade(engine)
                seconds, fold = webhook_seconds(engine, n)
                baseline = baseline_seconds(engine, n)
            finally:
                engine.dispose()
        entries += [
            entry(
                f"webhook seconds, one batch of {n:,} unsubscribes [{backend}] "
                f"(baseline: one transaction per address, extrapolated from {BASELINE_SAMPLE})",
                seconds,
                "s",
                n,
                baseline,
            ),
            entry(f"webhook fold seconds, the same batch [{backend}]", fold, "s", n),
        ]
    return entries


def main() -> int:
    print_table(run(BATCH))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
