"""Reliability of the send step against the real SendGrid transport and the local SendGrid server.

* 20% injected faults (429, 500, 503, timeouts with a short client timeout, connections dropped
  after the request was read) over 10,000 sends: no key accepted twice, the ledger agrees with
  the server, and after a later run every key was accepted exactly once;
* the send step in a subprocess killed with SIGKILL at random points of a 10,000-mail send and
  retried (same run, next try), 20 times: no duplicates, no key lost;
* two overlapping runs (two processes, PostgreSQL ledger) over one audience: no duplicates;
* a suppressed address, a spam-rate breach and a warm-up cap, each checked in the server's record.

This file is also the child program of the subprocess tests (``python test_send_reliability.py child ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # conftest does it too; the child runs alone
from databases import fresh_postgres_database  # noqa: E402
from fake_sendgrid import FakeSendGrid  # noqa: E402
from market_fixtures import TEST_SENDER, synthetic_market  # noqa: E402

from remarketing.delivery import ledger
from remarketing.delivery.messages import Message, Recipient
from remarketing.delivery.retry import RetryPolicy
from remarketing.delivery.send_step import send_market
from remarketing.delivery.sendgrid_api import SendGridApi
from remarketing.delivery.sendgrid_transport import SendGridTransport
from remarketing.platform import state

FLOW = "cart_recovery"
SIZE = 10_000
FAULT_KINDS = ("429", "500", "503", "timeout", "drop")


def market(code: str = "DE", **overrides):
    """A market that may send at any hour, so every eligible member is sent now (no send_at)."""
    overrides.setdefault("sendgrid_unsubscribe_group_id", 1001 if code == "DE" else 1002)
    overrides.setdefault("warmup_daily_cap", 1_000_000)
    return synthetic_market(code, **overrides)


def audience(size: int, now: datetime, *, code: str = "DE", offset: int = 0) -> pd.DataFrame:
    ids = np.arange(offset + 1, offset + size + 1)
    rng = np.random.default_rng(offset + size)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "email": [f"shopper{i}@example.com" for i in ids],
            "market": code,
            "locale": "de-DE",
            "time_zone": "Europe/Berlin",
            "earliest_at": pd.Timestamp(now),
            "best_hour": pd.array([pd.NA] * size, dtype="Int64"),
            "marketing_consent": True,
            "value": rng.uniform(1, 500, size),
            "step": 1,
            "subject_kind": "cart",
            "subject_id": [f"{i}" for i in ids],
            "variant": "v1",
        }
    )


def render(chunk: pd.DataFrame):
    for email, key in zip(chunk["email"].tolist(), chunk["ledger_key"].tolist(), strict=True):
        yield Message(
            recipients=(Recipient(email, key, headers={"List-Unsubscribe": "<https://shop.example.com/u>"}),),
            from_email=TEST_SENDER["from_email"],
            from_name="Shop",
            subject="Ihr Warenkorb wartet",
            html="<p>Ihr Warenkorb wartet.</p>",
            text="Ihr Warenkorb wartet.",
        )


def make_transport(url: str, api_key: str, timeout: float) -> SendGridTransport:
    retry = RetryPolicy(max_attempts=6, base_delay=0.005, max_delay=0.05)
    return SendGridTransport(api_key, host=url, timeout=timeout, max_workers=8, retry=retry)


def wait_until_idle(sendgrid: FakeSendGrid, quiet: float = 0.5, limit: float = 30) -> None:
    """Requests a client gave up on may still be in the server's hands: let them land."""
    deadline = time.monotonic() + limit
    seen = -1
    while time.monotonic() < deadline:
        count = len(sendgrid.requests_log)
        if count == seen:
            return
        seen = count
        time.sleep(quiet)


def ledger_frame(engine) -> pd.DataFrame:
    t = ledger.send_ledger.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.ledger_key, t.status, t.retryable, t.run_id)).all()
    return pd.DataFrame(rows, columns=["ledger_key", "status", "retryable", "run_id"]).set_index("ledger_key")


def all_keys(size: int) -> set[str]:
    return {
        ledger.ledger_key(FLOW, i, step=1, subject_kind="cart", subject_id=i, variant="v1") for i in range(1, size + 1)
    }


def assert_ledger_agrees_with_server(engine, counts) -> pd.DataFrame:
    found = ledger_frame(engine)
    assert max(counts.values(), default=0) <= 1, "a key was accepted twice"
    server = found.index.map(lambda k: counts.get(k, 0))
    accepted = (found["status"] == "accepted").to_numpy()
    assert (server[accepted] == 1).all(), "a key the ledger says accepted is not at the server"
    rejected = (found["status"] == "rejected").to_numpy()
    assert (server[rejected] == 0).all(), "a key the ledger says rejected reached the server"
    assert set(counts) <= set(found.index), "the server got a key the ledger never claimed"
    assert not found["status"].isin(["claimed", "sending"]).any(), "keys left in flight"
    return found


@pytest.fixture
def sqlite_engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'remarketing.db'}"
    engine = state.create_state_engine(url)
    state.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.mark.reliability
def test_20_percent_faults_over_10k_sends_never_duplicate(sqlite_engine):
    engine = sqlite_engine
    with FakeSendGrid(seed=20) as sendgrid:
        sendgrid.set_fault_rate(0.2, FAULT_KINDS, delay=0.6, reset_after=1)
        now = datetime.now(UTC)
        with make_transport(sendgrid.url, sendgrid.api_key, timeout=0.25) as transport:
            summary = send_market(flow=FLOW, market=market(), audience=audience(SIZE, now), render=render,
                                  transport=transport, engine=engine, run_id="faults-1", try_number=1, now=now)  # fmt: skip
        wait_until_idle(sendgrid)
        faults = [status for _, path, status in sendgrid.requests_log if path == "/v3/mail/send" and status != 202]
        assert len(faults) > 0.2 * SIZE * 0.8, "the faults were not injected"
        counts = sendgrid.ledger_key_counts()
        found = assert_ledger_agrees_with_server(engine, counts)
        assert summary.counts["sent"] + summary.counts["unknown"] + summary.counts["failed"] == SIZE
        assert summary.counts["sent"] == int((found["status"] == "accepted").sum())
        unknown = found.index[found["status"] == "unknown"]
        assert len(unknown) > 0, "timeouts and drops must leave unknown outcomes"
        print(f"\nfaults: {len(faults)} injected, {dict((k, v) for k, v in summary.counts.items() if v)}")

        # A later run: unknown outcomes are not resent; retryable rejections (if any) are.
        sendgrid.clear_faults()
        later = now + timedelta(minutes=1)
        with make_transport(sendgrid.url, sendgrid.api_key, timeout=5) as transport:
            again = send_market(flow=FLOW, market=market(), audience=audience(SIZE, now), render=render,
                                transport=transport, engine=engine, run_id="faults-2", try_number=1, now=later)  # fmt: skip
        wait_until_idle(sendgrid)
        counts = sendgrid.ledger_key_counts()
        assert_ledger_agrees_with_server(engine, counts)
        retryable = int(((found["status"] == "rejected") & found["retryable"]).sum())
        assert again.counts["sent"] == retryable
        assert again.counts["already_sent"] == SIZE - retryable
        assert set(counts) == all_keys(SIZE) and set(counts.values()) == {1}, "every key accepted exactly once"
        assert sendgrid.server_errors == []


def _child_command(url: str, api_key: str, db: str, run_id: str, try_number: int, size: int, **flags) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "child", "--sendgrid", url, "--api-key", api_key]
    command += ["--db", db, "--run-id", run_id, "--try", str(try_number), "--size", str(size)]
    for name, value in flags.items():
        command += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return command


def _spawn(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.reliability
def test_sigkill_at_random_points_then_retry_20_times_loses_and_duplicates_nothing(tmp_path, sqlite_engine):
    db = sqlite_engine.url.render_as_string(hide_password=False)
    rng = random.Random(7)
    progress = []
    with FakeSendGrid() as sendgrid:
        for try_number in range(1, 21):
            child = _spawn(
                _child_command(sendgrid.url, sendgrid.api_key, db, "kill-run", try_number, SIZE), tmp_path / "log"
            )
            assert child.stdout.readline().strip() == "ready", (tmp_path / "log").read_text()[-2000:]
            if try_number % 2:  # anywhere: checks, claims, marking, requests, recording
                time.sleep(rng.uniform(0.0, 2.5))
            else:  # once this try's first mail reached the server, so kills land mid-send too
                before = len(sendgrid.accepted)
                deadline = time.monotonic() + 60
                while child.poll() is None and time.monotonic() < deadline:
                    if len(sendgrid.accepted) > before:
                        break
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.6))
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=30)
            progress.append(sum(sendgrid.ledger_key_counts().values()))
        wait_until_idle(sendgrid)
        child = _spawn(_child_command(sendgrid.url, sendgrid.api_key, db, "kill-run", 21, SIZE), tmp_path / "log")
        out, _ = child.communicate(timeout=300)
        assert child.returncode == 0, (tmp_path / "log").read_text()[-3000:]
        counts = json.loads(out.splitlines()[-1])
        wait_until_idle(sendgrid)
        server = sendgrid.ledger_key_counts()
        found = assert_ledger_agrees_with_server(sqlite_engine, server)
        assert set(found.index) == all_keys(SIZE), "a key was lost"
        assert set(found["status"]) <= {"accepted", "unknown"}
        assert counts["sent"] + counts["unknown"] == SIZE and counts["sent"] == int(
            (found["status"] == "accepted").sum()
        )
        kills_mid_send = sum(1 for a, b in zip([0, *progress], progress, strict=False) if b > a and b < SIZE)
        print(f"\nserver count after each kill: {progress}; final outcomes {counts}")
        assert kills_mid_send >= 3, f"too few kills landed while mail was going out: {progress}"
        assert sendgrid.server_errors == []


@pytest.mark.reliability
@pytest.mark.postgres
def test_two_overlapping_runs_on_postgresql_never_duplicate(tmp_path):
    size = 4000
    with fresh_postgres_database("rmk_overlap") as url, FakeSendGrid() as sendgrid:
        engine = state.create_state_engine(url)
        state.upgrade(engine)
        children = [
            _spawn(
                _child_command(sendgrid.url, sendgrid.api_key, url, run_id, 1, size, wait_go=True, chunk_size=200),
                tmp_path / f"{run_id}.log",
            )
            for run_id in ("overlap-a", "overlap-b")
        ]
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        for child in children:  # both start sending together
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child, run_id in zip(children, ("overlap-a", "overlap-b"), strict=True):
            out, _ = child.communicate(timeout=300)
            assert child.returncode == 0, (tmp_path / f"{run_id}.log").read_text()[-3000:]
            results.append(json.loads(out.splitlines()[-1]))
        wait_until_idle(sendgrid)
        server = sendgrid.ledger_key_counts()
        found = assert_ledger_agrees_with_server(engine, server)
        engine.dispose()
        assert set(server) == all_keys(size) and set(server.values()) == {1}
        assert results[0]["sent"] + results[1]["sent"] == size
        assert results[0]["already_sent"] + results[1]["already_sent"] == size
        assert results[0]["sent"] > 0 and results[1]["sent"] > 0, f"the runs did not overlap: {results}"
        assert found["run_id"].value_counts().to_dict() == {
            "overlap-a": results[0]["sent"],
            "overlap-b": results[1]["sent"],
        }
        print(f"\noverlapping runs: {results}")


@pytest.mark.reliability
def test_suppression_spam_breach_and_warmup_cap_in_the_servers_record(sqlite_engine):
    engine = sqlite_engine
    now = datetime.now(UTC)
    with FakeSendGrid() as sendgrid, SendGridApi(sendgrid.api_key, host=sendgrid.url) as api:
        sendgrid.add_suppression("bounces", "Shopper3@example.com", created=now - timedelta(days=1), reason="550")
        sendgrid.add_suppression("asm", "shopper5@example.com", group_id=1001, created=now - timedelta(hours=1))
        sendgrid.add_suppression("asm", "shopper6@example.com", group_id=1002, created=now - timedelta(hours=1))
        sendgrid.set_stats(now.date(), {"requests": 2000, "delivered": 2000, "spam_reports": 8}, category="market:FR")
        sendgrid.set_stats(now.date(), {"requests": 2000, "delivered": 2000, "spam_reports": 1}, category="market:DE")
        with make_transport(sendgrid.url, sendgrid.api_key, timeout=5) as transport:
            common = {"flow": FLOW, "render": render, "transport": transport, "engine": engine, "api": api, "now": now}
            de_audience = audience(8, now).assign(value=[10.0, 20.0, 30.0, 40.0, 50.0, 99.0, 5.0, 60.0])
            de = send_market(market=market("DE", warmup_daily_cap=4), audience=de_audience, run_id="r",
                             try_number=1, **common)  # fmt: skip
            fr = send_market(market=market("FR"), audience=audience(5, now, code="FR", offset=100), run_id="r",
                             try_number=1, **common)  # fmt: skip
        received = {r["email"].lower(): r for r in sendgrid.accepted_recipients()}

        # Suppressed: a SendGrid bounce (any case) and this market's group; another market's group does not apply.
        assert "shopper3@example.com" not in received and "shopper5@example.com" not in received
        assert "shopper6@example.com" in received
        assert de.counts["suppressed"] == 2
        # Warm-up: 4 a day, highest value first (shopper6, 8, 4, 2); the rest wait.
        assert set(received) == {f"shopper{i}@example.com" for i in (6, 8, 4, 2)}
        assert de.counts["sent"] == 4 and de.counts["capped"] == 2
        assert de.gate["status"] == "open"  # 0.05% complaints: below the 0.1% warn threshold
        # Spam-rate breach: FR halted, nothing of FR at the server, DE went on.
        assert fr.gate["status"] == "halted" and fr.counts["gated"] == 5
        assert any("spam complaint rate 0.40%" in r for r in fr.gate["reasons"])
        assert not any(r["categories"][1] == "market:FR" for r in received.values())
        assert all(r["categories"][1] == "market:DE" for r in received.values())


def child_main(argv: list[str]) -> int:
    """One send-step try in its own process (what an Airflow worker runs), printing its counts as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sendgrid", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--try", dest="try_number", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--wait-go", action="store_true")
    args = parser.parse_args(argv)
    engine = state.create_state_engine(args.db)
    now = datetime.now(UTC)
    frame = audience(args.size, now)
    transport = make_transport(args.sendgrid, args.api_key, timeout=5)
    print("ready", flush=True)
    if args.wait_go:
        sys.stdin.readline()
    summary = send_market(flow=FLOW, market=market(), audience=frame, render=render, transport=transport,
                          engine=engine, run_id=args.run_id, try_number=args.try_number, now=now,
                          chunk_size=args.chunk_size)  # fmt: skip
    transport.close()
    engine.dispose()
    print(json.dumps(summary.counts), flush=True)
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    raise SystemExit(child_main(sys.argv[2:]))
